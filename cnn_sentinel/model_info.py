"""What a trained model says about itself: model.json beside model.keras.

One small typed class, read and written here only: the training scripts write it,
evaluation and 06 read it, and a talk model without one gets the talk's facts.
No TensorFlow here.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from cnn_sentinel.errors import InputError
from cnn_sentinel.outputs import write_atomic
from image_functions import CLASS_NAMES, IMAGE_SIZE, default_band_names, talk_constants

MODEL_INFO_FILE = "model.json"
# The pixel size of EuroSAT's patches in metres (Sentinel-2's 10 m bands, the rest resampled).
EUROSAT_PIXEL_SIZE = 10.0
# The folder of a run that holds its per-epoch checkpoints (cnn_sentinel.training).
CHECKPOINTS_FOLDER = "checkpoints"


@dataclass
class ModelInfo:
    """The facts of a trained classifier, saved as model.json beside model.keras.

    class_names: one per output unit, in output order. band_names: the input
    bands in order. input_size: window side in pixels. mean/std: per-band
    normalisation (inside the model for models of 02-05; applied in front of the
    model for the talk's models, see for_talk_model, which set normalise_in_front).
    pixel_size: the ground size in metres of the pixels trained on (10 for EuroSAT).
    own_classes: True when class_names are the user's own reference classes (08's
    --classes reference), not EuroSAT's; class_colours: one [red, green, blue] (0-255)
    per class for label maps and pictures, empty for EuroSAT's colours by class name.
    The rest records how the model was trained. `extra` keeps keys this version does
    not know. Not saved: `normalise_in_front` (whether mean/std must be applied in
    front of the model, which a model.json model never needs) and `source` (the
    file the facts came from, for messages).
    """

    class_names: list[str]
    band_names: list[str]
    input_size: int | None = IMAGE_SIZE
    # Ground size of a pixel in metres (EuroSAT: Sentinel-2's 10 m; older files lack it).
    pixel_size: float = EUROSAT_PIXEL_SIZE
    own_classes: bool = False
    class_colours: list[list[int]] = field(default_factory=list)
    mean: list[float] = field(default_factory=list)
    std: list[float] = field(default_factory=list)
    normalisation_source: str = ""
    arch: str = ""
    variant: str | None = None
    recipe: str = ""
    mixed_precision: str = ""
    replicas: int = 1
    settings: dict = field(default_factory=dict)
    stages: list[dict] = field(default_factory=list)
    epochs_trained: int = 0
    training_seconds: float = 0.0
    metrics: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)
    normalise_in_front: bool = False
    source: str = field(default="", compare=False)

    def to_json(self) -> dict:
        """The model.json object (input_size as [rows, cols], unknown keys kept)."""
        data = asdict(self)
        data.pop("source")
        data.pop("normalise_in_front")
        extra = data.pop("extra")
        if self.input_size is not None:
            data["input_size"] = [self.input_size, self.input_size]
        return {**data, **extra}

    def save(self, path: str | Path) -> None:
        """Write model.json at `path` atomically."""
        write_atomic(path, self.to_json(), overwrite=True)

    @classmethod
    def from_json(cls, data: dict, source: str = "") -> ModelInfo:
        """ModelInfo from a model.json object; the legacy keys "classes" and "bands",
        an input_size given as 64, "64" or [64, 64] (None when missing) and a missing
        pixel_size (10 m, EuroSAT's) are accepted."""
        data = dict(data)
        names = {item.name for item in fields(cls)} - {"extra", "source", "normalise_in_front"}
        class_names = data.pop("class_names", None) or data.pop("classes", None) or []
        band_names = data.pop("band_names", None) or data.pop("bands", None) or []
        size = data.pop("input_size", None)
        if isinstance(size, (list, tuple)):
            size = size[0] if size else None
        try:
            input_size = int(size) if size is not None else None
        except (TypeError, ValueError):
            raise InputError(f"model configuration {source} has input_size {size!r}.") from None
        pixel_size = data.pop("pixel_size", None) or EUROSAT_PIXEL_SIZE
        try:
            pixel_size = float(pixel_size)
        except (TypeError, ValueError):
            raise InputError(
                f"model configuration {source} has pixel_size {pixel_size!r}."
            ) from None
        known = {key: data.pop(key) for key in list(data) if key in names}
        colours = known.get("class_colours") or []
        try:
            known["class_colours"] = [[int(value) for value in colour] for colour in colours]
        except (TypeError, ValueError):
            known["class_colours"] = None
        if colours and (
            known["class_colours"] is None
            or len(colours) != len(class_names)
            or not all(
                len(c) == 3 and min(c) >= 0 and max(c) <= 255 for c in known["class_colours"]
            )
        ):
            raise InputError(
                f"model configuration {source} has class_colours that are not one "
                f"[red, green, blue] (0-255) per class ({len(class_names)} classes)."
            )
        return cls(
            class_names=[str(name) for name in class_names],
            band_names=[str(name) for name in band_names],
            input_size=input_size,
            pixel_size=pixel_size,
            **known,
            extra=data,
            source=source,
        )

    @classmethod
    def load(cls, model_path: str | Path) -> ModelInfo | None:
        """The facts beside a model file: `<stem>.json`, else model.json in its folder,
        else, for a training checkpoint (`<run>/checkpoints/epoch-NNN.keras`), the run's
        model.json; None when there is none (e.g. a talk .hdf5). InputError for a file
        that is not a JSON object."""
        model_path = Path(model_path)
        candidates = [model_path.with_suffix(".json"), model_path.with_name(MODEL_INFO_FILE)]
        if model_path.parent.name == CHECKPOINTS_FOLDER:
            candidates.append(model_path.parent.parent / MODEL_INFO_FILE)
        for path in candidates:
            if path.is_file():
                try:
                    data = json.loads(path.read_text(encoding="utf-8"))
                except (OSError, ValueError) as error:
                    raise InputError(
                        f"model configuration {path} cannot be read: {error}."
                    ) from None
                if not isinstance(data, dict):
                    raise InputError(f"model configuration {path} is not a JSON object.")
                return cls.from_json(data, source=str(path))
        return None

    @classmethod
    def for_talk_model(cls, band_count: int) -> ModelInfo:
        """The facts the talk's models (.hdf5 without model.json) imply: EuroSAT's
        classes, RGB or all 13 bands, and the talk's normalisation constants, which
        such a model does not hold and which are applied in front of it."""
        mean, std = talk_constants(band_count)
        return cls(
            class_names=list(CLASS_NAMES),
            band_names=list(default_band_names(band_count)),
            mean=[float(value) for value in mean],
            std=[float(value) for value in std],
            normalisation_source="the talk's constants, applied in front of the model",
            normalise_in_front=True,
            recipe="talk",
            source="the talk's defaults (no model.json)",
        )
