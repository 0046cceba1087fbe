"""Tests of 07_evaluate_map.py: agreements worked out by hand on generated maps and
references (in other CRSs and formats), every bad input, and the real references.

The generated map is 20 x 20 pixels of 10 m in UTM 33N: Forest in columns 0-9,
AnnualCrop in 10-19, rows 0-1 Cloud and row 19 nodata. Rectangles are given by
their first and last row and column, with edges on pixel edges, so every pixel
centre is 5 m from any edge, whatever the CRS the reference is stored in.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from osgeo import gdal, ogr, osr
from script_modules import load_script

from cnn_sentinel.errors import InputError
from image_functions import CLASS_NAMES

REPO_ROOT = Path(__file__).resolve().parent.parent
SCRIPT = REPO_ROOT / "07_evaluate_map.py"
evaluate_map = load_script(SCRIPT.name, "evaluate_map")

MAP_EPSG = 32633
ORIGIN_X, ORIGIN_Y, PIXEL = 330000.0, 5820000.0, 10.0
FOREST, CROP = CLASS_NAMES.index("Forest"), CLASS_NAMES.index("AnnualCrop")
# fclass -> rectangles (first row, last row, first column, last column) of the OSM-like reference.
OSM_LIKE = {
    "forest": [(2, 11, 2, 7), (18, 19, 5, 6)],  # 60 Forest; 2 Forest + 2 nodata
    "farm": [(4, 7, 8, 13)],  # 8 Forest + 16 AnnualCrop, 4 of them shared with meadow
    "meadow": [(6, 9, 12, 15)],  # 16 AnnualCrop, 4 shared with farm
    "water": [(0, 3, 12, 17)],  # 12 Cloud + 12 AnnualCrop
    "scrub": [(16, 19, 0, 3)],  # not assessed
}


def write_label_map(path: Path, labels: np.ndarray, georeferenced: bool = True) -> Path:
    """A label GeoTIFF as 06 writes it: Byte, nodata 255, class names as category names."""
    dataset = gdal.GetDriverByName("GTiff").Create(str(path), *labels.shape[::-1], 1, gdal.GDT_Byte)
    if georeferenced:
        dataset.SetGeoTransform((ORIGIN_X, PIXEL, 0.0, ORIGIN_Y, 0.0, -PIXEL))
        srs = osr.SpatialReference()
        srs.ImportFromEPSG(MAP_EPSG)
        dataset.SetProjection(srs.ExportToWkt())
    band = dataset.GetRasterBand(1)
    band.SetNoDataValue(255)
    band.WriteArray(labels)
    band.SetCategoryNames([*CLASS_NAMES, *[""] * (254 - len(CLASS_NAMES)), "Cloud"])
    dataset = None
    return path


def generated_labels() -> np.ndarray:
    labels = np.full((20, 20), CROP, np.uint8)
    labels[:, :10] = FOREST
    labels[:2] = 254
    labels[19] = 255
    return labels


def rectangle(first_row: int, last_row: int, first_col: int, last_col: int) -> ogr.Geometry:
    """The rectangle over those pixels, in the map's CRS."""
    left, right = ORIGIN_X + PIXEL * first_col, ORIGIN_X + PIXEL * (last_col + 1)
    top, bottom = ORIGIN_Y - PIXEL * first_row, ORIGIN_Y - PIXEL * (last_row + 1)
    ring = f"{left} {top}, {right} {top}, {right} {bottom}, {left} {bottom}, {left} {top}"
    return ogr.CreateGeometryFromWkt(f"POLYGON (({ring}))")


def pixel_point(row: int, col: int) -> ogr.Geometry:
    """A point inside that pixel, off its centre."""
    x, y = ORIGIN_X + PIXEL * (col + 0.3), ORIGIN_Y - PIXEL * (row + 0.6)
    return ogr.CreateGeometryFromWkt(f"POINT ({x} {y})")


def write_vector(path: Path, driver: str, epsg: int, layers: dict, field: str | None) -> Path:
    """layers: layer name -> [(class, geometry in the map's CRS)], stored in `epsg`;
    the class goes into `field`, or only into the layer name when field is None."""
    source, target = osr.SpatialReference(), osr.SpatialReference()
    source.ImportFromEPSG(MAP_EPSG)
    target.ImportFromEPSG(epsg)
    for srs in (source, target):
        srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    transform = osr.CoordinateTransformation(source, target)
    dataset = ogr.GetDriverByName(driver).CreateDataSource(str(path))
    for layer_name, features in layers.items():
        layer = dataset.CreateLayer(layer_name, target, ogr.wkbUnknown)
        if field:
            layer.CreateField(ogr.FieldDefn(field, ogr.OFTString))
        for class_name, geometry in features:
            feature = ogr.Feature(layer.GetLayerDefn())
            if field and class_name is not None:  # None: the field left NULL
                feature.SetField(field, class_name)
            geometry = geometry.Clone()
            geometry.Transform(transform)
            feature.SetGeometry(geometry)
            layer.CreateFeature(feature)
    dataset = None
    return path


def osm_like(folder: Path, extra: dict | None = None) -> Path:
    """The OSM-like reference as GeoJSON in WGS84 (longitude, latitude), field fclass."""
    classes = {**OSM_LIKE, **(extra or {})}
    features = [(name, rectangle(*box)) for name, boxes in classes.items() for box in boxes]
    return write_vector(folder / "osm.geojson", "GeoJSON", 4326, {"osm": features}, "fclass")


@pytest.fixture
def generated_map(tmp_path) -> Path:
    return write_label_map(tmp_path / "scene_label.tif", generated_labels())


def run(*argv: object) -> dict:
    return evaluate_map.main([str(value) for value in argv])


def test_agreements_by_hand_with_a_reference_in_another_crs(generated_map, tmp_path, capsys):
    report = run("--map", generated_map, "--reference", osm_like(tmp_path),
                 "--output-dir", tmp_path / "out")  # fmt: skip
    classes = report["classes"]
    assert report["table"] == "OpenStreetMap land use"
    assert classes["forest"] | {"called": None} == {
        "pixels": 62, "agreed": 62, "agreement": 1.0, "compatible": ["Forest"],
        "called": None, "cloud": 0, "nodata": 2,
    }  # fmt: skip
    assert (classes["farm"]["pixels"], classes["farm"]["agreed"]) == (20, 12)
    assert classes["farm"]["called"] == {"AnnualCrop": 0.6, "Forest": 0.4}
    assert (classes["meadow"]["pixels"], classes["meadow"]["agreement"]) == (12, 0.0)
    assert (classes["water"]["pixels"], classes["water"]["cloud"]) == (12, 12)
    assert classes["water"]["called"] == {"AnnualCrop": 1.0}
    assert report["not_assessed"] == {"scrub": 16}
    assert report["left_out"] == {"cloud": 12, "nodata": 2, "conflicting": 4, "not_assessed": 16}
    assert report["area_weighted_agreement"] == pytest.approx(74 / 106)
    assert report["class_balanced_agreement"] == pytest.approx(0.4)
    assert "class-balanced agreement 0.4000" in capsys.readouterr().out.splitlines()
    written = json.loads((tmp_path / "out" / "evaluation.json").read_text())
    assert written["class_balanced_agreement"] == pytest.approx(0.4)
    with open(tmp_path / "out" / "evaluation.png", "rb") as picture:
        assert picture.read(8) == b"\x89PNG\r\n\x1a\n"


def test_layer_per_class_geopackage_picks_the_aberystwyth_table(generated_map, tmp_path):
    far_away = rectangle(-500, -490, 0, 5)
    layers = {
        "cls_forest_smpls": [("", rectangle(2, 11, 2, 7))],  # 60 Forest
        "cls_water_smpls": [("", rectangle(12, 15, 12, 15))],  # 16 AnnualCrop
        "cls_grass_smpls": [("", far_away)],
    }
    reference = write_vector(tmp_path / "samples.gpkg", "GPKG", 3035, layers, None)
    report = run("--map", generated_map, "--reference", reference, "--output-dir", tmp_path,
                 "--no-picture")  # fmt: skip
    assert report["table"] == "Aberystwyth hand-drawn layers"
    assert report["reference_classes_from"] == "layer names"
    assert {name: entry["agreement"] for name, entry in report["classes"].items()} == {
        "cls_forest_smpls": 1.0,
        "cls_water_smpls": 0.0,
    }
    assert report["class_balanced_agreement"] == 0.5
    assert not (tmp_path / "evaluation.png").exists()


def test_points_take_the_pixel_under_them_with_a_csv_table(generated_map, tmp_path):
    points = [("tree", pixel_point(*at)) for at in [(3, 3), (5, 5), (8, 12), (0, 3)]]
    points += [("crop", pixel_point(*at)) for at in [(10, 15), (12, 2)]]
    reference = write_vector(tmp_path / "points.gpkg", "GPKG", 3857, {"points": points}, "kind")
    table = tmp_path / "table.csv"
    table.write_text("reference class,EuroSAT classes\ntree,Forest\ncrop,AnnualCrop;PermanentCrop")
    report = run("--map", generated_map, "--reference", reference, "--table", table,
                 "--reference-field", "kind", "--output-dir", tmp_path)  # fmt: skip
    tree, crop = report["classes"]["tree"], report["classes"]["crop"]
    assert (tree["pixels"], tree["agreed"], tree["cloud"]) == (3, 2, 1)
    assert (crop["pixels"], crop["agreed"]) == (2, 1)
    assert report["class_balanced_agreement"] == pytest.approx((2 / 3 + 1 / 2) / 2)


def test_json_table_and_a_class_raster_reference(generated_map, tmp_path):
    table = tmp_path / "table.json"
    compatible = {"forest": "Forest", "farm": "AnnualCrop", "meadow": ["AnnualCrop"]}
    table.write_text(json.dumps({**compatible, "water": [], "scrub": []}))
    report = run("--map", generated_map, "--reference", osm_like(tmp_path), "--table", table,
                 "--output-dir", tmp_path / "json")  # fmt: skip
    assert report["class_balanced_agreement"] == pytest.approx((1 + 0.6 + 1) / 3)
    assert report["not_assessed"] == {"water": 24, "scrub": 16}

    values = np.full((20, 20), 255, np.uint8)
    values[:, :5], values[:, 15:] = 0, 1
    raster = write_label_map(tmp_path / "reference.tif", values)
    dataset = gdal.Open(str(raster), gdal.GA_Update)
    dataset.GetGeoTransform()  # GDAL 3.6 reads the .aux.xml on this first query
    dataset.GetRasterBand(1).SetCategoryNames(["forest", "farm"])
    dataset = None
    report = run("--map", generated_map, "--reference", raster, "--output-dir", tmp_path / "r")
    assert report["reference_classes_from"] == "raster values"
    forest, farm = report["classes"]["forest"], report["classes"]["farm"]
    assert (forest["pixels"], forest["cloud"], forest["nodata"], forest["agreement"]) == (
        85, 10, 5, 1.0,
    )  # fmt: skip
    assert (farm["pixels"], farm["agreement"]) == (85, 1.0)


def test_a_float_reference_with_nan_as_no_data(generated_map, tmp_path):
    """A Float32 class raster whose no data is NaN (declared, or only present): NaN
    pixels are no reference, the whole-number values are classes."""
    values = np.full((20, 20), np.nan, np.float32)
    values[:, :5], values[:, 15:] = 0.0, 1.0
    table = tmp_path / "table.json"
    table.write_text(json.dumps({"0": ["Forest"], "1": ["AnnualCrop"]}))
    for declared in (True, False):
        raster = tmp_path / f"floats_{declared}.tif"
        dataset = gdal.GetDriverByName("GTiff").Create(str(raster), 20, 20, 1, gdal.GDT_Float32)
        dataset.SetGeoTransform((ORIGIN_X, PIXEL, 0.0, ORIGIN_Y, 0.0, -PIXEL))
        srs = osr.SpatialReference()
        srs.ImportFromEPSG(MAP_EPSG)
        dataset.SetProjection(srs.ExportToWkt())
        if declared:
            dataset.GetRasterBand(1).SetNoDataValue(float("nan"))
        dataset.GetRasterBand(1).WriteArray(values)
        dataset = None
        report = run("--map", generated_map, "--reference", raster, "--table", table,
                     "--output-dir", tmp_path / str(declared), "--no-picture")  # fmt: skip
        forest, crop = report["classes"]["0"], report["classes"]["1"]
        assert (forest["pixels"], forest["cloud"], forest["nodata"]) == (85, 10, 5)
        assert (forest["agreement"], crop["pixels"], crop["agreement"]) == (1.0, 85, 1.0)
    values[3, 3] = 0.5
    halves = write_label_map(tmp_path / "unused.tif", generated_labels())
    dataset = gdal.GetDriverByName("GTiff").Create(str(halves), 20, 20, 1, gdal.GDT_Float32)
    dataset.SetGeoTransform((ORIGIN_X, PIXEL, 0.0, ORIGIN_Y, 0.0, -PIXEL))
    dataset.GetRasterBand(1).WriteArray(values)
    dataset = None
    expect_error("holds 0.5, not a whole number", "--map", generated_map, "--reference",
                 halves, "--table", table, "--output-dir", tmp_path / "halves")  # fmt: skip


def test_an_empty_layer_or_a_null_class_field_says_what_is_wrong(generated_map, tmp_path):
    empty = write_vector(tmp_path / "empty.gpkg", "GPKG", 4326, {"osm": []}, "fclass")
    expect_error(f"reference {empty} has no features (layer osm is empty).",
                 "--map", generated_map, "--reference", empty)  # fmt: skip
    nulls = write_vector(tmp_path / "nulls.gpkg", "GPKG", 4326,
                         {"osm": [(None, rectangle(2, 5, 2, 5)),
                                  (None, rectangle(8, 9, 2, 5))]}, "fclass")  # fmt: skip
    expect_error(f"reference {nulls}: field fclass is empty (NULL) in all 2 features, so "
                 "none has a class; name the field that holds it with --reference-field "
                 "(its fields: fclass).", "--map", generated_map, "--reference", nulls)  # fmt: skip


def test_a_scene_that_does_not_overlap_the_map_is_refused(generated_map, tmp_path):
    scene = tmp_path / "elsewhere.tif"
    dataset = gdal.GetDriverByName("GTiff").Create(str(scene), 20, 20, 3, gdal.GDT_UInt16)
    dataset.SetGeoTransform((ORIGIN_X + 50_000, PIXEL, 0.0, ORIGIN_Y, 0.0, -PIXEL))
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(MAP_EPSG)
    dataset.SetProjection(srs.ExportToWkt())
    for band in (1, 2, 3):
        dataset.GetRasterBand(band).Fill(1000 * band)
    dataset = None
    output = tmp_path / "out"
    expect_error(f"scene {scene} does not overlap map {generated_map}",
                 "--map", generated_map, "--reference", osm_like(tmp_path), "--scene", scene,
                 "--output-dir", output)  # fmt: skip
    assert not output.exists() or not list(output.iterdir())


def expect_error(message: str, *argv: object) -> None:
    with pytest.raises(InputError) as error:
        run(*argv)
    assert message in str(error.value)


def test_map_errors(tmp_path):
    reference = osm_like(tmp_path)
    expect_error(f"map {tmp_path / 'none.tif'} does not exist.",
                 "--map", tmp_path / "none.tif", "--reference", reference)  # fmt: skip
    floats = tmp_path / "floats.tif"
    gdal.GetDriverByName("GTiff").Create(str(floats), 4, 4, 1, gdal.GDT_Float32)
    expect_error("is not a label map", "--map", floats, "--reference", reference)
    plain = tmp_path / "plain.tif"
    gdal.GetDriverByName("GTiff").Create(str(plain), 4, 4, 1, gdal.GDT_Byte)
    expect_error("has no class names", "--map", plain, "--reference", reference)
    bare = write_label_map(tmp_path / "bare.tif", generated_labels(), georeferenced=False)
    expect_error("has no georeference", "--map", bare, "--reference", reference)


def test_reference_and_table_errors(generated_map, tmp_path):
    far = write_vector(tmp_path / "far.gpkg", "GPKG", 4326,
                       {"far": [("forest", rectangle(-900, -890, 0, 5))]}, "fclass")  # fmt: skip
    expect_error("does not overlap map", "--map", generated_map, "--reference", far)
    reference = osm_like(tmp_path)
    expect_error("has no field 'kind' in layer osm; its fields are: fclass.", "--map",
                 generated_map, "--reference", reference, "--reference-field", "kind")  # fmt: skip
    unknown = write_vector(tmp_path / "park.gpkg", "GPKG", 4326,
                           {"osm": [("park", rectangle(2, 5, 2, 5)),
                                    ("forest", rectangle(8, 9, 2, 5))]}, "fclass")  # fmt: skip
    expect_error("reference class 'park' is missing from the built-in OpenStreetMap land use",
                 "--map", generated_map, "--reference", unknown)  # fmt: skip
    partial = tmp_path / "partial.json"
    partial.write_text('{"forest": ["Forest"], "farm": [], "meadow": [], "water": []}')
    expect_error(f"reference class 'scrub' is missing from table {partial}.",
                 "--map", generated_map, "--reference", reference, "--table", partial)  # fmt: skip
    broken = tmp_path / "broken.json"
    broken.write_text('{"forest": ["Forest"')
    expect_error(f"table {broken} cannot be read as a compatibility table",
                 "--map", generated_map, "--reference", reference, "--table", broken)  # fmt: skip
    typo = tmp_path / "typo.csv"
    typo.write_text("forest,Forrest\n")
    expect_error("names Forrest, not a class of the map",
                 "--map", generated_map, "--reference", reference, "--table", typo)  # fmt: skip
    expect_error("scene bands 3,2 must be three band numbers",
                 "--map", generated_map, "--reference", reference,
                 "--scene", generated_map, "--scene-bands", "3,2")  # fmt: skip


def test_existing_outputs_are_refused_in_one_sentence_and_nothing_is_written(
    generated_map, tmp_path
):
    reference = osm_like(tmp_path)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "evaluation.png").write_bytes(b"mine")
    argv = ["--map", generated_map, "--reference", reference, "--output-dir", tmp_path / "out"]
    command = [sys.executable, str(SCRIPT), *map(str, argv)]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"error: output {tmp_path / 'out' / 'evaluation.png'} already exists; "
        "pass --overwrite to replace it."
    )
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == ["evaluation.png"]
    run(*argv, "--overwrite")
    assert (tmp_path / "out" / "evaluation.json").exists()
    assert (tmp_path / "out" / "evaluation.png").read_bytes() != b"mine"


# ---------------------------------------------------------------------------
# The real references (../shared/data/reference), beside the real scenes.
# ---------------------------------------------------------------------------

T33UUU_SCENE = "sentinel2_l1c_T33UUU_20170216_13band_1536x768.tif"
OSM_REFERENCE = Path("reference", "T33UUU_osm", "T33UUU_osm_landuse_water.gpkg")
ABERYSTWYTH = Path("reference", "aberystwyth")
# The map class the test map gives each OSM class (one of its compatible ones).
OSM_TO_MAP = {
    "forest": "Forest", "water": "River", "residential": "Highway", "farm": "PermanentCrop",
    "meadow": "HerbaceousVegetation", "grass": "Pasture", "scrub": "Forest", "wetland": "SeaLake",
}  # fmt: skip


def real_reference(scenes_dir: Path, relative: Path) -> Path:
    path = scenes_dir.parent / relative
    if not path.exists():
        pytest.skip(f"real reference {relative} not found")
    return path


def centres_inside(path: Path, shape: tuple[int, int], transform) -> dict[str, np.ndarray]:
    """Oracle, without GDAL's rasteriser: per fclass, the pixels whose centres lie inside
    one of its polygons (matplotlib's point-in-polygon; holes left out)."""
    from matplotlib.path import Path as Outline

    x0, width, _, y0, _, height = transform
    masks: dict[str, np.ndarray] = {}
    dataset = ogr.Open(str(path))  # keep: the layer needs it alive
    for feature in dataset.GetLayer(0):
        mask = masks.setdefault(feature.GetField("fclass"), np.zeros(shape, bool))
        geometry = feature.GetGeometryRef()
        parts = [geometry.GetGeometryRef(i) for i in range(geometry.GetGeometryCount())]
        for polygon in parts if geometry.GetGeometryName() == "MULTIPOLYGON" else [geometry]:
            rings = [np.array(polygon.GetGeometryRef(i).GetPoints())[:, :2]
                     for i in range(polygon.GetGeometryCount())]  # fmt: skip
            cols = np.arange(shape[1])
            rows = np.arange(shape[0])
            xs, ys = x0 + (cols + 0.5) * width, y0 + (rows + 0.5) * height
            left, right = rings[0][:, 0].min(), rings[0][:, 0].max()
            bottom, top = rings[0][:, 1].min(), rings[0][:, 1].max()
            cols, rows = cols[(xs > left) & (xs < right)], rows[(ys > bottom) & (ys < top)]
            if not len(cols) or not len(rows):
                continue
            grid_rows, grid_cols = np.meshgrid(rows, cols, indexing="ij")
            points = np.stack([x0 + (grid_cols + 0.5) * width, y0 + (grid_rows + 0.5) * height], -1)
            inside = Outline(rings[0]).contains_points(points.reshape(-1, 2))
            for hole in rings[1:]:
                inside &= ~Outline(hole).contains_points(points.reshape(-1, 2))
            mask[grid_rows.ravel()[inside], grid_cols.ravel()[inside]] = True
    return masks


def test_real_t33uuu_osm_pair_with_maps_whose_agreements_are_known(scenes_dir, tmp_path):
    reference = real_reference(scenes_dir, OSM_REFERENCE)
    scene = gdal.Open(str(scenes_dir / T33UUU_SCENE))
    shape, transform = (scene.RasterYSize, scene.RasterXSize), scene.GetGeoTransform()
    masks = centres_inside(reference, shape, transform)
    covering = sum(mask.astype(int) for mask in masks.values())
    labels = np.full(shape, CROP, np.uint8)
    for name, mask in masks.items():
        labels[mask & (covering == 1)] = CLASS_NAMES.index(OSM_TO_MAP[name])
    labels[:100] = 254
    labels[:, -50:] = 255

    def write(name: str, values: np.ndarray) -> Path:
        path = write_label_map(tmp_path / name, values)
        dataset = gdal.Open(str(path), gdal.GA_Update)
        dataset.SetGeoTransform(transform)
        dataset.SetProjection(scene.GetProjection())
        dataset = None
        return path

    report = run("--map", write("from_reference.tif", labels), "--reference", reference,
                 "--output-dir", tmp_path / "one",
                 "--scene", scenes_dir / T33UUU_SCENE)  # fmt: skip
    assessed = ["farm", "forest", "grass", "meadow", "residential", "water"]
    assert list(report["classes"]) == assessed
    for name in assessed:
        own = masks[name] & (covering == 1)
        assert report["classes"][name]["pixels"] == int((own & (labels < 10)).sum())
        assert report["classes"][name]["cloud"] == int((own & (labels == 254)).sum())
        assert report["classes"][name]["nodata"] == int((own & (labels == 255)).sum())
        assert report["classes"][name]["agreement"] == 1.0
    assert report["not_assessed"] == {
        name: int((masks[name] & (covering == 1)).sum()) for name in ("scrub", "wetland")
    }
    conflicting = sum((mask & (covering > 1)).astype(int) for mask in masks.values()) > 0
    assert report["left_out"]["conflicting"] == int(conflicting.sum())
    assert report["class_balanced_agreement"] == 1.0

    report = run("--map", write("forest.tif", np.full(shape, FOREST, np.uint8)),
                 "--reference", reference, "--output-dir", tmp_path / "two")  # fmt: skip
    pixels = {name: entry["pixels"] for name, entry in report["classes"].items()}
    assert pixels["forest"] == int((masks["forest"] & (covering == 1)).sum())
    assert report["class_balanced_agreement"] == pytest.approx(1 / 6)
    forest_share = pixels["forest"] / sum(pixels.values())
    assert report["area_weighted_agreement"] == pytest.approx(forest_share)


@pytest.mark.slow
def test_real_aberystwyth_classified_by_06_then_scored(scenes_dir, tmp_path, capsys):
    folder = real_reference(scenes_dir, ABERYSTWYTH)
    scene = folder / "sentinel2_l2a_aberystwyth_20210527_10band_324x339.tif"
    classify = [sys.executable, str(REPO_ROOT / "06_classify_image.py"), "--image", str(scene),
                "--bands", "3,2,1", "--output-dir", str(tmp_path), "--no-quicklook"]  # fmt: skip
    subprocess.run([*classify, "--no-progress"], check=True, capture_output=True)
    report = run("--map", tmp_path / f"{scene.stem}_label.tif",
                 "--reference", folder / "aber_reference_polygons.gpkg",
                 "--scene", scene, "--scene-bands", "3,2,1", "--output-dir", tmp_path)  # fmt: skip
    # The counts inside the subset that the data's README gives.
    assert {name: entry["pixels"] for name, entry in report["classes"].items()} == {
        "cls_forest_smpls": 270, "cls_urban_smpls": 617, "cls_water_smpls": 300,
    }  # fmt: skip
    assert 0.0 <= report["class_balanced_agreement"] <= 1.0
    assert "class-balanced agreement" in capsys.readouterr().out
    assert (tmp_path / "evaluation.png").exists()


def test_bbox_limits_the_assessment_to_the_pixels_centred_in_it(generated_map, tmp_path):
    # Columns 8-19 (x 330080-330200), rows 2-19 (y 5819800-5819980): centres at +5 m, so a
    # box from x 330081 (inside pixel 8, left of its centre 330085) takes columns 8-19.
    box = [330081, 5819800, 330200, 5819980]
    report = run("--map", generated_map, "--reference", osm_like(tmp_path), "--bbox", *box,
                 "--output-dir", tmp_path / "box")  # fmt: skip
    assert report["bbox"] == box
    assert report["bbox_pixels"] == [2, 8, 18, 12]
    classes = report["classes"]
    # forest's rectangles lie in columns 2-7 and 5-6: no pixel in the box.
    assert classes["forest"]["pixels"] == 0 and classes["forest"]["agreement"] is None
    # farm (rows 4-7, columns 8-13, minus the 4 shared with meadow): 2 Forest + 18 AnnualCrop,
    # of them in columns 8-9 Forest (8), 10-13 AnnualCrop (12, 4 of them conflicting).
    assert (classes["farm"]["pixels"], classes["farm"]["agreed"]) == (20, 12)
    assert (classes["meadow"]["pixels"], classes["meadow"]["agreement"]) == (12, 0.0)
    # water: rows 0-3, columns 12-17; rows 0-1 are outside the box: 12 AnnualCrop only.
    assert (classes["water"]["pixels"], classes["water"]["cloud"]) == (12, 0)
    assert report["class_balanced_agreement"] == pytest.approx((12 / 20 + 0 + 0) / 3)
    written = json.loads((tmp_path / "box" / "evaluation.json").read_text())
    assert written["bbox"] == box


def test_bbox_outside_the_map_is_one_sentence(generated_map, tmp_path):
    expect_error("holds no pixel of map", "--map", generated_map, "--reference",
                 osm_like(tmp_path), "--bbox", 0, 0, 10, 10)  # fmt: skip
    expect_error("is not XMIN YMIN XMAX YMAX", "--map", generated_map, "--reference",
                 osm_like(tmp_path), "--bbox", 330200, 5819800, 330081, 5819980)  # fmt: skip
    expect_error("must be four numbers", "--map", generated_map, "--reference",
                 osm_like(tmp_path), "--bbox", 1, 2, 3)  # fmt: skip


def isolated_share(labels: np.ndarray) -> float:
    """Share of the inner class pixels (not Cloud, not no data) whose four neighbours all
    carry another label."""
    centre = labels[1:-1, 1:-1]
    counted = centre < 254
    neighbours = [labels[:-2, 1:-1], labels[2:, 1:-1], labels[1:-1, :-2], labels[1:-1, 2:]]
    isolated = np.logical_and.reduce([neighbour != centre for neighbour in neighbours])
    return float((isolated & counted).sum() / counted.sum())


@pytest.mark.slow
def test_real_stride_1_maps_have_no_dither_and_score_no_lower(scenes_dir, tmp_path):
    """06's default ANTIALIAS at stride 1: at most 0.5 % isolated pixels on both real
    scenes (the raw pass: 4.2 % on Aberystwyth, 3.0 % on T33UUU), and Aberystwyth's
    agreements with its hand-drawn reference no lower than the raw pass's."""
    folder = real_reference(scenes_dir, ABERYSTWYTH)
    aberystwyth = folder / "sentinel2_l2a_aberystwyth_20210527_10band_324x339.tif"
    t33uuu = scenes_dir / T33UUU_SCENE
    runs = {
        "a": [aberystwyth, "--bands", "3,2,1", "--reflectance-scale", "1000"],
        "a_raw": [aberystwyth, "--bands", "3,2,1", "--reflectance-scale", "1000",
                  "--antialias", "1"],
        "t": [t33uuu],
    }  # fmt: skip
    labels = {}
    for name, (scene, *flags) in runs.items():
        command = [sys.executable, str(REPO_ROOT / "06_classify_image.py"), "--image", str(scene),
                   "--stride", "1", "--output-dir", str(tmp_path / name), "--no-quicklook",
                   "--no-progress", *flags]  # fmt: skip
        subprocess.run(command, check=True, capture_output=True)
        labels[name] = tmp_path / name / f"{scene.stem}_label.tif"
    assert isolated_share(gdal.Open(str(labels["a_raw"])).ReadAsArray()) > 0.02
    assert gdal.Open(str(labels["a"])).GetMetadata()["ANTIALIAS"] == "4"  # the record
    assert isolated_share(gdal.Open(str(labels["a"])).ReadAsArray()) <= 0.005
    assert isolated_share(gdal.Open(str(labels["t"])).ReadAsArray()) <= 0.005
    reports = {
        name: run("--map", labels[name], "--reference", folder / "aber_reference_polygons.gpkg",
                  "--output-dir", tmp_path / f"{name}_evaluation", "--no-picture")
        for name in ("a", "a_raw")
    }  # fmt: skip
    for measure in ("class_balanced_agreement", "area_weighted_agreement"):
        assert reports["a"][measure] >= reports["a_raw"][measure]
