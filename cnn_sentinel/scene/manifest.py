"""manifest.json of a many-scene run: which scenes it started and finished, from which
inputs, with which settings, into which outputs, so the same command run again resumes.

    manifest = Manifest(folder / MANIFEST_FILE)
    manifest.finished(image, settings)    # the record when done with these inputs/settings
    manifest.start(images, settings)      # before the scenes run
    manifest.record(image, settings, summary)

A scene "started" by an earlier run of the same inputs and settings, but never recorded
as finished (the run was interrupted, its workers or scheduler killed), may have left
outputs: they are this command's own and are redone without --overwrite. Outputs that
the manifest does not explain are refused with a sentence that says why.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path

from cnn_sentinel.errors import InputError
from cnn_sentinel.outputs import write_atomic
from cnn_sentinel.scene import job

# The run's record of its scenes, in OUTPUT_DIR (or the scenes' common folder).
MANIFEST_FILE = "manifest.json"
# 06's settings that change a scene's outputs (a finished scene is redone when one differs).
OUTPUT_SETTINGS = (
    "model",
    "stride",
    "bands",
    "bbox",
    "window",
    "probabilities",
    "rgb_scaling",
    "mixed_precision",
    "method",
    "tta",
    "cloud_mask",
    "cloud_threshold",
    "quicklook",
    "cog",
)
# Bytes read at a time for a checksum.
HASH_CHUNK = 2**22
# A record's status: its scene was submitted, or finished with the recorded outputs.
STARTED, FINISHED = "started", "finished"


def input_fingerprint(path: Path) -> dict:
    """Size and newest modification time of a scene (a .SAFE folder: over its files)."""
    files = [path] if path.is_file() else [item for item in path.rglob("*") if item.is_file()]
    stats = [item.stat() for item in files]
    return {
        "size": sum(stat.st_size for stat in stats),
        "mtime_ns": max((stat.st_mtime_ns for stat in stats), default=0),
    }


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def output_settings(settings: argparse.Namespace) -> dict:
    """The settings that change outputs, as JSON values."""
    return {name: json.loads(json.dumps(getattr(settings, name))) for name in OUTPUT_SETTINGS}


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

    def _same_run(self, record: dict | None, image: Path, settings) -> bool:
        return (
            record is not None
            and image.exists()
            and record["inputs"] == input_fingerprint(image)
            and record["settings"] == output_settings(settings)
        )

    def finished(self, image: Path, settings: argparse.Namespace) -> dict | None:
        """The record of `image` when it finished with these inputs, settings and
        outputs (checked by SHA-256); None when it must be (re)done."""
        record = self.scenes.get(self.key(image))
        if not self._same_run(record, image, settings):
            return None
        if record.get("status", FINISHED) != FINISHED:
            return None
        for name, digest in record["outputs"].items():
            if not Path(name).is_file() or file_sha256(Path(name)) != digest:
                return None
        return record

    def started(self, image: Path, settings: argparse.Namespace) -> bool:
        """Whether an earlier run of these inputs and settings started `image` and never
        finished it: outputs it left are that command's, to be redone."""
        record = self.scenes.get(self.key(image))
        return self._same_run(record, image, settings) and record.get("status") == STARTED

    def refusal(self, image: Path, settings: argparse.Namespace) -> str | None:
        """Why the existing outputs of `image` are not this command's to replace, when
        the manifest knows (the scene changed, or they were made with other settings);
        None when it does not."""
        record = self.scenes.get(self.key(image))
        if record is None or not image.exists():
            return None
        outputs = ", ".join(str(path) for path in job.scene_outputs(settings, image).files)
        if record["inputs"] != input_fingerprint(image):
            return (
                f"scene {image} changed since its outputs {outputs} were made (its size or "
                f"modification time differs from {self.path}); pass --overwrite to classify "
                "it again."
            )
        now = output_settings(settings)
        changed = [name for name in now if record["settings"].get(name) != now[name]]
        if changed:
            words = ", ".join(
                f"{name} {record['settings'].get(name)!r}, now {now[name]!r}" for name in changed
            )
            return (
                f"outputs {outputs} exist, made from {image} with other settings ({words}); "
                "pass --overwrite to replace them."
            )
        return None

    def start(self, images: list[Path], settings: argparse.Namespace) -> None:
        """Mark `images` as started with these inputs and settings (one write)."""
        for image in images:
            self.scenes[self.key(image)] = {
                "status": STARTED,
                "inputs": input_fingerprint(image),
                "settings": output_settings(settings),
                "outputs": {},
            }
        if images:
            write_atomic(self.path, {"scenes": self.scenes}, overwrite=True)

    def record(self, image: Path, settings: argparse.Namespace, summary: dict) -> None:
        outputs = job.scene_outputs(settings, image)
        self.scenes[self.key(image)] = {
            "status": FINISHED,
            "inputs": input_fingerprint(image),
            "settings": output_settings(settings),
            "outputs": {str(path): file_sha256(path) for path in outputs.files},
            "finished": datetime.now(UTC).isoformat(timespec="seconds"),
            "summary": {name: value for name, value in summary.items() if name != "text"},
        }
        write_atomic(self.path, {"scenes": self.scenes}, overwrite=True)
