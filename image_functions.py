"""Pixels: the facts about EuroSAT images, reading them, band statistics, the
normalisation and augmentation that training shares, and tf.data pipelines.

The classes, bands and patch size are named here as the talk named them (their home
is cnn_sentinel/facts.py, with the class colours and reserved label values); the talk's
normalisation constants live here. Augmentation has its one home here: the talk's flips
and rotations as a layer inside the model (built on cnn_sentinel.layers, where the layer
classes live), and the 8 symmetries of the square and a random shift in the input
pipeline. Words: a *folder* holds images on disk, a *pipeline* is a tf.data.Dataset of
batches, a *raster* is a file GDAL opened. TensorFlow and Keras are imported inside the
functions that need them, so importing this module is cheap.

About 630 lines: the last 60 are the talk's own helpers (its normalisation functions
and image generator), kept working for code written against the talk; the rest
reads one kind of thing, EuroSAT patches, from file to tf.data batch.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
from osgeo import gdal

from cnn_sentinel.console import progress_bar
from cnn_sentinel.errors import InputError

# The talk's facts (classes, bands, patch size), named here as the talk did; their home
# is cnn_sentinel/facts.py, with the class colours and the reserved label values.
from cnn_sentinel.facts import CLASS_NAMES as CLASS_NAMES
from cnn_sentinel.facts import IMAGE_SIZE as IMAGE_SIZE
from cnn_sentinel.facts import MS_BAND_NAMES as MS_BAND_NAMES
from cnn_sentinel.facts import RGB_BAND_NAMES as RGB_BAND_NAMES
from cnn_sentinel.layers import custom_layers

gdal.UseExceptions()
# A truncated JPEG is an error, not a warning with grey pixels.
gdal.SetConfigOption("GDAL_ERROR_ON_LIBJPEG_WARNING", "TRUE")

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".tif", ".tiff")

# Normalisation constants of the talk models (mean of per-image means and of
# per-image standard deviations; see statistics.py --method talk).
TALK_RGB_MEAN = (87.845, 96.965, 103.947)
TALK_RGB_STD = (23.657, 16.474, 13.793)
TALK_MS_MEAN = (
    1353.036, 1116.468, 1041.475, 945.344, 1198.498, 2004.878, 2376.699,
    2303.738, 732.957, 12.092, 1818.820, 1116.271, 2602.579,
)  # fmt: skip
TALK_MS_STD = (
    65.479, 154.008, 187.997, 278.508, 228.122, 356.598, 456.035,
    531.570, 98.947, 1.188, 378.993, 303.851, 503.181,
)  # fmt: skip

# EuroSAT's RGB JPEGs are L1C digital numbers clipped to this range, scaled to 1..255.
EUROSAT_RGB_CLIP = 2750.0


def default_band_names(band_count: int) -> tuple[str, ...]:
    """Band names of an image with `band_count` bands: 3 -> RGB, 13 -> EuroSAT MS."""
    if band_count == len(RGB_BAND_NAMES):
        return RGB_BAND_NAMES
    if band_count == len(MS_BAND_NAMES):
        return MS_BAND_NAMES
    return tuple(f"band{index + 1}" for index in range(band_count))


def talk_constants(band_count: int) -> tuple[np.ndarray, np.ndarray]:
    """The talk's (mean, std) per band, chosen by band count as the talk did (3 -> RGB)."""
    if band_count == len(RGB_BAND_NAMES):
        return np.array(TALK_RGB_MEAN), np.array(TALK_RGB_STD)
    if band_count == len(MS_BAND_NAMES):
        return np.array(TALK_MS_MEAN), np.array(TALK_MS_STD)
    raise InputError(f"the talk's constants exist for 3 or 13 bands, not {band_count}.")


def select_bands(spec: str | Sequence[str] | None, available: Sequence[str]) -> list[int]:
    """0-based indices of the bands named in `spec` within `available` band names.

    `spec` is None or "all" (every band), "rgb" (B04, B03, B02), or band names
    such as "B04,B03,B02" (a string or a sequence). Order follows `spec`.
    """
    if spec is None or (isinstance(spec, str) and spec.lower() == "all"):
        return list(range(len(available)))
    if isinstance(spec, str):
        names = list(RGB_BAND_NAMES) if spec.lower() == "rgb" else spec.split(",")
    else:
        names = list(spec)
    normalised = [band.strip().upper() for band in available]
    indices = []
    for name in names:
        key = name.strip().upper()
        if key not in normalised:
            raise InputError(
                f"band {name.strip()} is not among the available bands {', '.join(available)}."
            )
        indices.append(normalised.index(key))
    return indices


def eurosat_rgb_from_l1c(bands: np.ndarray) -> np.ndarray:
    """Scale L1C digital numbers the way EuroSAT's RGB JPEGs were made.

    bands: any shape, L1C values; returns uint8 with 0..2750 mapped to 1..255.
    """
    clipped = np.clip(bands.astype(np.float32), 0.0, EUROSAT_RGB_CLIP)
    return np.round(1.0 + clipped * (254.0 / EUROSAT_RGB_CLIP)).astype(np.uint8)


@contextlib.contextmanager
def unreadable_image(path: str | Path) -> Iterator[None]:
    """Turn GDAL's error while opening or reading `path` into an InputError naming it."""
    try:
        yield
    except RuntimeError as error:
        message = str(error).strip().splitlines()[0] if str(error).strip() else "unreadable"
        raise InputError(
            f"image {path} cannot be read (corrupt or truncated?): {message}"
        ) from None


def read_image(path: str | Path, expected_bands: int | None = None) -> np.ndarray:
    """Read a JPEG or GeoTIFF into an array of shape (rows, cols, bands), native dtype.

    Raises InputError naming the file when it is missing, unreadable, truncated
    or has a band count other than `expected_bands`.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"image {path} does not exist.")
    with unreadable_image(path):
        raster = gdal.Open(str(path), gdal.GA_ReadOnly)
        array = raster.ReadAsArray()
        raster = None
    if array is None:
        raise InputError(f"image {path} cannot be read (corrupt or truncated?).")
    array = array[np.newaxis] if array.ndim == 2 else array
    image = np.ascontiguousarray(np.moveaxis(array, 0, -1))
    if expected_bands is not None and image.shape[-1] != expected_bands:
        raise InputError(f"image {path} has {image.shape[-1]} bands, expected {expected_bands}.")
    return image


def image_shape(path: str | Path) -> tuple[int, int, int]:
    """(bands, rows, cols) of an image from its header, without reading pixels."""
    with unreadable_image(path):
        raster = gdal.Open(str(path), gdal.GA_ReadOnly)
        shape = (raster.RasterCount, raster.RasterYSize, raster.RasterXSize)
        raster = None
    return shape


def describe_shape(shape: tuple[int, int, int]) -> str:
    bands, rows, cols = shape
    return f"{bands} band{'s' if bands != 1 else ''} of {rows}x{cols} pixels"


def check_window_size(folder: str | Path, rows: int, cols: int) -> None:
    """InputError when the images of `folder`, rows x cols pixels, are smaller than the
    networks' IMAGE_SIZE x IMAGE_SIZE window (training would fail late, inside Keras)."""
    if rows < IMAGE_SIZE or cols < IMAGE_SIZE:
        raise InputError(
            f"images of {folder} are {rows} x {cols} pixels, "
            f"smaller than the {IMAGE_SIZE} x {IMAGE_SIZE} pixel window every network here "
            f"takes (EuroSAT's patch size); resample or cut them to {IMAGE_SIZE} x {IMAGE_SIZE} "
            f"pixels (e.g. gdal_translate -outsize {IMAGE_SIZE} {IMAGE_SIZE})."
        )


def odd_image_error(shapes: dict[Path, tuple[int, int, int]]) -> InputError | None:
    """The error naming the first image whose (bands, rows, cols) differs from most
    images', or None when all agree; the majority decides, not the sort order."""
    counts: dict[tuple[int, int, int], int] = {}
    for shape in shapes.values():
        counts[shape] = counts.get(shape, 0) + 1
    if len(counts) < 2:
        return None
    usual = max(counts, key=counts.get)
    odd = [path for path, shape in shapes.items() if shape != usual]
    others = f" (and {len(odd) - 1} more)" if len(odd) > 1 else ""
    return InputError(
        f"image {odd[0]}{others} has {describe_shape(shapes[odd[0]])}, but {counts[usual]} other "
        f"image{'s have' if counts[usual] > 1 else ' has'} {describe_shape(usual)}; one folder "
        "must hold one kind of image, so move it elsewhere."
    )


def check_same_kind(paths: Sequence[str | Path]) -> None:
    """InputError naming the odd image when the images differ in bands or size (headers only)."""
    error = odd_image_error({Path(path): image_shape(path) for path in paths})
    if error is not None:
        raise error


def class_folders(folder: str | Path) -> list[str]:
    """Names of the class sub-folders of `folder`, sorted; InputError if none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"folder {folder} does not exist.")
    names = sorted(child.name for child in folder.iterdir() if child.is_dir())
    if not names:
        raise InputError(f"folder {folder} has no class sub-folders.")
    return names


def list_images(folder: str | Path) -> list[Path]:
    """Image files (JPEG, GeoTIFF) directly inside `folder`, sorted by name."""
    return sorted(
        child
        for child in Path(folder).iterdir()
        if child.is_file() and child.suffix.lower() in IMAGE_SUFFIXES
    )


def list_class_images(
    folder: str | Path, class_names: Sequence[str] = CLASS_NAMES
) -> list[tuple[Path, int]]:
    """All (image path, class index) pairs under `folder/<Class>/`, sorted.

    Class indices follow `class_names`; a class folder not in `class_names`
    or a class folder without images is an InputError.
    """
    folder = Path(folder)
    found = class_folders(folder)
    unknown = sorted(set(found) - set(class_names))
    if unknown:
        raise InputError(
            f"folder {folder} has class folders {', '.join(unknown)} that are not among the "
            f"classes {', '.join(class_names)}."
        )
    pairs = []
    for index, name in enumerate(class_names):
        if name not in found:
            continue
        images = list_images(folder / name)
        if not images:
            raise InputError(f"class folder {folder / name} holds no JPEG or GeoTIFF images.")
        pairs.extend((path, index) for path in images)
    return pairs


def band_statistics(
    paths: Iterable[str | Path], method: str = "exact", progress: bool = True
) -> dict:
    """Per-band mean and standard deviation over every pixel of every image.

    Streams in float64 (memory does not grow with the number of images), with a
    per-image shift (Chan et al.'s parallel combination of mean and sum of
    squared deviations) so large values such as uint16 digital numbers lose no
    precision. method "exact": the true global std of all the images; "talk": the mean of
    per-image means and the mean of per-image stds, as the talk computed them.
    Returns {"bands", "mean", "std", "images", "pixels", "method"}.
    """
    if method not in ("exact", "talk"):
        raise InputError(f"method must be 'exact' or 'talk', not {method!r}.")
    paths = list(paths)
    if not paths:
        raise InputError("no images to compute band statistics from.")
    count = 0
    mean = None
    squared_deviations = None
    image_mean_sum = None
    image_std_sum = None
    band_count = None
    for path in progress_bar(paths, desc="band statistics", unit="img", disable=not progress):
        image = read_image(path)
        if band_count is None:
            check_window_size(Path(path).parent, *image.shape[:2])
        elif image.shape[-1] != band_count:
            check_same_kind(paths)
        band_count = image.shape[-1]
        pixels = image.reshape(-1, band_count).astype(np.float64)
        image_mean = pixels.mean(axis=0)
        image_deviations = ((pixels - image_mean) ** 2).sum(axis=0)
        n = pixels.shape[0]
        if mean is None:
            mean, squared_deviations, count = image_mean, image_deviations, n
            image_mean_sum = image_mean.copy()
            image_std_sum = np.sqrt(image_deviations / n)
            continue
        delta = image_mean - mean
        total = count + n
        mean = mean + delta * (n / total)
        squared_deviations = squared_deviations + image_deviations + delta**2 * (count * n / total)
        count = total
        image_mean_sum += image_mean
        image_std_sum += np.sqrt(image_deviations / n)
    if method == "exact":
        result_mean, result_std = mean, np.sqrt(squared_deviations / count)
    else:
        result_mean, result_std = image_mean_sum / len(paths), image_std_sum / len(paths)
    return {
        "bands": list(default_band_names(band_count)),
        "mean": [float(value) for value in result_mean],
        "std": [float(value) for value in result_std],
        "images": len(paths),
        "pixels": int(count),
        "method": method,
    }


def load_band_stats(path: str | Path) -> dict:
    """Read a band_stats.json written by statistics.py; InputError if missing or malformed."""
    path = Path(path)
    try:
        stats = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"band statistics {path} do not exist; run statistics.py first.") from None
    except (OSError, ValueError) as error:
        raise InputError(f"band statistics {path} cannot be read: {error}.") from None
    if not isinstance(stats, dict):
        raise InputError(f"band statistics {path} hold no JSON object; run statistics.py again.")
    check_band_stats(stats, str(path))
    return stats


def check_band_stats(stats: dict, where: str) -> None:
    """InputError unless `stats` has equally long 'bands', 'mean' and 'std' lists of finite
    numbers with every std above zero (a zero std would divide by zero when normalising)."""
    lists = [stats.get(key) for key in ("bands", "mean", "std")]
    if not all(isinstance(values, list) for values in lists) or not (
        len(lists[0]) == len(lists[1]) == len(lists[2])
    ):
        raise InputError(f"band statistics {where} lack matching 'bands', 'mean' and 'std' lists.")
    for key in ("mean", "std"):
        for band, value in zip(stats["bands"], stats[key], strict=True):
            number = (
                value if isinstance(value, (int, float)) and not isinstance(value, bool) else None
            )
            if number is None or not np.isfinite(number):
                raise InputError(
                    f"band statistics {where} give band {band} the {key} {value!r}, not a finite "
                    "number; run statistics.py again on the training folder."
                )
            if key == "std" and number <= 0:
                raise InputError(
                    f"band statistics {where} give band {band} the std {value!r}; it must be above "
                    "zero (a constant band cannot be normalised), so check that band's images."
                )


def normalization_layer(mean: Sequence[float], std: Sequence[float], name: str = "normalization"):
    """Keras layer computing (x - mean) / std per band; saved inside the model."""
    import keras

    mean = np.asarray(mean, dtype=np.float64)
    std = np.asarray(std, dtype=np.float64)
    return keras.layers.Normalization(axis=-1, mean=mean, variance=std**2, name=name)


# talk: flips and +-45 degree rotations inside the training model (the talk's);
# dihedral: the 8 flips and 90-degree rotations of the square in the input pipeline
# (exact, cheap; nadir imagery has no "up"); none.
AUGMENTATIONS = ("talk", "dihedral", "none")


def augmentation_layers(seed: int | None = None, name: str = "augmentation"):
    """The talk's augmentation as one Keras layer, active only in training.

    Random horizontal and vertical flips and a rotation by a uniform angle in
    ±45° with reflect fill and bilinear interpolation (see RandomFlipRotation).
    """
    return custom_layers()["RandomFlipRotation"](max_degrees=45.0, seed=seed, name=name)


def dihedral_augmentation(images, training: bool = True):
    """Each image of a batch (n, rows, cols, bands), rows == cols, under one of the 8
    symmetries of the square (4 rotations by 90 degrees, each with or without a
    flip), drawn independently per image. Exact: no interpolation, no new pixels."""
    import tensorflow as tf

    if not training:
        return images
    rotations = [tf.image.rot90(images, k) for k in range(4)]
    variants = tf.stack(rotations + [tf.reverse(image, axis=[2]) for image in rotations], axis=1)
    choice = tf.random.uniform([tf.shape(images)[0]], 0, 8, dtype=tf.int32)
    return tf.gather(variants, choice, axis=1, batch_dims=1)


def random_shift(images, shift: int):
    """Each image of a batch (n, rows, cols, bands) moved by its own random offset of
    up to `shift` pixels along each axis, the edges filled by reflection (no new
    values, no interpolation). shift must be smaller than rows and cols."""
    import tensorflow as tf

    size = tf.shape(images)[1:3]
    padded = tf.pad(images, [[0, 0], [shift, shift], [shift, shift], [0, 0]], mode="REFLECT")
    offsets = tf.random.uniform([tf.shape(images)[0], 2], 0, 2 * shift + 1, dtype=tf.int32)
    rows = offsets[:, :1] + tf.range(size[0])[tf.newaxis]
    columns = offsets[:, 1:] + tf.range(size[1])[tf.newaxis]
    rows_taken = tf.gather(padded, rows, axis=1, batch_dims=1)
    return tf.gather(rows_taken, columns, axis=2, batch_dims=1)


def pipeline_augmentation(augmentation: str, shift: int):
    """The training batches' augmentation in the input pipeline, or None: the 8
    symmetries of the square for "dihedral", then a random shift of up to `shift`
    pixels (reflected edges) when shift > 0. "talk" augments inside the model."""
    dihedral = augmentation == "dihedral"
    if not dihedral and not shift:
        return None

    def augment(images, training: bool = True):
        images = dihedral_augmentation(images, training) if dihedral else images
        return random_shift(images, shift) if shift and training else images

    return augment


def load_arrays(
    folder: str | Path,
    band_indices: Sequence[int] | None = None,
    class_names: Sequence[str] = CLASS_NAMES,
    progress: bool = True,
) -> tuple[np.ndarray, np.ndarray, list[Path]]:
    """Decode every image under `folder/<Class>/` once.

    Returns images (n, rows, cols, bands) in the files' dtype (bands selected by
    `band_indices`), labels (n,) int32 class indices, and the file paths.
    """
    pairs = list_class_images(folder, class_names)
    first = read_image(pairs[0][0])
    band_count = first.shape[-1]
    indices = list(range(band_count)) if band_indices is None else list(band_indices)
    try:
        return _load_arrays(pairs, first, indices, folder, progress)
    except InputError:
        check_same_kind([path for path, _ in pairs])  # blame the odd image, not the first
        raise


def _load_arrays(pairs, first, indices, folder, progress):
    """load_arrays' decoding loop; `first` is the decoded first image."""
    band_count = first.shape[-1]
    if max(indices) >= band_count:
        raise InputError(
            f"images under {folder} have {band_count} bands; band index {max(indices) + 1} "
            "does not exist."
        )
    images = np.empty((len(pairs), *first.shape[:2], len(indices)), dtype=first.dtype)
    for position, (path, _) in enumerate(
        progress_bar(pairs, desc=f"reading {Path(folder).name}", unit="img", disable=not progress)
    ):
        image = read_image(path, expected_bands=band_count)
        if image.shape[:2] != first.shape[:2]:
            raise InputError(
                f"image {path} is {image.shape[0]}x{image.shape[1]} pixels, expected "
                f"{first.shape[0]}x{first.shape[1]} like the other images."
            )
        images[position] = image[..., indices]
    labels = np.array([label for _, label in pairs], dtype=np.int32)
    return images, labels, [path for path, _ in pairs]


def array_pipeline(
    images: np.ndarray,
    labels: np.ndarray,
    batch_size: int,
    training: bool,
    num_classes: int = len(CLASS_NAMES),
    seed: int = 0,
    augment=None,
):
    """A tf.data pipeline over decoded arrays: (float32 raw pixels, one-hot float32).

    images (n, rows, cols, bands) any numeric dtype, labels (n,) int. Training:
    reshuffled every epoch (real epochs, no repeat); `augment`, a Keras layer such
    as `augmentation_layers()` or a `pipeline_augmentation`, is applied per batch in
    the pipeline when given (models built here carry the talk's augmentation
    themselves). Batches are prefetched. The arrays stay in their compact dtype in
    memory and are cast per batch.
    """
    import tensorflow as tf

    pairs = tf.data.Dataset.from_tensor_slices((images, labels.astype(np.int32)))
    return _training_batches(pairs, len(labels), batch_size, training, num_classes, seed, augment)


def _training_batches(pairs, count, batch_size, training, num_classes, seed, augment, read=None):
    """(image, label) pairs -> shuffled (training), read by `read` (when given), batched,
    cast to float32, augmented (when given), one-hot labels, prefetched."""
    import tensorflow as tf

    if training:
        pairs = pairs.shuffle(count, seed=seed, reshuffle_each_iteration=True)
    if read is not None:
        pairs = pairs.map(read, num_parallel_calls=tf.data.AUTOTUNE)

    def to_training_pair(batch_images, batch_labels):
        batch_images = tf.cast(batch_images, tf.float32)
        if augment is not None:
            batch_images = augment(batch_images, training=True)
        return batch_images, tf.one_hot(batch_labels, num_classes)

    batches = pairs.batch(batch_size).map(to_training_pair, num_parallel_calls=tf.data.AUTOTUNE)
    return batches.prefetch(tf.data.AUTOTUNE)


def fits_in_memory(byte_count: int, fraction: float = 0.4) -> bool:
    """Whether `byte_count` bytes fit in `fraction` of this machine's physical memory."""
    physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return byte_count <= fraction * physical


def folder_pipeline(
    folder: str | Path,
    batch_size: int,
    training: bool,
    band_indices: Sequence[int] | None = None,
    class_names: Sequence[str] = CLASS_NAMES,
    seed: int = 0,
    augment=None,
    progress: bool = True,
):
    """A tf.data pipeline over a split folder such as `split/train`.

    Decodes every image once into memory when the decoded set fits in 40 % of
    the machine's memory (the whole of EuroSAT MS is 2.9 GB); otherwise streams
    the files, reading each with GDAL in the pipeline. Returns (pipeline, labels)
    where labels (n,) int32 are in the pipeline's order when not training.
    """
    import tensorflow as tf

    pairs = list_class_images(folder, class_names)
    first = read_image(pairs[0][0])
    indices = list(range(first.shape[-1])) if band_indices is None else list(band_indices)
    decoded_bytes = len(pairs) * first.shape[0] * first.shape[1] * len(indices) * first.itemsize
    if fits_in_memory(decoded_bytes):
        images, labels, _ = load_arrays(folder, indices, class_names, progress)
        pipeline = array_pipeline(
            images, labels, batch_size, training, len(class_names), seed, augment
        )
        return pipeline, labels
    paths = np.array([str(path) for path, _ in pairs])
    labels = np.array([label for _, label in pairs], dtype=np.int32)
    band_count = first.shape[-1]
    shape = (*first.shape[:2], len(indices))

    def read(path: bytes) -> np.ndarray:
        image = read_image(path.decode(), expected_bands=band_count)
        return image[..., indices].astype(np.float32)

    def read_pair(path, label):
        image = tf.numpy_function(read, [path], tf.float32)
        return tf.ensure_shape(image, shape), label

    pipeline = _training_batches(
        tf.data.Dataset.from_tensor_slices((paths, labels)),
        len(labels),
        batch_size,
        training,
        len(class_names),
        seed,
        augment,
        read=read_pair,
    )
    return pipeline, labels


# ---------------------------------------------------------------------------
# The talk's helpers, kept working for code written against them.
# ---------------------------------------------------------------------------


def preprocessing_image_rgb(x: np.ndarray) -> np.ndarray:
    """Talk normalisation of RGB pixels (..., 3) with the talk's constants; float64."""
    mean, std = talk_constants(3)
    return (np.asarray(x, dtype=np.float64) - mean) / std


def preprocessing_image_ms(x: np.ndarray) -> np.ndarray:
    """Talk normalisation of 13-band pixels (..., 13) with the talk's constants; float64."""
    mean, std = talk_constants(13)
    return (np.asarray(x, dtype=np.float64) - mean) / std


def simple_image_generator(
    files: Sequence[str | Path],
    class_indices: dict[str, int],
    batch_size: int = 32,
    rotation_range: float = 0,
    horizontal_flip: bool = False,
    vertical_flip: bool = False,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The talk's training generator: endless batches of randomly drawn files.

    Each image is read from disk, normalised with the talk's constants, flipped
    at random up/down and left/right, rotated by a uniform angle in
    ±rotation_range degrees (bilinear, reflect). The label is the file-name
    prefix before the first underscore. Yields (batch (b, rows, cols, bands)
    float64, one-hot (b, classes) float64).
    """
    from skimage.transform import rotate

    files = list(files)
    while True:
        batch_x = []
        batch_y = np.zeros((batch_size, len(class_indices)))
        # Each batch is drawn without replacement; batches are independent draws.
        for position, path in enumerate(random.sample(files, k=batch_size)):
            image = read_image(path)
            image = (
                preprocessing_image_rgb(image)
                if image.shape[-1] == 3
                else preprocessing_image_ms(image)
            )
            if horizontal_flip and random.random() < 0.5:
                image = np.flip(image, axis=1)
            if vertical_flip and random.random() < 0.5:
                image = np.flip(image, axis=0)
            if rotation_range != 0:
                angle = random.uniform(-rotation_range, rotation_range)
                image = rotate(image, angle, mode="reflect", order=1, preserve_range=True)
            batch_x.append(image)
            batch_y[position, class_indices[Path(path).name.split("_")[0]]] = 1
        yield np.stack(batch_x), batch_y
