"""Recipe sweep of the fast recipe's network on the real EuroSAT RGB split, for a GPU:
each variant (VARIANTS) trains in its own process with Keras 3 on the JAX backend, all at
once on one GPU, and prints its validation accuracy on the whole validation/ part.

It uses the project's own pieces (resnet_valid, normalization_layer, the SGD Nesterov +
warm-up/cosine settings of 03), the same train/ and validation/ images, and an augmentation
layer in keras.ops equal to 03's pipeline_augmentation (dihedral, then a shift with
reflected edges). So the numbers compare with 03 on a CPU; they are what chose 03's
defaults (benchmarks/README.md, "fast recipe sweep").

  pack SPLIT FOLDER        JPEGs of SPLIT/{train,validation} into FOLDER/d1, FOLDER/d2
                           (two halves of about 42 MB: each fits one device call)
  all OUT [VARIANT...]     decode the packed images, train every variant, JSON lines to OUT
  run OUT VARIANT...       one process's variants (started by all)
  smoke OUT                2 epochs on random images (does Keras run on this machine?)

The GPU machine has no GDAL: its `osgeo` is replaced by a stand-in, which the network code
never calls. JPEG decoding there is Pillow's; the per-band means equal band_stats.json's.
"""

import io
import json
import os
import subprocess
import sys
import time
import unittest.mock
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
try:
    import osgeo  # noqa: F401
except ImportError:  # the GPU machine has no GDAL; the network code does not need it
    sys.modules["osgeo"] = unittest.mock.MagicMock()

DATA = Path("/tmp/eurosat_rgb.npz")
PACKED = REPO / ".gpu"
BASE = dict(
    epochs=40,
    batch=128,
    lr=0.1,
    wd=5e-4,
    ls=0.1,
    translate=0,
    ema=0.0,
    widths=(32, 64, 128, 256),
    seed=0,
    warmup=2,
    mixup=0.0,
)
VARIANTS = {
    "base40": {},
    "base40s1": dict(seed=1),
    "base60": dict(epochs=60),
    "tr4e40": dict(translate=4),
    "tr4e60": dict(translate=4, epochs=60),
    "ema40": dict(ema=0.999),
    "wide40": dict(widths=(40, 80, 160, 320)),
    "bs64e40": dict(batch=64, lr=0.05),
    "tr4e80": dict(translate=4, epochs=80),
    "tr4bs64e40": dict(translate=4, batch=64, lr=0.05),
    "tr4e60s1": dict(translate=4, epochs=60, seed=1),
    "tr4e60s2": dict(translate=4, epochs=60, seed=2),
    "tr8e60": dict(translate=8, epochs=60),
    "tr4bs64e60": dict(translate=4, batch=64, lr=0.05, epochs=60),
    "tr4bs64e50": dict(translate=4, batch=64, lr=0.05, epochs=50),
    "tr4e50": dict(translate=4, epochs=50),
    "tr4ls0e60": dict(translate=4, epochs=60, ls=0.0),
    "narrowtr4e80": dict(translate=4, epochs=80, widths=(24, 48, 96, 192)),
    "narrowtr4e100": dict(translate=4, epochs=100, widths=(24, 48, 96, 192)),
    "tr4wd1e3e60": dict(translate=4, epochs=60, wd=1e-3),
    "tr4wd1e3e60s1": dict(translate=4, epochs=60, wd=1e-3, seed=1),
    "tr4wd1e3e60s2": dict(translate=4, epochs=60, wd=1e-3, seed=2),
    "narrowtr4e100s1": dict(translate=4, epochs=100, widths=(24, 48, 96, 192), seed=1),
    "narrowtr4e100s2": dict(translate=4, epochs=100, widths=(24, 48, 96, 192), seed=2),
    "narrowtr4wd1e3e100": dict(translate=4, epochs=100, widths=(24, 48, 96, 192), wd=1e-3),
}


def pack(split: Path, folder: Path):
    """Concatenate the JPEG files of split/{train,validation} into two halves with an index
    of (part, class, half, offset, length)."""
    entries = [
        (part, image.parent.name, image)
        for part in ("train", "validation")
        for image in sorted((split / part).glob("*/*.jpg"))
    ]
    half = sum(image.stat().st_size for *_, image in entries) / 2
    outputs = []
    for k in (1, 2):
        (folder / f"d{k}").mkdir(parents=True, exist_ok=True)
        outputs.append(open(folder / f"d{k}" / "part.bin", "wb"))
    index, positions, written = [], [0, 0], 0
    for part, class_name, image in entries:
        data = image.read_bytes()
        k = 0 if written < half else 1
        outputs[k].write(data)
        index.append([part, class_name, k, positions[k], len(data)])
        positions[k] += len(data)
        written += len(data)
    for output in outputs:
        output.close()
    (folder / "d2" / "index.json").write_text(json.dumps(index))
    print(f"{len(index)} images, halves of {positions[0]:,} and {positions[1]:,} bytes")


def decode():
    from PIL import Image

    index = json.loads((PACKED / "d2" / "index.json").read_text())
    parts = []
    for k in (1, 2):  # a half copied to /tmp by an earlier call, or carried in this one
        local = PACKED / f"d{k}" / "part.bin"
        parts.append((local if local.exists() else Path(f"/tmp/d{k}/part.bin")).read_bytes())
    classes = sorted({cls for _, cls, *_ in index})
    arrays = {"train": ([], []), "validation": ([], [])}
    for split, cls, k, offset, length in index:
        image = Image.open(io.BytesIO(parts[k][offset : offset + length])).convert("RGB")
        arrays[split][0].append(np.asarray(image, np.uint8))
        arrays[split][1].append(classes.index(cls))
    np.savez(
        DATA,
        xt=np.stack(arrays["train"][0]),
        yt=np.array(arrays["train"][1]),
        xv=np.stack(arrays["validation"][0]),
        yv=np.array(arrays["validation"][1]),
    )
    print("decoded", {s: len(a[0]) for s, a in arrays.items()}, flush=True)


def augment_layer(translate, seed):
    import keras
    from keras import ops

    class Augment(keras.layers.Layer):
        def __init__(self):
            super().__init__(name="augment")
            self.generator = keras.random.SeedGenerator(seed)

        def call(self, x, training=None):
            if not training:
                return x
            n = ops.shape(x)[0]
            turns = [x]
            for _ in range(3):
                turns.append(ops.flip(ops.transpose(turns[-1], (0, 2, 1, 3)), axis=1))
            variants = ops.stack(turns + [ops.flip(t, axis=2) for t in turns], axis=1)
            choice = keras.random.randint((n,), 0, 8, seed=self.generator)
            weights = ops.reshape(ops.one_hot(choice, 8, dtype=x.dtype), (-1, 8, 1, 1, 1))
            x = ops.sum(variants * weights, axis=1)
            if translate:
                size = x.shape[1]
                t = translate
                padded = ops.pad(x, ((0, 0), (t, t), (t, t), (0, 0)), mode="reflect")
                dy = keras.random.randint((n, 1), 0, 2 * t + 1, seed=self.generator)
                dx = keras.random.randint((n, 1), 0, 2 * t + 1, seed=self.generator)
                rows = dy + ops.arange(size)[None, :]
                cols = dx + ops.arange(size)[None, :]
                channels = x.shape[3]
                rows = ops.broadcast_to(rows[:, :, None, None], (n, size, size + 2 * t, channels))
                padded = ops.take_along_axis(padded, rows, axis=1)
                cols = ops.broadcast_to(cols[:, None, :, None], (n, size, size, channels))
                x = ops.take_along_axis(padded, cols, axis=2)
            return x

    return Augment()


def train(out_file, name, data=None):
    import keras

    from cnn_sentinel.networks import resnet_valid
    from image_functions import normalization_layer

    v = dict(BASE, **VARIANTS.get(name, {}))
    keras.utils.set_random_seed(v["seed"])
    if data is None:
        data = np.load(DATA)
    xt, yt, xv, yv = data["xt"], data["yt"], data["xv"], data["yv"]
    mean = xt.reshape(-1, 3).mean(0)
    std = xt.reshape(-1, 3).std(0)
    inputs = keras.Input((64, 64, 3))
    x = normalization_layer(mean, std)(inputs)
    x = augment_layer(v["translate"], v["seed"])(x)
    x = resnet_valid((64, 64, 3), v["widths"])(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(10, activation="softmax")(x)
    model = keras.Model(inputs, outputs)
    steps = int(np.ceil(len(xt) / v["batch"]))
    warmup = v["warmup"] * steps
    schedule = keras.optimizers.schedules.CosineDecay(
        v["lr"] / 10,
        max(v["epochs"] * steps - warmup, 1),
        warmup_target=v["lr"],
        warmup_steps=warmup,
    )
    optimizer = keras.optimizers.SGD(
        schedule,
        momentum=0.9,
        nesterov=True,
        weight_decay=v["wd"],
        use_ema=v["ema"] > 0,
        ema_momentum=v["ema"] or 0.99,
    )
    model.compile(
        optimizer,
        keras.losses.CategoricalCrossentropy(label_smoothing=v["ls"]),
        metrics=["categorical_accuracy"],
    )
    deadline = float(os.environ.get("SWEEP_DEADLINE", "1e18"))
    start = time.time()

    class Log(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            record = dict(name=name, epoch=epoch + 1, seconds=round(time.time() - start, 1))
            record.update({k: round(float(val), 5) for k, val in (logs or {}).items()})
            with open(out_file, "a") as f:
                f.write(json.dumps(record) + "\n")
            if time.time() > deadline:
                self.model.stop_training = True

    model.fit(
        xt.astype("float32"),
        keras.utils.to_categorical(yt, 10),
        batch_size=v["batch"],
        epochs=v["epochs"],
        shuffle=True,
        verbose=0,
        callbacks=[Log()],
        validation_data=(xv.astype("float32"), keras.utils.to_categorical(yv, 10)),
        validation_batch_size=500,
    )
    probabilities = model.predict(xv.astype("float32"), batch_size=500, verbose=0)
    predicted = probabilities.argmax(1)
    recalls = [float((predicted[yv == c] == c).mean()) for c in range(10)]
    final = dict(
        name=name,
        final=True,
        val_acc=float((predicted == yv).mean()),
        min_recall=min(recalls),
        recalls=[round(r, 4) for r in recalls],
        seconds=round(time.time() - start, 1),
        backend=keras.backend.backend(),
        variant={k: list(val) if isinstance(val, tuple) else val for k, val in v.items()},
    )
    with open(out_file, "a") as f:
        f.write(json.dumps(final) + "\n")
    print(json.dumps(final), flush=True)


def smoke(out_file):
    rng = np.random.default_rng(0)
    data = dict(
        xt=rng.integers(0, 255, (256, 64, 64, 3), dtype=np.uint8),
        yt=rng.integers(0, 10, 256),
        xv=rng.integers(0, 255, (100, 64, 64, 3), dtype=np.uint8),
        yv=rng.integers(0, 10, 100),
    )
    VARIANTS["smoke"] = dict(epochs=2, translate=4, ema=0.999)
    train(out_file, "smoke", data)


def main():
    mode, out_file = sys.argv[1], sys.argv[2]
    if mode == "pack":
        pack(Path(sys.argv[2]), Path(sys.argv[3]))
    elif mode == "smoke":
        smoke(out_file)
    elif mode == "run":
        for name in sys.argv[3:]:
            train(out_file, name)
    elif mode == "all":
        if not DATA.exists():
            decode()
        names = sys.argv[3:] or list(VARIANTS)
        children = [
            subprocess.Popen([sys.executable, __file__, "run", out_file, name]) for name in names
        ]
        for child in children:
            child.wait()


if __name__ == "__main__":
    main()
