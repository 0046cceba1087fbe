"""Fine-tune an ImageNet network on EuroSAT RGB images, in the talk's two stages.

Stage 1 trains only the new head on the frozen ImageNet backbone (Adadelta with
Keras 2's learning rate 1.0); stage 2 unfreezes everything above block 1 and
fine-tunes with SGD at a small learning rate. Writes runs/<run name>/ with
model.keras (takes raw pixel values), model.json, history.csv, TensorBoard logs/
and report/. `--evaluate-only MODEL` writes the report of a saved model instead.
"""

from cnn_sentinel.datasets import inspect_split
from cnn_sentinel.optimisation import Stage
from cnn_sentinel.recipes import evaluate_only, parse_training_settings
from cnn_sentinel.settings import run_script
from cnn_sentinel.training import training_run

DATA = "split"  # split folder from 01, with train/ and validation/ (test/ optional)
ARCH = "vgg16"  # backbone: vgg16 or densenet201 (tiny: small test/demo network)
BANDS = "rgb"  # bands to train on: rgb, all, or names such as B04,B03,B02
WEIGHTS = "imagenet"  # imagenet (Keras download/cache) or a local weights file without top
BATCH_SIZE = 64  # images per training step (the talk's 64)
EPOCHS = 100  # most epochs per stage; early stopping usually ends a stage sooner
STEPS_PER_EPOCH = 0  # batches per epoch; 0 = one real pass over train/ (the talk used 1000)
HEAD_LEARNING_RATE = 1.0  # stage 1 Adadelta: Keras 2's default (Keras 3's 0.001 barely moves)
HEAD_PATIENCE = 10  # stage 1 stops after this many epochs without better validation accuracy
FINETUNE_LEARNING_RATE = 1e-4  # stage 2 SGD learning rate
FINETUNE_MOMENTUM = 0.9  # stage 2 SGD momentum
PATIENCE = 50  # stage 2 stops after this many epochs without better validation accuracy
OUTPUT = "runs"  # folder that receives the run folder
RUN_NAME = ""  # run folder name; empty: rgb-finetuning-<arch>; the same name resumes a run
MIXED_PRECISION = "auto"  # auto, off, bf16 or fp16 (auto: bfloat16 on AMX CPUs, GPUs >= sm80)
SEED = 0  # seed of weights, shuffling and augmentation
OVERWRITE = False  # replace existing outputs: train a finished run of the same name again


def main(argv: list[str] | None = None) -> None:
    settings = parse_training_settings(__file__, argv)
    if settings.evaluate_only:  # the report of a saved model instead of training
        evaluate_only(settings)
        return
    split = inspect_split(settings.data, settings.bands, progress=settings.progress)
    # Run folder, resume, strategy, precision and seed: the recipe runs inside.
    with training_run(settings, split, recipe="rgb-finetuning") as run:
        # Raw pixels -> normalisation -> the talk's augmentation (training only)
        # -> ImageNet backbone -> new head.
        model = run.network(weights=settings.weights)
        train, validation = run.pipelines()
        stages = [
            # Stage 1: the ImageNet backbone frozen, the new head learns (Adadelta).
            Stage("head", "head", "adadelta", settings.head_learning_rate, settings.head_patience),
            # Stage 2: everything above block 1 learns, SGD with momentum, small steps.
            Stage(
                "fine-tune",
                "above-block1",
                "sgd",
                settings.finetune_learning_rate,
                settings.patience,
                momentum=settings.finetune_momentum,
            ),
        ]
        model = run.fit(model, stages, train, validation)
        run.report(model)


if __name__ == "__main__":
    run_script(main)
