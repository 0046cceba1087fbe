"""STAC items in: a Sentinel-2 item (its .json on disk or its URL) as one virtual stack of
its band assets in EuroSAT order, and a STAC API search whose items 06 classifies as scenes.

    dataset = item_stack(Path("S2B_33UUU_20170216_0_L1C.json"))   # reading.open_scene's hook
    inputs = stac_inputs(images, output_dir, plan.plan_search(settings))  # 06

The stack is a VRT held in memory over the assets, never a copy: http(s) hrefs are read
through GDAL's /vsicurl/, s3:// through /vsis3/, gs:// through /vsigs/, others from disk
(relative hrefs against the item's own location, as static catalogs write them). A crop
of it (--bbox, --window) reads only its blocks of each asset (COG tiles) over HTTP. Bands
are found by asset key (`B04`, `red`), by `eo:bands` name or common name; the digital
numbers get the product's processing-baseline offset taken off as products.py does for a
.SAFE (with_dn_offsets), from `raster:bands` offset/scale, else `s2:processing_baseline`
04.00+, unless the catalog says it took it off itself (`earthsearch:boa_offset_applied`).

Items from a URL or a search are saved as <item id>.json (hrefs made absolute) in the
output folder and classified from there, so a rerun finds the same scene (manifest) and the
outputs are <item id>_label.tif. pystac reads items; pystac-client searches (imported
inside the functions that need them); `planetary-computer`, when installed, signs the
hrefs of Microsoft Planetary Computer items.
"""

from __future__ import annotations

import contextlib
import json
import re
import urllib.error
import urllib.parse
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

from osgeo import gdal

from cnn_sentinel.errors import InputError
from cnn_sentinel.outputs import write_atomic
from cnn_sentinel.scene.products import with_dn_offsets
from image_functions import MS_BAND_NAMES, RGB_BAND_NAMES

if TYPE_CHECKING:
    import pystac

gdal.UseExceptions()

# Names the big catalogs give Sentinel-2 bands (asset keys of Earth Search, eo:bands
# common names), by EuroSAT band name. "rededge" alone is three bands, so not a name here.
BAND_ALIASES: Final = {
    "coastal": "B01",
    "blue": "B02",
    "green": "B03",
    "red": "B04",
    "rededge1": "B05",
    "rededge2": "B06",
    "rededge3": "B07",
    "nir": "B08",
    "nir08": "B8A",
    "nir09": "B09",
    "cirrus": "B10",
    "swir16": "B11",
    "swir22": "B12",
}
# Remote hrefs and the GDAL file systems that read them block by block.
REMOTE_PREFIXES: Final = {
    "http://": "/vsicurl/",
    "https://": "/vsicurl/",
    "s3://": "/vsis3/",
    "gs://": "/vsigs/",
}
# GDAL settings for remote assets, set for their file systems only (a user's own setting of
# any of them wins): no directory listing per asset (a request, and bytes, for nothing),
# adjacent tiles in one request.
REMOTE_READ_OPTIONS: Final = {
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
    "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES",
}
# GDAL's HTTP settings, for the whole process (GDAL 3.6 reads them only so, not per path;
# they touch nothing but HTTP; a user's own setting wins): a busy server (HTTP 429, 500,
# 502-504, a connection timeout) is asked again 3 times, after 1 s, then about 2 and 5 s;
# a connection not made within 30 s, or a transfer that stalls (under 1 byte/s for 30 s),
# ends the read (then one sentence: remote_read_errors).
REMOTE_HTTP_OPTIONS: Final = {
    "GDAL_HTTP_MAX_RETRY": "3",
    "GDAL_HTTP_RETRY_DELAY": "1",
    "GDAL_HTTP_CONNECTTIMEOUT": "30",
    "GDAL_HTTP_LOW_SPEED_TIME": "30",
    "GDAL_HTTP_LOW_SPEED_LIMIT": "1",
}
# Reflectance per digital number of EuroSAT's L1C products (reflectance x 10000).
EUROSAT_DN_SCALE: Final = 1e-4
# Processing baseline 04.00 (25 January 2022) added this to every digital number.
BASELINE_04_OFFSET: Final = -1000
# The flag that says which CRS a search's --bbox is in (STAC APIs search in lon/lat).
SEARCH_BBOX_CRS: Final = "EPSG:4326"


# ---------------------------------------------------------------------------
# Items and their band assets
# ---------------------------------------------------------------------------


def is_stac_item(path: str | Path) -> bool:
    """Whether a scene path is a STAC item's .json."""
    return str(path).lower().endswith(".json")


def is_url(value: str) -> bool:
    """Whether an --image value is an http(s) URL (a STAC item's address)."""
    return re.match(r"^https?://", str(value), re.IGNORECASE) is not None


def gdal_path(href: str) -> str:
    """The path GDAL reads an asset href by: /vsicurl/https://..., /vsis3/bucket/key,
    or the local path (file:// URLs too)."""
    for prefix, file_system in REMOTE_PREFIXES.items():
        if href.lower().startswith(prefix):
            return file_system + (href if prefix.startswith("http") else href[len(prefix) :])
    if href.lower().startswith("file://"):
        return urllib.parse.unquote(urllib.parse.urlparse(href).path)
    return href


def failure_words(error: BaseException) -> str:
    """A reading error in a few words: "HTTP 404", the network's reason ("[Errno 111]
    Connection refused"), or the message."""
    while error.__cause__ is not None and not isinstance(error, urllib.error.HTTPError):
        error = error.__cause__  # pystac wraps what went wrong in a bare Exception
    if isinstance(error, urllib.error.HTTPError):
        return f"HTTP {error.code}"
    text = str(getattr(error, "reason", None) or error)
    network = re.search(r"\[Errno -?\d+\] [^\"')]+", text)
    return (network.group(0) if network else text).strip().rstrip(".") or type(error).__name__


def load_item(location: str) -> pystac.Item:
    """The STAC item at `location` (a .json path or URL); InputError when it cannot be read
    or is not an item."""
    import pystac

    try:
        return pystac.Item.from_file(location)
    except Exception as error:  # pystac raises a bare Exception for what a server answers
        raise InputError(f"STAC item {location} cannot be read: {failure_words(error)}.") from None


def band_fields(asset: pystac.Asset) -> dict | None:
    """The fields of an asset's one band (eo:bands, raster:bands or STAC 1.1 bands merged,
    prefixes dropped: name, common_name, scale, offset, ...); {} without band fields,
    None for an asset of several bands (a true-colour image is no band asset)."""
    fields: dict = {}
    for key in ("eo:bands", "raster:bands", "bands"):
        bands = asset.extra_fields.get(key) or []
        if len(bands) > 1:
            return None
        for name, value in (bands[0] if bands else {}).items():
            fields.setdefault(name.split(":")[-1], value)
    return fields


def eurosat_band(name: object) -> str | None:
    """The EuroSAT band a catalog's band name means: "B04", "b4", "red" -> "B04"."""
    text = str(name or "").strip()
    match = re.fullmatch(r"B0*(\d{1,2})(A?)", text, re.IGNORECASE)
    if match:
        band = "B8A" if match.group(2) else f"B{int(match.group(1)):02d}"
        return band if band in MS_BAND_NAMES else None
    return BAND_ALIASES.get(text.lower())


def asset_resolution(key: str, asset: pystac.Asset, fields: dict) -> float:
    """An asset's pixel size in metres (raster:bands spatial_resolution, gsd, or a key such
    as "B05_20m"); 0 when it says none."""
    named = re.search(r"_(\d+)m$", key)
    value = fields.get("spatial_resolution") or asset.extra_fields.get("gsd")
    return float(value or (named.group(1) if named else 0))


def band_assets(item: pystac.Item) -> dict[str, pystac.Asset]:
    """The item's assets of EuroSAT bands, by band name ("B01".."B8A"). Where a band has
    several, a GeoTIFF is taken over another format (Earth Search's COG and JPEG2000), then
    the one its key names, then the finest (the Copernicus catalog's B05_20m and B05_60m)."""
    found: dict[str, tuple[tuple, pystac.Asset]] = {}
    for key, asset in item.assets.items():
        fields = band_fields(asset)
        if fields is None:
            continue
        by_key = eurosat_band(key)
        band = by_key or eurosat_band(fields.get("name")) or eurosat_band(fields.get("common_name"))
        if band is None:
            continue
        rank = (
            0 if "tiff" in (asset.media_type or "tiff") else 1,
            0 if by_key else 1,
            asset_resolution(key, asset, fields),
        )
        if band not in found or rank < found[band][0]:
            found[band] = (rank, asset)
    return {band: asset for band, (_, asset) in found.items()}


def processing_level(item: pystac.Item) -> str:
    """ "Level-2A", "Level-1C" or "" from the item's product type, collection or id."""
    words = " ".join(
        str(value)
        for value in (
            item.properties.get("processing:level"),
            item.properties.get("s2:product_type"),
            item.collection_id,
            item.id,
        )
        if value
    ).upper()
    if re.search(r"L2A|MSI2A", words):
        return "Level-2A"
    return "Level-1C" if re.search(r"L1C|MSI1C", words) else ""


def baseline_number(item: pystac.Item) -> float | None:
    """The item's processing baseline (s2:processing_baseline "04.00" -> 4.0), or None."""
    for key in ("s2:processing_baseline", "sentinel:processing_baseline", "processing:version"):
        try:
            return float(item.properties[key])
        except (KeyError, TypeError, ValueError):
            continue
    return None


def band_offsets(item: pystac.Item, assets: dict[str, pystac.Asset], label: str) -> dict:
    """The offset each band's digital numbers carry, as products.sentinel2_offsets gives
    for a .SAFE (-1000 from baseline 04.00): 0 where the catalog took it off itself
    (earthsearch:boa_offset_applied), else raster:bands offset / scale, else -1000 for
    baseline 04.00+. Warns, naming the flag, when the assets are not reflectance x 10000."""
    if item.properties.get("earthsearch:boa_offset_applied") is True:
        return dict.fromkeys(assets, 0)
    baseline = baseline_number(item)
    offsets = {}
    for band, asset in assets.items():
        fields = band_fields(asset) or {}
        scale, offset = fields.get("scale"), fields.get("offset")
        if scale and abs(scale - EUROSAT_DN_SCALE) > 1e-9:
            warnings.warn(
                f"STAC item {label}: band {band} holds reflectance x {1 / scale:g} (scale "
                f"{scale:g}), not x 10000; pass --reflectance-scale {1 / scale:g}.",
                UserWarning,
                stacklevel=2,
            )
        if offset is not None:
            offsets[band] = round(offset / (scale or EUROSAT_DN_SCALE))
        else:
            offsets[band] = BASELINE_04_OFFSET if baseline is not None and baseline >= 4 else 0
    return offsets


def use_remote_read_options(files: Sequence[str]) -> None:
    """REMOTE_READ_OPTIONS for the GDAL file systems of `files` (/vsicurl/, /vsis3/, ...)
    only, so local files keep their side files (.aux.xml), and REMOTE_HTTP_OPTIONS for
    the process when any file is remote; only those the user set none of."""
    prefixes = sorted({file[: file.index("/", 1) + 1] for file in files if file.startswith("/vsi")})
    for prefix in prefixes:
        for name, value in REMOTE_READ_OPTIONS.items():
            if gdal.GetConfigOption(name) is None:
                gdal.SetPathSpecificOption(prefix, name, value)
    for name, value in REMOTE_HTTP_OPTIONS.items() if prefixes else ():
        if gdal.GetConfigOption(name) is None:
            gdal.SetConfigOption(name, value)


def item_stack(path: str | Path) -> gdal.Dataset:
    """A virtual stack of a STAC item's band assets in EuroSAT order (B01..B12, B8A, those
    it has), at the finest resolution (coarser bands repeated, nearest neighbour), band
    descriptions set, the processing-baseline offset taken off on reading (band_offsets).

    InputError: the item cannot be read, lacks one of the RGB bands every model needs
    (naming them), or an asset cannot be opened (a 404, a dead server: naming band and href).
    """
    label = str(path)
    item = load_item(label)
    assets = band_assets(item)
    missing = [name for name in reversed(RGB_BAND_NAMES) if name not in assets]
    if missing:
        raise InputError(
            f"STAC item {label} has no asset for band {', '.join(missing)} (its assets: "
            f"{', '.join(item.assets) or 'none'}); every model needs B02, B03 and B04."
        )
    names = [name for name in MS_BAND_NAMES if name in assets]
    hrefs = [assets[name].get_absolute_href() or assets[name].href for name in names]
    files = [gdal_path(href) for href in hrefs]
    use_remote_read_options(files)
    opened = []
    for name, href, file in zip(names, hrefs, files, strict=True):
        try:
            opened.append(gdal.Open(file, gdal.GA_ReadOnly))
        except RuntimeError as error:
            unsigned = "blob.core.windows.net" in href and "?" not in href
            hint = " (Planetary Computer's hrefs need signing: pip install planetary-computer)"
            raise InputError(
                f"band {name} of STAC item {label} cannot be read from {href}: "
                f"{failure_words(error)}{hint if unsigned else ''}."
            ) from None
    stack = gdal.BuildVRT("", opened, separate=True, resolution="highest")
    for number, name in enumerate(names, start=1):
        stack.GetRasterBand(number).SetDescription(name)
    offsets = band_offsets(item, assets, label)
    if any(offsets.values()):
        stack = with_dn_offsets(stack, [offsets[name] for name in names])
    return stack


def broken_read(error: BaseException, image: str | Path, stem: str) -> InputError | None:
    """The sentence for a GDAL error of reading a remote band asset of the STAC item
    `image` midway (a connection cut, a stalled or failing server): its band, its href,
    that no output of `stem` was written and that the same command may run again; None
    for any other error."""
    if not isinstance(error, RuntimeError) or not is_stac_item(image):
        return None
    try:
        assets = band_assets(load_item(str(image)))
    except InputError:
        return None
    for band, asset in assets.items():
        href = asset.get_absolute_href() or asset.href
        file = gdal_path(href)
        if file.startswith("/vsi") and re.search(re.escape(file) + r"(?![\w./-])", str(error)):
            return InputError(
                f"band {band} of STAC item {image} could not be read from {href} (the "
                "connection was cut, the server stopped answering or kept failing); no "
                f"output of {stem} was written: run the same command again once the server "
                "answers."
            )
    return None


@contextlib.contextmanager
def remote_read_errors(image: str | Path, stem: str) -> Iterator[None]:
    """Around the reading of a scene: a remote band asset of a STAC item that breaks off
    midway ends in its one sentence (broken_read, an InputError) instead of GDAL's error."""
    try:
        yield
    except RuntimeError as error:
        sentence = broken_read(error, image, stem)
        if sentence is None:
            raise
        raise sentence from None


# ---------------------------------------------------------------------------
# Items fetched or searched, saved where 06 classifies them
# ---------------------------------------------------------------------------


def planetary_computer_signer(address: str):
    """planetary_computer.sign_inplace for Microsoft Planetary Computer addresses when the
    optional package is installed (its hrefs need a token), else None."""
    if "planetarycomputer" not in address.lower():
        return None
    try:
        import planetary_computer
    except ImportError:
        return None
    return planetary_computer.sign_inplace


def save_item(item: pystac.Item, folder: Path) -> Path:
    """Write `item` as folder/<id>.json with absolute hrefs (atomically; left as it is when
    its text is the same, so a rerun's manifest sees the same scene). Returns the path."""
    item.make_asset_hrefs_absolute()
    text = json.dumps(item.to_dict(include_self_link=False), indent=2) + "\n"
    path = folder / f"{re.sub(r'[^A-Za-z0-9._-]', '_', item.id)}.json"
    if not (path.is_file() and path.read_text(encoding="utf-8") == text):
        folder.mkdir(parents=True, exist_ok=True)
        write_atomic(path, text, overwrite=True)
    return path


def fetch_item(url: str, folder: Path) -> Path:
    """The STAC item at `url` saved in `folder` (save_item), signed when it needs it."""
    item = load_item(url)
    signer = planetary_computer_signer(url)
    if signer is not None:
        signer(item)
    return save_item(item, folder)


@dataclass(frozen=True)
class StacSearch:
    """A STAC API search: the API's address, one collection, START/END dates, a box in
    longitude/latitude, the largest cloud cover (percent) and the most items."""

    url: str
    collection: str
    datetime: str
    bbox: tuple[float, float, float, float]
    max_cloud: float = 100.0
    limit: int = 10


def cloud_cover(item: pystac.Item) -> float | None:
    """The item's eo:cloud_cover (percent), or None."""
    try:
        return float(item.properties["eo:cloud_cover"])
    except (KeyError, TypeError, ValueError):
        return None


def search_items(search: StacSearch) -> list[pystac.Item]:
    """The items of `search`, oldest first, none cloudier than max_cloud (asked of the API
    with the query extension, and checked here); InputError when the API cannot answer."""
    from pystac_client import Client
    from pystac_client.exceptions import APIError

    query = {"eo:cloud_cover": {"lte": search.max_cloud}} if search.max_cloud < 100 else None
    try:
        client = Client.open(search.url, modifier=planetary_computer_signer(search.url))
        found = client.search(
            collections=[search.collection],
            bbox=list(search.bbox),
            datetime=search.datetime,
            query=query,
            max_items=search.limit,
        )
        items = list(found.items())
    except (APIError, OSError, ValueError, NotImplementedError) as error:
        raise InputError(
            f"STAC API {search.url} cannot be searched: {failure_words(error)}."
        ) from None
    items = [item for item in items if (cloud_cover(item) or 0.0) <= search.max_cloud]
    return sorted(items, key=lambda item: (str(item.datetime), item.id))


def item_line(item: pystac.Item) -> str:
    """One line of a search's listing: id, date, cloud cover, processing level."""
    cover = cloud_cover(item)
    date = item.datetime.date().isoformat() if item.datetime else "no date"
    cloud = f"cloud {cover:5.1f} %" if cover is not None else "cloud   ?  "
    return f"  {item.id}  {date}  {cloud}  {processing_level(item) or 'level ?'}"


def numbers(values: Sequence[object]) -> list[float]:
    """Floats from flag values such as ("13.1", "52.4", ...) or ("13.1,52.4,...",)."""
    items = [item for value in values for item in str(value).replace(",", " ").split()]
    try:
        return [float(item) for item in items]
    except ValueError:
        raise InputError(f"bounding box {' '.join(items)} must be four numbers.") from None


def search_of(
    url: str,
    collection: str | None,
    datetime: str | None,
    bbox: Sequence[object],
    bbox_crs: str | None,
    max_cloud: float = 100.0,
    limit: int = 10,
    images: Sequence[str] = (),
) -> StacSearch:
    """06's --stac flags (plan.plan_search gives them) as a StacSearch; InputError naming
    the flag that is missing or wrong (and for scenes given with --image as well)."""
    if images:
        raise InputError("give the scenes with --image or a STAC search with --stac, not both.")
    for flag, value, example in (
        ("--collection", collection, "sentinel-2-l2a"),
        ("--datetime", datetime, "2023-06-01/2023-08-31"),
    ):
        if not value:
            raise InputError(f"a STAC search needs {flag} (e.g. {flag} {example}).")
    box = numbers(bbox)
    if len(box) != 4 or not (box[0] < box[2] and box[1] < box[3]):
        raise InputError(
            "a STAC search needs --bbox minlon minlat maxlon maxlat (with --bbox-crs EPSG:4326)."
        )
    if str(bbox_crs).upper() != SEARCH_BBOX_CRS:
        raise InputError(
            f"a STAC search takes --bbox in longitude/latitude: add --bbox-crs {SEARCH_BBOX_CRS}."
        )
    if not 0 <= max_cloud <= 100:
        raise InputError(f"max cloud must be a percentage (0-100), not {max_cloud}.")
    if limit < 1:
        raise InputError(f"the search limit must be at least 1 item, not {limit}.")
    return StacSearch(url, collection, datetime, tuple(box), max_cloud, limit)


def stac_inputs(
    images: Sequence[str],
    output_dir: str | Path | None,
    search: StacSearch | None = None,
    report=print,
) -> list[str]:
    """06's scenes as many.list_scenes takes them: `images` (--image) with every STAC
    item URL fetched into <id>.json in `output_dir` (else the current folder), or, with a
    `search` (plan.plan_search), its items, listed (through `report`) and saved there.
    InputError for a dead URL or API, a search that finds nothing."""
    folder = Path(output_dir or ".")
    if search is None:
        return [str(fetch_item(value, folder)) if is_url(value) else value for value in images]
    items = search_items(search)
    where = f"{search.collection} {search.datetime}, cloud <= {search.max_cloud:g} %"
    if not items:
        raise InputError(
            f"the STAC search of {search.url} ({where}) found no item over the box; widen "
            "--datetime, --bbox or --max-cloud."
        )
    report(f"STAC search of {search.url} ({where}): {len(items)} items")
    report("\n".join(item_line(item) for item in items))
    return [str(save_item(item, folder)) for item in items]
