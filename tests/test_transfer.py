"""04 starts a 13-band network from a trained model of this project (the shipped RGB
model): cnn_sentinel.networks.network_from_model."""

from __future__ import annotations

import numpy as np
import pytest

from cnn_sentinel import networks as nf
from cnn_sentinel.errors import InputError
from cnn_sentinel.model_info import ModelInfo
from image_functions import CLASS_NAMES, MS_BAND_NAMES, RGB_BAND_NAMES

RGB_MEAN, RGB_STD = [90.0, 100.0, 110.0], [20.0, 15.0, 12.0]


def save_rgb_model(folder, arch="resnet-valid", seed=3):
    """A random RGB classifier saved as 02-05 save theirs (model.keras + model.json)."""
    import keras

    keras.utils.set_random_seed(seed)
    model = nf.build_network(arch, RGB_BAND_NAMES, 10, RGB_MEAN, RGB_STD, augment=False)
    path = folder / "model.keras"
    model.save(path)
    ModelInfo(
        class_names=list(CLASS_NAMES),
        band_names=list(RGB_BAND_NAMES),
        mean=RGB_MEAN,
        std=RGB_STD,
        arch=arch,
    ).save(folder / "model.json")
    return model, path


def ms_statistics():
    """13-band mean/std whose B04, B03, B02 equal the RGB model's."""
    mean, std = [1000.0 + 10 * i for i in range(13)], [300.0 + i for i in range(13)]
    for rgb_index, band in enumerate(RGB_BAND_NAMES):
        mean[MS_BAND_NAMES.index(band)] = RGB_MEAN[rgb_index]
        std[MS_BAND_NAMES.index(band)] = RGB_STD[rgb_index]
    return mean, std


@pytest.mark.parametrize("arch", ["resnet-valid", "tiny"])
def test_ms_network_from_rgb_model_sees_what_the_rgb_model_saw(tmp_path, arch):
    source, path = save_rgb_model(tmp_path, arch)
    mean, std = ms_statistics()
    target, got_arch = nf.network_from_model(
        path, MS_BAND_NAMES, CLASS_NAMES, mean, std, augment=False
    )
    assert got_arch == arch
    first = nf.backbone_entry(arch).first_conv
    source_kernel = source.get_layer(arch).get_layer(first).get_weights()[0]
    target_kernel = target.get_layer(arch).get_layer(first).get_weights()[0]
    assert target_kernel.shape == (*source_kernel.shape[:2], 13, source_kernel.shape[3])
    for rgb_index, band in enumerate(RGB_BAND_NAMES):
        np.testing.assert_array_equal(
            target_kernel[:, :, MS_BAND_NAMES.index(band)], source_kernel[:, :, rgb_index]
        )
    others = [i for i, band in enumerate(MS_BAND_NAMES) if band not in RGB_BAND_NAMES]
    assert 0 < np.abs(target_kernel[:, :, others]).max() < np.abs(source_kernel).max()
    # The other bands at their mean normalise to zero: the 13-band network then gives
    # exactly the RGB model's probabilities.
    rng = np.random.default_rng(0)
    rgb = rng.uniform(40, 200, (4, 64, 64, 3)).astype(np.float32)
    ms = np.broadcast_to(np.array(mean, np.float32), (4, 64, 64, 13)).copy()
    for rgb_index, band in enumerate(RGB_BAND_NAMES):
        ms[..., MS_BAND_NAMES.index(band)] = rgb[..., rgb_index]
    expected = source.predict(rgb, verbose=0)
    np.testing.assert_allclose(target.predict(ms, verbose=0), expected, atol=1e-5)


def test_transfer_needs_a_project_model_with_shared_bands(tmp_path):
    _, path = save_rgb_model(tmp_path)
    mean, std = ms_statistics()
    with pytest.raises(InputError, match="none of which"):
        nf.network_from_model(path, ["B08", "B11"], CLASS_NAMES, mean[:2], std[:2])
    (tmp_path / "model.json").unlink()
    with pytest.raises(InputError, match="no model.json"):
        nf.project_model_info(path)
    with pytest.raises(InputError, match="no model.json"):
        nf.network_from_model(path, MS_BAND_NAMES, CLASS_NAMES, mean, std)
    with pytest.raises(InputError, match="does not exist"):
        nf.project_model_info(tmp_path / "missing.keras")
    assert nf.is_project_model("models/eurosat-rgb-resnet-valid-narrow/model.keras")
    assert not nf.is_project_model("imagenet") and not nf.is_project_model(None)
