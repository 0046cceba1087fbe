"""Train a network from random weights on EuroSAT RGB images.

Listed in the talk but missing from its repository: the same network as 02
without pretrained weights, trained in one stage with Adam like 05. Writes
runs/<run name>/ with model.keras (takes raw pixel values), model.json,
history.csv, TensorBoard logs/ and report/. `--evaluate-only MODEL` writes the
report of a saved model instead.
"""

from command_line import run_script
from network_functions import Stage, parse_training_settings, run_recipe

DATA = "split"  # split folder from 01, with train/ and validation/ (test/ optional)
ARCH = "vgg16"  # vgg16 or densenet201 (talk); vgg16-bn: batch-normalised VGG16; tiny: test/demo
BANDS = "rgb"  # bands to train on: rgb, all, or names such as B04,B03,B02
WEIGHTS = "none"  # none (random start) or a local weights file of the backbone without top
BATCH_SIZE = 64  # images per training step (the talk's 64)
EPOCHS = 100  # most epochs; early stopping usually ends training sooner
STEPS_PER_EPOCH = 0  # batches per epoch; 0 = one real pass over train/ (the talk used 1000)
LEARNING_RATE = 0.001  # Adam learning rate
PATIENCE = 50  # stop after this many epochs without better validation accuracy
OUTPUT = "runs"  # folder that receives the run folder
RUN_NAME = ""  # run folder name; empty: rgb-scratch-<arch>; the same name resumes a run
MIXED_PRECISION = "auto"  # auto, off, bf16 or fp16 (auto: bfloat16 where the hardware has it)
SEED = 0  # seed of weights, shuffling and augmentation


def main(argv: list[str] | None = None) -> None:
    settings = parse_training_settings(__file__, argv)
    stages = [Stage("train", "all", "adam", settings.learning_rate, settings.patience)]
    run_recipe(settings, stages, recipe="rgb-scratch")


if __name__ == "__main__":
    run_script(main)
