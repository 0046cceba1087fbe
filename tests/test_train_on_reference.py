"""Tests of 08_train_on_reference.py: the hold-out margin (exact), the chain 08 -> 06 ->
07 on a generated scene, the run folder's resume and refusal, every bad input, and the
real T33UUU scene with its OSM reference where ../shared exists.

The generated scene is 96 x 192 pixels of 10 m (three unnamed bands) in UTM 33N; the
hold-out box is its columns 144-191, so training centres may only lie in columns 0-80
(64 pixels or more from column 144).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from helpers import ORIGIN, REPO_ROOT, UTM33N, save_model, smooth_scene, valid_model, write_scene
from osgeo import ogr, osr
from script_modules import load_script

from cnn_sentinel.errors import InputError
from cnn_sentinel.facts import CLASS_NAMES
from cnn_sentinel.scene import teaching

train_on_reference = load_script("08_train_on_reference.py", "train_on_reference")
classify_image = load_script("06_classify_image.py", "classify_image")
evaluate_map = load_script("07_evaluate_map.py", "evaluate_map")

ROWS, COLS = 96, 192
X0, Y0, PIXEL = ORIGIN[0], ORIGIN[3], ORIGIN[1]
HOLDOUT = [X0 + 144 * PIXEL, Y0 - ROWS * PIXEL, X0 + COLS * PIXEL, Y0]
# class -> rectangles (first row, last row, first column, last column)
REFERENCE = {
    "forest": [(4, 40, 2, 60), (10, 80, 150, 180)],
    "farm": [(50, 90, 2, 70), (60, 90, 100, 140)],
    "scrub": [(0, 3, 0, 10)],
}
FAST = ["--samples-per-class", "24", "--min-samples", "4", "--epochs", "2", "--batch-size", "16",
        "--soup", "1", "--no-progress"]  # fmt: skip


def rectangle(first_row, last_row, first_col, last_col) -> ogr.Geometry:
    left, right = X0 + PIXEL * first_col, X0 + PIXEL * (last_col + 1)
    top, bottom = Y0 - PIXEL * first_row, Y0 - PIXEL * (last_row + 1)
    ring = f"{left} {top}, {right} {top}, {right} {bottom}, {left} {bottom}, {left} {top}"
    return ogr.CreateGeometryFromWkt(f"POLYGON (({ring}))")


def write_reference(path, classes: dict) -> str:
    """GeoJSON in WGS84 with field fclass (as OSM land use)."""
    target = osr.SpatialReference()
    target.ImportFromEPSG(4326)
    target.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    source = osr.SpatialReference()
    source.ImportFromEPSG(UTM33N)
    source.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    dataset = ogr.GetDriverByName("GeoJSON").CreateDataSource(str(path))
    layer = dataset.CreateLayer("osm", target, ogr.wkbPolygon)
    layer.CreateField(ogr.FieldDefn("fclass", ogr.OFTString))
    for name, boxes in classes.items():
        for box in boxes:
            geometry = rectangle(*box)
            geometry.AssignSpatialReference(source)
            geometry.TransformTo(target)
            feature = ogr.Feature(layer.GetLayerDefn())
            feature.SetField("fclass", name)
            feature.SetGeometry(geometry)
            layer.CreateFeature(feature)
    dataset = None
    return str(path)


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    folder = tmp_path_factory.mktemp("teach")
    pixels = smooth_scene(ROWS, COLS, 3, np.uint16, 300.0)
    # No band names: 06 takes the bands in order, and the report picture by number.
    scene = write_scene(folder / "scene.tif", pixels)
    model = save_model(valid_model(3), folder / "start", ["B04", "B03", "B02"])
    reference = write_reference(folder / "osm.geojson", REFERENCE)
    return {"folder": folder, "scene": str(scene), "model": str(model), "reference": reference}


def run(generated, *extra) -> dict:
    argv = ["--image", generated["scene"], "--reference", generated["reference"],
            "--model", generated["model"], "--output", str(generated["folder"] / "runs"),
            "--holdout-bbox", *map(str, HOLDOUT), *FAST, *map(str, extra)]  # fmt: skip
    return train_on_reference.main(argv)


def expect_error(generated, message: str, *extra) -> None:
    with pytest.raises(InputError) as error:
        run(generated, *extra)
    assert message in str(error.value)


def test_no_training_centre_within_one_window_of_the_hold_out_box():
    shape, part, size = (40, 50), [12, 20, 5, 7], 6
    allowed = teaching.training_allowed(shape, part, size)
    rows, cols = np.mgrid[0 : shape[0], 0 : shape[1]]
    top, left, height, width = part
    row_gap = np.maximum(np.maximum(top - rows, rows - (top + height - 1)), 0)
    col_gap = np.maximum(np.maximum(left - cols, cols - (left + width - 1)), 0)
    # A window of `size` centred at distance d (Chebyshev) from a scored centre overlaps
    # it exactly when d < size.
    np.testing.assert_array_equal(allowed, np.maximum(row_gap, col_gap) >= size)
    # By hand: the part spans rows 12-16 and columns 20-26.
    assert allowed[12 - 6, 25] and not allowed[12 - 5, 25] and not allowed[7, 26 + 5]
    assert allowed[7, 26 + 6] and allowed[16 + 6, 20] and not allowed[16 + 5, 26 + 5]
    assert teaching.training_allowed(shape, None, size).all()
    masks = {"a": np.ones(shape, bool) & allowed, "b": np.ones(shape, bool) & allowed}
    for rows_, cols_ in teaching.sample_centres(masks, 500, 1, seed=3).values():
        assert allowed[rows_, cols_].all()


def test_chain_08_06_07_on_generated_data(generated, rgb_split, tmp_path, capsys):
    import keras

    result = run(generated, "--run-name", "chain", "--eurosat", rgb_split, "--replay", "0.5")
    run_folder = generated["folder"] / "runs" / "chain"
    assert result["training_windows"] == {"farm": 24, "forest": 24}
    out = capsys.readouterr().out
    held_out = result["held_out"]
    before = held_out["before"]["class_balanced_agreement"]
    after = held_out["after"]["class_balanced_agreement"]
    assert f"held-out class-balanced agreement: before {before:.4f}, after {after:.4f}" in out
    assert held_out["pixels"] == [0, 144, 96, 48]
    assert set(result["eurosat_validation_accuracy"]) == {"before", "after"}
    assert "EuroSAT validation accuracy: before" in out
    for name in ("model.keras", "model.json", "history.csv", "report/before_after.png"):
        assert (run_folder / name).is_file(), name
    info = json.loads((run_folder / "model.json").read_text())
    assert info["recipe"] == "train-on-reference"
    assert info["started_from"] == generated["model"]
    assert info["holdout_bbox"] == HOLDOUT
    assert len((run_folder / "history.csv").read_text().splitlines()) == 3
    model = keras.saving.load_model(run_folder / "model.keras")
    assert model.output_shape == (None, 10)

    model_path = str(run_folder / "model.keras")
    classify_image.main(["--image", generated["scene"], "--model", model_path, "--stride", "1",
                         "--output-dir", str(tmp_path), "--no-progress"])  # fmt: skip
    label = tmp_path / "scene_label.tif"
    report = evaluate_map.main(["--map", str(label), "--reference", generated["reference"],
                                "--bbox", *map(str, HOLDOUT), "--output-dir",
                                str(tmp_path / "eval"), "--no-picture"])  # fmt: skip
    # 06 at its defaults with the taught model gives the map 08 scored.
    assert report["class_balanced_agreement"] == pytest.approx(after)
    assert report["classes"]["forest"]["pixels"] == held_out["after"]["classes"]["forest"]["pixels"]


def test_run_folder_refuses_a_finished_run_and_resumes_an_unfinished_one(generated):
    run(generated, "--run-name", "resume", "--no-maps")
    run_folder = generated["folder"] / "runs" / "resume"
    with pytest.raises(InputError, match="already complete"):
        run(generated, "--run-name", "resume", "--no-maps")
    state = json.loads((run_folder / "state.json").read_text())
    assert state["epoch"] == 2 and state["finished"]
    state.update(epoch=1, finished=False, history=state["history"][:1])
    (run_folder / "state.json").write_text(json.dumps(state))
    with pytest.raises(InputError, match="--learning-rate"):
        run(generated, "--run-name", "resume", "--no-maps", "--learning-rate", "0.01")
    run(generated, "--run-name", "resume", "--no-maps")  # resumes at epoch 2
    state = json.loads((run_folder / "state.json").read_text())
    assert [row["epoch"] for row in state["history"]] == [1, 2] and state["finished"]


def test_bad_input_is_one_sentence(generated, tmp_path):
    far = write_reference(tmp_path / "far.geojson", {"forest": [(-900, -800, 0, 10)]})
    expect_error(generated, "does not overlap", "--reference", far)
    inside = write_reference(tmp_path / "inside.geojson", {"forest": [(0, 90, 150, 190)]})
    expect_error(generated, "no usable pixel outside the hold-out box", "--reference", inside)
    expect_error(generated, "reference class farm has", "--min-samples", "100000")
    table = tmp_path / "table.json"
    table.write_text(json.dumps({"forest": [], "farm": [], "scrub": []}))
    expect_error(generated, "maps no class", "--table", table)
    expect_error(generated, "hold-out box", "--holdout-bbox", "0", "0", "10", "10")
    wide = save_model(
        valid_model(13), tmp_path / "ms", [f"B{n:02d}" for n in range(1, 13)] + ["B8A"]
    )
    expect_error(generated, "B08", "--model", wide)
    expect_error(generated, "soup must be at least 1", "--soup", "0")
    expect_error(generated, "--distill is a share between 0 and 1", "--distill", "1.5")
    # Every bad input is found before the run folder is made.
    assert not (generated["folder"] / "runs" / "reference-scene").exists()


def test_eurosat_split_folder_must_exist(generated, tmp_path):
    expect_error(generated, "has no train/", "--eurosat", tmp_path, "--no-maps")
    assert not (generated["folder"] / "runs" / "reference-scene").exists()


@pytest.mark.slow
def test_kill_9_during_training_then_the_same_command_finishes_every_epoch_once(generated):
    """08 killed (SIGKILL, no clean-up) after its first saved epoch: the same command
    resumes from the last saved epoch, and the finished run holds each epoch once and a
    model.keras that a Python which never imported the project opens."""
    folder = generated["folder"] / "runs"
    command = [sys.executable, str(REPO_ROOT / "08_train_on_reference.py"),
               "--image", generated["scene"], "--reference", generated["reference"],
               "--model", generated["model"], "--output", str(folder),
               "--holdout-bbox", *map(str, HOLDOUT), "--samples-per-class", "200",
               "--min-samples", "4", "--epochs", "30", "--batch-size", "16", "--soup", "1",
               "--no-progress",
               "--no-maps", "--run-name", "killed"]  # fmt: skip
    environment = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    state_file = folder / "killed" / "state.json"
    first = subprocess.Popen(command, env=environment, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and first.poll() is None:
        if state_file.exists() and json.loads(state_file.read_text())["epoch"] >= 1:
            break
        time.sleep(0.2)
    assert first.poll() is None, "08 finished before it could be killed"
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=60)
    killed_at = json.loads(state_file.read_text())
    assert 1 <= killed_at["epoch"] < 30 and not killed_at["finished"]
    again = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    state = json.loads(state_file.read_text())
    assert state["finished"]
    assert [row["epoch"] for row in state["history"]] == list(range(1, 31))
    assert not list((folder / "killed").rglob("partial-*"))
    opened = subprocess.run(
        [sys.executable, "-c", "import sys, keras; "
         "model = keras.saving.load_model(sys.argv[1]); print(model.output_shape[-1])",
         str(folder / "killed" / "model.keras")],
        capture_output=True, text=True, timeout=300, cwd=folder,
        env={**environment, "PYTHONPATH": ""},
    )  # fmt: skip
    assert opened.returncode == 0, opened.stderr[-3000:]
    assert opened.stdout.strip().splitlines()[-1] == "10"


def teach_t33uuu(scenes_dir, tmp_path, run_name: str, *extra: str) -> dict:
    """08 on the real T33UUU scene with its OSM reference, the east half held out, briefly."""
    reference = scenes_dir.parent / "reference" / "T33UUU_osm" / "T33UUU_osm_landuse_water.gpkg"
    scene = scenes_dir / "sentinel2_l1c_T33UUU_20170216_13band_1536x768.tif"
    return train_on_reference.main(
        ["--image", str(scene), "--reference", str(reference), "--holdout-bbox", "337680",
         "5814360", "345360", "5822040", "--samples-per-class", "64", "--epochs", "1",
         "--output", str(tmp_path), "--run-name", run_name, "--no-progress", *extra]
    )  # fmt: skip


@pytest.mark.slow
def test_real_t33uuu_taught_on_the_west_half_scored_on_the_east(scenes_dir, tmp_path, capsys):
    result = teach_t33uuu(scenes_dir, tmp_path, "t33uuu")
    before = result["held_out"]["before"]
    # The shipped 13-band model on the east half, as 07 --bbox measures it, 06's defaults
    # (ANTIALIAS 4; the raw stride-1 pass, --antialias 1, gives 0.4296).
    assert before["class_balanced_agreement"] == pytest.approx(0.4305, abs=5e-4)
    assert before["classes"]["forest"]["agreement"] == 0.0
    assert set(result["training_windows"]) == {
        "farm", "forest", "grass", "meadow", "residential", "water",
    }  # fmt: skip
    assert "held-out class-balanced agreement: before 0.4305" in capsys.readouterr().out
    # 08's defaults in full (500 windows per class, a soup of 3 x 7 epochs, --eurosat split_ms)
    # reach 0.7650 on this half, forest 0.5713, EuroSAT 0.9659 -> 0.9545 (benchmarks/README.md);
    # this shortened run only checks the chain on the real data.
    assert result["held_out"]["after"]["classes"]["forest"]["pixels"] == 24399


def test_report_picture_of_a_scene_without_band_names_takes_the_models_bands(generated, tmp_path):
    # Four unnamed bands: neither B04, B03, B02 by name nor a 3-band image, so the picture
    # takes the RGB model's bands (--bands 3,2,1) by number.
    scene = write_scene(tmp_path / "four.tif", smooth_scene(ROWS, COLS, 4, np.uint16, 300.0, 1))
    run({**generated, "scene": str(scene)}, "--bands", "3,2,1", "--run-name", "four",
        "--epochs", "1")  # fmt: skip
    picture = generated["folder"] / "runs" / "four" / "report" / "before_after.png"
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------------------
# The user's own classes (08 --classes reference): model.json, 06 and 07 take them
# ---------------------------------------------------------------------------


def label_classes(path) -> tuple[list[str], list[tuple[int, int, int]]]:
    """The class names (category names) and colour-table colours of a label GeoTIFF of 06."""
    from osgeo import gdal

    dataset = gdal.Open(str(path))
    dataset.GetGeoTransform()  # GDAL 3.6 reads the .aux.xml on this query
    band = dataset.GetRasterBand(1)
    names = [name for name in band.GetCategoryNames()[:254] if name]
    table = band.GetColorTable()
    return names, [tuple(table.GetColorEntry(i)[:3]) for i in range(len(names))]


def test_own_classes_chain_08_06_07(generated, tmp_path, capsys):
    """08 --classes reference: the model's classes are the reference's taught classes
    (the built-in OSM table teaches farm and forest, not scrub) in their EuroSAT colours
    (farm: AnnualCrop's, forest: Forest's), 06 writes them into the label map, its colour
    table and the probability bands, and 07 scores the map with the identity table."""
    import keras
    from osgeo import gdal

    from cnn_sentinel.evaluation import IDENTITY_TABLE
    from cnn_sentinel.facts import CLASS_COLOURS

    result = run(generated, "--run-name", "own", "--classes", "reference", "--head-epochs", "1",
                 "--no-own-classes-recipe")  # fmt: skip
    out = capsys.readouterr().out
    run_folder = generated["folder"] / "runs" / "own"
    info = json.loads((run_folder / "model.json").read_text())
    assert info["class_names"] == ["farm", "forest"]
    assert info["own_classes"] is True
    assert info["class_colours"] == [
        list(CLASS_COLOURS["AnnualCrop"]),
        list(CLASS_COLOURS["Forest"]),
    ]
    assert info["class_of_reference_class"] == {"farm": "farm", "forest": "forest"}
    # One epoch of the new head alone (not counted), then --epochs 2 of TRAIN_LAYERS.
    assert info["epochs_trained"] == 2
    assert len((run_folder / "history.csv").read_text().splitlines()) == 3
    assert keras.saving.load_model(run_folder / "model.keras").output_shape == (None, 2)
    assert "EuroSAT validation accuracy: not measured (the model's classes are yours" in out
    held_out = result["held_out"]
    # Before: the start model's EuroSAT map, scored with the built-in table; after: identity.
    assert held_out["before"]["classes"]["forest"]["compatible"] == ["Forest"]
    assert held_out["after"]["classes"]["forest"]["compatible"] == ["forest"]
    after = held_out["after"]["class_balanced_agreement"]
    assert f"after {after:.4f}" in out

    model_path = str(run_folder / "model.keras")
    summary = classify_image.main(["--image", generated["scene"], "--model", model_path,
                                   "--stride", "1", "--output-dir", str(tmp_path),
                                   "--probabilities", "all", "--no-progress"])  # fmt: skip
    assert set(summary["pixels"]) == {"farm", "forest"}
    names, colours = label_classes(tmp_path / "scene_label.tif")
    assert names == ["farm", "forest"]
    assert colours == [CLASS_COLOURS["AnnualCrop"], CLASS_COLOURS["Forest"]]
    probabilities = gdal.Open(str(tmp_path / "scene_prob.tif"))
    assert [probabilities.GetRasterBand(n).GetDescription() for n in (1, 2)] == ["farm", "forest"]
    assert (tmp_path / "scene_quicklook.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    report = evaluate_map.main(["--map", str(tmp_path / "scene_label.tif"), "--reference",
                                generated["reference"], "--bbox", *map(str, HOLDOUT),
                                "--output-dir", str(tmp_path / "eval")])  # fmt: skip
    assert report["table"] == IDENTITY_TABLE
    assert report["classes"]["forest"]["compatible"] == ["forest"]
    assert report["class_balanced_agreement"] == pytest.approx(after)
    assert set(report["classes"]["forest"]["called"]) <= {"farm", "forest"}
    assert (tmp_path / "eval" / "evaluation.png").is_file()


def test_own_classes_named_by_the_users_table(generated, tmp_path, capsys):
    """A table of own names: rows name the class each reference class becomes (two may
    share one) and its colour; 07 scores the map with the same table."""
    table = tmp_path / "own.csv"
    table.write_text("reference,class,colour\nforest,woodland,#123456\nfarm,open land\n"
                     "scrub,open land\n")  # fmt: skip
    # --classes auto (the default) takes the table's own classes.
    result = run(generated, "--run-name", "own-table", "--table", table, "--epochs", "1",
                 "--head-epochs", "0", "--no-own-classes-recipe")  # fmt: skip
    info = json.loads((generated["folder"] / "runs" / "own-table" / "model.json").read_text())
    assert info["class_names"] == ["woodland", "open land"]
    # woodland: the table's colour; open land: the fixed palette's first.
    assert info["class_colours"] == [[0x12, 0x34, 0x56], list(teaching.OWN_CLASS_PALETTE[0])]
    assert info["class_of_reference_class"] == {
        "farm": "open land", "forest": "woodland", "scrub": "open land",
    }  # fmt: skip
    assert result["training_windows"] == {"farm": 24, "forest": 24, "scrub": 24}
    assert result["held_out"]["after"]["classes"]["forest"]["compatible"] == ["woodland"]
    # The map before has EuroSAT's classes: the built-in table scores it.
    assert result["held_out"]["before"]["classes"]["forest"]["compatible"] == ["Forest"]


def test_own_classes_take_their_own_recipe_unless_told_not_to(generated, capsys):
    """With own classes 08 teaches with OWN_RECIPE (all layers, 5 epochs, one model, a
    head epoch first), whatever the flags of those settings say; --no-own-classes-recipe
    keeps the flags."""
    run(generated, "--run-name", "recipe", "--classes", "reference", "--no-maps",
        "--train-layers", "head")  # fmt: skip
    out = capsys.readouterr().out
    assert "the own-classes recipe: train_layers all, learning_rate 0.0002, epochs 5" in out
    assert "weights learn (all)" in out
    state = json.loads((generated["folder"] / "runs" / "recipe" / "state.json").read_text())
    assert [row["epoch"] for row in state["history"]] == [1, 2, 3, 4, 5]
    run(generated, "--run-name", "flags", "--classes", "reference", "--no-maps",
        "--train-layers", "head", "--no-own-classes-recipe")  # fmt: skip
    out = capsys.readouterr().out
    assert "own-classes recipe" not in out and "weights learn (head)" in out
    state = json.loads((generated["folder"] / "runs" / "flags" / "state.json").read_text())
    assert [row["epoch"] for row in state["history"]] == [1, 2]  # FAST's --epochs 2


def test_own_classes_bad_input_is_one_sentence(generated, tmp_path):
    mixed = tmp_path / "mixed.json"
    mixed.write_text(json.dumps({"forest": ["Forest"], "farm": ["open land"], "scrub": []}))
    expect_error(generated, "names both EuroSAT classes (Forest) and classes of its own "
                 "(open land)", "--classes", "reference", "--table", mixed)  # fmt: skip
    two = tmp_path / "two.json"
    two.write_text(json.dumps({"forest": ["wood", "trees"], "farm": ["open"], "scrub": []}))
    expect_error(generated, "with your own classes a row names one", "--classes", "reference",
                 "--table", two)  # fmt: skip
    own = tmp_path / "own.json"
    own.write_text(json.dumps({"forest": ["wood"], "farm": ["open"], "scrub": []}))
    expect_error(generated, "teach them with --classes reference", "--classes", "eurosat",
                 "--table", own)  # fmt: skip
    expect_error(generated, "no EuroSAT patch can be replayed", "--table", own, "--eurosat",
                 tmp_path)  # fmt: skip
    expect_error(generated, "reference class farm has", "--classes", "reference",
                 "--min-samples", "100000")  # fmt: skip
    expect_error(generated, "head epochs must be 0 or more", "--head-epochs", "-1")
    assert not (generated["folder"] / "runs" / "reference-scene").exists()


def test_07_refuses_a_map_of_own_classes_the_reference_does_not_name(tmp_path):
    from cnn_sentinel.evaluation import compatibility_table

    with pytest.raises(InputError, match="none is a reference class"):
        compatibility_table("auto", ["forest", "farm"], ["woodland", "open land"])
    name, table = compatibility_table("auto", ["forest", "farm", "scrub"], ["farm", "forest"])
    assert table == {"forest": ["forest"], "farm": ["farm"], "scrub": []}
    # A EuroSAT map keeps the built-in table.
    name, _ = compatibility_table("auto", ["forest", "farm"], ["AnnualCrop", "Forest"])
    assert name == "OpenStreetMap land use"


def test_the_tutorials_table_of_own_classes(tmp_path):
    from cnn_sentinel.evaluation import Reference

    table = tmp_path / "own.csv"
    table.write_text("reference,class,colour\nforest,woodland,#1e6e28\nfarm,open land,#e6c85a\n"
                     "meadow,open land\ngrass,open land\nwater,water,#2050a0\n"
                     "residential,built-up\nscrub,\nwetland,\n")  # fmt: skip
    names = ["farm", "forest", "grass", "meadow", "residential", "scrub", "water", "wetland"]
    reference = Reference(np.zeros((2, 2), np.int16), names, "osm")
    _, own = teaching.own_classes(reference, str(table))
    assert own.names == ["woodland", "open land", "water", "built-up"]
    # built-up: no colour in the table, no usual name: the palette's first.
    assert own.colours == [(30, 110, 40), (230, 200, 90), (32, 80, 160),
                           teaching.OWN_CLASS_PALETTE[0]]  # fmt: skip
    assert own.class_of == {
        "farm": "open land", "forest": "woodland", "grass": "open land",
        "meadow": "open land", "residential": "built-up", "water": "water",
    }  # fmt: skip
    assert not own.from_eurosat.any()
    # The built-in OSM table: the taught classes under their names; EuroSAT replay masks.
    _, built_in = teaching.own_classes(reference, "auto")
    assert built_in.names == ["farm", "forest", "grass", "meadow", "residential", "water"]
    pasture = built_in.from_eurosat[list(CLASS_NAMES).index("Pasture")]
    assert pasture.tolist() == [1, 0, 1, 1, 0, 0]  # farm, grass, meadow


def test_model_json_class_colours_are_one_rgb_per_class():
    from cnn_sentinel.model_info import ModelInfo

    info = ModelInfo.from_json({"class_names": ["a", "b"], "class_colours": [[1, 2, 3], [4, 5, 6]]})
    assert info.class_colours == [[1, 2, 3], [4, 5, 6]] and not info.own_classes
    assert ModelInfo.from_json({"class_names": ["a"]}).to_json()["class_colours"] == []
    for bad in ([[1, 2, 3]], [[1, 2, 3], [4, 5, 300]], [[1, 2, 3], "red"]):
        with pytest.raises(InputError, match=r"not one \[red, green, blue\] \(0-255\) per class"):
            ModelInfo.from_json({"class_names": ["a", "b"], "class_colours": bad})


@pytest.mark.slow
def test_real_t33uuu_own_classes_scored_with_the_identity_table(scenes_dir, tmp_path, capsys):
    result = teach_t33uuu(
        scenes_dir,
        tmp_path,
        "own",
        "--head-epochs",
        "0",
        "--classes",
        "reference",
        "--no-own-classes-recipe",
    )
    info = json.loads((tmp_path / "own" / "model.json").read_text())
    taught = ["farm", "forest", "grass", "meadow", "residential", "water"]
    assert info["class_names"] == taught and info["own_classes"] is True
    held_out = result["held_out"]
    # The map before (EuroSAT's classes) with the built-in table, as in the test above.
    assert held_out["before"]["class_balanced_agreement"] == pytest.approx(0.4305, abs=5e-4)
    assert held_out["after"]["classes"]["water"]["compatible"] == ["water"]
    assert set(held_out["after"]["not_assessed"]) == {"scrub", "wetland"}
    assert set(held_out["after"]["classes"]["forest"]["called"]) <= set(taught)
    assert "EuroSAT validation accuracy: not measured" in capsys.readouterr().out


def test_interpolation_at_0_is_the_start_model_and_at_1_the_taught_one(tmp_path):
    from cnn_sentinel import reference_training as teach

    start, taught = valid_model(3, seed=0), valid_model(3, seed=1)
    windows = np.random.default_rng(0).uniform(0, 3000, (6, 64, 64, 3)).astype(np.float32)
    start_weights, taught_weights = start.get_weights(), taught.get_weights()
    expected = {0.0: start(windows), 1.0: taught(windows)}
    mixed = valid_model(3, seed=2)
    for share, outputs in expected.items():
        mixed.set_weights(teach.interpolate_weights(start_weights, taught_weights, share))
        np.testing.assert_array_equal(np.asarray(mixed(windows)), np.asarray(outputs))
    halfway = teach.interpolate_weights(start_weights, taught_weights, 0.5)
    # Every weight, the batch-norm moving statistics included, half way.
    names = [weight.path for weight in start.weights]
    assert any("moving_variance" in name for name in names)
    for name, before, after, middle in zip(
        names, start_weights, taught_weights, halfway, strict=True
    ):
        np.testing.assert_allclose(middle, (before + after) / 2, rtol=1e-6, err_msg=name)


def test_teaching_loss_with_distillation_targets():
    import keras

    from cnn_sentinel import reference_training as teach

    probabilities = np.array([[0.1, 0.6, 0.3], [0.5, 0.25, 0.25], [0.2, 0.2, 0.6]], np.float32)
    mask = np.array([[0, 1, 1], [1, 0, 0], [0, 0, 0]], np.float32)
    soft = np.array([[0, 0, 0], [0.2, 0.3, 0.1], [0.7, 0.2, 0.1]], np.float32)
    targets = teach.distillation_targets(mask, soft, np.array([1.0, 0.4, 0.0]))
    assert targets.shape == (3, 7)
    loss = np.asarray(teach.teaching_loss(keras.ops.array(targets), probabilities))
    expected = [
        -np.log(0.9),
        -0.4 * np.log(0.5) - (0.2 * np.log(0.5) + 0.3 * np.log(0.25) + 0.1 * np.log(0.25)),
        -(0.7 * np.log(0.2) + 0.2 * np.log(0.2) + 0.1 * np.log(0.6)),
    ]
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    # A mask alone (classes wide) is the compatible-class loss.
    plain = np.asarray(teach.teaching_loss(keras.ops.array(mask[:2]), probabilities[:2]))
    np.testing.assert_allclose(plain, [-np.log(0.9), -np.log(0.5)], rtol=1e-5)
    accuracy = np.asarray(teach.teaching_accuracy(keras.ops.array(targets), probabilities))
    # Row 3 has no mask: right when the best class is the soft target's best (0; it is 2).
    np.testing.assert_array_equal(accuracy, [1, 1, 0])


def test_distillation_targets_are_the_start_models_probabilities(generated):
    from types import SimpleNamespace

    model = valid_model(3, seed=0)
    windows = np.random.default_rng(1).uniform(0, 3000, (7, 64, 64, 3)).astype(np.uint16)
    start = model.predict(windows.astype(np.float32), verbose=0)
    first, second = np.argsort(start[:4].mean(axis=0))[-2:]
    targets = np.zeros((7, 10), np.float32)
    targets[:4, first] = targets[:4, second] = 1  # scene windows: two compatible classes
    targets[4:, 7] = 1  # the 3 replayed EuroSAT patches: their label
    settings = SimpleNamespace(distill=0.75, distill_reference=0.5, distill_scene=0, seed=0)
    same, wide = train_on_reference.distillation(
        settings, model, None, None, None, windows, targets, 3, {}
    )
    assert same is windows and wide.shape == (7, 21)
    np.testing.assert_array_equal(wide[:, :10], targets)
    np.testing.assert_allclose(wide[4:, 10:20], 0.75 * start[4:], rtol=1e-5)
    # The scene's windows: the start model's probabilities of their two classes, summing to 0.5.
    share = start[:4, first] / (start[:4, first] + start[:4, second])
    np.testing.assert_allclose(wide[:4, 10 + first], 0.5 * share, rtol=1e-5)
    np.testing.assert_allclose(wide[:4, 10 + second], 0.5 * (1 - share), rtol=1e-5)
    assert np.count_nonzero(wide[:4, 10:20]) == 8
    np.testing.assert_array_equal(wide[:, 20], [1, 1, 1, 1, 0.25, 0.25, 0.25])


def test_distillation_on_the_scene_and_interpolation_in_a_run(generated):
    import keras

    result = run(generated, "--run-name", "distil", "--distill-scene", "10",
                 "--interpolate", "0", "--no-maps", "--epochs", "1")  # fmt: skip
    assert result["training_windows"] == {"farm": 24, "forest": 24, "distilled scene": 10}
    taught = keras.saving.load_model(generated["folder"] / "runs" / "distil" / "model.keras")
    start = keras.saving.load_model(generated["model"])
    # --interpolate 0 saves the start model's weights exactly.
    for before, after in zip(start.get_weights(), taught.get_weights(), strict=True):
        np.testing.assert_array_equal(before, after)


def test_l2_sp_penalty_is_the_squared_distance_to_the_start_weights():
    from cnn_sentinel import reference_training as teach

    model = valid_model(3, seed=0)
    teach.pull_to_start(model, 0.5)
    assert float(sum(model.losses)) == 0.0
    moved = model.trainable_weights[0]
    moved.assign(moved + 0.1)
    expected = 0.5 * 0.01 * np.prod(moved.shape)
    assert float(sum(model.losses)) == pytest.approx(expected, rel=1e-4)
    windows = np.random.default_rng(2).uniform(0, 3000, (5, 64, 64, 3)).astype(np.uint16)
    np.testing.assert_allclose(
        teach.predict_windows(model, windows, chunk=2),
        model.predict(windows.astype(np.float32), verbose=0),
        rtol=1e-5,
    )


def test_head_epochs_train_the_head_alone_before_the_first_epoch():
    from types import SimpleNamespace

    from cnn_sentinel import reference_training as teach

    model = valid_model(3, seed=0)
    windows = np.random.default_rng(3).uniform(0, 3000, (16, 64, 64, 3)).astype(np.uint16)
    targets = teach.one_hot(np.arange(16) % 10, 10)
    settings = SimpleNamespace(
        head_epochs=1, head_learning_rate=0.01, batch_size=8, augment=True, seed=0,
        progress=False, train_layers="all", epochs=2,
    )  # fmt: skip
    teach.set_trainable(model, "all")
    before = [weight.numpy().copy() for weight in model.weights]
    head = {weight.path for weight in teach.flat_layers(model)[-1].weights}
    assert head
    train_on_reference.fit_head_first(settings, model, windows, targets, {"epoch": 1})
    for weight, start in zip(model.weights, before, strict=True):
        np.testing.assert_array_equal(weight.numpy(), start)  # resumed: nothing again
    train_on_reference.fit_head_first(settings, model, windows, targets, {"epoch": 0})
    for weight, start in zip(model.weights, before, strict=True):
        changed = not np.array_equal(weight.numpy(), start)
        assert changed == (weight.path in head), weight.path
    # The layers of TRAIN_LAYERS learn again afterwards.
    learning = [weight.path for weight in model.trainable_weights]
    teach.set_trainable(model, "all")
    assert learning == [weight.path for weight in model.trainable_weights]
    assert len(learning) > len(head)


SOUP_RUN = ["--run-name", "soup", "--soup", "2", "--no-maps", "--epochs", "1", "--interpolate", "1"]


def test_soup_averages_its_members_and_resumes_each_once(generated):
    import keras

    from cnn_sentinel import reference_training as teach

    run(generated, *SOUP_RUN)
    folder = generated["folder"] / "runs" / "soup"
    state = json.loads((folder / "state.json").read_text())
    assert [row["epoch"] for row in state["history"]] == [1, 2] and state["finished"]
    members = []
    for member in range(2):
        model = keras.saving.load_model(generated["model"], compile=False)
        model.load_weights(folder / "checkpoints" / f"member-{member}.weights.h5")
        members.append(model.get_weights())
    soup = keras.saving.load_model(folder / "model.keras").get_weights()
    assert not np.array_equal(members[0][-2], members[1][-2])  # two seeds, two models
    for weight, first, second in zip(soup, members[0], members[1], strict=True):
        np.testing.assert_allclose(weight, (first + second) / 2, rtol=1e-6, atol=1e-7)
    average = teach.average_weights([[np.array([1.0, 2.0])], [np.array([3.0, 6.0])]])
    np.testing.assert_array_equal(average[0], [2.0, 4.0])
    # Stopped after the first member: the second is taught, the first is not again.
    (folder / "checkpoints" / "member-1.weights.h5").unlink()
    state.update(epoch=1, finished=False, history=state["history"][:1])
    (folder / "state.json").write_text(json.dumps(state))
    run(generated, *SOUP_RUN)
    state = json.loads((folder / "state.json").read_text())
    assert [row["epoch"] for row in state["history"]] == [1, 2] and state["finished"]
    # The same soup up to dropout's random state, which in one run goes on from member to
    # member and in a resumed one starts afresh.
    again = keras.saving.load_model(folder / "model.keras").get_weights()
    for weight, before in zip(again, soup, strict=True):
        np.testing.assert_allclose(weight, before, rtol=0, atol=2e-3)


def test_interpolation_benchmark_share_0_and_1_give_the_runs_before_and_after(
    generated, rgb_split, tmp_path
):
    sweep = load_script("benchmarks/teach_interpolation.py", "teach_interpolation")
    result = run(generated, "--run-name", "sweep", "--eurosat", rgb_split)
    rows = sweep.main(["--run", str(generated["folder"] / "runs" / "sweep"), "--shares", "0",
                       "1", "--output-dir", str(tmp_path), "--no-progress"])  # fmt: skip
    held_out, eurosat = result["held_out"], result["eurosat_validation_accuracy"]
    for row, when in zip(rows, ("before", "after"), strict=True):
        assert row["balanced"] == pytest.approx(held_out[when]["class_balanced_agreement"])
        assert row["eurosat"] == pytest.approx(eurosat[when])
