"""Weight-space interpolation of a model taught by 08 and its start model, side by side
(issue 24: WiSE-FT against forgetting).

One finished 08 run gives many models: for each share a of SHARES the weights (batch-norm
moving statistics included) become (1 - a) * start + a * taught (08's INTERPOLATE, the
same function). Each is scored as 08 scores its own model: 06's code classifies the scene
(stride 1, 08's scene flags), 07's code scores the run's hold-out box, and the model's
accuracy on the validation set of the run's EuroSAT split is measured. Share 1 is the run's
own model (its numbers equal the run's report/held_out.json). The table gives the held-out
class-balanced agreement, each reference class's agreement and the EuroSAT accuracy, with
the CPU. OUTPUT_DIR gets the models and maps.

Run from the repository root, e.g.:
    .venv/bin/python benchmarks/teach_interpolation.py --run runs/reference-<scene>
"""

from __future__ import annotations

import importlib.util
import json
import platform
import shutil
import sys
from pathlib import Path
from typing import Final

REPO_ROOT: Final = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from cnn_sentinel import reference_training as teach  # noqa: E402
from cnn_sentinel.errors import InputError  # noqa: E402
from cnn_sentinel.settings import parse_settings, run_script  # noqa: E402

RUN = None  # a finished run folder of 08 (model.keras, model.json with its settings)
SHARES = (0.4, 0.6, 0.8, 1.0)  # shares a of the taught weights: (1 - a) * start + a * taught
OUTPUT_DIR = "/tmp/teach_interpolation"  # interpolated models and their maps

SCRIPT_08: Final = REPO_ROOT / "08_train_on_reference.py"


def load_08():
    spec = importlib.util.spec_from_file_location("train_on_reference", SCRIPT_08)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def main(argv: list[str] | None = None) -> list[dict]:
    settings = parse_settings(__file__, argv)
    if not settings.run:
        raise InputError("give a finished run folder of 08 with --run.")
    run = Path(settings.run)
    if not (run / "model.keras").is_file() or not (run / "model.json").is_file():
        raise InputError(f"{run} holds no model.keras and model.json of 08.")
    import keras

    script = load_08()
    saved = json.loads((run / "model.json").read_text())
    taught_settings = parse_settings(SCRIPT_08, [])
    vars(taught_settings).update(saved["settings"])
    start_path = saved["started_from"]
    box = [float(value) for value in saved["holdout_bbox"]]
    start = keras.saving.load_model(start_path, compile=False)
    taught = keras.saving.load_model(run / "model.keras", compile=False)
    start_weights, taught_weights = start.get_weights(), taught.get_weights()
    _, info = teach_model_info(run)
    validation = None
    if taught_settings.eurosat:
        validation = teach.eurosat_arrays(
            taught_settings.eurosat, "validation", info.band_names, info.class_names
        )
    output = Path(settings.output_dir)
    rows = []
    for share in settings.shares:
        folder = output / f"share-{share:g}"
        folder.mkdir(parents=True, exist_ok=True)
        taught.set_weights(teach.interpolate_weights(start_weights, taught_weights, share))
        taught.save(folder / "model.keras")
        shutil.copy(run / "model.json", folder / "model.json")
        label = script.classify(taught_settings, str(folder / "model.keras"), folder / "map")
        score = teach.score_part(
            label, taught_settings.reference, taught_settings.reference_field,
            taught_settings.table, box,
        )  # fmt: skip
        row = {
            "share": share,
            "balanced": score["class_balanced_agreement"],
            "classes": {
                name: entry["agreement"]
                for name, entry in score["classes"].items()
                if entry["pixels"]
            },
            "eurosat": teach.accuracy(taught, *validation) if validation else None,
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    names = list(rows[0]["classes"])
    print(f"\n{run}, hold-out box {box}; CPU: {cpu_name()}")
    print("| share | balanced | " + " | ".join(names) + " | EuroSAT |")
    print("|---:|---:|" + "---:|" * len(names) + "---:|")
    for row in rows:
        eurosat = "n/a" if row["eurosat"] is None else f"{row['eurosat']:.3f}"
        values = " | ".join(f"{row['classes'][name]:.2f}" for name in names)
        print(f"| {row['share']:g} | {row['balanced']:.4f} | {values} | {eurosat} |")
    return rows


def teach_model_info(run: Path):
    from cnn_sentinel.scene.reading import load_scene_model

    return load_scene_model(run / "model.keras")


if __name__ == "__main__":
    run_script(main)
