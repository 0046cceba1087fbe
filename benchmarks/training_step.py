"""Training speed of the talk networks at 64x64: images/s, float32 vs bfloat16, side by side.

Builds each classifier exactly as the training scripts do (cnn_sentinel.networks.build_network:
normalisation, augmentation, backbone, talk head), compiles it like a training stage (all
layers trainable, SGD) and times `train_on_batch` on one fixed batch of random 13-band or RGB
pixels after warm-up steps, so only the training step is measured, not the input pipeline.
Each precision runs in its own process (Keras and oneDNN keep state between models).
Record results in benchmarks/README.md (## training_step).
"""

from __future__ import annotations

import collections
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cnn_sentinel.settings import parse_settings, run_script  # noqa: E402

ARCHS = ("vgg16", "densenet201")  # backbones to time
PRECISIONS = ("off", "bf16")  # mixed-precision modes, as --mixed-precision of the scripts
BANDS = 3  # input bands (3: RGB like 02/03, 13: MS like 05)
BATCH_SIZE = 64  # images per training step (the talk's 64)
WARMUP_STEPS = 3  # untimed steps first (tracing, oneDNN kernel selection)
STEPS = 10  # timed steps per configuration
AUGMENTATION = True  # keep the model's training-only augmentation layers in the step
JIT_COMPILE = False  # compile the step with XLA (Keras turns it off on CPU-only machines)
PROFILE = ""  # folder: profile the timed steps (TensorFlow profiler), print ms per op type
ONE = ""  # internal: time one "arch:precision" in this process and print JSON


def time_one(arch: str, precision: str, settings) -> dict:
    """Images/s of one configuration, timed in this process."""
    import keras
    import numpy as np
    import tensorflow as tf

    from cnn_sentinel import networks as nf
    from cnn_sentinel.optimisation import make_optimizer
    from cnn_sentinel.precision import set_mixed_precision
    from image_functions import default_band_names

    policy = set_mixed_precision(precision)
    keras.utils.set_random_seed(0)
    bands = default_band_names(settings.bands)
    model = nf.build_network(
        arch, bands, 10, [1000.0] * len(bands), [300.0] * len(bands), augment=settings.augmentation
    )
    model.compile(
        optimizer=make_optimizer("sgd", 1e-4, 0.9),
        loss="categorical_crossentropy",
        jit_compile=settings.jit_compile,
    )
    rng = np.random.default_rng(0)
    images = tf.constant(rng.uniform(0, 3000, (settings.batch_size, 64, 64, len(bands))), "float32")
    labels = tf.one_hot(rng.integers(0, 10, settings.batch_size), 10)
    for _ in range(settings.warmup_steps):
        model.train_on_batch(images, labels)
    if settings.profile:
        logdir = Path(settings.profile) / f"{arch}-{policy}"
        tf.profiler.experimental.start(str(logdir))
    started = time.perf_counter()
    for _ in range(settings.steps):
        model.train_on_batch(images, labels)
    seconds = time.perf_counter() - started
    if settings.profile:
        tf.profiler.experimental.stop()
        print_op_times(logdir, settings.steps, f"{arch} {policy}")
    return {
        "arch": arch,
        "policy": policy,
        "images_per_second": settings.batch_size * settings.steps / seconds,
        "ms_per_step": 1000.0 * seconds / settings.steps,
    }


def print_op_times(logdir: Path, steps: int, title: str) -> None:
    """Self time per TensorFlow op type (summed over the executor threads) of the
    profile in `logdir`, per step, as a Markdown table."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    space = xplane_pb2.XSpace()
    space.ParseFromString(max(logdir.glob("plugins/profile/*/*.xplane.pb")).read_bytes())
    plane = next(plane for plane in space.planes if plane.name == "/host:CPU")
    by_type, count = collections.Counter(), collections.Counter()
    for line in plane.lines:
        if not line.name.startswith("tf_Compute"):
            continue
        events = sorted(
            (event.offset_ps, event.offset_ps + event.duration_ps, name)
            for event in line.events
            if ":" in (name := plane.event_metadata[event.metadata_id].name) and "::" not in name
        )  # TF ops are named "op_name:OpType"; nested ones are subtracted below
        open_events: list[list] = []
        for start, end, name in events:
            while open_events and open_events[-1][0] <= start:
                open_events.pop()
            if open_events:
                by_type[open_events[-1][1]] -= end - start
            op_type = name.rpartition(":")[2]
            by_type[op_type] += end - start
            count[op_type] += 1
            open_events.append([end, op_type])
    total = sum(by_type.values())
    lines = [
        f"{title}: op time {total / 1e9 / steps:.0f} ms/step",
        "| op type | ms/step | % | ops/step |",
    ]
    lines.append("|---|---:|---:|---:|")
    for op_type, picoseconds in by_type.most_common(15):
        share = 100 * picoseconds / total
        lines.append(
            f"| {op_type} | {picoseconds / 1e9 / steps:.1f} | {share:.1f} "
            f"| {count[op_type] // steps} |"
        )
    print("\n".join(lines), flush=True)


def main(argv: list[str] | None = None) -> None:
    settings = parse_settings(__file__, argv)
    if settings.one:
        arch, precision = settings.one.split(":")
        print(json.dumps(time_one(arch, precision, settings)))
        return
    forwarded = [] if argv is None else list(argv)
    forwarded = forwarded or sys.argv[1:]
    rows = []
    for arch in settings.archs:
        speeds = {}
        for precision in settings.precisions:
            result = subprocess.run(
                [sys.executable, __file__, *forwarded, "--one", f"{arch}:{precision}"],
                capture_output=True,
                text=True,
                check=True,
            )
            *profile, last = result.stdout.strip().splitlines()
            measured = json.loads(last)
            if settings.profile:
                print("\n".join(profile), flush=True)
            speeds[measured["policy"]] = measured["images_per_second"]
            print(
                f"{arch:12s} {measured['policy']:15s} {measured['images_per_second']:8.1f} img/s "
                f"({measured['ms_per_step']:.0f} ms/step)",
                flush=True,
            )
        rows.append((arch, speeds))
    print(f"\nbatch {settings.batch_size}, {settings.bands} bands, {settings.steps} steps")
    print("| arch | float32 img/s | bfloat16 img/s | bfloat16 / float32 |")
    print("|---|---:|---:|---:|")
    for arch, speeds in rows:
        single = speeds.get("float32", float("nan"))
        mixed = speeds.get("mixed_bfloat16", float("nan"))
        print(f"| {arch} | {single:.1f} | {mixed:.1f} | {mixed / single:.2f}x |")


if __name__ == "__main__":
    run_script(main)
