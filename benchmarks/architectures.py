"""From-scratch candidates for 64x64 patches on a CPU: cost and speed, side by side.

For each candidate backbone (built as the training scripts build it, with the
classifier head) this prints the parameters, the multiply-adds per patch counted
from the layers (2 FLOPs each), the FLOPs per pixel of a whole-scene pass at
stride 1 (every layer computed once per input pixel, see cnn_sentinel/scene/reading.py), and
images/s of a training step and of inference, float32 and bfloat16, each in its
own process. The CPU and whether it has native bfloat16 are printed first.
Accuracy needs training: see benchmarks/README.md (## architectures) for the
runs behind each candidate. Record results there with the command.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path
from typing import Final

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cnn_sentinel.settings import parse_settings, run_script  # noqa: E402

# name: (widths of stem, stage 1, stage 2, stage 3) of cnn_sentinel.networks.resnet_valid,
# or the name of another architecture of the training scripts.
CANDIDATES: Final = {
    "resnet-valid": "resnet-valid",
    "resnet-valid-narrow": "resnet-valid-narrow",
    "resnet-valid-wide": (48, 96, 192, 256),
    "vgg16": "vgg16",
}
NAMES = "resnet-valid,resnet-valid-narrow,resnet-valid-wide,vgg16"  # candidates to time
PRECISIONS = "off,bf16"  # mixed-precision modes, as --mixed-precision of the scripts
BATCH_SIZE = 128  # images per training step
STEPS = 8  # timed training steps (after 2 untimed ones)
PREDICT_IMAGES = 1024  # images per timed inference pass
ONE = ""  # internal: time one "name:precision" in this process and print JSON


def build(name: str, band_count: int = 3):
    """The classifier of candidate `name` (random weights, no augmentation)."""
    import keras

    from cnn_sentinel import networks as nf
    from image_functions import default_band_names

    spec = CANDIDATES[name]
    bands = default_band_names(band_count)
    mean, std = [100.0] * band_count, [30.0] * band_count
    if isinstance(spec, str):
        return nf.build_network(spec, bands, 10, mean, std, augment=False)
    inputs = keras.Input((64, 64, band_count))
    x = keras.layers.Normalization(mean=mean, variance=[s * s for s in std])(inputs)
    x = nf.resnet_valid((64, 64, band_count), spec)(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(10, activation="softmax", dtype="float32")(x)
    return keras.Model(inputs, outputs)


def layer_costs(model) -> tuple[float, float]:
    """(FLOPs per patch, FLOPs per pixel of a stride-1 whole-scene pass) of the
    convolutions and dense layers of `model`, nested models included."""
    import keras

    per_patch = per_pixel = 0.0
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            patch, pixel = layer_costs(layer)
            per_patch, per_pixel = per_patch + patch, per_pixel + pixel
        elif isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)):
            kernel = layer.kernel.shape
            flops = 2.0 * math.prod(kernel)
            shape = layer.output.shape
            positions = shape[1] * shape[2] if len(shape) == 4 else 1
            per_patch += flops * positions
            per_pixel += flops
    return per_patch, per_pixel


def time_one(name: str, precision: str, settings) -> dict:
    import keras
    import numpy as np

    from cnn_sentinel.precision import set_mixed_precision

    set_mixed_precision(precision)
    keras.utils.set_random_seed(0)
    model = build(name)
    model.compile(
        optimizer=keras.optimizers.SGD(0.01, momentum=0.9), loss="categorical_crossentropy"
    )
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (settings.batch_size, 64, 64, 3)).astype("float32")
    labels = np.eye(10, dtype="float32")[rng.integers(0, 10, settings.batch_size)]
    for _ in range(2):
        model.train_on_batch(images, labels)
    started = time.perf_counter()
    for _ in range(settings.steps):
        model.train_on_batch(images, labels)
    train = settings.steps * settings.batch_size / (time.perf_counter() - started)
    many = np.resize(images, (settings.predict_images, 64, 64, 3))
    model.predict(many[:256], batch_size=256, verbose=0)
    started = time.perf_counter()
    model.predict(many, batch_size=256, verbose=0)
    predict = settings.predict_images / (time.perf_counter() - started)
    patch, pixel = layer_costs(model)
    return {
        "params": model.count_params(),
        "mflops_patch": patch / 1e6,
        "mflops_pixel": pixel / 1e6,
        "train": train,
        "predict": predict,
    }


def main(argv: list[str] | None = None) -> None:
    settings = parse_settings(__file__, argv)
    if settings.one:
        name, precision = settings.one.split(":")
        print(json.dumps(time_one(name, precision, settings)))
        return
    from cnn_sentinel.precision import cpu_has_amx, cpu_has_bfloat16, cpu_model

    print(
        f"CPU: {cpu_model()}; bfloat16 instructions: {'yes' if cpu_has_bfloat16() else 'no'}, "
        f"AMX: {'yes' if cpu_has_amx() else 'no'}"
    )
    names = [name for name in settings.names.split(",") if name]
    precisions = [precision for precision in settings.precisions.split(",") if precision]
    print(
        f"{'candidate':22} {'params':>9} {'MFLOP/patch':>11} {'MFLOP/pixel':>11} "
        + " ".join(f"{p + ' train':>11} {p + ' infer':>11}" for p in precisions)
    )
    rows = {}
    for name in names:
        results = {}
        for precision in precisions:
            command = [
                sys.executable,
                __file__,
                "--one",
                f"{name}:{precision}",
                "--batch-size",
                str(settings.batch_size),
                "--steps",
                str(settings.steps),
                "--predict-images",
                str(settings.predict_images),
            ]
            output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
            results[precision] = json.loads(output.strip().splitlines()[-1])
        first = results[precisions[0]]
        rows[name] = results
        print(
            f"{name:22} {first['params']:>9,} {first['mflops_patch']:>11.1f} "
            f"{first['mflops_pixel']:>11.2f} "
            + " ".join(
                f"{results[p]['train']:>11.0f} {results[p]['predict']:>11.0f}" for p in precisions
            ),
            flush=True,
        )
    if "vgg16" in rows:
        for name in rows:
            ratio = rows[name][precisions[0]]["predict"] / rows["vgg16"][precisions[0]]["predict"]
            print(f"{name}: inference {ratio:.1f}x VGG16 ({precisions[0]})")


if __name__ == "__main__":
    run_script(main)
