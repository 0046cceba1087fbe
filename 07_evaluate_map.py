"""Score a label map of 06 against an independent reference, class by class.

The reference (polygons or points in any OGR vector and CRS, such as OSM land
use or hand-drawn samples, or a class raster) is laid onto the map's grid:
polygons cover the pixels whose centres they contain, a point the pixel under
it. A compatibility table says which EuroSAT classes agree with each reference
class (built in: OpenStreetMap land use, the Aberystwyth layers; or a JSON/CSV
file); classes with no compatible class (OSM scrub, wetland) are not assessed.
Cloud and nodata pixels of the map, and pixels inside polygons of two different
reference classes, are left out and counted.

Per reference class: its pixels, its agreement (producer's accuracy: the share
of its pixels given a compatible class) and what the map called it; then the
area-weighted agreement and the class-balanced agreement (the unweighted mean
over the classes with pixels). Writes OUTPUT_DIR/evaluation.json and
OUTPUT_DIR/evaluation.png (the scene, when given, and the map side by side with
the reference outlines on both).
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

from cnn_sentinel import evaluation
from cnn_sentinel.errors import InputError
from cnn_sentinel.fonts import fonts_for
from cnn_sentinel.outputs import atomic_output, refuse_existing
from cnn_sentinel.settings import parse_settings, run_script

MAP = None  # label GeoTIFF written by 06 (<stem>_label.tif, class names in its .aux.xml)
REFERENCE = None  # OGR vector (any driver and CRS: polygons or points), or a class raster
REFERENCE_FIELD = "auto"  # field with the class; layer: the layer names; auto: fclass, class...
TABLE = "auto"  # auto: the built-in table that fits; or a JSON/CSV file: class -> EuroSAT classes
SCENE = None  # the classified scene, in true colour beside the map; None: the map alone
SCENE_BANDS = None  # red, green, blue bands of SCENE ("3,2,1"); None: B04,B03,B02 by name
OUTPUT_DIR = None  # folder for evaluation.json and .png; None: <map stem>_evaluation beside it
PICTURE = True  # also draw evaluation.png
OVERWRITE = False  # replace existing outputs


def output_folder(map_path: Path, output_dir: str | None) -> Path:
    """OUTPUT_DIR, or the folder <map stem>_evaluation beside the map."""
    if output_dir:
        folder = Path(output_dir)
        if folder.exists() and not folder.is_dir():
            raise InputError(f"output folder {folder} is a file, not a folder.")
        return folder
    return map_path.resolve().parent / f"{map_path.stem}_evaluation"


def main(argv: list[str] | None = None) -> dict:
    settings = parse_settings(__file__, argv, common_flags=())  # no TensorFlow, no bars
    if not settings.map or not settings.reference:
        raise InputError("give the label map with --map and the reference with --reference.")
    label_map = evaluation.read_label_map(settings.map)
    folder = output_folder(Path(settings.map), settings.output_dir)
    json_path, picture_path = folder / "evaluation.json", folder / "evaluation.png"
    outputs = [json_path] + ([picture_path] if settings.picture else [])
    refuse_existing(outputs, settings.overwrite)
    scene = None
    if settings.picture and settings.scene:
        scene = evaluation.open_picture_scene(settings.scene, settings.scene_bands)
    reference = evaluation.read_reference(settings.reference, settings.reference_field, label_map)
    table_name, table = evaluation.compatibility_table(
        settings.table, reference.names, label_map.class_names
    )
    print(
        f"{settings.map} against {settings.reference} (classes from {reference.source}, "
        f"{table_name} compatibility table)"
    )
    report = {
        "map": str(settings.map),
        "reference": str(settings.reference),
        "reference_classes_from": reference.source,
        "table": table_name,
        **evaluation.assess(label_map, reference, table),
    }
    print(evaluation.format_report(report))

    with contextlib.ExitStack() as stack:
        temporary = [
            stack.enter_context(atomic_output(path, settings.overwrite)) for path in outputs
        ]
        temporary[0].write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        if settings.picture:
            title = f"{Path(settings.map).name} against {Path(settings.reference).name}"
            stack.enter_context(fonts_for([*label_map.class_names, *reference.names]))
            evaluation.save_picture(label_map, reference, report, temporary[1], title, scene)
    for path in outputs:
        print(f"wrote {path}")
    return report


if __name__ == "__main__":
    run_script(main)
