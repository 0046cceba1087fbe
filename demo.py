"""Demo: the whole pipeline, 01 -> statistics.py -> training -> 06, in one command.

Without EUROSAT_DIR it runs on EuroSAT-like data that demo_data.py generates
(no download needed): a 13-band patch dataset and a georeferenced scene with
its ground truth. It trains the small demo network (tiny-valid: a stride-4 stem, 16-64
filters, 'valid' convolutions) with 05 (13 bands from scratch, stopping once the
validation accuracy stops improving), classifies the scene with 06 (in one dense
pass) and prints the scene accuracy against the ground truth. `make demo` runs it.

With EUROSAT_DIR (a real EuroSAT folder of class folders, RGB JPEGs or 13-band
GeoTIFFs) it runs the same chain with the talk's settings: the talk's split,
VGG16 from scratch (03 for RGB, 05 for MS), then writes a results table
(`make reproduce`). A SCENE, if given, is classified with the trained model.

Each step runs the numbered script as a user would, in a subprocess, and is
skipped when its outputs are already there, so a second run reuses what the
first made; nothing outside DEMO_DIR is touched.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Final

DEMO_DIR = "demo"  # folder for everything the demo makes
EUROSAT_DIR = None  # real EuroSAT folder (class folders); None: generated demo data
SCENE = None  # scene to classify with the trained model; None: the demo scene
IMAGES_PER_CLASS = 300  # generated patches per class
SCENE_SIZE = 768  # generated scene: rows = cols
ARCH = None  # backbone; None: tiny-valid for demo data, vgg16 (the talk's) for EUROSAT_DIR
EPOCHS = 0  # training epochs; 0: 30 for demo data, 100 (early stopping) for EUROSAT_DIR
PATIENCE = 0  # early-stopping patience; 0: 3 for demo data, the talk's 50 for EUROSAT_DIR
STRIDE = 4  # 06 stride: one window every STRIDE pixels
SEED = 0  # seed of the generated data and of training

REPO_ROOT: Final = Path(__file__).resolve().parent


def run_step(title: str, arguments: list[str]) -> None:
    """Run one numbered script in a subprocess; stop the demo if it fails."""
    print(f"\n== {title}\n$ python {' '.join(arguments)}", flush=True)
    started = time.perf_counter()
    result = subprocess.run([sys.executable, *arguments], cwd=REPO_ROOT)
    if result.returncode != 0:
        from cnn_sentinel.errors import InputError

        raise InputError(f"step '{title}' failed with exit status {result.returncode}.")
    print(f"   ({time.perf_counter() - started:.0f} s)", flush=True)


def skip(title: str, reason: str) -> None:
    print(f"\n== {title}: skipped, {reason}", flush=True)


def dataset_kind(folder: Path) -> str:
    """'rgb' for a folder of JPEG class folders, 'ms' for GeoTIFFs."""
    from image_functions import list_class_images, read_image

    first_image = list_class_images(folder)[0][0]
    return "rgb" if read_image(first_image).shape[-1] == 3 else "ms"


def scene_accuracy(label_path: Path, truth_path: Path) -> tuple[float, int]:
    """Share of classified pixels whose label equals the ground truth, and their count
    (pixels labelled Cloud or nodata are not classified)."""
    import numpy as np

    from cnn_sentinel.scene.blocks import CLOUD_LABEL, LABEL_NODATA
    from image_functions import read_image

    labels = read_image(label_path)[..., 0]
    truth = read_image(truth_path)[..., 0]
    classified = (labels != LABEL_NODATA) & (labels != CLOUD_LABEL)
    return float(np.mean(labels[classified] == truth[classified])), int(classified.sum())


def main(argv: list[str] | None = None) -> None:
    from cnn_sentinel.settings import parse_settings

    settings = parse_settings(__file__, argv)
    demo_dir = Path(settings.demo_dir).resolve()
    real = settings.eurosat_dir is not None
    script = [str(REPO_ROOT / "demo_data.py")]
    demo_data_dir = demo_dir / "data"
    truth = None
    if real:
        source = Path(settings.eurosat_dir).resolve()
        kind = dataset_kind(source)
        scene = Path(settings.scene).resolve() if settings.scene else None
    else:
        kind = "ms"
        source = demo_data_dir / "eurosat_ms"
        scene = demo_data_dir / "scene_ms.tif"
        truth = demo_data_dir / "scene_ms_truth.tif"
        if settings.scene:
            scene, truth = Path(settings.scene).resolve(), None
        if source.is_dir() and (demo_data_dir / "scene_ms_truth.tif").is_file():
            skip("generate demo data", f"{demo_data_dir} exists")
        else:
            run_step(
                "generate demo data (demo_data.py)",
                [
                    *script,
                    "--target",
                    str(demo_data_dir),
                    "--images-per-class",
                    str(settings.images_per_class),
                    "--scene-size",
                    str(settings.scene_size),
                    "--seed",
                    str(settings.seed),
                    "--overwrite",
                ],
            )

    split = demo_dir / ("split" if not real else f"split_{kind}")
    if (split / "split.csv").is_file():
        skip("01 split", f"{split} exists")
    else:
        run_step(
            "01 split into train/ and validation/",
            [
                "01_split_data_to_train_and_validation.py",
                "--source",
                str(source),
                "--target",
                str(split),
                "--mode",
                "symlink",
            ],
        )

    if (split / "band_stats.json").is_file():
        skip("statistics.py", f"{split / 'band_stats.json'} exists")
    else:
        run_step("statistics.py: per-band mean and std", ["statistics.py", str(split / "train")])

    arch = settings.arch or ("vgg16" if real else "tiny-valid")
    recipe = "03_train_rgb_from_scratch.py" if kind == "rgb" else "05_train_ms_from_scratch.py"
    run_name = f"{'eurosat' if real else 'demo'}-{kind}-scratch-{arch}"
    run_folder = demo_dir / "runs" / run_name
    model = run_folder / "model.keras"
    epochs = settings.epochs or (100 if real else 30)
    patience = settings.patience or (50 if real else 3)
    if (run_folder / "model.json").is_file() and model.is_file():
        skip(f"training ({recipe})", f"{model} exists")
    else:
        run_step(
            f"training {arch} from scratch ({recipe})",
            [
                recipe,
                "--data",
                str(split),
                "--arch",
                arch,
                "--epochs",
                str(epochs),
                "--patience",
                str(patience),
                "--output",
                str(demo_dir / "runs"),
                "--run-name",
                run_name,
                "--seed",
                str(settings.seed),
                *(["--recipe", "talk"] if real else []),
            ],
        )

    metrics = json.loads((run_folder / "report" / "metrics.json").read_text())
    classified = demo_dir / "classified"
    label = classified / f"{scene.stem}_label.tif" if scene else None
    if scene is None:
        skip("06 classify a scene", "no SCENE given")
    elif label.is_file() and label.stat().st_mtime > model.stat().st_mtime:
        skip("06 classify the scene", f"{label} is newer than the model")
    else:
        run_step(
            "06 classify the scene",
            [
                "06_classify_image.py",
                "--image",
                str(scene),
                "--model",
                str(model),
                "--output-dir",
                str(classified),
                "--stride",
                str(settings.stride),
                "--overwrite",
            ],
        )

    print("\n== outputs")
    print(f"split:          {split}/ (split.csv, band_stats.json)")
    print(f"model:          {model} (+ model.json)")
    print(f"report:         {run_folder / 'report'}/ (metrics.json, confusion_matrix.png,")
    print("                training_curves.png, classification_report.txt)")
    print(f"validation accuracy: {validation_accuracy(metrics):.3f}")
    if label is not None:
        print(f"classified:     {classified}/ ({scene.stem}_label.tif, _prob.tif, _quicklook.png)")
    if label is not None and truth is not None and truth.is_file():
        accuracy, pixels = scene_accuracy(label, truth)
        print(f"scene accuracy against the ground truth: {accuracy:.3f} ({pixels} pixels)")
    if real:
        write_results(demo_dir / "results.md", metrics, recipe, arch, settings, source)


def validation_accuracy(metrics: dict) -> float:
    """Overall accuracy on the validation set from a report's metrics.json."""
    return float(metrics["validation"]["overall_accuracy"])


def write_results(path: Path, metrics: dict, recipe: str, arch: str, settings, source) -> None:
    """A markdown results table of a real-data run, beside the talk's numbers."""
    accuracy = validation_accuracy(metrics)
    lines = [
        "| run | validation accuracy | command |",
        "|---|---|---|",
        f"| ours: {recipe} {arch} on {source.name} | {accuracy:.4f} | "
        f"`python demo.py {' '.join(sys.argv[1:]) or f'--eurosat-dir {source}'}` |",
        "| talk: VGG16, 13-band, first conv replaced | 0.985 | talk's checkpoint name |",
        "| EuroSAT paper: ResNet-50, RGB (80/20) | 0.9857 | Helber et al. 2019 |",
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"results table:  {path}")


if __name__ == "__main__":
    from cnn_sentinel.settings import run_script

    run_script(main)
