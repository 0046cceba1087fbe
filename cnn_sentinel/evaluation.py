"""Accuracy assessment of a label map against an independent reference (07).

A reference (polygons or points in any OGR vector and CRS, or a class raster)
is laid onto the label map's grid: polygons are rasterised at pixel centres
(GDAL's default, not all-touched), a point takes the pixel under it, a raster is
resampled by nearest neighbour; a layer without a CRS is taken to be in the
map's. A pixel inside polygons of two different reference classes is left out
and counted as conflicting. A compatibility table says which EuroSAT classes
agree with each reference class; a class with an empty list is not assessed.
Cloud (CLOUD_LABEL) and nodata pixels of the map are left out and counted. Per
reference class: its pixels, its agreement (the producer's accuracy: the share
of its pixels the map gives a compatible class) and what the map called it;
over all classes the area-weighted agreement and the class-balanced one (the
unweighted mean over the classes with pixels). `crop_to_box` limits all of it to
the pixels centred in a box (07's --bbox, 08's hold-out part).

About 730 lines: 07's whole measure in one place (reading any reference, the tables,
the assessment and its picture), and every input 07 reads (map, vector or raster
reference, table, scene) checked here with its own sentence, so a reader checks the
numbers in one file.
"""

from __future__ import annotations

import csv
import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from osgeo import gdal, ogr, osr

from cnn_sentinel.errors import InputError
from cnn_sentinel.facts import CLASS_NAMES
from cnn_sentinel.scene.blocks import CLOUD_LABEL, LABEL_NODATA
from cnn_sentinel.scene.geometry import centred_in_box
from cnn_sentinel.scene.quicklooks import (
    QUICKLOOK_MAX_SIDE,
    colour_table_colours,
    decimation,
    label_colours,
    true_colour_bands,
)
from cnn_sentinel.scene.reading import band_numbers, band_spec_items, open_scene, scene_band_names

gdal.UseExceptions()
ogr.UseExceptions()
osr.UseExceptions()

# Fields that hold a feature's class, tried in this order when the field is "auto".
CLASS_FIELDS = ("fclass", "class", "classname", "class_name", "landuse", "label", "category")
# REFERENCE_FIELD value that takes each feature's class from the name of its layer.
LAYER_NAME = "layer"
# Reference classes -> the EuroSAT classes that agree with them; an empty list: not assessed.
BUILT_IN_TABLES = {
    "OpenStreetMap land use": {
        "forest": ["Forest"],
        "water": ["SeaLake", "River"],
        "residential": ["Residential", "Industrial", "Highway"],
        "farm": ["AnnualCrop", "PermanentCrop", "Pasture", "HerbaceousVegetation"],
        "meadow": ["Pasture", "HerbaceousVegetation"],
        "grass": ["Pasture", "HerbaceousVegetation"],
        "scrub": [],
        "wetland": [],
    },
    "Aberystwyth hand-drawn layers": {
        "cls_forest_smpls": ["Forest"],
        "cls_grass_smpls": ["Pasture", "HerbaceousVegetation"],
        "cls_urban_smpls": ["Residential", "Industrial", "Highway"],
        "cls_water_smpls": ["SeaLake", "River"],
    },
}
# Table name when a map's own classes are the reference's classes (08 --classes reference).
IDENTITY_TABLE = "identity (the map's classes are the reference's)"
# A table cell that is a colour (#rrggbb): the colour of the class the row teaches (08).
COLOUR_CELL = "#"
# Reference grid values: no reference class, and reference classes in conflict.
NO_REFERENCE = -1
CONFLICT = -2
# Points interpolated along each edge when the map's bounds are taken to another CRS.
BOUNDS_DENSIFY = 21
# Map classes shown per reference class on the console (the largest; the JSON has all).
CALLED_SHOWN = 4
# Colours of the reference outlines in the picture, one per reference class in turn.
OUTLINE_COLOURS = "tab10"


@dataclass
class LabelMap:
    """A label GeoTIFF of 06: labels (rows, cols) uint8, its class names and grid, and
    its classes' colours (r, g, b) from its colour table (None: EuroSAT's by name)."""

    path: Path
    labels: np.ndarray
    class_names: list[str]
    transform: tuple[float, ...]
    projection: str
    nodata: int
    colours: list[tuple[int, int, int]] | None = None

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(minx, miny, maxx, maxy) in the map's CRS (north-up grids)."""
        x0, width, _, y0, _, height = self.transform
        rows, cols = self.labels.shape
        xs, ys = (x0, x0 + cols * width), (y0, y0 + rows * height)
        return min(xs), min(ys), max(xs), max(ys)

    def srs(self) -> osr.SpatialReference:
        reference = osr.SpatialReference(wkt=self.projection)
        reference.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
        return reference


@dataclass
class Reference:
    """A reference on the map's grid: classes (rows, cols) int16 (index into names,
    NO_REFERENCE or CONFLICT), and per class its outlines in the map's CRS, each an
    (n, 2) array of x, y (one point for a point feature; none for a raster)."""

    classes: np.ndarray
    names: list[str]
    source: str
    outlines: dict[str, list[np.ndarray]] = field(default_factory=dict)


def read_label_map(path: str | Path) -> LabelMap:
    """Read a label GeoTIFF of 06 whole, with its class names (category names)."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"map {path} does not exist.")
    try:
        dataset = gdal.Open(str(path))
    except RuntimeError:
        raise InputError(f"map {path} is not a raster GDAL can read.") from None
    band = dataset.GetRasterBand(1)
    if dataset.RasterCount != 1 or band.DataType != gdal.GDT_Byte:
        raise InputError(
            f"map {path} is not a label map (one Byte band of class indices, as 06 writes)."
        )
    # GDAL 3.6's GeoTIFF driver reads the .aux.xml (category names) only on the first
    # georeferencing query, so the geotransform is asked for first.
    transform = dataset.GetGeoTransform(can_return_null=True)
    projection = dataset.GetProjection()
    names = list(band.GetCategoryNames() or [])[:CLOUD_LABEL]
    while names and not names[-1]:
        names.pop()
    if not names:
        raise InputError(
            f"map {path} has no class names (category names, kept by 06 in {path.name}.aux.xml),"
            " so it is not a label map of 06."
        )
    if transform is None or not projection:
        raise InputError(
            f"map {path} has no georeference (geotransform and CRS), so no reference can be "
            "laid onto it."
        )
    nodata = band.GetNoDataValue()
    return LabelMap(
        path,
        band.ReadAsArray(),
        names,
        tuple(transform),
        projection,
        LABEL_NODATA if nodata is None else int(nodata),
        colour_table_colours(band, len(names)),
    )


def _mem_raster(label_map: LabelMap, data_type: int) -> gdal.Dataset:
    rows, cols = label_map.labels.shape
    raster = gdal.GetDriverByName("MEM").Create("", cols, rows, 1, data_type)
    raster.SetGeoTransform(label_map.transform)
    raster.SetProjection(label_map.projection)
    return raster


def read_reference(path: str | Path, class_field: str, label_map: LabelMap) -> Reference:
    """The reference at `path` (a vector with layers, else a class raster) on the map's grid.

    class_field: a field name, LAYER_NAME, or "auto" (a field of CLASS_FIELDS, or the
    layer name when there are several layers). Raises InputError when no reference
    pixel falls on the map.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"reference {path} does not exist.")
    try:
        vector = gdal.OpenEx(str(path), gdal.OF_VECTOR)
    except RuntimeError:
        vector = None
    if vector is not None and vector.GetLayerCount():
        reference = _rasterise_vector(vector, path, class_field, label_map)
    else:
        try:
            raster = gdal.Open(str(path))
        except RuntimeError:
            raise InputError(
                f"reference {path} is neither a vector nor a raster GDAL can read."
            ) from None
        reference = _warp_raster(raster, path, label_map)
    if not (reference.classes != NO_REFERENCE).any():
        raise InputError(
            f"reference {path} does not overlap map {label_map.path}: no reference pixel "
            "falls on the map."
        )
    return reference


def class_source(dataset: gdal.Dataset, path: Path, class_field: str) -> str:
    """The field holding the class (its real spelling), or LAYER_NAME."""
    layers = [dataset.GetLayer(index) for index in range(dataset.GetLayerCount())]
    fields = [
        definition.GetFieldDefn(index).GetName()
        for definition in (layer.GetLayerDefn() for layer in layers[:1])
        for index in range(definition.GetFieldCount())
    ]
    words = ", ".join(fields) or "none"
    if class_field == LAYER_NAME:
        return LAYER_NAME
    if class_field == "auto":
        if len(layers) > 1:
            return LAYER_NAME
        by_lower = {name.lower(): name for name in fields}
        found = next((by_lower[name] for name in CLASS_FIELDS if name in by_lower), None)
        if found is None:
            raise InputError(
                f"reference {path} has no class field among {', '.join(CLASS_FIELDS)} (its "
                f"fields: {words}); name one with --reference-field, or `layer` for layer names."
            )
        return found
    for layer in layers:
        if layer.GetLayerDefn().GetFieldIndex(class_field) < 0:
            raise InputError(
                f"reference {path} has no field {class_field!r} in layer {layer.GetName()}; "
                f"its fields are: {words}."
            )
    return class_field


def geometry_paths(geometry: ogr.Geometry) -> list[np.ndarray]:
    """The rings, lines and points of a geometry, each an (n, 2) array of x, y."""
    if geometry.GetGeometryCount():
        return [
            path
            for index in range(geometry.GetGeometryCount())
            for path in geometry_paths(geometry.GetGeometryRef(index))
        ]
    points = geometry.GetPoints() or []
    return [np.asarray(points, np.float64)[:, :2]] if points else []


def _layer_features(
    layer: ogr.Layer, source: str, label_map: LabelMap
) -> list[tuple[str, ogr.Geometry]]:
    """(class, geometry in the map's CRS) of the features that may fall on the map."""
    map_srs = label_map.srs()
    layer_srs = layer.GetSpatialRef()
    to_map = None
    if layer_srs is not None and not layer_srs.IsSame(map_srs):
        layer_srs = layer_srs.Clone()
        layer_srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
        to_map = osr.CoordinateTransformation(layer_srs, map_srs)
        try:
            bounds = osr.CoordinateTransformation(map_srs, layer_srs).TransformBounds(
                *label_map.bounds, BOUNDS_DENSIFY
            )
        except RuntimeError:
            bounds = None
    else:
        bounds = label_map.bounds
    if bounds is not None:
        layer.SetSpatialFilterRect(*bounds)
    features = []
    for feature in layer:
        geometry = feature.GetGeometryRef()
        value = layer.GetName() if source == LAYER_NAME else feature.GetField(source)
        if geometry is None or value is None or not str(value).strip():
            continue
        geometry = geometry.Clone()
        if to_map is not None:
            geometry.Transform(to_map)
        features.append((str(value).strip(), geometry))
    layer.SetSpatialFilter(None)
    return features


def _refuse_without_classes(dataset: gdal.Dataset, path: Path, source: str) -> None:
    """InputError when the reference has no feature, or none with a geometry and a
    class in `source`, over its whole extent (rather than "does not overlap")."""
    layers = [dataset.GetLayer(index) for index in range(dataset.GetLayerCount())]
    counts = [layer.GetFeatureCount() for layer in layers]
    if not sum(counts):
        names = ", ".join(layer.GetName() for layer in layers)
        verb = "is" if len(layers) == 1 else "are"
        raise InputError(f"reference {path} has no features (layer {names} {verb} empty).")
    if source == LAYER_NAME:
        return
    for layer in layers:
        layer.SetAttributeFilter(f'"{source}" IS NOT NULL')
    classed = sum(layer.GetFeatureCount() for layer in layers)
    for layer in layers:
        layer.SetAttributeFilter(None)
    if not classed:
        definition = layers[0].GetLayerDefn()
        fields = ", ".join(
            definition.GetFieldDefn(index).GetName() for index in range(definition.GetFieldCount())
        )
        raise InputError(
            f"reference {path}: field {source} is empty (NULL) in all {sum(counts)} features, "
            "so none has a class; name the field that holds it with --reference-field "
            f"(its fields: {fields})."
        )


def _rasterise_vector(
    dataset: gdal.Dataset, path: Path, class_field: str, label_map: LabelMap
) -> Reference:
    source = class_source(dataset, path, class_field)
    features = [
        item
        for index in range(dataset.GetLayerCount())
        for item in _layer_features(dataset.GetLayer(index), source, label_map)
    ]
    if not features:
        _refuse_without_classes(dataset, path, source)
    names = sorted({name for name, _geometry in features})
    memory = ogr.GetDriverByName("Memory").CreateDataSource("reference")
    layer = memory.CreateLayer("reference", label_map.srs(), ogr.wkbUnknown)
    layer.CreateField(ogr.FieldDefn("class_index", ogr.OFTInteger))
    outlines: dict[str, list[np.ndarray]] = {name: [] for name in names}
    for name, geometry in features:
        feature = ogr.Feature(layer.GetLayerDefn())
        feature.SetField("class_index", names.index(name))
        feature.SetGeometry(geometry)
        layer.CreateFeature(feature)
        outlines[name].extend(geometry_paths(geometry))
    classes = np.full(label_map.labels.shape, NO_REFERENCE, np.int16)
    for index in range(len(names)):
        raster = _mem_raster(label_map, gdal.GDT_Byte)
        layer.SetAttributeFilter(f"class_index = {index}")
        gdal.RasterizeLayer(raster, [1], layer, burn_values=[1])
        inside = raster.GetRasterBand(1).ReadAsArray().astype(bool)
        conflicting = inside & (classes != NO_REFERENCE) & (classes != index)
        classes[inside & (classes == NO_REFERENCE)] = index
        classes[conflicting] = CONFLICT
    words = "layer names" if source == LAYER_NAME else f"field {source}"
    return Reference(classes, names, words, outlines)


def _warp_raster(raster: gdal.Dataset, path: Path, label_map: LabelMap) -> Reference:
    """A class raster on the map's grid (nearest neighbour); classes are its category
    names where it has them, else its values."""
    band = raster.GetRasterBand(1)
    rows, cols = label_map.labels.shape
    minx, miny, maxx, maxy = label_map.bounds
    warped = gdal.Warp(
        "",
        raster,
        format="MEM",
        outputBounds=(minx, miny, maxx, maxy),
        width=cols,
        height=rows,
        dstSRS=label_map.projection,
        resampleAlg="near",
        outputType=gdal.GDT_Float64,  # holds any class value exactly, and NaN
        dstNodata=float("nan"),
    )
    values = warped.GetRasterBand(1).ReadAsArray()
    nodata = band.GetNoDataValue()
    missing = ~np.isfinite(values) | (values == nodata if nodata is not None else False)
    odd = values[~missing & (values != np.round(values))]
    if len(odd):
        raise InputError(
            f"reference {path} holds {odd[0]:g}, not a whole number, so it is not a class "
            "raster; give one of class values (NaN or its nodata value where there is none)."
        )
    values = np.where(missing, NO_REFERENCE, values).astype(np.int64)
    category_names = list(band.GetCategoryNames() or [])
    present = [int(value) for value in np.unique(values) if value != NO_REFERENCE]

    def name_of(value: int) -> str:
        inside = 0 <= value < len(category_names) and category_names[value]
        return category_names[value] if inside else str(value)

    names = sorted({name_of(value) for value in present})
    classes = np.full(values.shape, NO_REFERENCE, np.int16)
    for value in present:
        classes[values == value] = names.index(name_of(value))
    return Reference(classes, names, "raster values", {})


def read_table(path: str | Path) -> dict[str, list[str]]:
    """A compatibility table file: JSON {"forest": ["Forest"], ...} or CSV rows
    `reference class, EuroSAT classes` (classes separated by ";" or in further cells;
    a first row starting `reference` is a header). Empty: not assessed. A cell
    `#rrggbb` is the row's colour, not a class (`table_colours`)."""
    table = read_table_cells(path)
    return {
        key: [name for name in value if not name.startswith(COLOUR_CELL)]
        for key, value in table.items()
    }


def table_colours(path: str | Path) -> dict[str, tuple[int, int, int]]:
    """The colours a table file gives its rows (a cell `#rrggbb`), by reference class."""
    colours = {}
    for key, value in read_table_cells(path).items():
        for cell in value:
            if cell.startswith(COLOUR_CELL):
                try:
                    if len(cell) != 7:
                        raise ValueError
                    colours[key] = tuple(int(cell[i : i + 2], 16) for i in (1, 3, 5))
                except ValueError:
                    raise InputError(
                        f"table {path} gives {key} the colour {cell}, not #rrggbb (e.g. #1e6e28)."
                    ) from None
    return colours


def read_table_cells(path: str | Path) -> dict[str, list[str]]:
    """A table file's rows as read, class names and colour cells together (`read_table`)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"table {path} does not exist.")
    try:
        text = path.read_text(encoding="utf-8")
        if path.suffix.lower() == ".json":
            content = json.loads(text)
            if not isinstance(content, dict):
                raise ValueError("not an object")
            table = {
                str(key).strip(): [value] if isinstance(value, str) else list(value)
                for key, value in content.items()
            }
        else:
            rows = [row for row in csv.reader(text.splitlines()) if any(c.strip() for c in row)]
            if rows and rows[0][0].strip().lower().startswith("reference"):
                rows = rows[1:]
            table = {
                row[0].strip(): [c for cell in row[1:] for c in cell.split(";")] for row in rows
            }
        table = {
            key: [str(name).strip() for name in value if str(name).strip()]
            for key, value in table.items()
        }
    except (OSError, UnicodeDecodeError, ValueError, TypeError, csv.Error) as error:
        raise InputError(
            f"table {path} cannot be read as a compatibility table ({error})."
        ) from None
    if not table:
        raise InputError(f"table {path} is empty.")
    return table


def compatibility_table(
    spec: str, reference_names: Sequence[str], class_names: Sequence[str]
) -> tuple[str, dict[str, list[str]]]:
    """(table name, reference class -> compatible map classes) for every reference class.

    spec "auto" picks the built-in table that knows the most reference classes, or,
    for a map whose classes are its own (not EuroSAT's) and include reference
    classes (08 --classes reference), the identity table: each reference class agrees
    with the map class of its name (and is not assessed when the map has none); a
    file is read with `read_table`, and its map classes must be classes of the map.
    """
    own = set(class_names) - set(CLASS_NAMES)
    if spec == "auto" and own:
        if not set(class_names) & set(reference_names):
            raise InputError(
                f"the map's classes ({', '.join(class_names)}) are not EuroSAT's and none is a "
                f"reference class ({', '.join(reference_names)}); give a table with --table "
                "that maps the reference classes to the map's."
            )
        return IDENTITY_TABLE, {
            name: [name] if name in class_names else [] for name in reference_names
        }
    if spec == "auto":
        name, table = max(
            BUILT_IN_TABLES.items(), key=lambda item: len(set(reference_names) & set(item[1]))
        )
        if not set(reference_names) & set(table):
            raise InputError(
                f"no built-in compatibility table knows the reference classes "
                f"{', '.join(reference_names)}; give one with --table (JSON or CSV)."
            )
        where = f"the built-in {name} table; give a table with --table"
    else:
        name, table = spec, read_table(spec)
        where = f"table {spec}"
        unknown = sorted({c for classes in table.values() for c in classes} - set(class_names))
        if unknown:
            raise InputError(
                f"table {spec} names {', '.join(unknown)}, not a class of the map "
                f"({', '.join(class_names)})."
            )
    for reference_name in reference_names:
        if reference_name not in table:
            raise InputError(f"reference class {reference_name!r} is missing from {where}.")
    return name, {reference_name: table[reference_name] for reference_name in reference_names}


def assess(label_map: LabelMap, reference: Reference, table: dict[str, list[str]]) -> dict:
    """Per reference class and overall agreement of the map (see the module docstring)."""
    class_names = label_map.class_names
    inside = reference.classes >= 0
    pairs = reference.classes[inside].astype(np.int64) * 256 + label_map.labels[inside]
    counts = np.bincount(pairs, minlength=256 * len(reference.names))
    counts = counts.reshape(len(reference.names), 256)
    classes, not_assessed = {}, {}
    left_out = {"cloud": 0, "nodata": 0, "conflicting": int((reference.classes == CONFLICT).sum())}
    for index, name in enumerate(reference.names):
        row = counts[index]
        if not table[name]:
            not_assessed[name] = int(row.sum())
            continue
        pixels = int(row[: len(class_names)].sum())
        cloud = int(row[CLOUD_LABEL])
        compatible = [class_names.index(other) for other in table[name] if other in class_names]
        agreed = int(row[compatible].sum())
        called = {
            class_names[value]: int(row[value]) / pixels
            for value in np.argsort(-row[: len(class_names)], kind="stable")
            if row[value]
        }
        classes[name] = {
            "pixels": pixels,
            "agreed": agreed,
            "agreement": agreed / pixels if pixels else None,
            "compatible": table[name],
            "called": called,
            "cloud": cloud,
            "nodata": int(row.sum()) - pixels - cloud,
        }
        left_out["cloud"] += cloud
        left_out["nodata"] += classes[name]["nodata"]
    left_out["not_assessed"] = sum(not_assessed.values())
    scored = [entry for entry in classes.values() if entry["pixels"]]
    total = sum(entry["pixels"] for entry in scored)
    return {
        "classes": classes,
        "not_assessed": not_assessed,
        "left_out": left_out,
        "area_weighted_agreement": sum(e["agreed"] for e in scored) / total if total else None,
        "class_balanced_agreement": (
            sum(e["agreement"] for e in scored) / len(scored) if scored else None
        ),
    }


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def format_report(report: dict) -> str:
    """The console table: a row per reference class, then the two agreements."""
    lines = [f"{'reference class':22s} {'pixels':>8s} {'agreement':>9s}  called"]
    for name, entry in report["classes"].items():
        called = ", ".join(
            f"{other} {share:.2f}"
            for other, share in list(entry["called"].items())[:CALLED_SHOWN]
            if share >= 0.005
        )
        lines.append(
            f"{name:22s} {entry['pixels']:8d} {_number(entry['agreement']):>9s}  {called or '-'}"
        )
    for name, pixels in report["not_assessed"].items():
        lines.append(f"{name:22s} {pixels:8d} {'-':>9s}  not assessed")
    left_out = ", ".join(f"{n} {what.replace('_', ' ')}" for what, n in report["left_out"].items())
    lines.append(f"left out: {left_out} pixels")
    lines.append(f"area-weighted agreement {_number(report['area_weighted_agreement'])}")
    lines.append(f"class-balanced agreement {_number(report['class_balanced_agreement'])}")
    return "\n".join(lines)


def open_picture_scene(
    path: str | Path, spec: str | None, label_map: LabelMap | None = None
) -> tuple[gdal.Dataset, list[int]]:
    """The scene to show beside the map (reading.open_scene: GeoTIFF/VRT, .SAFE or .zip),
    and its 1-based red, green, blue bands: `spec` ("3,2,1"), else B04, B03, B02 by band
    name, else the bands of a 3-band image. With `label_map`: InputError when the scene
    has no data over the map's extent."""
    scene, bands = _picture_bands(path, spec)
    if label_map is not None:
        rows, cols = label_map.labels.shape
        sample = _scene_on_map(scene, bands, label_map, (min(rows, 64), min(cols, 64)))
        if not np.isfinite(sample).any():
            raise InputError(
                f"scene {path} does not overlap map {label_map.path} (or has no data over "
                "it); give the scene the map was made from, or leave out --scene."
            )
    return scene, bands


def _picture_bands(path: str | Path, spec: str | None) -> tuple[gdal.Dataset, list[int]]:
    """open_picture_scene's scene and bands."""
    scene = open_scene(path)
    count = scene.RasterCount
    if spec:
        bands = band_numbers(band_spec_items(spec)) or []
        if len(bands) != 3 or not all(1 <= band <= count for band in bands):
            raise InputError(
                f"scene bands {spec} must be three band numbers of {path} (1-{count})."
            )
        return scene, bands
    indices = true_colour_bands(scene_band_names(scene))
    if indices is not None or count == 3:
        return scene, [1, 2, 3] if indices is None else [index + 1 for index in indices]
    raise InputError(
        f"scene {path} has no bands named B04, B03, B02; give red, green, blue with "
        "--scene-bands (e.g. 3,2,1)."
    )


def scene_picture(
    scene: gdal.Dataset, bands: Sequence[int], label_map: LabelMap, shape: tuple[int, int]
) -> np.ndarray:
    """(rows, cols, 3) uint8 true colour of the scene over the map's extent (GDAL
    averages; any CRS), each band stretched between its 2nd and 98th percentile."""
    values = _scene_on_map(scene, bands, label_map, shape)
    if not np.isfinite(values).any():
        return np.zeros((*shape, 3), np.uint8)
    low, high = np.nanpercentile(values, [2, 98], axis=(0, 1))
    stretched = (values - low) / np.maximum(high - low, 1e-9)
    return np.round(255 * np.clip(np.nan_to_num(stretched), 0, 1)).astype(np.uint8)


def _scene_on_map(
    scene: gdal.Dataset, bands: Sequence[int], label_map: LabelMap, shape: tuple[int, int]
) -> np.ndarray:
    """(rows, cols, 3) float32 of the scene's bands over the map's extent at `shape`
    (GDAL averages; NaN where the scene has no data)."""
    chosen = gdal.Translate("", scene, format="VRT", bandList=list(bands))
    warped = gdal.Warp(
        "",
        chosen,
        format="MEM",
        outputBounds=label_map.bounds,
        width=shape[1],
        height=shape[0],
        dstSRS=label_map.projection,
        resampleAlg="average",
        outputType=gdal.GDT_Float32,
        dstNodata=float("nan"),
    )
    return np.stack([warped.GetRasterBand(n).ReadAsArray() for n in (1, 2, 3)], axis=-1)


def save_picture(
    label_map: LabelMap,
    reference: Reference,
    report: dict,
    output_path: str | Path,
    title: str,
    scene: tuple[gdal.Dataset, list[int]] | None = None,
) -> None:
    """PNG: the scene's true colour (when given) and the map side by side, the
    reference outlines on both, a legend of map classes and reference classes."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    rows, cols = label_map.labels.shape
    scale = max(1.0, max(rows, cols) / QUICKLOOK_MAX_SIDE)
    picked_rows, picked_cols = decimation(rows, scale), decimation(cols, scale)
    labels = label_map.labels[np.ix_(picked_rows, picked_cols)]
    colours = label_colours(label_map.class_names, label_map.colours)
    panels = [("label map", colours[labels])]
    if scene is not None:
        panels.insert(0, ("scene", scene_picture(*scene, label_map, labels.shape)))
    minx, miny, maxx, maxy = label_map.bounds
    palette = plt.get_cmap(OUTLINE_COLOURS)
    outline_colours = {name: palette(index % 10) for index, name in enumerate(reference.names)}
    width = 6.0
    height = max(2.0, width * rows / cols)
    figure, axes = plt.subplots(
        1, len(panels), figsize=(width * len(panels) + 3.0, height + 0.8), squeeze=False
    )
    for axis, (name, image) in zip(axes[0], panels, strict=True):
        axis.imshow(image, extent=(minx, maxx, miny, maxy), interpolation="nearest")
        for class_name, paths in reference.outlines.items():
            for path in paths:
                style = {"marker": "o", "markersize": 3} if len(path) == 1 else {"linewidth": 1}
                axis.plot(path[:, 0], path[:, 1], color=outline_colours[class_name], **style)
        axis.set_xlim(minx, maxx)
        axis.set_ylim(miny, maxy)
        axis.set_title(name, fontsize=10)
        axis.set_xticks([])
        axis.set_yticks([])
    present = np.flatnonzero(np.bincount(labels.ravel(), minlength=256)[: len(colours)])
    handles = [
        Patch(
            facecolor=colours[value] / 255.0, edgecolor="black", label=label_map.class_names[value]
        )
        for value in present
        if value < len(label_map.class_names)
    ]
    for name in reference.names:
        entry = report["classes"].get(name)
        words = f"{name} {_number(entry['agreement'])}" if entry else f"{name} (not assessed)"
        handles.append(Line2D([], [], color=outline_colours[name], label=words))
    figure.suptitle(title)
    axes[0][-1].legend(
        handles=handles, loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False
    )
    figure.savefig(output_path, format="png", dpi=100, bbox_inches="tight")
    plt.close(figure)


def crop_to_box(label_map: LabelMap, box: Sequence[float]) -> tuple[LabelMap, list[int]]:
    """The map's pixels centred in `box` (xmin ymin xmax ymax, its CRS; edges included)
    and where: [first row, first column, rows, columns] (geometry.centred_in_box)."""
    top, left, rows, cols = centred_in_box(
        label_map.transform, label_map.labels.shape, box, f"map {label_map.path}"
    )
    x0, width, _, y0, _, height = label_map.transform
    return dataclasses.replace(
        label_map,
        labels=label_map.labels[top : top + rows, left : left + cols].copy(),
        transform=(x0 + left * width, width, 0.0, y0 + top * height, 0.0, height),
    ), [top, left, rows, cols]
