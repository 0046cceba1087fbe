"""Train a network from random weights on EuroSAT RGB images.

The default is the project's fast recipe: resnet-valid-narrow (a small residual
network without zero padding, made for 64 x 64 patches on a CPU), SGD with Nesterov
momentum on a warm-up + cosine learning rate over 100 epochs, label smoothing,
weight decay, and as augmentation the 8 flips/rotations of the square followed by a
random shift of up to 4 pixels with reflected edges. `--recipe talk` trains the
talk's from-scratch VGG16 instead (Adam 0.001, batch 64, 100 epochs, patience 50,
flips and +-45 degree rotations), as listed in the talk but missing from its
repository. Writes runs/<run name>/ with model.keras (takes raw pixel values),
model.json, history.csv, TensorBoard logs/ and report/. `--evaluate-only MODEL`
writes the report of a saved model instead.
"""

from cnn_sentinel.datasets import inspect_split
from cnn_sentinel.recipes import evaluate_only, parse_training_settings, train_from_scratch
from cnn_sentinel.settings import run_script
from cnn_sentinel.training import training_run

DATA = "split"  # split folder from 01, with train/ and validation/ (test/ optional)
RECIPE = "fast"  # fast: the settings below; talk: the talk's VGG16 where not edited/given
ARCH = "resnet-valid-narrow"  # resnet-valid[-narrow]; vgg16, densenet201 (talk); vgg16-bn; tiny
BANDS = "rgb"  # bands to train on: rgb, all, or names such as B04,B03,B02
WEIGHTS = "none"  # none (random start) or a local weights file of the backbone without top
BATCH_SIZE = 128  # images per training step
EPOCHS = 100  # epochs; the cosine schedule reaches zero at the last one
STEPS_PER_EPOCH = 0  # batches per epoch; 0 = one real pass over train/ (the talk used 1000)
OPTIMIZER = "sgd-nesterov"  # sgd-nesterov, adamw, adam, sgd or adadelta
LEARNING_RATE = 0.1  # peak learning rate (after the warm-up)
SCHEDULE = "cosine"  # cosine: warm-up then cosine decay to zero; constant
WARMUP_EPOCHS = 2  # epochs of linear warm-up from a tenth of the learning rate
MOMENTUM = 0.9  # momentum of SGD
WEIGHT_DECAY = 0.0005  # decoupled weight decay (sgd-nesterov, adamw)
LABEL_SMOOTHING = 0.1  # share of the target spread over all classes
AUGMENTATION = "dihedral"  # dihedral: 8 flips/90-degree rotations; talk: +-45 degree rotations
SHIFT = 4  # random shift by up to this many pixels, edges reflected; 0: none (talk recipe: 0)
PATIENCE = 30  # stop after this many epochs without better validation accuracy
OUTPUT = "runs"  # folder that receives the run folder
RUN_NAME = ""  # run folder name; empty: rgb-scratch-<arch>; the same name resumes a run
MIXED_PRECISION = "auto"  # auto, off, bf16 or fp16 (auto: bfloat16 on AMX CPUs, GPUs >= sm80)
SEED = 0  # seed of weights, shuffling and augmentation
OVERWRITE = False  # replace existing outputs: train a finished run of the same name again


def main(argv: list[str] | None = None) -> None:
    # Flags over constants; --recipe talk: the talk's settings where none was chosen.
    settings = parse_training_settings(__file__, argv)
    if settings.evaluate_only:  # the report of a saved model instead of training
        evaluate_only(settings)
        return
    split = inspect_split(settings.data, settings.bands, progress=settings.progress)
    # Run folder, resume, strategy, precision and seed: the recipe runs inside.
    with training_run(settings, split, recipe="rgb-scratch") as run:
        # Raw pixels -> normalisation -> [the talk's augmentation] -> random backbone -> head;
        # one stage in which every layer learns; the report (the recipe 05 shares).
        train_from_scratch(run)


if __name__ == "__main__":
    run_script(main)
