"""Reports: metrics, confusion matrix, training curves, and the evaluation of a saved
model on a whole split (what --evaluate-only and the end of every training run write).

Evaluation is deterministic: every image once, in file order, no augmentation.
TensorFlow and Keras are imported inside functions: importing this module is cheap.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cnn_sentinel.datasets import inspect_split
from cnn_sentinel.errors import InputError
from cnn_sentinel.fonts import fonts_for
from cnn_sentinel.model_info import ModelInfo
from cnn_sentinel.networks import load_model, with_dihedral_averaging
from cnn_sentinel.outputs import atomic_output, write_atomic
from image_functions import (
    default_band_names,
    folder_pipeline,
    normalization_layer,
    select_bands,
)


def classification_metrics(
    labels: np.ndarray, probabilities: np.ndarray, class_names: Sequence[str]
) -> dict:
    """Overall accuracy, per-class precision/recall/F1/support, confusion matrix
    (rows: true class, columns: predicted class) of labels (n,) vs probabilities (n, classes)."""
    from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

    predicted = probabilities.argmax(axis=1)
    classes = list(range(len(class_names)))
    precision, recall, f1, support = precision_recall_fscore_support(
        labels, predicted, labels=classes, zero_division=0
    )
    return {
        "images": int(len(labels)),
        "overall_accuracy": float(accuracy_score(labels, predicted)),
        "per_class": {
            name: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, name in enumerate(class_names)
        },
        "confusion_matrix": confusion_matrix(labels, predicted, labels=classes).tolist(),
    }


def plot_confusion_matrix(
    matrix: Sequence[Sequence[int]], class_names: Sequence[str], title: str, path: Path
) -> None:
    """PNG of a confusion matrix: counts in the cells, colour by share of the true class."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with fonts_for(class_names):  # class names in any alphabet
        counts = np.asarray(matrix)
        shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
        size = 2.0 + 0.6 * len(class_names)
        figure, axes = plt.subplots(figsize=(size + 1.5, size))
        image = axes.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
        for row in range(counts.shape[0]):
            for column in range(counts.shape[1]):
                colour = "white" if shares[row, column] > 0.5 else "black"
                axes.text(
                    column,
                    row,
                    str(counts[row, column]),
                    ha="center",
                    va="center",
                    color=colour,
                    fontsize=8,
                )
        axes.set_xticks(range(len(class_names)), class_names, rotation=45, ha="right")
        axes.set_yticks(range(len(class_names)), class_names)
        axes.set_xlabel("predicted class")
        axes.set_ylabel("true class")
        axes.set_title(title)
        figure.colorbar(image, ax=axes, label="share of the true class")
        figure.tight_layout()
        figure.savefig(path, dpi=100)
        plt.close(figure)


def plot_training_curves(history: Sequence[dict], stage_starts: Sequence[int], path: Path) -> None:
    """PNG of loss and accuracy per epoch (training and validation), stage starts dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (loss_axes, accuracy_axes) = plt.subplots(1, 2, figsize=(11, 4))
    epochs = [row["epoch"] for row in history]
    for axes, key, label in (
        (loss_axes, "loss", "loss"),
        (accuracy_axes, "categorical_accuracy", "accuracy"),
    ):
        for prefix, name in (("", "training"), ("val_", "validation")):
            values = [row.get(prefix + key, np.nan) for row in history]
            axes.plot(epochs, values, marker="o", markersize=3, label=name)
        for start in list(stage_starts)[1:]:
            axes.axvline(start + 0.5, color="grey", linestyle="--", linewidth=1)
        axes.set_xlabel("epoch")
        axes.set_ylabel(label)
        axes.grid(alpha=0.3)
        axes.legend()
    figure.suptitle("training curves (dashed: next stage starts)")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def load_for_evaluation(model_path: Path) -> tuple:
    """(model taking raw pixels, ModelInfo) of a saved model. A model without
    model.json (a talk .hdf5) gets the talk's facts and normalisation in front."""
    import keras

    model = load_model(model_path)
    info = ModelInfo.load(model_path)
    if info is not None:
        return model, info
    info = ModelInfo.for_talk_model(model.input_shape[-1])
    talk_model = keras.Sequential(
        [keras.Input(model.input_shape[1:]), normalization_layer(info.mean, info.std), model]
    )
    return talk_model, info


def evaluate_model(
    model_path: str | Path,
    split_folder: str | Path,
    report_folder: str | Path | None = None,
    batch_size: int = 64,
    overwrite: bool = False,
    history: Sequence[dict] = (),
    stage_starts: Sequence[int] = (),
    info: ModelInfo | None = None,
    tta: bool = False,
) -> dict:
    """Evaluate a saved model on the whole validation/ (and test/) of a split.

    Deterministic: every image once, in file order, no augmentation. Writes
    `report_folder` (default: `report-<split name>` beside the model), atomically:
    metrics.json, classification_report.txt, confusion_matrix.png (one per part:
    confusion_matrix_test.png for test/), training_curves.png when `history`
    is given. Bands and classes come from `info` or the model's model.json; a model
    without one is taken as a talk model (EuroSAT classes, all bands, talk
    normalisation). `tta`: average the predictions over the 8 flips and 90-degree
    rotations of each image (networks.with_dihedral_averaging). Returns the
    metrics per part.
    """
    from sklearn.metrics import classification_report

    model_path, split_folder = Path(model_path), Path(split_folder)
    if info is None:
        model, info = load_for_evaluation(model_path)
    else:
        model = load_model(model_path)
    if tta:
        model = with_dihedral_averaging(model)
    split = inspect_split(split_folder, "all", with_statistics=False, progress=False)
    class_names, band_names = info.class_names or split.class_names, info.band_names
    available = default_band_names(len(split.band_names))
    band_indices = select_bands(list(band_names), available)
    if split.class_names != list(class_names):
        raise InputError(
            f"class folders of {split_folder} ({', '.join(split.class_names)}) differ from the "
            f"model's classes ({', '.join(class_names)})."
        )
    report_folder = Path(
        report_folder or model_path.with_name(f"report-{split_folder.resolve().name}")
    )
    metrics = {"model": str(model_path), "split": str(split_folder), "dihedral_averaging": tta}
    texts = []
    parts = ["validation"] + (["test"] if split.has_test else [])
    with atomic_output(report_folder, overwrite) as temporary:
        temporary.mkdir()
        for part in parts:
            pipeline, labels = folder_pipeline(
                split_folder / part,
                batch_size,
                training=False,
                band_indices=band_indices,
                class_names=class_names,
                progress=False,
            )
            probabilities = model.predict(pipeline.map(lambda images, _: images), verbose=0)
            metrics[part] = classification_metrics(labels, probabilities, class_names)
            texts.append(
                f"{part}/ of {split_folder}\n"
                + classification_report(
                    labels,
                    probabilities.argmax(axis=1),
                    labels=list(range(len(class_names))),
                    target_names=list(class_names),
                    digits=4,
                    zero_division=0,
                )
            )
            suffix = "" if part == "validation" else f"_{part}"
            accuracy = metrics[part]["overall_accuracy"]
            plot_confusion_matrix(
                metrics[part]["confusion_matrix"],
                class_names,
                f"{part}: overall accuracy {accuracy:.4f}",
                temporary / f"confusion_matrix{suffix}.png",
            )
        if history:
            plot_training_curves(history, stage_starts, temporary / "training_curves.png")
        write_atomic(temporary / "metrics.json", metrics)
        (temporary / "classification_report.txt").write_text("\n".join(texts), encoding="utf-8")
    return metrics


def evaluate_saved_model(
    model_path: str | Path,
    split_folder: str | Path,
    batch_size: int,
    overwrite: bool,
    tta: bool = False,
) -> Path:
    """--evaluate-only: the report of a saved model on a split, in
    `report-<split name>/` beside the model (`report-<split name>-tta/` with test-time
    averaging over the 8 flips/rotations). Returns that folder."""
    model_path, split_folder = Path(model_path), Path(split_folder)
    suffix = "-tta" if tta else ""
    report = model_path.with_name(f"report-{split_folder.resolve().name}{suffix}")
    evaluate_model(model_path, split_folder, report, batch_size, overwrite, tta=tta)
    print(f"report written to {report}")
    return report
