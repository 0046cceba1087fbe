"""Input-pipeline benchmark: training batches per second, ours vs the talk's generator.

Three feeds of 13-band 64x64 training batches, timed side by side in one run:

- talk: `image_functions.simple_image_generator`, the talk's generator
  re-implemented faithfully: random file sampling, every image read from disk
  with each batch, normalised, random up/down and left/right flips, rotated by
  a uniform angle in ±45° with scikit-image (bilinear, reflect), one image at a
  time in Python.
- ours: `image_functions.array_pipeline` over arrays decoded once
  (`load_arrays`), shuffled per epoch, batched, with the same augmentation as
  the Keras layer the models carry (`augmentation_layers`: flips folded into
  the ±45° reflect rotation, one ImageProjectiveTransformV3 per batch) run per
  batch inside tf.data, prefetched.
- raw: the same cached tf.data feed without augmentation (cast and one-hot
  only), the ceiling of what the pipeline can deliver.
- keras stock: the same feed with Keras' RandomFlip + RandomRotation layers
  (three passes per batch), what `augmentation_layers` used before.
- fast: the same feed with 03/05's default augmentation in the pipeline
  (`image_functions.pipeline_augmentation("dihedral", 4)`: one of the 8
  symmetries of the square, then a shift of up to 4 pixels with reflected edges).

The feeds take turns (ROUNDS rounds of SECONDS / ROUNDS each), so a change in
the machine's load during the run hits all of them alike.

Images come from the real EuroSAT MS samples (`../shared/data/eurosat/ms`
beside the checkout or `$EUROSAT_SAMPLES/eurosat/ms`) when present, else from
demo_data's generated 13-band GeoTIFFs. Prints images/s of each and the ratios.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Final

REPO_ROOT: Final = Path(__file__).resolve().parent.parent

DATA = None  # folder of class folders of 13-band GeoTIFFs; None: real MS samples, else demo data
BATCH_SIZE = 64  # images per batch, as in the talk
SECONDS = 6.0  # measuring time per feed, after warm-up
ROUNDS = 3  # the feeds take turns this many times
WARMUP_BATCHES = 3  # batches drawn before the clock starts (tracing, first reads)
SEED = 0  # seed of shuffling and augmentation


FEED_LABELS: Final = {
    "talk": "talk generator (disk read + skimage per image)",
    "ours": "ours: cached tf.data + augmentation_layers()",
    "raw": "raw cached feed (no augmentation)",
    "stock": "cached tf.data + Keras RandomFlip/RandomRotation",
    "fast": "cached tf.data + 03/05's dihedral + 4-pixel shift",
}


def find_ms_samples() -> Path | None:
    """The real EuroSAT MS sample folder, or None when it is not beside the checkout."""
    candidates = []
    if os.environ.get("EUROSAT_SAMPLES"):
        given = Path(os.environ["EUROSAT_SAMPLES"])
        candidates += [given / "eurosat" / "ms", given / "ms"]
    candidates.append(REPO_ROOT.parent / "shared" / "data" / "eurosat" / "ms")
    return next((folder for folder in candidates if folder.is_dir()), None)


def draw_for(batches: Iterator, seconds: float) -> tuple[int, float]:
    """Draw batches for about `seconds`; returns (images drawn, seconds taken)."""
    images = 0
    start = time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        batch_images, _labels = next(batches)
        images += int(batch_images.shape[0])
    return images, elapsed


def keras_stock_augmentation(seed: int):
    """The same augmentation from Keras' stock layers: three passes over each batch."""
    import keras

    return keras.Sequential(
        [
            keras.layers.RandomFlip("horizontal_and_vertical", seed=seed),
            keras.layers.RandomRotation(
                factor=45.0 / 360.0, fill_mode="reflect", interpolation="bilinear", seed=seed
            ),
        ]
    )


def talk_feed(folder: Path, batch_size: int) -> Iterator:
    """The talk's generator over every file of `folder`, with the talk's augmentation."""
    from image_functions import CLASS_NAMES, list_class_images, simple_image_generator

    files = [str(path) for path, _label in list_class_images(folder)]
    class_indices = {name: index for index, name in enumerate(CLASS_NAMES)}
    return simple_image_generator(
        files,
        class_indices,
        batch_size=batch_size,
        rotation_range=45,
        horizontal_flip=True,
        vertical_flip=True,
    )


def our_feed(images, labels, batch_size: int, augment, seed: int) -> Iterator:
    """Our cached tf.data feed, endless (epochs repeated); `augment` None, "layers"
    (image_functions.augmentation_layers) or a callable(images, training)."""
    from image_functions import array_pipeline, augmentation_layers

    if augment == "layers":
        augment = augmentation_layers(seed=seed)
    dataset = array_pipeline(images, labels, batch_size, training=True, seed=seed, augment=augment)
    return iter(dataset.repeat())


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Run the three feeds, print images/s and ratios; returns {feed: images/s}."""
    from cnn_sentinel.settings import parse_settings
    from image_functions import load_arrays, pipeline_augmentation

    settings = parse_settings(__file__, argv)
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(settings.data) if settings.data else find_ms_samples()
        origin = "real EuroSAT MS samples"
        if folder is None:
            import demo_data

            folder = demo_data.write_demo_dataset(
                Path(scratch) / "ms", kind="ms", images_per_class=40, seed=settings.seed
            )
            origin = "generated demo data (real samples not found)"
        elif settings.data:
            origin = "given data"
        images, labels, _paths = load_arrays(folder, progress=False)
        print(
            f"{len(labels)} images {images.shape[1:]} {images.dtype} from {folder} ({origin}); "
            f"batch {settings.batch_size}, {settings.seconds:g} s per feed, {os.cpu_count()} CPUs"
        )
        feeds: dict[str, Iterator] = {
            "talk": talk_feed(folder, settings.batch_size),
            "ours": our_feed(images, labels, settings.batch_size, "layers", settings.seed),
            "raw": our_feed(images, labels, settings.batch_size, None, settings.seed),
            "stock": our_feed(
                images,
                labels,
                settings.batch_size,
                keras_stock_augmentation(settings.seed),
                settings.seed,
            ),
            "fast": our_feed(
                images,
                labels,
                settings.batch_size,
                pipeline_augmentation("dihedral", 4),
                settings.seed,
            ),
        }
        drawn = dict.fromkeys(feeds, 0)
        taken = dict.fromkeys(feeds, 0.0)
        for batches in feeds.values():
            for _ in range(settings.warmup_batches):
                next(batches)
        for _ in range(settings.rounds):
            for name, batches in feeds.items():
                images_drawn, seconds = draw_for(batches, settings.seconds / settings.rounds)
                drawn[name] += images_drawn
                taken[name] += seconds
    rates = {name: drawn[name] / taken[name] for name in feeds}
    for name, label in FEED_LABELS.items():
        print(f"{label:<50} {rates[name]:>10,.0f} images/s  ({drawn[name]} images)")
    print(
        f"ours / talk: {rates['ours'] / rates['talk']:.1f}x (target >= 3x); "
        f"Keras stock layers / talk: {rates['stock'] / rates['talk']:.1f}x; "
        f"raw feed {rates['raw']:,.0f} images/s (target >= 20,000); "
        f"fast recipe's augmentation / raw: {rates['fast'] / rates['raw']:.2f}x"
    )
    return rates


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.path.insert(0, str(REPO_ROOT))
    main()
