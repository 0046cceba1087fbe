"""A model.keras written by the training scripts is a plain Keras file, and model.json is
read and written in one place (cnn_sentinel.model_info.ModelInfo)."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from helpers import FAST, SCRIPTS
from script_modules import load_script

from cnn_sentinel import networks as nf
from cnn_sentinel import precision
from cnn_sentinel.errors import InputError
from cnn_sentinel.model_info import ModelInfo
from image_functions import CLASS_NAMES, MS_BAND_NAMES, RGB_BAND_NAMES, load_arrays

REPO_ROOT = Path(__file__).resolve().parent.parent

# Run in a fresh interpreter in isolated mode (-I: no PYTHONPATH, no script folder on
# sys.path) from a folder outside the repository: only stock Keras can open the file.
PLAIN_LOAD = """
import sys
from pathlib import Path
import numpy as np
import keras
model_path, pixels_path, output_path, repo = sys.argv[1:]
model = keras.saving.load_model(model_path)
np.save(output_path, model.predict(np.load(pixels_path), verbose=0))
ours = {"cnn_sentinel", "image_functions"}
assert not ours & set(sys.modules), ours & set(sys.modules)
assert not any(Path(entry or ".").resolve() == Path(repo) for entry in sys.path), sys.path
"""


@pytest.mark.parametrize("precision", ["off", "bf16"])
def test_saved_model_opens_with_plain_keras_and_predicts_like_the_project(
    rgb_split, tmp_path, precision
):
    """Trained with the talk's augmentation layer in the graph (and fused batch
    normalisation under bf16), the saved file holds stock layers only."""
    main = load_script(SCRIPTS["03"], "script_03").main
    main(
        [
            "--data", str(rgb_split), "--epochs", "1", "--output", str(tmp_path),
            "--augmentation", "talk", *FAST[:-1], precision,
        ]
    )  # fmt: skip
    model_path = tmp_path / "rgb-scratch-tiny" / "model.keras"
    with zipfile.ZipFile(model_path) as archive:
        config = archive.read("config.json").decode("utf-8")
    assert "cnn_sentinel" not in config and "RandomFlipRotation" not in config
    assert "FusedBatchNormalization" not in config
    if precision == "bf16":
        assert "mixed_bfloat16" in config
    images, _, _ = load_arrays(rgb_split / "validation", progress=False)
    pixels = images.astype(np.float32)
    np.save(tmp_path / "pixels.npy", pixels)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    subprocess.run(
        [
            sys.executable, "-I", "-c", PLAIN_LOAD, str(model_path), str(tmp_path / "pixels.npy"),
            str(tmp_path / "plain.npy"), str(REPO_ROOT),
        ],
        cwd=outside, check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    plain = np.load(tmp_path / "plain.npy")
    ours = nf.load_model(model_path).predict(pixels, verbose=0)
    assert plain.shape == (20, 10) and plain.dtype == np.float32
    np.testing.assert_allclose(plain, ours, atol=1e-5, rtol=0)


def test_inference_model_drops_training_layers_and_unfuses(keras_backend):
    import keras

    with precision.dtype_policy("mixed_bfloat16"):
        model = nf.build_network("tiny", RGB_BAND_NAMES, 10, [100.0] * 3, [50.0] * 3)
    assert "augmentation" in [layer.name for layer in model.layers]
    fused = nf.fused_batch_normalization_class()
    assert any(isinstance(layer, fused) for layer in model.get_layer("tiny").layers)
    saved = nf.inference_model(model)
    assert "augmentation" not in [layer.name for layer in saved.layers]
    backbone_layers = saved.get_layer("tiny").layers
    assert not any(isinstance(layer, fused) for layer in backbone_layers)
    assert sum(type(layer) is keras.layers.BatchNormalization for layer in backbone_layers) == 2
    pixels = np.random.default_rng(0).uniform(0, 255, (4, 64, 64, 3)).astype(np.float32)
    np.testing.assert_allclose(
        saved.predict(pixels, verbose=0), model.predict(pixels, verbose=0), atol=2e-2
    )
    for before, after in zip(model.weights, saved.weights, strict=True):
        assert np.array_equal(np.asarray(before), np.asarray(after))


@pytest.fixture
def keras_backend():
    import keras

    keras.mixed_precision.set_global_policy("float32")
    yield
    keras.mixed_precision.set_global_policy("float32")


def test_model_info_round_trip_and_legacy_keys(tmp_path):
    info = ModelInfo(
        class_names=["A", "B"],
        band_names=["B04", "B03", "B02"],
        mean=[1.0, 2.0, 3.0],
        std=[4.0, 5.0, 6.0],
        arch="tiny",
        metrics={"validation": {"overall_accuracy": 0.5, "images": 2}},
        extra={"note": "kept"},
    )
    info.save(tmp_path / "model.json")
    saved = json.loads((tmp_path / "model.json").read_text())
    assert saved["input_size"] == [64, 64] and saved["note"] == "kept"
    assert "source" not in saved and "extra" not in saved
    assert not list(tmp_path.glob(".*partial*"))
    loaded = ModelInfo.load(tmp_path / "model.keras")
    assert loaded == info and loaded.source == str(tmp_path / "model.json")
    # <stem>.json beside the model wins; legacy keys and an int input_size are read.
    (tmp_path / "old.json").write_text(
        json.dumps({"classes": ["x", "y", "z"], "bands": ["B08"], "input_size": 32})
    )
    legacy = ModelInfo.load(tmp_path / "old.hdf5")
    assert legacy.class_names == ["x", "y", "z"] and legacy.band_names == ["B08"]
    assert legacy.input_size == 32
    assert ModelInfo.load(tmp_path / "nothing" / "model.keras") is None
    # A checkpoint of a run (run/checkpoints/epoch-NNN.keras) finds the run's model.json.
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    ModelInfo(class_names=["Glacier", "Quarry"], band_names=["B08"]).save(
        tmp_path / "run" / "model.json"
    )
    checkpoint = ModelInfo.load(tmp_path / "run" / "checkpoints" / "epoch-003.keras")
    assert checkpoint.class_names == ["Glacier", "Quarry"]
    assert checkpoint.source == str(tmp_path / "run" / "model.json")
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(InputError, match="is not a JSON object"):
        ModelInfo.load(tmp_path / "bad.h5")


@pytest.mark.parametrize(
    ("name", "cut", "reason"),
    [
        ("model.keras", 100_000, "not a complete .keras zip archive"),
        ("model.keras", 0, "not a complete .keras zip archive"),
        ("model.h5", 0, "not an HDF5 file"),
    ],
)
def test_a_damaged_model_file_is_named_damaged_not_missing(tmp_path, name, cut, reason):
    shipped = REPO_ROOT / "models" / "eurosat-rgb-resnet-valid-narrow" / "model.keras"
    damaged = tmp_path / name
    damaged.write_bytes(shipped.read_bytes()[:cut] if cut else b"<html>not a model</html>")
    with pytest.raises(InputError) as raised:
        nf.load_model(damaged)
    assert str(raised.value).startswith(f"model {damaged} is damaged or not a Keras model")
    assert reason in str(raised.value) and "not found" not in str(raised.value)


def test_talk_model_facts():
    rgb = ModelInfo.for_talk_model(3)
    assert rgb.class_names == list(CLASS_NAMES) and rgb.band_names == list(RGB_BAND_NAMES)
    assert rgb.mean == pytest.approx([87.845, 96.965, 103.947])
    ms = ModelInfo.for_talk_model(13)
    assert ms.band_names == list(MS_BAND_NAMES) and len(ms.std) == 13
    with pytest.raises(InputError, match="3 or 13 bands"):
        ModelInfo.for_talk_model(4)


def test_dihedral_averaging_is_the_mean_over_the_8_symmetries(keras_backend):
    import keras

    keras.utils.set_random_seed(2)
    model = nf.build_network("tiny", RGB_BAND_NAMES, 10, [100.0] * 3, [50.0] * 3)
    averaged = nf.with_dihedral_averaging(model)
    pixels = np.random.default_rng(1).uniform(0, 255, (3, 64, 64, 3)).astype(np.float32)
    symmetries = [np.rot90(pixels, k, axes=(1, 2)) for k in range(4)]
    symmetries += [image[:, :, ::-1] for image in symmetries]
    expected = np.mean(
        [model.predict(np.ascontiguousarray(image), verbose=0) for image in symmetries], axis=0
    )
    result = averaged.predict(pixels, verbose=0)
    np.testing.assert_allclose(result, expected, atol=1e-5)
    assert not np.allclose(result, model.predict(pixels, verbose=0), atol=1e-3)
    for image in symmetries[1:]:  # the average does not change under any symmetry
        np.testing.assert_allclose(
            averaged.predict(np.ascontiguousarray(image), verbose=0), result, atol=1e-5
        )
