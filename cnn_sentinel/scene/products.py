"""Sentinel-2 products in: the band images of a .SAFE folder or its .zip, stacked
into one virtual 13-band 10 m scene in EuroSAT order, with the digital numbers of
processing baseline 04.00 and later shifted back to EuroSAT's (pre-2022) scale.

reading.open_scene calls `sentinel2_stack` for products; nothing is unpacked
or copied (GDAL reads the JPEG2000 bands through /vsizip/ and an in-memory VRT).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from osgeo import gdal

from cnn_sentinel.errors import InputError
from image_functions import MS_BAND_NAMES

# Sentinel-2 band file names inside a product: T33UUU_20170216T102101_B8A.jp2 (L1C)
# or T33UUU_20170216T102101_B02_10m.jp2 (L2A).
SENTINEL2_BAND_FILE = re.compile(r"_(B\d\d|B8A)(?:_(\d+)m)?\.jp2$", re.IGNORECASE)
# A product's metadata file (MTD_MSIL1C.xml or MTD_MSIL2A.xml) at the top of the .SAFE.
SENTINEL2_METADATA_FILE = re.compile(r"^(?:[^/]+/)?MTD_MSIL(?:1C|2A)\.xml$")
# The bands in the order of the metadata's band_id attribute (0-12).
SENTINEL2_BAND_IDS = (
    "B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12",
)  # fmt: skip
# A Level-2A product (its name, granule folder or resolution-suffixed band files), which
# has every band but B10 (the cirrus band, used only in the correction).
SENTINEL2_L2A_PATH = re.compile(r"MSIL2A|/L2A_|_\d+m\.jp2$", re.IGNORECASE)
SENTINEL2_L2A_ABSENT = ("B10",)
# Band metadata item of a stack whose digital numbers were shifted by this offset.
DN_OFFSET_ITEM = "DN_OFFSET"


def is_sentinel2_product(path: Path) -> bool:
    """Whether `path` is a Sentinel-2 .SAFE folder or a .zip of one."""
    return path.suffix.lower() == ".zip" or (path.is_dir() and path.suffix.upper() == ".SAFE")


def sentinel2_band_files(path: Path) -> dict[str, str]:
    """GDAL paths of the band images of a Sentinel-2 product, by band name ("B01".."B8A").

    Reads .SAFE folders and their .zip without unpacking (/vsizip/). Only
    GRANULE/<id>/IMG_DATA is searched; where a band exists at several
    resolutions (L2A), the finest is taken.
    """
    if path.suffix.lower() == ".zip":
        root = f"/vsizip/{path.resolve()}"
        try:
            entries = gdal.ReadDirRecursive(root) or []
        except RuntimeError:
            entries = []
        if not entries:
            raise InputError(f"Sentinel-2 product {path} is not a readable .zip file.")
        candidates = [f"{root}/{entry}" for entry in entries]
    else:
        candidates = [str(file) for file in sorted(path.rglob("*.jp2"))]
    granules = set()
    files: dict[str, tuple[int, str]] = {}
    for candidate in candidates:
        parts = candidate.replace("\\", "/").split("/")
        if "IMG_DATA" not in parts or "GRANULE" not in parts:
            continue
        match = SENTINEL2_BAND_FILE.search(parts[-1])
        if match is None:
            continue
        granules.add(parts[parts.index("GRANULE") + 1])
        band = match.group(1).upper()
        resolution = int(match.group(2) or 0)
        if band not in files or resolution < files[band][0]:
            files[band] = (resolution, candidate)
    if not files:
        raise InputError(
            f"Sentinel-2 product {path} has no band images (GRANULE/<id>/IMG_DATA/*_B??.jp2)."
        )
    if len(granules) > 1:
        raise InputError(
            f"Sentinel-2 product {path} holds {len(granules)} granules "
            f"({', '.join(sorted(granules))}); classify one granule at a time."
        )
    return {band: file for band, (_, file) in files.items()}


def check_complete(path: Path, files: dict[str, str]) -> None:
    """InputError naming the bands a product lacks (every band for L1C, all but B10 for
    L2A): a stack of fewer bands would silently take another model (the shipped RGB one
    for the 13-band) or switch the cloud mask off."""
    level_2a = any(SENTINEL2_L2A_PATH.search(file.replace("\\", "/")) for file in files.values())
    absent = SENTINEL2_L2A_ABSENT if level_2a else ()
    missing = [name for name in SENTINEL2_BAND_IDS if name not in files and name not in absent]
    if missing:
        raise InputError(
            f"Sentinel-2 product {path} lacks the band image of {', '.join(missing)} (no "
            f"GRANULE/<id>/IMG_DATA/*_{missing[0]}*.jp2), so it is incomplete and would get "
            "another model or cloud mask than the product; download or unpack it again, or "
            "stack the bands it has (gdalbuildvrt -separate) and give them with --bands."
        )


def sentinel2_offsets(path: Path) -> dict[str, int]:
    """The offsets a product adds to its digital numbers, by band name.

    From processing baseline 04.00 (products since 25 January 2022) Sentinel-2
    digital numbers are reflectance * 10000 - offset, with RADIO_ADD_OFFSET (L1C)
    or BOA_ADD_OFFSET (L2A) = -1000 listed per band_id in MTD_MSIL1C.xml or
    MTD_MSIL2A.xml; older products (EuroSAT's) list none: {}.
    """
    if path.suffix.lower() == ".zip":
        import zipfile

        try:
            with zipfile.ZipFile(path) as archive:
                names = [name for name in archive.namelist() if SENTINEL2_METADATA_FILE.match(name)]
                text = archive.read(names[0]) if names else None
        except (OSError, zipfile.BadZipFile):
            raise InputError(f"Sentinel-2 product {path} is not a readable .zip file.") from None
    else:
        files = [
            file for file in sorted(path.iterdir()) if SENTINEL2_METADATA_FILE.match(file.name)
        ]
        text = files[0].read_bytes() if files else None
    if text is None:
        return {}
    from xml.etree import ElementTree

    try:
        root = ElementTree.fromstring(text)
    except ElementTree.ParseError:
        raise InputError(f"Sentinel-2 product {path} has an unreadable metadata file.") from None
    offsets = {}
    for element in root.iter():
        if element.tag.rsplit("}", 1)[-1] in ("RADIO_ADD_OFFSET", "BOA_ADD_OFFSET"):
            try:
                band = SENTINEL2_BAND_IDS[int(element.get("band_id", ""))]
                offsets[band] = round(float(element.text or ""))
            except (ValueError, IndexError):
                raise InputError(
                    f"Sentinel-2 product {path} lists an offset that is not a band's number."
                ) from None
    return offsets


def with_dn_offsets(stack: gdal.Dataset, offsets: Sequence[int]) -> gdal.Dataset:
    """The VRT `stack` with `offsets[i]` added to band i+1's digital numbers on reading,
    0 (no data) kept as 0 and results below 0 clipped to 0 (GDAL saturates), so the
    values are EuroSAT's (pre-2022) digital numbers. Recorded as DN_OFFSET_ITEM."""
    from xml.etree import ElementTree

    root = ElementTree.fromstring(stack.GetMetadata("xml:VRT")[0])
    for band, offset in zip(root.iter("VRTRasterBand"), offsets, strict=True):
        if not offset:
            continue
        for source in band:
            if source.tag in ("SimpleSource", "ComplexSource"):
                source.tag = "ComplexSource"
                ElementTree.SubElement(source, "ScaleOffset").text = str(offset)
                ElementTree.SubElement(source, "ScaleRatio").text = "1"
                ElementTree.SubElement(source, "NODATA").text = "0"
    shifted = gdal.Open(ElementTree.tostring(root, encoding="unicode"))
    for number, offset in enumerate(offsets, start=1):
        band = shifted.GetRasterBand(number)
        band.SetDescription(stack.GetRasterBand(number).GetDescription())
        band.SetMetadataItem(DN_OFFSET_ITEM, str(offset))
    return shifted


def dn_offset_words(dataset: gdal.Dataset) -> str:
    """ ", digital numbers +-N (processing baseline 04.00+)" when the scene's were shifted."""
    offsets = {
        dataset.GetRasterBand(number).GetMetadataItem(DN_OFFSET_ITEM)
        for number in range(1, dataset.RasterCount + 1)
    } - {None, "0"}
    if not offsets:
        return ""
    return f", digital numbers {'/'.join(sorted(offsets))} (processing baseline 04.00+)"


def sentinel2_stack(path: Path) -> gdal.Dataset:
    """A virtual 10 m stack of a Sentinel-2 product's bands in EuroSAT order.

    Bands B01..B12, B8A (the order of the EuroSAT MS files), those the product
    has; coarser bands are repeated onto the 10 m grid (nearest neighbour) by a
    VRT held in memory, so the tile is never copied. Band descriptions are set.
    Products of processing baseline 04.00 and later get their offset (-1000)
    added on reading (`sentinel2_offsets`), so models trained on EuroSAT see the
    values they were trained on.
    """
    files = sentinel2_band_files(path)
    check_complete(path, files)
    names = [name for name in MS_BAND_NAMES if name in files]
    try:
        stack = gdal.BuildVRT(
            "", [files[name] for name in names], separate=True, resolution="highest"
        )
    except RuntimeError as error:
        raise InputError(f"Sentinel-2 product {path} cannot be read: {error}.") from None
    for number, name in enumerate(names, start=1):
        stack.GetRasterBand(number).SetDescription(name)
    offsets = sentinel2_offsets(path)
    if any(offsets.get(name, 0) for name in names):
        stack = with_dn_offsets(stack, [offsets.get(name, 0) for name in names])
    return stack
