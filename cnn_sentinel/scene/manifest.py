"""manifest.json of a many-scene run: which scenes it started and finished, from which
inputs, with which settings, into which outputs, so the same command run again resumes.

    manifest = Manifest(folder / MANIFEST_FILE)
    values = output_settings(plan)                 # what the scene's outputs depend on
    manifest.finished(image, values)      # the record when done with these inputs/settings
    manifest.start({image: values, ...})  # before the scenes run
    manifest.record(image, values, plan.outputs, summary)

The settings recorded are the scene plan's fields that change its outputs and the model
file's SHA-256 (plan.output_values): a new such field is compared without a change here.
A scene "started" by an earlier run of the same inputs and settings, but never recorded
as finished (the run was interrupted, its workers or scheduler killed), may have left
outputs: they are this command's own and are redone without --overwrite. Outputs that
the manifest does not explain are refused with a sentence that says why.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from cnn_sentinel.errors import InputError
from cnn_sentinel.outputs import write_atomic
from cnn_sentinel.scene.plan import SceneOutputs, ScenePlan, file_sha256, output_values

# The run's record of its scenes, in OUTPUT_DIR (or the scenes' common folder).
MANIFEST_FILE = "manifest.json"
# A record's status: its scene was submitted, or finished with the recorded outputs.
STARTED, FINISHED = "started", "finished"
# A setting's value longer than this is named, not quoted, in a refusal.
QUOTED_VALUE_CHARS = 40


def input_fingerprint(path: Path) -> dict:
    """Size and newest modification time of a scene (a .SAFE folder: over its files)."""
    files = [path] if path.is_file() else [item for item in path.rglob("*") if item.is_file()]
    stats = [item.stat() for item in files]
    return {
        "size": sum(stat.st_size for stat in stats),
        "mtime_ns": max((stat.st_mtime_ns for stat in stats), default=0),
    }


def output_settings(plan: ScenePlan) -> dict:
    """What changes a scene's outputs, as JSON values: the plan's fields that say so
    and the model file's SHA-256 (plan.output_values)."""
    return output_values(plan)


def change_words(before: dict, now: dict) -> str:
    """ "stride 8, now 4; info changed": the settings that differ, short values quoted."""
    words = []
    for name in now:
        old, new = before.get(name), now[name]
        if old == new:
            continue
        if max(len(repr(old)), len(repr(new))) <= QUOTED_VALUE_CHARS:
            words.append(f"{name} {old!r}, now {new!r}")
        else:
            words.append(f"{name} changed")
    return "; ".join(words)


class Manifest:
    """manifest.json: {"scenes": {scene path: {status, inputs, settings, outputs {path:
    sha256}, finished, summary}}}, rewritten atomically at every change (by the run's
    client alone; workers never write it)."""

    def __init__(self, path: Path):
        self.path = path
        self.scenes: dict[str, dict] = {}
        if path.exists():
            try:
                self.scenes = json.loads(path.read_text(encoding="utf-8"))["scenes"]
            except (ValueError, KeyError, TypeError):
                raise InputError(f"manifest {path} is not a manifest of 06; remove it.") from None

    @staticmethod
    def key(image: Path) -> str:
        return str(image.resolve())

    def _same_run(self, record: dict | None, image: Path, values: dict) -> bool:
        return (
            record is not None
            and image.exists()
            and record["inputs"] == input_fingerprint(image)
            and record["settings"] == values
        )

    def finished(self, image: Path, values: dict) -> dict | None:
        """The record of `image` when it finished with these inputs, output settings
        (`output_settings` of its plan) and outputs (checked by SHA-256); None when it
        must be (re)done."""
        record = self.scenes.get(self.key(image))
        if not self._same_run(record, image, values):
            return None
        if record.get("status", FINISHED) != FINISHED:
            return None
        for name, digest in record["outputs"].items():
            if not Path(name).is_file() or file_sha256(Path(name)) != digest:
                return None
        return record

    def started(self, image: Path, values: dict) -> bool:
        """Whether an earlier run of these inputs and output settings started `image` and
        never finished it: outputs it left are that command's, to be redone."""
        record = self.scenes.get(self.key(image))
        return self._same_run(record, image, values) and record.get("status") == STARTED

    def refusal(self, image: Path, values: dict, outputs: SceneOutputs) -> str | None:
        """Why the existing `outputs` of `image` are not this command's to replace, when
        the manifest knows (the scene changed, or they were made with other output
        settings than `values`); None when it does not."""
        record = self.scenes.get(self.key(image))
        if record is None or not image.exists():
            return None
        files = ", ".join(str(path) for path in outputs.files)
        if record["inputs"] != input_fingerprint(image):
            return (
                f"scene {image} changed since its outputs {files} were made (its size or "
                f"modification time differs from {self.path}); pass --overwrite to classify "
                "it again."
            )
        words = change_words(record["settings"], values)
        if words:
            return (
                f"outputs {files} exist, made from {image} with other settings ({words}); "
                "pass --overwrite to replace them."
            )
        return None

    def start(self, scenes: dict[Path, dict]) -> None:
        """Mark the scenes {image: its output settings} as started (one write)."""
        for image, values in scenes.items():
            self.scenes[self.key(image)] = {
                "status": STARTED,
                "inputs": input_fingerprint(image),
                "settings": values,
                "outputs": {},
            }
        if scenes:
            write_atomic(self.path, {"scenes": self.scenes}, overwrite=True)

    def record(self, image: Path, values: dict, outputs: SceneOutputs, summary: dict) -> None:
        """Record `image` as finished with these output settings into `outputs`."""
        self.scenes[self.key(image)] = {
            "status": FINISHED,
            "inputs": input_fingerprint(image),
            "settings": values,
            "outputs": {str(path): file_sha256(path) for path in outputs.files},
            "finished": datetime.now(UTC).isoformat(timespec="seconds"),
            "summary": {name: value for name, value in summary.items() if name != "text"},
        }
        write_atomic(self.path, {"scenes": self.scenes}, overwrite=True)
