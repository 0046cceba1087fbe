"""06 on STAC items and searches (cnn_sentinel/scene/stac.py), offline: a static catalog made
here (band COGs cut from the real T33UUU subset, or generated ones without ../shared), the
same COGs served on 127.0.0.1 with byte ranges, and a small STAC API answering /search."""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import (
    ServedFolder,
    cloudy_scene,
    read_raster,
    save_model,
    tiny_model,
    write_band_cogs,
    write_item,
    write_scene,
)
from osgeo import gdal, osr
from script_modules import load_script

from cnn_sentinel.errors import InputError
from cnn_sentinel.scene import geometry, reading, stac
from cnn_sentinel.scene.products import dn_offset_words
from image_functions import MS_BAND_NAMES, talk_constants

REPO_ROOT = Path(__file__).resolve().parent.parent
SCRIPT = REPO_ROOT / "06_classify_image.py"
REAL_SCENE = "sentinel2_l1c_T33UUU_20170216_13band_1536x768.tif"
# The part of the real scene the catalog holds (xoff, yoff, xsize, ysize), and its tiles.
CROP = (256, 128, 512, 384)
BLOCK = 64

classify_image = load_script(SCRIPT.name, "classify_image_stac")


def run(*argv: object) -> dict:
    return classify_image.main([str(value) for value in argv] + ["--no-progress"])


@pytest.fixture(scope="module")
def catalog(tmp_path_factory, request):
    """Band COGs (assets/), the 13-band GeoTIFF of the same assets (stack.tif), a static
    item with relative hrefs (items/<id>/<id>.json) and a tiny 13-band model."""
    folder = tmp_path_factory.mktemp("catalog")
    try:
        source = gdal.Translate(
            "", str(request.getfixturevalue("scenes_dir") / REAL_SCENE), format="VRT", srcWin=CROP
        )
    except pytest.skip.Exception:  # a clone without ../shared: a generated scene
        scene = cloudy_scene(CROP[3], CROP[2])
        source = gdal.Open(str(write_scene(folder / "generated.tif", scene)))
    files = write_band_cogs(folder / "assets", source, MS_BAND_NAMES, block=BLOCK)
    stack = gdal.BuildVRT("", [str(files[name]) for name in MS_BAND_NAMES], separate=True)
    for number, name in enumerate(MS_BAND_NAMES, start=1):
        stack.GetRasterBand(number).SetDescription(name)
    gdal.Translate(str(folder / "stack.tif"), stack, creationOptions=["COMPRESS=DEFLATE"])
    item = write_item(
        folder / "items" / "S2A_T33UUU_20170216" / "S2A_T33UUU_20170216.json",
        {name: f"../../assets/{name}.tif" for name in MS_BAND_NAMES},
        {"s2:processing_baseline": "02.04", "eo:cloud_cover": 12.5},
    )
    mean, std = talk_constants(13)
    model = save_model(tiny_model(13, mean, std), folder / "ms_run", MS_BAND_NAMES)
    transform = source.GetGeoTransform()
    box = [transform[0] + 1500, transform[3] - 2700, transform[0] + 2500, transform[3] - 1700]
    return {
        "folder": folder,
        "files": files,
        "stack": folder / "stack.tif",
        "item": item,
        "model": model,
        "box": box,
        "pixels": source.ReadAsArray(),
    }


def outputs(folder: Path, stem: str) -> tuple[np.ndarray, np.ndarray, tuple]:
    label = gdal.Open(str(folder / f"{stem}_label.tif"))
    return (
        label.ReadAsArray(),
        read_raster(folder / f"{stem}_prob.tif"),
        label.GetGeoTransform(),
    )


def lonlat_box(box, epsg: int = 32633) -> list[float]:
    """A UTM box as the longitude/latitude box of its corners."""
    utm, geographic = osr.SpatialReference(), osr.SpatialReference()
    utm.ImportFromEPSG(epsg)
    geographic.ImportFromEPSG(4326)
    for reference in (utm, geographic):
        reference.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    return list(osr.CoordinateTransformation(utm, geographic).TransformBounds(*box, 21))


def test_bands_are_found_by_key_name_or_common_name():
    import pystac

    def asset(bands=None, media_type="image/tiff; application=geotiff"):
        fields = {"eo:bands": bands} if bands is not None else {}
        return pystac.Asset("x.tif", media_type=media_type, extra_fields=fields)

    item = pystac.Item("i", None, None, __import__("datetime").datetime(2023, 6, 1), {})
    item.add_asset("blue", asset([{"name": "blue", "common_name": "blue"}]))  # Earth Search
    item.add_asset("blue-jp2", asset([{"name": "blue"}], "image/jp2"))  # its JPEG2000 twin
    item.add_asset("B8A", asset())  # Planetary Computer's keys
    item.add_asset("band_4", asset([{"name": "b4"}]))
    item.add_asset("B05_60m", asset([{"name": "B05"}]))  # the Copernicus catalog's resolutions
    item.add_asset("B05_20m", asset([{"name": "B05"}]))
    item.add_asset("rededge2", asset([{"common_name": "rededge"}]))
    item.add_asset("visual", asset([{"name": "red"}, {"name": "green"}, {"name": "blue"}]))
    item.add_asset("thumbnail", asset(media_type="image/jpeg"))
    found = stac.band_assets(item)
    assert sorted(found) == ["B02", "B04", "B05", "B06", "B8A"]
    assert found["B02"] is item.assets["blue"] and found["B05"] is item.assets["B05_20m"]
    assert stac.eurosat_band("B1") == "B01" and stac.eurosat_band("nir08") == "B8A"
    assert stac.eurosat_band("B13") is None and stac.eurosat_band("rededge") is None
    assert stac.gdal_path("https://a.b/c/B04.tif") == "/vsicurl/https://a.b/c/B04.tif"
    assert (
        stac.gdal_path("s3://sentinel-s2-l1c/tiles/B04.jp2")
        == "/vsis3/sentinel-s2-l1c/tiles/B04.jp2"
    )
    assert stac.gdal_path("file:///data/a%20b.tif") == "/data/a b.tif"


@pytest.mark.parametrize(
    ("properties", "raster", "expected"),
    [
        ({"s2:processing_baseline": "02.04"}, None, 0),
        ({"s2:processing_baseline": "05.09"}, None, -1000),  # Planetary Computer: no raster:bands
        ({}, {"scale": 0.0001, "offset": -0.1}, -1000),  # Copernicus, Earth Search
        ({"s2:processing_baseline": "05.09"}, {"scale": 0.0001, "offset": 0}, 0),
        ({"earthsearch:boa_offset_applied": True}, {"scale": 0.0001, "offset": -0.1}, 0),
    ],
)
def test_processing_baseline_offsets_as_products_have_them(properties, raster, expected):
    import pystac

    item = pystac.Item("i", None, None, __import__("datetime").datetime(2023, 6, 1), properties)
    fields = {"raster:bands": [raster]} if raster else {}
    item.add_asset("B04", pystac.Asset("B04.tif", extra_fields=fields))
    assert stac.band_offsets(item, stac.band_assets(item), "i") == {"B04": expected}


def test_assets_not_at_reflectance_x_10000_name_the_flag():
    import pystac

    item = pystac.Item("i", None, None, __import__("datetime").datetime(2023, 6, 1), {})
    fields = {"raster:bands": [{"scale": 0.001, "offset": -0.1}]}
    item.add_asset("red", pystac.Asset("B04.tif", extra_fields=fields))
    with pytest.warns(UserWarning, match="holds reflectance x 1000 .* --reflectance-scale 1000"):
        assert stac.band_offsets(item, stac.band_assets(item), "i") == {"B04": -100}


def test_a_baseline_04_item_reads_as_the_product_reader_does(catalog, tmp_path):
    files = write_band_cogs(
        tmp_path / "assets", gdal.Open(str(catalog["stack"])), MS_BAND_NAMES, offset=1000
    )
    item = write_item(
        tmp_path / "new.json", {name: str(files[name]) for name in MS_BAND_NAMES},
        {"s2:processing_baseline": "04.00"},
    )  # fmt: skip
    stack = reading.open_scene(item)
    assert np.array_equal(stack.ReadAsArray(), catalog["pixels"])
    assert dn_offset_words(stack) == ", digital numbers -1000 (processing baseline 04.00+)"
    assert reading.scene_band_names(stack) == MS_BAND_NAMES


def test_06_on_an_item_gives_the_labels_of_06_on_the_geotiff(catalog, tmp_path):
    common = ["--model", catalog["model"], "--stride", 8, "--bbox", *catalog["box"]]
    run("--image", catalog["item"], "--output-dir", tmp_path / "item", *common)
    run("--image", catalog["stack"], "--output-dir", tmp_path / "tif", *common)
    from_item = outputs(tmp_path / "item", "S2A_T33UUU_20170216")
    from_tif = outputs(tmp_path / "tif", "stack")
    assert from_item[0].shape == (100, 100)
    assert len(np.unique(from_item[0])) > 1
    for item_values, tif_values in zip(from_item, from_tif, strict=True):
        assert np.array_equal(item_values, tif_values, equal_nan=True)  # NaN: Cloud
    # The same box in longitude/latitude: the UTM box that holds it, on both.
    lonlat = ["--bbox", *lonlat_box(catalog["box"]), "--bbox-crs", "EPSG:4326"]
    common = ["--model", catalog["model"], "--stride", 8, *lonlat]
    run("--image", catalog["item"], "--output-dir", tmp_path / "item_ll", *common)
    run("--image", catalog["stack"], "--output-dir", tmp_path / "tif_ll", *common)
    labels, _, transform = outputs(tmp_path / "item_ll", "S2A_T33UUU_20170216")
    assert np.array_equal(labels, outputs(tmp_path / "tif_ll", "stack")[0])
    assert transform[0] <= catalog["box"][0] and transform[3] >= catalog["box"][3]
    assert labels.shape[0] >= 100 and labels.shape[1] >= 100


def box_tiles(path: Path, box_window) -> list[tuple[int, int]]:
    """Byte ranges [first, last] of the tiles of a COG that a pixel window touches, each
    with the 4-byte size in front of it, the 4-byte copy of its end behind it and the next
    tile's size, which GDAL reads along (COG's ghost area, BLOCK_LEADER/TRAILER)."""
    dataset = gdal.Open(str(path))
    band = dataset.GetRasterBand(1)
    xoff, yoff, xsize, ysize = box_window
    ranges = []
    for row in range(yoff // BLOCK, (yoff + ysize - 1) // BLOCK + 1):
        for col in range(xoff // BLOCK, (xoff + xsize - 1) // BLOCK + 1):
            offset = int(band.GetMetadataItem(f"BLOCK_OFFSET_{col}_{row}", "TIFF"))
            size = int(band.GetMetadataItem(f"BLOCK_SIZE_{col}_{row}", "TIFF"))
            ranges.append((offset - 4, offset + size + 7))
    return ranges


def test_only_the_blocks_of_the_box_are_read_over_http(catalog, tmp_path):
    with ServedFolder(catalog["folder"]) as served:
        item = write_item(
            tmp_path / "remote.json",
            {name: f"{served.url}/assets/{name}.tif" for name in MS_BAND_NAMES},
        )
        run("--image", item, "--model", catalog["model"], "--stride", 8,
            "--bbox", *catalog["box"], "--output-dir", tmp_path / "out")  # fmt: skip
    local = tmp_path / "local"
    run("--image", catalog["item"], "--model", catalog["model"], "--stride", 8,
        "--bbox", *catalog["box"], "--output-dir", local)  # fmt: skip
    remote_outputs = outputs(tmp_path / "out", "remote")
    for remote, here in zip(remote_outputs, outputs(local, "S2A_T33UUU_20170216"), strict=True):
        assert np.array_equal(remote, here, equal_nan=True)
    window = geometry.bbox_window(gdal.Open(str(catalog["stack"])), catalog["box"], "stack")
    assert window == (150, 170, 100, 100)
    outside, box_bytes = [], 0
    for name in MS_BAND_NAMES:
        tiles = box_tiles(catalog["files"][name], window)
        box_bytes += sum(last + 1 - first for first, last in tiles)
        reads = [
            (first, last) for path, first, last in served.requests if path.endswith(f"/{name}.tif")
        ]
        assert reads[0][0] == 0  # the header, read once when the asset is opened
        for first, last in reads[1:]:
            position = first  # the first byte of the read not yet found in a box tile
            for start, end in sorted(tiles):
                if start <= position <= end:
                    position = end + 1
            if position <= last:
                outside.append((name, first, last))
    assert not outside, f"bytes outside the box's tiles were read: {outside}"
    total = sum(path.stat().st_size for path in catalog["files"].values())
    header_bytes = 16384 * len(MS_BAND_NAMES)
    assert served.sent <= box_bytes + header_bytes < total


def test_remote_read_options_leave_local_side_files_alone(catalog, tmp_path):
    with ServedFolder(catalog["folder"]) as served:
        hrefs = {band: f"{served.url}/assets/{band}.tif" for band in ("B02", "B03", "B04")}
        item = write_item(tmp_path / "remote.json", hrefs)
        assert reading.open_scene(item).RasterCount == 3
    local = write_scene(tmp_path / "local.tif", np.ones((4, 4, 1), np.uint8))
    dataset = gdal.Open(str(local))
    dataset.SetMetadataItem("NOTE", "kept in local.tif.aux.xml")
    dataset = None
    assert gdal.Open(str(local)).GetMetadataItem("NOTE") == "kept in local.tif.aux.xml"


def test_an_item_url_is_fetched_its_relative_hrefs_resolved(catalog, tmp_path):
    with ServedFolder(catalog["folder"]) as served:
        url = f"{served.url}/items/S2A_T33UUU_20170216/S2A_T33UUU_20170216.json"
        run("--image", url, "--model", catalog["model"], "--stride", 8,
            "--bbox", *catalog["box"], "--output-dir", tmp_path)  # fmt: skip
    saved = json.loads((tmp_path / "S2A_T33UUU_20170216.json").read_text())
    assert saved["assets"]["B04"]["href"] == f"{served.url}/assets/B04.tif"
    local = tmp_path / "local"
    run("--image", catalog["item"], "--model", catalog["model"], "--stride", 8,
        "--bbox", *catalog["box"], "--output-dir", local)  # fmt: skip
    assert np.array_equal(
        outputs(tmp_path, "S2A_T33UUU_20170216")[0], outputs(local, "S2A_T33UUU_20170216")[0]
    )


def run_script(*argv: object, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *(str(value) for value in argv), "--no-progress"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
    )


@pytest.mark.slow
def test_a_dead_url_or_a_missing_asset_is_one_sentence_and_exit_2(catalog, tmp_path):
    with ServedFolder(catalog["folder"]) as served:
        dead = served.url  # nothing answers there once the server is closed
        hrefs = {name: f"{served.url}/assets/{name}.tif" for name in MS_BAND_NAMES}
        hrefs["B03"] = f"{served.url}/assets/gone.tif"
        item = write_item(tmp_path / "items" / "missing.json", hrefs)
        missing = run_script(
            "--image", item, "--model", catalog["model"], "--output-dir", tmp_path / "out"
        )
    gone = run_script(
        "--image",
        f"{dead}/item.json",
        "--model",
        catalog["model"],
        "--output-dir",
        tmp_path / "out",
    )
    for result, message in (
        (missing, f"band B03 of STAC item {item} cannot be read from {dead}/assets/gone.tif: "),
        (gone, f"STAC item {dead}/item.json cannot be read: "),
    ):
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"error: {message}"), result.stderr
        assert "Traceback" not in result.stderr
    assert "404" in missing.stderr
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["cut", "stall"])
def test_a_server_failing_midway_ends_06_in_one_sentence_and_the_rerun_finishes(
    catalog, tmp_path, fault
):
    common = ["--model", catalog["model"], "--stride", 8, "--bbox", *catalog["box"]]
    # A stalled transfer ends after GDAL_HTTP_LOW_SPEED_TIME seconds: the user's own
    # setting (here 1 s) wins over 06's.
    quick = {"GDAL_HTTP_LOW_SPEED_TIME": "1"}
    with ServedFolder(catalog["folder"], break_after=16, fault=fault) as served:
        item = remote_item(tmp_path / "items" / "far.json", served.url)
        failed = run_script("--image", item, *common, "--output-dir", tmp_path / "out", env=quick)
        assert failed.returncode == 2, failed.stderr
        lines = failed.stderr.strip().splitlines()
        message = BROKE_OFF.format(item=re.escape(str(item)), url=served.url, stem="far")
        assert len(lines) == 1 and re.fullmatch(f"error: {message}", lines[0]), failed.stderr
        assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []
        served.break_after = None  # the server is back
        again = run_script("--image", item, *common, "--output-dir", tmp_path / "out", env=quick)
    assert again.returncode == 0, again.stderr
    assert read_raster(tmp_path / "out" / "far_label.tif").shape == (100, 100)


def remote_item(path: Path, url: str) -> Path:
    """An item at `path` whose 13 band assets are the catalog's COGs served at `url`."""
    return write_item(path, {name: f"{url}/assets/{name}.tif" for name in MS_BAND_NAMES})


# The sentence of a band asset that broke off while it was read (after its header).
BROKE_OFF = (
    r"band B\d\d of STAC item {item} could not be read from {url}/assets/B\d\d\.tif "
    r"\(the connection was cut, the server stopped answering or kept failing\); "
    r"no output of {stem} was written: run the same command again once the server answers\."
)


def test_a_connection_cut_midway_is_one_sentence_and_the_rerun_finishes(catalog, tmp_path):
    gdal.VSICurlClearCache()
    common = ["--model", catalog["model"], "--stride", 8, "--bbox", *catalog["box"]]
    with ServedFolder(catalog["folder"], break_after=16) as served:
        item = remote_item(tmp_path / "broken.json", served.url)
        message = BROKE_OFF.format(item=re.escape(str(item)), url=served.url, stem="broken")
        with pytest.raises(InputError, match=f"^{message}$"):
            run("--image", item, *common, "--output-dir", tmp_path / "out")
        assert len(served.requests) > 16  # cut off while the tiles were read, after the headers
        left = sorted(path.name for path in tmp_path.joinpath("out").rglob("*"))
        assert left == []
        served.break_after = None  # the server is back: the same command finishes
        gdal.VSICurlClearCache()  # as a new process starts
        run("--image", item, *common, "--output-dir", tmp_path / "out")
    run("--image", catalog["item"], *common, "--output-dir", tmp_path / "local")
    for remote, here in zip(
        outputs(tmp_path / "out", "broken"),
        outputs(tmp_path / "local", "S2A_T33UUU_20170216"),
        strict=True,
    ):
        assert np.array_equal(remote, here, equal_nan=True)


@contextlib.contextmanager
def gdal_options(**values: str):
    """GDAL configuration options set for the block, as a user sets them, then restored."""
    before = {name: gdal.GetConfigOption(name) for name in values}
    try:
        for name, value in values.items():
            gdal.SetConfigOption(name, value)
        yield
    finally:
        for name, value in before.items():
            gdal.SetConfigOption(name, value)


def test_a_busy_server_is_asked_again_and_the_run_finishes(catalog, tmp_path):
    gdal.VSICurlClearCache()
    common = ["--model", catalog["model"], "--stride", 8, "--bbox", *catalog["box"]]
    # Every tile's range is answered HTTP 503 the first time: 06's GDAL_HTTP_MAX_RETRY asks
    # again (after the user's shorter GDAL_HTTP_RETRY_DELAY, to keep the test quick).
    with (
        ServedFolder(catalog["folder"], break_after=13, fault="busy") as served,
        gdal_options(GDAL_HTTP_RETRY_DELAY="0.05"),
    ):
        item = remote_item(tmp_path / "busy.json", served.url)
        run("--image", item, *common, "--output-dir", tmp_path / "out")
    assert served.faulted >= 13  # at least one range of each band was refused once
    run("--image", catalog["item"], *common, "--output-dir", tmp_path / "local")
    assert np.array_equal(
        outputs(tmp_path / "out", "busy")[0],
        outputs(tmp_path / "local", "S2A_T33UUU_20170216")[0],
    )


def test_http_options_are_the_process_defaults_unless_the_user_set_them(monkeypatch):
    names = list(stac.REMOTE_HTTP_OPTIONS)
    assert {"GDAL_HTTP_MAX_RETRY", "GDAL_HTTP_RETRY_DELAY", "GDAL_HTTP_LOW_SPEED_TIME"} <= set(
        names
    )
    before = {name: gdal.GetConfigOption(name) for name in names}
    try:
        for name in names:
            gdal.SetConfigOption(name, None)
            monkeypatch.delenv(name, raising=False)
        gdal.SetConfigOption("GDAL_HTTP_MAX_RETRY", "7")  # the user's own
        stac.use_remote_read_options(["/tmp/local.tif"])  # no remote file: nothing set
        assert gdal.GetConfigOption("GDAL_HTTP_RETRY_DELAY") is None
        stac.use_remote_read_options(["/vsicurl/http://127.0.0.1:9/B04.tif"])
        for name, value in stac.REMOTE_HTTP_OPTIONS.items():
            expected = "7" if name == "GDAL_HTTP_MAX_RETRY" else value
            assert gdal.GetConfigOption(name) == expected, name
    finally:
        for name, value in before.items():
            gdal.SetConfigOption(name, value)


def test_items_without_rgb_are_refused_and_level_2a_takes_the_rgb_model(catalog, tmp_path, capsys):
    relative = {name: str(catalog["files"][name]) for name in MS_BAND_NAMES}
    no_red = write_item(tmp_path / "no_red.json", {k: v for k, v in relative.items() if k != "B04"})
    with pytest.raises(
        InputError, match=r"no_red.json has no asset for band B04 \(its assets: B01"
    ):
        run("--image", no_red, "--model", catalog["model"], "--output-dir", tmp_path / "out")
    l2a = write_item(
        tmp_path / "S2B_L2A.json",
        {k: v for k, v in relative.items() if k != "B10"},
        collection="sentinel-2-l2a",
    )
    with pytest.raises(InputError, match=r"has 12 bands .* expects 13 bands: .*; it lacks B10"):
        run("--image", l2a, "--model", catalog["model"], "--output-dir", tmp_path / "out")
    run(
        "--image", l2a, "--stride", 16, "--bbox", *catalog["box"], "--output-dir", tmp_path / "auto"
    )
    banner = capsys.readouterr().out.splitlines()[0]
    assert "eurosat-rgb-resnet-valid-narrow" in banner
    assert "shipped RGB model: the scene lacks B10 (Level-2A has no cirrus band)" in banner
    assert read_raster(tmp_path / "auto" / "S2B_L2A_label.tif").shape == (100, 100)


def stac_api(served_url: str, items: list[dict]):
    """The routes of a small STAC API: its landing page and /search (collection, cloud
    cover by the query extension, limit)."""

    def landing(_query):
        return {
            "type": "Catalog", "id": "test", "description": "test API", "stac_version": "1.0.0",
            "conformsTo": [
                "https://api.stacspec.org/v1.0.0/core",
                "https://api.stacspec.org/v1.0.0/item-search",
                "https://api.stacspec.org/v1.0.0/item-search#query",
            ],
            "links": [
                {"rel": "self", "href": f"{served_url}/", "type": "application/json"},
                {"rel": "root", "href": f"{served_url}/", "type": "application/json"},
                {"rel": "search", "href": f"{served_url}/search", "type": "application/geo+json",
                 "method": "POST"},
            ],
        }  # fmt: skip

    def search(query):
        most = query.get("query", {}).get("eo:cloud_cover", {}).get("lte", 100)
        found = [
            item
            for item in items
            if item["collection"] in query["collections"]
            and item["properties"]["eo:cloud_cover"] <= most
        ]
        return {
            "type": "FeatureCollection",
            "features": found[: query.get("limit", 10)],
            "links": [],
        }

    return {"/": landing, "/search": search}


def test_a_search_lists_its_items_and_classifies_them_as_many_scenes(catalog, tmp_path, capsys):
    items = []
    with ServedFolder(catalog["folder"]) as served:
        for name, date, cloud in (("S2A_B", "2017-03-01", 3.0), ("S2A_A", "2017-02-16", 12.5),
                                  ("S2A_C", "2017-04-01", 80.0)):  # fmt: skip
            path = write_item(
                tmp_path / f"{name}.json",
                {band: f"{served.url}/assets/{band}.tif" for band in MS_BAND_NAMES},
                {"datetime": f"{date}T10:00:00Z", "eo:cloud_cover": cloud},
            )
            items.append(json.loads(path.read_text()))
        served.routes.update(stac_api(served.url, items))
        lonlat = lonlat_box(catalog["box"])
        run("--stac", served.url, "--collection", "sentinel-2-l1c",
            "--datetime", "2017-01-01/2017-12-31", "--bbox", *lonlat, "--bbox-crs", "EPSG:4326",
            "--max-cloud", 50, "--limit", 5, "--model", catalog["model"], "--stride", 8,
            "--scheduler", "none", "--output-dir", tmp_path / "run")  # fmt: skip
    printed = capsys.readouterr().out
    assert (
        f"STAC search of {served.url} (sentinel-2-l1c 2017-01-01/2017-12-31, cloud <= 50 %)"
        in printed
    )
    assert (
        "  S2A_A  2017-02-16  cloud  12.5 %  Level-1C\n  S2A_B  2017-03-01  cloud   3.0 %"
        in printed
    )
    assert "S2A_C" not in printed
    request = served.bodies[-1]
    assert request["collections"] == ["sentinel-2-l1c"]
    assert request["query"] == {"eo:cloud_cover": {"lte": 50.0}}
    assert request["datetime"].startswith("2017-01-01") and len(request["bbox"]) == 4
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())["scenes"]
    assert [(Path(row["scene"]).name, row["status"]) for row in summary] == [
        ("S2A_A.json", "done"),
        ("S2A_B.json", "done"),
    ]
    first, second = outputs(tmp_path / "run", "S2A_A")[0], outputs(tmp_path / "run", "S2A_B")[0]
    assert np.array_equal(first, second)  # the same assets under two items
    assert (tmp_path / "run" / "manifest.json").exists()
    search = ["--datetime", "2017", "--bbox", *lonlat, "--bbox-crs", "EPSG:4326"]
    with ServedFolder(catalog["folder"]) as served:
        served.routes.update(stac_api(served.url, items))
        with pytest.raises(InputError, match=r"found no item over the box; widen --datetime"):
            run("--stac", served.url, "--collection", "sentinel-2-l2a", *search,
                "--output-dir", tmp_path / "none")  # fmt: skip
    with pytest.raises(InputError, match=rf"STAC API {served.url} cannot be searched: \[Errno"):
        run("--stac", served.url, "--collection", "sentinel-2-l1c", *search,
            "--output-dir", tmp_path / "none")  # fmt: skip
    assert not (tmp_path / "none").exists()


def test_a_search_cut_midway_records_no_scene_finished_and_the_rerun_finishes(catalog, tmp_path):
    gdal.VSICurlClearCache()
    with ServedFolder(catalog["folder"], break_after=16) as served:
        items = []
        for name, date in (("S2A_A", "2017-02-16"), ("S2A_B", "2017-03-01")):
            path = write_item(
                tmp_path / f"{name}.json",
                {band: f"{served.url}/assets/{band}.tif" for band in MS_BAND_NAMES},
                {"datetime": f"{date}T10:00:00Z", "eo:cloud_cover": 1.0},
            )
            items.append(json.loads(path.read_text()))
        served.routes.update(stac_api(served.url, items))
        command = [
            "--stac", served.url, "--collection", "sentinel-2-l1c", "--datetime", "2017",
            "--bbox", *lonlat_box(catalog["box"]), "--bbox-crs", "EPSG:4326",
            "--model", catalog["model"], "--stride", 8, "--scheduler", "none",
            "--output-dir", tmp_path / "run",
        ]  # fmt: skip
        with pytest.raises(InputError, match=r"^2 of 2 scenes failed \(first: band B\d\d of STAC"):
            run(*command)
        summary = json.loads((tmp_path / "run" / "summary.json").read_text())["scenes"]
        assert [row["status"] for row in summary] == ["failed", "failed"]
        for row in summary:
            stem = Path(row["scene"]).stem
            assert re.fullmatch(
                BROKE_OFF.format(item=re.escape(row["scene"]), url=served.url, stem=stem),
                row["error"],
            )
        manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())["scenes"]
        assert sorted(record["status"] for record in manifest.values()) == ["started"] * 2
        assert sorted(tmp_path.joinpath("run").glob("*_label.tif")) == []
        served.break_after = None  # the server is back: the same command finishes
        gdal.VSICurlClearCache()
        rows = run(*command)["scenes"]
    assert [row["status"] for row in rows] == ["done", "done"]
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())["scenes"]
    assert sorted(record["status"] for record in manifest.values()) == ["finished"] * 2
    assert np.array_equal(
        outputs(tmp_path / "run", "S2A_A")[0], outputs(tmp_path / "run", "S2A_B")[0]
    )


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--collection", "c", "--datetime", "2017", "--bbox", 1, 2, 3, 4],
         "takes --bbox in longitude/latitude: add --bbox-crs EPSG:4326"),
        (["--datetime", "2017", "--bbox", 1, 2, 3, 4], "a STAC search needs --collection"),
        (["--collection", "c", "--datetime", "2017", "--bbox-crs", "EPSG:4326"],
         "needs --bbox minlon minlat maxlon maxlat"),
        (["--collection", "c", "--datetime", "2017", "--bbox", 1, 2, 3, 4,
          "--bbox-crs", "EPSG:4326", "--max-cloud", 120], "max cloud must be a percentage"),
        (["--image", "x.tif", "--collection", "c"], "with --image or a STAC search with --stac"),
    ],
)  # fmt: skip
def test_search_flags_are_checked_in_one_sentence(tmp_path, arguments, message):
    with pytest.raises(InputError, match=message):
        run("--stac", "http://127.0.0.1:9/", *arguments, "--output-dir", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_bbox_crs_that_is_no_crs_is_one_sentence(catalog, tmp_path):
    with pytest.raises(InputError, match="bounding box CRS EPSG:0 is not a CRS GDAL knows"):
        run("--image", catalog["item"], "--model", catalog["model"], "--bbox", 1, 2, 3, 4,
            "--bbox-crs", "EPSG:0", "--output-dir", tmp_path)  # fmt: skip
