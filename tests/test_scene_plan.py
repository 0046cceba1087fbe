"""Tests of 06's scene plan (cnn_sentinel/scene/plan.py): the windows and masks it reads
are 06's, every field says whether it changes the outputs and the many-scene manifest
follows those fields, 06's label map is what it was before the plan, and no scene module
reads 06's settings but the plan builder."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
from helpers import (
    REPO_ROOT,
    cloudy_scene,
    prepare,
    raw_config,
    read_raster,
    save_model,
    scene_plan,
    settings_06,
    smooth_scene,
    tiny_model,
    valid_model,
    write_scene,
)
from osgeo import gdal
from script_modules import load_script

from cnn_sentinel.errors import InputError
from cnn_sentinel.scene import blocks, clouds, many, plan
from cnn_sentinel.scene import reading as scenes
from cnn_sentinel.scene.blocks import ReadBlock
from image_functions import MS_BAND_NAMES, RGB_BAND_NAMES, talk_constants

classify_image = load_script("06_classify_image.py", "classify_image_plan")


def fed_windows(classification) -> dict[tuple[int, int], np.ndarray]:
    """Every window 06's per-window predictor feeds the model, by its centre pixel."""
    predictor = classification.predictor(prefetch_depth=0)
    batches = predictor._batches
    seen: dict[tuple[int, int], np.ndarray] = {}

    def recording(read_blocks):
        block = None
        for item in batches(read_blocks):
            if isinstance(item, ReadBlock):
                block = item
            else:
                grid_row, grid_col = np.divmod(item.positions, len(block.centre_cols))
                centres = zip(block.centre_rows[grid_row], block.centre_cols[grid_col], strict=True)
                for (row, col), window in zip(centres, item.pixels, strict=True):
                    seen[int(row), int(col)] = window.copy()
            yield item

    predictor._batches = recording
    classification.run([], progress=False, predictor=predictor)
    return seen


@pytest.fixture(scope="module")
def edge_scene(tmp_path_factory):
    """A 13-band-named RGB-ish uint16 scene, 70 x 90, with a no-data patch at its left
    edge (all bands zero) and a stretch of a row without data inside it."""
    folder = tmp_path_factory.mktemp("plan")
    pixels = smooth_scene(70, 90, 3, np.uint16, 300.0, seed=3)
    pixels[20:30, :6] = 0
    pixels[50, 40:47] = 0
    return write_scene(folder / "edges.tif", pixels, descriptions=RGB_BAND_NAMES)


@pytest.mark.parametrize(
    ("settings", "stride"),
    [
        ({"rgb_scaling": "none"}, 1),  # the scene's own uint16
        ({"rgb_scaling": "eurosat"}, 1),  # uint8, EuroSAT's JPEG scale
        ({"rgb_scaling": "none", "reflectance_scale": 1000}, 7),  # float32, x 10
    ],
)
def test_windows_at_are_the_windows_06_feeds_the_model(edge_scene, settings, stride):
    mean, std = talk_constants(3)
    model = tiny_model(3, mean, std)
    dataset = scenes.open_scene(edge_scene)
    classification = prepare(
        dataset, model, raw_config(RGB_BAND_NAMES), method="windows", stride=stride, **settings
    )
    seen = fed_windows(classification)
    rows, cols = dataset.RasterYSize, dataset.RasterXSize
    centres = [(0, 0), (0, cols - 1), (rows - 1, 0), (rows - 1, cols - 1), (35, 45), (25, 6)]
    centres += [(50, 39), (51, 44), (31, 3)]
    if stride > 1:  # only the centres of the stride's cells are fed
        grid_rows, grid_cols = (
            scenes.window_centres(rows, stride),
            scenes.window_centres(cols, stride),
        )
        centres = [
            (int(grid_rows[r]), int(grid_cols[c])) for r, c in [(0, 0), (-1, -1), (4, 0), (3, 6)]
        ]
    centres = [centre for centre in centres if centre in seen]  # no-data centres are not fed
    assert len(centres) >= 4
    windows = plan.windows_at(classification.plan, *np.array(centres).T)
    expected = np.stack([seen[centre] for centre in centres])
    assert windows.dtype == expected.dtype == classification.input_dtype
    assert windows.shape == (len(centres), 64, 64, 3)
    np.testing.assert_array_equal(windows, expected)
    # Scattered pixels come back in the order asked, whatever rows they are read in.
    plan.WINDOW_READ_ROWS, saved = 8, plan.WINDOW_READ_ROWS
    try:
        np.testing.assert_array_equal(
            plan.windows_at(classification.plan, *np.array(centres[::-1]).T), expected[::-1]
        )
    finally:
        plan.WINDOW_READ_ROWS = saved
    with pytest.raises(InputError, match="outside the scene"):
        plan.windows_at(classification.plan, [rows], [0])


def test_nodata_and_cloud_rows_are_what_06_labels(tmp_path):
    pytest.importorskip("s2cloudless")
    pixels = cloudy_scene(96, 80)
    pixels[40:44, 10:30] = 0
    scene = write_scene(tmp_path / "cloudy.tif", pixels, descriptions=MS_BAND_NAMES)
    model = save_model(valid_model(13), tmp_path / "model", MS_BAND_NAMES)
    flags = ["--image", scene, "--model", model, "--stride", "1", "--adapt", "off",
             "--no-progress", "--block-rows", "32", "--output-dir", tmp_path]  # fmt: skip
    classify_image.main([str(flag) for flag in flags])
    labels = read_raster(tmp_path / "cloudy_label.tif")
    planned = plan.plan_scene(settings_06(model=str(model), adapt="off"), scene)
    nodata, cloud = plan.nodata_rows(planned), plan.cloud_rows(planned)
    assert nodata.shape == cloud.shape == labels.shape and nodata.sum() == 80 and cloud.any()
    np.testing.assert_array_equal(labels == blocks.LABEL_NODATA, nodata)
    np.testing.assert_array_equal(labels == blocks.CLOUD_LABEL, cloud & ~nodata)
    np.testing.assert_array_equal(plan.cloud_rows(planned, 30, 70), cloud[30:70])
    np.testing.assert_array_equal(plan.nodata_rows(planned, 30, 70), nodata[30:70])
    clear = dataclasses.replace(planned, masking=False)
    assert not plan.cloud_rows(clear, 5, 9).any() and plan.cloud_rows(clear, 5, 9).shape == (4, 80)


# ---------------------------------------------------------------------------
# The fields that change outputs, and the manifest
# ---------------------------------------------------------------------------


def another(value):
    """A different value of the same kind."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int | float):
        return value + 1
    if isinstance(value, str):
        return value + "-other"
    if value is None:
        return (1, 2, 3, 4)
    if isinstance(value, tuple):
        return (*value, 99)
    if isinstance(value, clouds.CloudSettings):
        return dataclasses.replace(value, threshold=value.threshold / 2)
    return dataclasses.replace(value, class_names=value.class_names[::-1])  # ModelInfo


@pytest.fixture(scope="module")
def base_plan(edge_scene):
    mean, std = talk_constants(3)
    return scene_plan(
        scenes.open_scene(edge_scene), tiny_model(3, mean, std), raw_config(RGB_BAND_NAMES)
    )


def test_every_plan_field_says_whether_it_changes_outputs():
    for item in dataclasses.fields(plan.ScenePlan):
        assert isinstance(item.metadata.get("outputs"), bool), item.name
    assert {"adapt", "adapt_blend", "adapt_windows", "reflectance_factor", "stride"} <= set(
        plan.output_fields()
    )
    assert not {"block_rows", "batch_size", "progress", "overwrite"} & set(plan.output_fields())


@pytest.mark.parametrize("name", plan.output_fields())
def test_the_manifest_changes_with_each_output_field(base_plan, name):
    changed = dataclasses.replace(base_plan, **{name: another(getattr(base_plan, name))})
    before, after = many.output_settings(base_plan), many.output_settings(changed)
    assert before != after
    assert {key for key in before if before[key] != after[key]} == {name}


def test_a_new_output_field_reaches_the_manifest(base_plan):
    """A field added to the plan with outputs True is in the manifest, nothing else to do."""
    extended = dataclasses.make_dataclass(
        "ExtendedPlan",
        [("sharpening", float, plan.changes_outputs(True, default=0.0))],
        bases=(plan.ScenePlan,),
        frozen=True,
    )
    fields = {item.name: getattr(base_plan, item.name) for item in dataclasses.fields(base_plan)}
    first, second = extended(**fields, sharpening=0.0), extended(**fields, sharpening=0.5)
    assert many.output_settings(first)["sharpening"] == 0.0
    assert many.output_settings(first) != many.output_settings(second)
    quiet = dataclasses.make_dataclass(
        "QuietPlan",
        [("threads", int, plan.changes_outputs(False, default=1))],
        bases=(plan.ScenePlan,),
        frozen=True,
    )
    assert many.output_settings(quiet(**fields, threads=8)) == many.output_settings(base_plan)


def test_the_manifest_holds_the_model_files_checksum(edge_scene, tmp_path):
    mean, std = talk_constants(3)
    path = save_model(tiny_model(3, mean, std), tmp_path / "m", RGB_BAND_NAMES)
    settings = settings_06(model=str(path), rgb_scaling="none", adapt="off")
    first = many.output_settings(plan.plan_scene(settings, edge_scene))
    assert first["model_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    save_model(tiny_model(3, mean, std, seed=1), tmp_path / "m", RGB_BAND_NAMES)
    assert many.output_settings(plan.plan_scene(settings, edge_scene)) != first


@pytest.mark.slow
def test_a_rerun_with_adapt_off_after_a_default_run_redoes_the_scenes(tmp_path, capsys):
    """The defect of OUTPUT_SETTINGS: --adapt was not in it, so this rerun kept the
    adapted maps as finished. Now the scenes are redone: refused here, since their
    outputs exist and --overwrite is not given."""
    folder = tmp_path / "scenes"
    folder.mkdir()
    images = [
        write_scene(folder / f"{name}.tif", cloudy_scene(48, 40, seed), descriptions=MS_BAND_NAMES)
        for seed, name in enumerate(["one", "two"])
    ]
    model = save_model(valid_model(13), tmp_path / "model", MS_BAND_NAMES)
    common = ["--image", *images, "--model", model, "--output-dir", tmp_path / "out",
              "--scheduler", "none", "--no-progress", "--stride", "8",
              "--cloud-mask", "off"]  # fmt: skip
    classify_image.main([str(value) for value in common])
    record = json.loads((tmp_path / "out" / "manifest.json").read_text())["scenes"]
    assert {entry["settings"]["adapt"] for entry in record.values()} == {"auto"}
    classify_image.main([str(value) for value in common])
    assert capsys.readouterr().out.count("finished before with these settings") == 2
    with pytest.raises(InputError, match="2 of 2 scenes failed .*already exists; pass --overwrite"):
        classify_image.main([str(value) for value in [*common, "--adapt", "off"]])
    assert "finished before" not in capsys.readouterr().out
    classify_image.main([str(value) for value in [*common, "--adapt", "off", "--overwrite"]])
    record = json.loads((tmp_path / "out" / "manifest.json").read_text())["scenes"]
    assert {entry["settings"]["adapt"] for entry in record.values()} == {"off"}
    classify_image.main([str(value) for value in [*common, "--adapt", "off"]])
    assert capsys.readouterr().out.count("finished before with these settings") == 2


# ---------------------------------------------------------------------------
# 06's label map on the real T33UUU crop, before and after the plan
# ---------------------------------------------------------------------------

T33UUU = "sentinel2_l1c_T33UUU_20170216_13band_1536x768.tif"
CROP = ["--window", "640", "96", "256", "192"]  # 256 x 192 pixels, with the cloud streaks
# SHA-256 of the label values (uint8, row-major, 192 x 256) that main's 06 (commit 1126d7e,
# before the scene plan) wrote for these flags, computed as in `label_checksum` from
#   06_classify_image.py --image .../T33UUU...tif --window 640 96 256 192 --no-progress <flags>
# on a CPU: the shipped 13-band model, dense, adapted, clouds masked (43 % Cloud); and the
# shipped RGB model per window at stride 4, adaptation forced on.
LABEL_CHECKSUMS = {
    "defaults": ((), "f42d372d44e5a2894be2ff209f8b4cdfc7e898a447feffbee6c5ca4aad4e72bf"),
    "rgb-windows": (
        ("--bands", "B04,B03,B02", "--stride", "4", "--method", "windows", "--adapt", "on"),
        "ad07c5d99fcb536e549a809fff66683eb078fb015e0d2cfe42c082732887c537",
    ),
}


def label_checksum(path: Path) -> str:
    labels = gdal.Open(str(path)).ReadAsArray()
    return hashlib.sha256(np.ascontiguousarray(labels, np.uint8).tobytes()).hexdigest()


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(LABEL_CHECKSUMS))
def test_label_map_of_the_real_crop_is_what_06_wrote_before_the_plan(scenes_dir, tmp_path, case):
    flags, checksum = LABEL_CHECKSUMS[case]
    classify_image.main(
        ["--image", str(scenes_dir / T33UUU), *CROP, "--output-dir", str(tmp_path),
         "--no-progress", "--no-quicklook", *flags]
    )  # fmt: skip
    assert label_checksum(tmp_path / T33UUU.replace(".tif", "_label.tif")) == checksum


# ---------------------------------------------------------------------------
# 06's settings are read by 06 and the plan builder only
# ---------------------------------------------------------------------------

SETTINGS_READ = re.compile(r"(?<![\w.])settings\.\w+")


def test_no_scene_module_reads_06s_settings_but_the_plan_builder():
    readers = {
        path.relative_to(REPO_ROOT).as_posix()
        for path in (REPO_ROOT / "cnn_sentinel" / "scene").glob("*.py")
        if SETTINGS_READ.search(path.read_text(encoding="utf-8"))
    }
    assert readers == {"cnn_sentinel/scene/plan.py"}
    assert SETTINGS_READ.search((REPO_ROOT / "06_classify_image.py").read_text())
