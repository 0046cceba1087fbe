"""Tests of image_functions: the class/band table, readers, statistics, layers, datasets."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

import image_functions as imf
from cnn_sentinel.errors import InputError

REPO_ROOT = Path(__file__).resolve().parent.parent


def test_tables_match_eurosat():
    assert imf.CLASS_NAMES == tuple(sorted(imf.CLASS_NAMES))
    assert len(imf.CLASS_NAMES) == 10
    assert imf.MS_BAND_NAMES[-1] == "B8A" and imf.MS_BAND_NAMES[8:10] == ("B09", "B10")
    assert imf.select_bands("rgb", imf.MS_BAND_NAMES) == [3, 2, 1]
    assert imf.select_bands("B08, b8a", imf.MS_BAND_NAMES) == [7, 12]
    assert imf.select_bands(None, imf.RGB_BAND_NAMES) == [0, 1, 2]
    with pytest.raises(InputError, match="B99 is not among"):
        imf.select_bands("B04,B99", imf.MS_BAND_NAMES)
    mean, std = imf.talk_constants(13)
    assert mean[9] == pytest.approx(12.092) and std.shape == (13,)
    with pytest.raises(InputError):
        imf.talk_constants(4)


def test_eurosat_rgb_scaling():
    values = np.array([-5, 0, 1375, 2750, 9000])
    assert imf.eurosat_rgb_from_l1c(values).tolist() == [1, 1, 128, 255, 255]


def test_read_real_images(sample_rgb_dataset, sample_ms_dataset):
    rgb = imf.read_image(imf.list_images(sample_rgb_dataset / "Forest")[0])
    ms = imf.read_image(imf.list_images(sample_ms_dataset / "SeaLake")[0], expected_bands=13)
    assert rgb.shape == (64, 64, 3) and rgb.dtype == np.uint8
    assert ms.shape == (64, 64, 13) and ms.dtype == np.uint16
    # Water is dark in the near infrared (B08) compared with the blue band (B02).
    assert ms[..., 7].mean() < ms[..., 1].mean() * 1.5


def test_read_errors_name_the_file(tmp_path, sample_ms_dataset, sample_rgb_dataset):
    tif = imf.list_images(sample_ms_dataset / "Forest")[0]
    jpg = imf.list_images(sample_rgb_dataset / "Forest")[0]
    truncated_tif = tmp_path / "truncated.tif"
    truncated_tif.write_bytes(tif.read_bytes()[: tif.stat().st_size // 2])
    truncated_jpg = tmp_path / "truncated.jpg"
    truncated_jpg.write_bytes(jpg.read_bytes()[: jpg.stat().st_size // 2])
    garbage = tmp_path / "garbage.tif"
    garbage.write_bytes(b"not an image at all")
    for bad in (truncated_tif, truncated_jpg, garbage):
        with pytest.raises(InputError, match=str(bad.name)):
            imf.read_image(bad)
    with pytest.raises(InputError, match="does not exist"):
        imf.read_image(tmp_path / "missing.tif")
    with pytest.raises(InputError, match="has 13 bands, expected 3"):
        imf.read_image(tif, expected_bands=3)


def test_list_class_images_errors(tmp_path, sample_rgb_dataset):
    with pytest.raises(InputError, match="does not exist"):
        imf.list_class_images(tmp_path / "nothing")
    (tmp_path / "Forest").mkdir()
    with pytest.raises(InputError, match="holds no JPEG or GeoTIFF"):
        imf.list_class_images(tmp_path)
    (tmp_path / "Glacier").mkdir()
    with pytest.raises(InputError, match="Glacier"):
        imf.list_class_images(tmp_path)
    pairs = imf.list_class_images(sample_rgb_dataset)
    assert [label for _, label in pairs] == sorted(label for _, label in pairs)
    assert {label for _, label in pairs} == set(range(10))


@pytest.mark.parametrize("method", ["exact", "talk"])
def test_band_statistics_match_numpy(sample_ms_dataset, method):
    paths = [path for path, _ in imf.list_class_images(sample_ms_dataset)]
    stats = imf.band_statistics(paths, method=method, progress=False)
    images = np.stack([imf.read_image(path) for path in paths]).astype(np.float64)
    if method == "exact":
        mean = images.mean(axis=(0, 1, 2))
        std = images.std(axis=(0, 1, 2))
    else:
        mean = images.mean(axis=(1, 2)).mean(axis=0)
        std = images.std(axis=(1, 2)).mean(axis=0)
    np.testing.assert_allclose(stats["mean"], mean, rtol=1e-9)
    np.testing.assert_allclose(stats["std"], std, rtol=1e-9)
    assert stats["images"] == len(paths) and stats["pixels"] == len(paths) * 64 * 64
    assert stats["bands"] == list(imf.MS_BAND_NAMES)


@pytest.mark.parametrize("odd_first", [True, False])
def test_a_mixed_folder_blames_the_odd_image_whichever_sorts_first(
    sample_ms_dataset, sample_rgb_dataset, tmp_path, odd_first
):
    """A 3-band JPEG among 13-band GeoTIFFs: statistics and training name the JPEG."""
    folder = tmp_path / "mixed"
    (folder / "Forest").mkdir(parents=True)
    for path in imf.list_images(sample_ms_dataset / "Forest")[:3]:
        (folder / "Forest" / f"m_{path.name}").symlink_to(path)
    odd = folder / "Forest" / ("a_odd.jpg" if odd_first else "z_odd.jpg")
    odd.symlink_to(imf.list_images(sample_rgb_dataset / "Forest")[0])
    paths = [path for path, _ in imf.list_class_images(folder)]
    assert (paths[0] == odd) is odd_first
    expected = (
        rf"^image {re.escape(str(odd))} has 3 bands of 64x64 pixels, but 3 other images have 13"
    )
    with pytest.raises(InputError, match=expected):
        imf.band_statistics(paths, progress=False)
    with pytest.raises(InputError, match=expected):
        imf.load_arrays(folder, progress=False)


@pytest.mark.parametrize(
    "mean, std, problem",
    [
        ([1.0, float("nan")], [1.0, 1.0], "band B the mean nan, not a finite number"),
        ([1.0, 2.0], [1.0, float("inf")], "band B the std inf, not a finite number"),
        ([1.0, "2"], [1.0, 1.0], "band B the mean '2', not a finite number"),
        ([1.0, 2.0], [0.0, 1.0], "band A the std 0.0; it must be above zero"),
        ([1.0, 2.0], [1.0, -3.0], "band B the std -3.0; it must be above zero"),
    ],
)
def test_band_stats_with_unusable_values_are_refused_where_read(tmp_path, mean, std, problem):
    path = tmp_path / "band_stats.json"
    # json.dumps writes NaN and Infinity, as a hand-edited or damaged file may hold them.
    path.write_text(json.dumps({"bands": ["A", "B"], "mean": mean, "std": std}))
    with pytest.raises(InputError, match=re.escape(f"band statistics {path} give {problem}")):
        imf.load_band_stats(path)


def test_normalization_layer_applies_mean_and_std():
    layer = imf.normalization_layer([10.0, 20.0], [2.0, 4.0])
    output = np.asarray(layer(np.array([[[[12.0, 12.0]]]], dtype=np.float32)))
    np.testing.assert_allclose(output[0, 0, 0], [1.0, -2.0], rtol=1e-6)


def test_augmentation_only_in_training():
    images = np.random.default_rng(0).random((4, 64, 64, 13)).astype(np.float32)
    augmentation = imf.augmentation_layers(seed=1)
    np.testing.assert_array_equal(np.asarray(augmentation(images, training=False)), images)
    changed = np.asarray(augmentation(images, training=True))
    assert changed.shape == images.shape and not np.allclose(changed, images)


def test_flip_rotation_layer_geometry():
    images = np.random.default_rng(0).random((32, 8, 8, 2)).astype(np.float32)
    flips_only = imf.custom_layers()["RandomFlipRotation"](max_degrees=0.0, seed=3)
    output = np.asarray(flips_only(images, training=True))
    variants = {"none": 0, "rows": 0, "cols": 0, "both": 0}
    for image, result in zip(images, output, strict=True):
        candidates = {
            "none": image,
            "rows": image[::-1],
            "cols": image[:, ::-1],
            "both": image[::-1, ::-1],
        }
        matches = [
            key for key, value in candidates.items() if np.allclose(result, value, atol=1e-5)
        ]
        assert len(matches) == 1
        variants[matches[0]] += 1
    assert all(count > 0 for count in variants.values())  # all four flips occur
    # Bilinear resampling with reflect fill stays within the range of the input values.
    quarter = imf.custom_layers()["RandomFlipRotation"](max_degrees=90.0, seed=0)
    turned = np.asarray(quarter(images, training=True))
    assert turned.shape == images.shape and np.isfinite(turned).all()
    assert turned.min() >= images.min() - 1e-6 and turned.max() <= images.max() + 1e-6


def test_augmentation_survives_saving(tmp_path):
    import keras

    inputs = keras.Input((16, 16, 3))
    x = imf.augmentation_layers(seed=0)(inputs)
    outputs = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, outputs)
    model.save(tmp_path / "model.keras")
    from cnn_sentinel.networks import load_model

    loaded = load_model(tmp_path / "model.keras")
    images = np.random.default_rng(1).random((2, 16, 16, 3)).astype(np.float32)
    np.testing.assert_allclose(loaded.predict(images, verbose=0), model.predict(images, verbose=0))
    assert loaded.get_layer("augmentation").max_degrees == 45.0
    (tmp_path / "broken.keras").write_bytes(b"nonsense")
    with pytest.raises(InputError, match="broken.keras is damaged or not a Keras model"):
        load_model(tmp_path / "broken.keras")
    with pytest.raises(InputError, match="does not exist"):
        load_model(tmp_path / "missing.keras")


def test_folder_dataset_is_a_real_epoch(sample_ms_dataset):
    dataset, labels = imf.folder_pipeline(
        sample_ms_dataset, batch_size=16, training=True, band_indices=[3, 2, 1], progress=False
    )
    batches = list(dataset)
    seen = np.concatenate([np.argmax(np.asarray(y), axis=1) for _, y in batches])
    assert sorted(seen.tolist()) == sorted(labels.tolist())  # every image once per epoch
    first_images = batches[0][0]
    assert first_images.shape[1:] == (64, 64, 3) and first_images.dtype.name == "float32"
    evaluation, _ = imf.folder_pipeline(
        sample_ms_dataset, batch_size=16, training=False, progress=False
    )
    order = np.concatenate([np.argmax(np.asarray(y), axis=1) for _, y in evaluation])
    np.testing.assert_array_equal(order, labels)


def test_talk_generator_batches(sample_rgb_dataset):
    files = [path for path, _ in imf.list_class_images(sample_rgb_dataset)]
    indices = {name: index for index, name in enumerate(imf.CLASS_NAMES)}
    generator = imf.simple_image_generator(
        files, indices, batch_size=8, rotation_range=45, horizontal_flip=True, vertical_flip=True
    )
    images, labels = next(generator)
    assert images.shape == (8, 64, 64, 3) and labels.shape == (8, 10)
    np.testing.assert_array_equal(labels.sum(axis=1), np.ones(8))
    assert abs(images.mean()) < 3  # normalised with the talk's constants
