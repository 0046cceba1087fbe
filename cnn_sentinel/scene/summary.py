"""What a many-scene run writes besides each scene's maps: summary.csv and summary.json
(one row per scene: status, time, speed, class shares, error), and for several scenes
mosaic.vrt (every label map, one layer for QGIS) with its quicklook.

    rows = [summary_row(image, "done", summary, None), ...]
    write_summary(folder, rows)
    write_mosaic(folder, [plan.outputs, ...])   # the finished scenes' outputs
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
from osgeo import gdal

from cnn_sentinel.outputs import atomic_output, write_atomic
from cnn_sentinel.scene import quicklooks
from cnn_sentinel.scene.blocks import CLOUD_LABEL, CLOUD_NAME, LABEL_NODATA
from cnn_sentinel.scene.plan import SceneOutputs

gdal.UseExceptions()

SUMMARY_CSV = "summary.csv"
SUMMARY_JSON = "summary.json"
# A scene's status in the summary: done, skipped (finished before), failed (its sentence in
# "error"); after an interrupt also interrupted (begun, not finished) and not started.
STATUSES = ("done", "skipped", "failed", "interrupted", "not started")
MOSAIC_FILE = "mosaic.vrt"
MOSAIC_QUICKLOOK = "mosaic_quicklook.png"


def summary_row(image: Path, status: str, summary: dict | None, error: str | None) -> dict:
    """scene, status (one of STATUSES), seconds, windows/s, class shares (0..1 of the
    classified pixels), cloud share, error; "done": whether it has outputs."""
    row = {
        "scene": str(image),
        "status": status,
        "done": summary is not None,
        "seconds": None,
        "windows_per_second": None,
        "cloud_share": None,
        "shares": {},
        "error": error,
    }
    if summary is not None:
        seconds = summary.get("seconds") or 0.0
        classified = sum(summary["pixels"].values()) + summary["cloud"]
        row.update(
            seconds=round(seconds, 3),
            windows_per_second=round(summary["classified"] / max(seconds, 1e-9), 1),
            cloud_share=round(summary["cloud"] / max(classified, 1), 6),
            shares={
                name: round(count / max(classified, 1), 6)
                for name, count in summary["pixels"].items()
            },
            pixels=summary["pixels"],
            cloud=summary["cloud"],
        )
    return row


def write_summary(folder: Path, rows: list[dict]) -> None:
    """summary.json (the rows) and summary.csv (one column per class share), each
    written atomically (a run interrupted meanwhile leaves the previous one whole)."""
    classes = list(dict.fromkeys(name for row in rows for name in row["shares"]))
    columns = ["scene", "status", "seconds", "windows_per_second"]
    columns += [f"share_{name}" for name in classes] + ["cloud_share", "error"]
    text = io.StringIO()
    table = csv.DictWriter(text, columns, lineterminator="\n")
    table.writeheader()
    for row in rows:
        shares = {f"share_{name}": row["shares"].get(name) for name in classes}
        table.writerow({**{name: row.get(name) for name in columns}, **shares})
    public = [
        {name: value for name, value in row.items() if name not in ("done", "pixels", "cloud")}
        for row in rows
    ]
    write_atomic(folder / SUMMARY_JSON, {"scenes": public}, overwrite=True)
    write_atomic(folder / SUMMARY_CSV, text.getvalue(), overwrite=True)


def write_mosaic(folder: Path, outputs: list[SceneOutputs]) -> None:
    """mosaic.vrt of the scenes' label maps (one layer for QGIS) and its quicklook;
    a note instead when GDAL cannot mosaic them (e.g. different coordinate systems)."""
    if not outputs:
        return
    labels = [str(scene_outputs.label) for scene_outputs in outputs]
    try:
        with atomic_output(folder / MOSAIC_FILE, overwrite=True) as temporary:
            mosaic = gdal.BuildVRT(str(temporary), labels)
            if mosaic is None or mosaic.RasterCount == 0:
                raise RuntimeError("no label map could be added")
            mosaic = None
        with atomic_output(folder / MOSAIC_QUICKLOOK, overwrite=True) as temporary:
            mosaic_quicklook(folder / MOSAIC_FILE, labels[0], temporary)
    except RuntimeError as error:
        print(f"note: no mosaic of the label maps: {error}")
        return
    print(f"wrote {folder / MOSAIC_FILE}\nwrote {folder / MOSAIC_QUICKLOOK}")


def mosaic_quicklook(mosaic_path: Path, first_label: str, output_path: Path) -> None:
    """The mosaic's label map, decimated, with every label's share (counted on the
    decimated mosaic), in the colours of the first scene's classes."""
    first = gdal.Open(first_label)
    category_names = first.GetRasterBand(1).GetCategoryNames() or []
    class_names = [name for name in category_names[:CLOUD_LABEL] if name and name != CLOUD_NAME]
    colours = quicklooks.colour_table_colours(first.GetRasterBand(1), len(class_names))
    first = None
    mosaic = gdal.Open(str(mosaic_path))
    rows, cols = mosaic.RasterYSize, mosaic.RasterXSize
    scale = max(1.0, max(rows, cols) / quicklooks.QUICKLOOK_MAX_SIDE)
    shape = (max(1, round(rows / scale)), max(1, round(cols / scale)))
    labels = mosaic.GetRasterBand(1).ReadAsArray(buf_xsize=shape[1], buf_ysize=shape[0])
    counts = np.bincount(labels.ravel(), minlength=256)
    counts[LABEL_NODATA] = 0
    quicklooks.save_quicklook(
        labels, counts, output_path, class_names, f"mosaic of {mosaic_path.parent.name}",
        class_colours=colours,
    )  # fmt: skip
