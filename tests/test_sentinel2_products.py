"""Sentinel-2 products of processing baseline 04.00 and later: their digital numbers
carry an offset of +1000 (RADIO_ADD_OFFSET / BOA_ADD_OFFSET = -1000 in the product
metadata), which 06 takes off on reading so EuroSAT-trained models see their scale."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest
from helpers import generated_jp2_bands, safe_layout

from cnn_sentinel.errors import InputError
from cnn_sentinel.scene import reading as scenes
from cnn_sentinel.scene.products import SENTINEL2_BAND_IDS, dn_offset_words, sentinel2_offsets
from image_functions import MS_BAND_NAMES

L1C_NAMESPACE = "https://psd-14.sentinel2.eo.esa.int/PSD/User_Product_Level-1C.xsd"


def metadata_xml(offsets: dict[int, str], element: str = "RADIO_ADD_OFFSET") -> str:
    """A product metadata file shaped like ESA's (namespaced root, offsets by band_id)."""
    listed = "".join(
        f'<{element} band_id="{band_id}">{value}</{element}>' for band_id, value in offsets.items()
    )
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        f'<n1:Level-1C_User_Product xmlns:n1="{L1C_NAMESPACE}">'
        "<n1:General_Info><Product_Image_Characteristics>"
        '<QUANTIFICATION_VALUE unit="none">10000</QUANTIFICATION_VALUE>'
        f"<Radiometric_Offset_List>{listed}</Radiometric_Offset_List>"
        "</Product_Image_Characteristics></n1:General_Info></n1:Level-1C_User_Product>"
    )


def zipped(safe, target):
    """The .SAFE folder as ESA's .zip (the .SAFE folder at the top)."""
    with zipfile.ZipFile(target, "w") as bundle:
        for path in sorted(safe.rglob("*")):
            if path.is_file():
                bundle.write(path, path.relative_to(safe.parent))
    return target


@pytest.fixture(scope="module")
def product(tmp_path_factory):
    """A generated .SAFE without metadata file, and its stack read back (the reference)."""
    folder = tmp_path_factory.mktemp("product")
    safe = safe_layout(folder, generated_jp2_bands(folder, rows=24, cols=20))
    return safe, scenes.open_scene(safe).ReadAsArray().astype(np.int64)


def test_baseline_04_offsets_are_taken_off_on_reading(product, tmp_path):
    safe, raw = product
    metadata = safe / "MTD_MSIL1C.xml"
    metadata.write_text(metadata_xml({band_id: "-1000" for band_id in range(13)}))
    try:
        assert sentinel2_offsets(safe) == dict.fromkeys(SENTINEL2_BAND_IDS, -1000)
        for scene in (safe, zipped(safe, tmp_path / f"{safe.name}.zip")):
            stack = scenes.open_scene(scene)
            values = stack.ReadAsArray().astype(np.int64)
            assert np.array_equal(values, np.clip(raw - 1000, 0, None))
            assert scenes.scene_band_names(stack) == MS_BAND_NAMES
            assert dn_offset_words(stack) == ", digital numbers -1000 (processing baseline 04.00+)"
            window = scenes.open_scene(scene, window=(4, 8, 10, 12)).ReadAsArray()
            assert np.array_equal(window, values[:, 8:20, 4:14])
    finally:
        metadata.unlink()
    assert (raw < 1000).any() and (raw > 1000).any()  # both sides of the clip were seen


def test_products_before_baseline_04_are_read_unchanged(product, tmp_path):
    safe, raw = product
    assert sentinel2_offsets(safe) == {}
    stack = scenes.open_scene(safe)
    assert dn_offset_words(stack) == ""
    metadata = safe / "MTD_MSIL1C.xml"
    metadata.write_text(metadata_xml({}))  # a 2017 product lists no offsets
    try:
        assert sentinel2_offsets(safe) == {}
        assert np.array_equal(scenes.open_scene(safe).ReadAsArray(), raw)
    finally:
        metadata.unlink()


def test_zero_stays_no_data_and_l2a_offsets_are_read(tmp_path):
    files = generated_jp2_bands(tmp_path, rows=12, cols=12)
    safe = safe_layout(tmp_path, files, level="L2A")
    (safe / "MTD_MSIL2A.xml").write_text(
        metadata_xml({1: "-1000", 2: "-1000.0", 8: "-1000"}, element="BOA_ADD_OFFSET")
    )
    assert sentinel2_offsets(safe) == {"B02": -1000, "B03": -1000, "B8A": -1000}
    from osgeo import gdal

    # a band whose first row is no data (0): it stays 0, not 65535 or -1000
    band = gdal.Open(str(files["B02"])).ReadAsArray()
    band[0] = 0
    memory = gdal.GetDriverByName("MEM").Create("", 12, 12, 1, gdal.GDT_UInt16)
    memory.SetGeoTransform(gdal.Open(str(files["B02"])).GetGeoTransform())
    memory.SetProjection(gdal.Open(str(files["B02"])).GetProjection())
    memory.GetRasterBand(1).WriteArray(band)
    gdal.GetDriverByName("JP2OpenJPEG").CreateCopy(
        str(tmp_path / "B02_holes.jp2"), memory, options=["REVERSIBLE=YES", "QUALITY=100"]
    )
    link = next((safe / "GRANULE").rglob("*_B02.jp2"))
    link.unlink()
    link.symlink_to(tmp_path / "B02_holes.jp2")
    stack = scenes.open_scene(safe)
    names = scenes.scene_band_names(stack)
    values = stack.ReadAsArray().astype(np.int64)
    b02, b04 = values[names.index("B02")], values[names.index("B04")]
    assert np.all(b02[0] == 0)
    assert np.array_equal(b02[1:], np.clip(band[1:].astype(np.int64) - 1000, 0, None))
    assert np.array_equal(b04, gdal.Open(str(files["B04"])).ReadAsArray())  # no offset listed


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("<not xml", "unreadable metadata file"),
        (metadata_xml({13: "-1000"}), "offset that is not a band's number"),
        (metadata_xml({0: "minus"}), "offset that is not a band's number"),
    ],
)
def test_bad_metadata_is_one_sentence(tmp_path, text, message):
    safe = safe_layout(tmp_path, generated_jp2_bands(tmp_path, rows=12, cols=12))
    (safe / "MTD_MSIL1C.xml").write_text(text)
    with pytest.raises(InputError, match=message) as error:
        scenes.open_scene(safe)
    assert str(error.value).count(". ") == 0 and str(error.value).endswith(".")


def test_a_product_with_a_band_file_missing_is_refused_naming_the_band(tmp_path):
    """Without B05 the stack would have 12 bands: 06 would silently take the shipped RGB
    model instead of the 13-band one. It stops instead, naming the band; an L2A product
    lacks B10 by design and is read as it is."""
    from script_modules import load_script

    files = generated_jp2_bands(tmp_path, rows=12, cols=12)
    safe = safe_layout(tmp_path / "l1c", files)
    next((safe / "GRANULE").rglob("*_B05.jp2")).unlink()
    for product in (safe, zipped(safe, tmp_path / f"{safe.name}.zip")):
        with pytest.raises(InputError) as error:
            scenes.open_scene(product)
        assert str(error.value).startswith(
            f"Sentinel-2 product {product} lacks the band image of B05 ("
        )
        assert str(error.value).count(". ") == 0 and str(error.value).endswith(".")
    script = load_script("06_classify_image.py", "classify_image_products")
    output = tmp_path / "out"
    with pytest.raises(InputError, match="lacks the band image of B05"):
        script.main(["--image", str(safe), "--output-dir", str(output), "--no-progress"])
    assert not output.exists() or not list(output.iterdir())

    l2a = safe_layout(tmp_path / "l2a", files, level="L2A")
    next((l2a / "GRANULE").rglob("*_B10.jp2")).unlink()
    names = list(scenes.scene_band_names(scenes.open_scene(l2a)))
    assert names == [name for name in MS_BAND_NAMES if name != "B10"]
    next((l2a / "GRANULE").rglob("*_B8A.jp2")).unlink()
    with pytest.raises(InputError, match="lacks the band image of B8A"):
        scenes.open_scene(l2a)
