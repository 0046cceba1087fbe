"""Test-time averaging in 06 (--tta): the mean over the 8 flips and 90-degree rotations
of each window, per window through the turned windows and in the whole-block pass
through turned kernels; both must equal the mean over windows turned by NumPy."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import (
    prepare,
    raw_config,
    run_classification,
    smooth_scene,
    valid_model,
    write_scene,
)

from cnn_sentinel.errors import InputError
from cnn_sentinel.scene import blocks
from cnn_sentinel.scene import reading as scenes

RGB = ("B04", "B03", "B02")


@pytest.fixture(scope="module")
def tta_case(tmp_path_factory):
    """A 37 x 41 RGB scene with an all-zero hole, and a tiny resnet-valid model."""
    folder = tmp_path_factory.mktemp("tta_case")
    image = smooth_scene(37, 41, 3, np.uint8, 30.0, seed=3)
    image[5:8, 30:36] = 0
    return write_scene(folder / "scene.tif", image), image, valid_model(seed=1)


def classify(scene_path, model, tmp_path, method: str, tta: bool, stride: int):
    """(labels, probabilities of every class) of one run through the entry point."""
    return run_classification(
        tmp_path, scene_path, model, raw_config(RGB), name=f"{method}_{tta}_{stride}",
        method=method, tta=tta, probabilities="all", stride=stride, block_rows=10,
    )  # fmt: skip


def turned_mean(model, image: np.ndarray, row: int, col: int) -> np.ndarray:
    """The oracle: the window centred on (row, col), mirrored at the edges and its no-data
    (all-zero) pixels filled from their row as 06 does, turned 8 ways by NumPy, through
    the model, averaged."""
    padded = np.pad(image, ((32, 31), (32, 31), (0, 0)), "symmetric").astype(np.float32)
    scenes.fill_nodata(padded, np.all(padded == 0, axis=-1))
    window = padded[row : row + 64, col : col + 64]
    turns = [np.rot90(window, k) for k in range(4)]
    batch = np.stack(turns + [np.fliplr(turn) for turn in turns])
    return np.asarray(model(batch, training=False)).mean(axis=0)


@pytest.mark.parametrize("stride", [1, 3])
def test_tta_whole_block_pass_equals_turned_windows(tta_case, tmp_path, stride):
    scene_path, image, model = tta_case
    dense_labels, dense = classify(scene_path, model, tmp_path, "dense", True, stride)
    window_labels, windows = classify(scene_path, model, tmp_path, "windows", True, stride)
    _, plain = classify(scene_path, model, tmp_path, "dense", False, stride)
    np.testing.assert_allclose(dense, windows, atol=1e-4)
    top_two = np.sort(np.nan_to_num(windows), axis=0)[-2:]
    ties = top_two[1] - top_two[0] < 1e-4
    assert np.array_equal(dense_labels[~ties], window_labels[~ties])
    # averaging changes the answer (else the comparison above proves nothing)
    assert np.nanmax(np.abs(dense - plain)) > 1e-3
    # and both are the mean over the turned windows, at cells across the scene
    for row, col in [(0, 0), (stride * 4, stride * 5), (36, 40), (20, 3)]:
        centre_row = scenes.window_centres(37, stride)[row // stride]
        centre_col = scenes.window_centres(41, stride)[col // stride]
        expected = turned_mean(model, image, centre_row, centre_col)
        np.testing.assert_allclose(dense[:, row, col], expected, atol=1e-4)
    holes = np.all(image == 0, axis=-1)
    if stride == 1:
        assert np.all(dense_labels[holes] == blocks.LABEL_NODATA)


def test_tta_dense_refused_where_turning_kernels_is_not_exact(tta_case):
    """A 3 x 3 stride-2 convolution over 64 pixels leaves the last pixel out, so a flipped
    window meets a different grid: dense with --tta is refused in one sentence, auto
    falls back to one pass per window, and dense without --tta stays allowed."""
    import keras

    inputs = keras.Input((64, 64, 3))
    x = keras.layers.Conv2D(4, 3, strides=2, name="odd_steps")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(x))
    dataset = scenes.open_scene(tta_case[0])
    config = raw_config(RGB)
    with pytest.raises(InputError, match="--method dense --tta: its layer odd_steps") as error:
        prepare(dataset, model, config, method="dense", tta=True)
    assert str(error.value).count(". ") == 0 and str(error.value).endswith(".")
    fallback = prepare(dataset, model, config, tta=True)
    assert fallback.method == "windows" and fallback.tta
    assert "averaged over the 8 flips and rotations" in fallback.describe()
    assert prepare(dataset, model, config).method == "dense"


def test_turned_kernels_cover_the_whole_group():
    from cnn_sentinel.scene.dense import dihedral_kernel

    kernel = np.arange(9 * 2, dtype=np.float32).reshape(3, 3, 2, 1)
    turned = {np.asarray(dihedral_kernel(kernel, k)).tobytes() for k in range(8)}
    assert len(turned) == 8
    assert np.array_equal(np.asarray(dihedral_kernel(kernel, 0)), kernel)
    assert np.array_equal(np.asarray(dihedral_kernel(kernel, 4)), kernel[:, ::-1])
