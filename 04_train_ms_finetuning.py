"""Fine-tune an ImageNet network on the 13 EuroSAT multispectral bands.

Two ways to feed 13 bands to a 3-band ImageNet backbone (VARIANT): "adapter"
puts a trainable 1x1 convolution (13 -> 3 bands) in front of the backbone;
"first-conv" (the talk's "alternative") gives the backbone a 13-band first
convolution whose B04, B03, B02 kernels come from ImageNet, with every other
ImageNet weight copied. Stage 1 trains adapter or first convolution and head
(Adam); stage 2 unfreezes everything above block 1 (SGD, small learning rate).
WEIGHTS may also name a model.keras of 02-05 (the shipped
models/eurosat-rgb-resnet-valid-narrow/model.keras): the 13-band network then starts
from that model, its B04, B03, B02 kernels taken from the model's R, G, B ones.
Writes runs/<run name>/ with model.keras (takes raw digital numbers),
model.json, history.csv, TensorBoard logs/ and report/. `--evaluate-only MODEL`
writes the report of a saved model instead.
"""

from cnn_sentinel.datasets import inspect_split
from cnn_sentinel.networks import is_project_model, project_model_info
from cnn_sentinel.optimisation import Stage
from cnn_sentinel.recipes import evaluate_only, parse_training_settings
from cnn_sentinel.settings import run_script
from cnn_sentinel.training import training_run

DATA = "split"  # split folder from 01, with train/ and validation/ (test/ optional)
VARIANT = "first-conv"  # adapter (1x1 conv 13 -> 3) or first-conv (13-band first convolution)
ARCH = "vgg16"  # backbone: vgg16 or densenet201 (tiny: small test/demo network)
BANDS = "all"  # bands to train on: all, or names such as B02,B03,B04,B08
WEIGHTS = "imagenet"  # imagenet (Keras download), a backbone weights file, or a 02-05 model.keras
BATCH_SIZE = 64  # images per training step (the talk's 64)
EPOCHS = 100  # most epochs per stage; early stopping usually ends a stage sooner
STEPS_PER_EPOCH = 0  # batches per epoch; 0 = one real pass over train/ (the talk used 1000)
HEAD_LEARNING_RATE = 0.001  # stage 1 Adam learning rate
HEAD_PATIENCE = 10  # stage 1 stops after this many epochs without better validation accuracy
FINETUNE_LEARNING_RATE = 1e-4  # stage 2 SGD learning rate
FINETUNE_MOMENTUM = 0.9  # stage 2 SGD momentum
PATIENCE = 50  # stage 2 stops after this many epochs without better validation accuracy
OUTPUT = "runs"  # folder that receives the run folder
RUN_NAME = ""  # run folder name; empty: ms-finetuning-<variant>-<arch>; the same name resumes
MIXED_PRECISION = "auto"  # auto, off, bf16 or fp16 (auto: bfloat16 on AMX CPUs, GPUs >= sm80)
SEED = 0  # seed of weights, shuffling and augmentation
OVERWRITE = False  # replace existing outputs: train a finished run of the same name again


def main(argv: list[str] | None = None) -> None:
    settings = parse_training_settings(__file__, argv)
    if settings.evaluate_only:  # the report of a saved model instead of training
        evaluate_only(settings)
        return
    split = inspect_split(settings.data, settings.bands, progress=settings.progress)
    if is_project_model(settings.weights):
        # Transfer from a trained model of this project (e.g. models/eurosat-rgb-*):
        # its architecture, its kernels for the bands it knows (first-conv variant).
        settings.arch = project_model_info(settings.weights).arch
        settings.variant = "first-conv"
    # Run folder, resume, strategy, precision and seed: the recipe runs inside.
    with training_run(settings, split, recipe="ms-finetuning", variant=settings.variant) as run:
        # Raw digital numbers -> normalisation -> the talk's augmentation (training
        # only) -> 13 bands into the ImageNet backbone (VARIANT) -> new head; from a
        # model.keras of 02-05: that network, its kernels for the bands it knows.
        model = run.network(weights=settings.weights, variant=settings.variant)
        train, validation = run.pipelines()
        stages = [
            # Stage 1: the ImageNet backbone frozen; adapter or first convolution
            # and the new head learn (Adam).
            Stage("head", "head", "adam", settings.head_learning_rate, settings.head_patience),
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
