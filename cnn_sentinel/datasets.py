"""Datasets on disk: download and safely extract the EuroSAT archives, split a
folder of class folders into train/validation(/test) with a split.csv record, and
inspect a split folder for training and evaluation (inspect_split, at the end).

The mechanics of 01_split_data_to_train_and_validation.py (the recipe); see
its docstring for how the split reproduces the talk's.

About 590 lines: one thing, EuroSAT's folders on disk, from the archive to the split
that 02-05 read; the download and the split share its checks of files and classes.
"""

from __future__ import annotations

import csv
import hashlib
import os
import random
import shutil
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from cnn_sentinel.console import progress_bar
from cnn_sentinel.errors import InputError
from cnn_sentinel.outputs import clear_leftovers, temporary_name
from image_functions import (
    CLASS_NAMES,
    IMAGE_SUFFIXES,
    MS_BAND_NAMES,
    RGB_BAND_NAMES,
    band_statistics,
    check_window_size,
    class_folders,
    default_band_names,
    image_shape,
    list_class_images,
    load_band_stats,
    odd_image_error,
    read_image,
    select_bands,
)

# The official EuroSAT archives (Helber et al.), Zenodo record 10.5281/zenodo.7711810.
# Zenodo publishes an md5 per file; no sha256 is published, so none is assumed here.
EUROSAT_ARCHIVES = {
    "rgb": (
        "https://zenodo.org/records/7711810/files/EuroSAT_RGB.zip?download=1",
        "md5:f46e308c4d50d4bf32fedad2d3d62f3b",
    ),
    "ms": (
        "https://zenodo.org/records/7711810/files/EuroSAT_MS.zip?download=1",
        "md5:091174add3c8e680a49244acf185b9f0",
    ),
}
SPLIT_CSV = "split.csv"
SPLIT_CSV_HEADER = ("path", "class", "subset")
SUBSETS = ("train", "validation", "test")
# What a target made by this script may hold; anything else means it is not ours to delete.
OURS = {SPLIT_CSV, "band_stats.json", *SUBSETS}
CHUNK_BYTES = 1 << 20


# ---------------------------------------------------------------------------
# Download: resumable, checksum-verified, safely extracted
# ---------------------------------------------------------------------------


def parse_checksum(checksum: str) -> tuple[str, str]:
    """Split "md5:<hex>" or "sha256:<hex>" into (algorithm, lower-case hex digest)."""
    algorithm, _, digest = checksum.partition(":")
    algorithm = algorithm.strip().lower()
    if algorithm not in ("md5", "sha256") or not digest.strip():
        raise InputError(f'checksum {checksum!r} is not of the form "md5:<hex>" or "sha256:<hex>".')
    return algorithm, digest.strip().lower()


def file_digest(path: Path, algorithm: str) -> str:
    """Hex digest of a file, read in chunks."""
    digest = hashlib.new(algorithm)
    with path.open("rb") as stream:
        for chunk in iter(lambda: stream.read(CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download_file(url: str, destination: Path, checksum: str | None, progress: bool = True) -> Path:
    """Download `url` to `destination`, resuming a partial `<destination>.part`.

    An existing `.part` file is continued with an HTTP Range request; a server
    that ignores the range sends the whole file again, which then replaces it.
    The checksum ("md5:<hex>" / "sha256:<hex>") is verified before the file is
    renamed to `destination`; a mismatch deletes the partial file and raises.
    """
    partial = destination.with_name(destination.name + ".part")
    destination.parent.mkdir(parents=True, exist_ok=True)
    offset = partial.stat().st_size if partial.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "cnn-sentinel"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        response = urllib.request.urlopen(request, timeout=60)
    except urllib.error.HTTPError as error:
        # 416: the partial file already holds every byte; the checksum decides.
        if not (error.code == 416 and offset):
            raise InputError(
                f"download of {url} failed: HTTP {error.code} {error.reason}."
            ) from None
        response = None
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise InputError(f"download of {url} failed: {reason}.") from None
    if response is not None:
        with response:
            resumed = offset > 0 and response.status == 206
            if not resumed:
                offset = 0
            length = response.headers.get("Content-Length")
            total = offset + int(length) if length is not None else None
            with (
                partial.open("ab" if resumed else "wb") as stream,
                progress_bar(
                    total=total,
                    initial=offset,
                    unit="B",
                    unit_scale=True,
                    unit_divisor=1024,
                    desc=f"downloading {destination.name}",
                    disable=not progress,
                ) as bar,
            ):
                try:
                    for chunk in iter(lambda: response.read(CHUNK_BYTES), b""):
                        stream.write(chunk)
                        bar.update(len(chunk))
                except OSError as error:
                    raise InputError(
                        f"download of {url} broke off ({error}); run again to resume from "
                        f"{partial}."
                    ) from None
    if checksum is not None:
        algorithm, expected = parse_checksum(checksum)
        actual = file_digest(partial, algorithm)
        if actual != expected:
            partial.unlink()
            raise InputError(
                f"download of {url} has {algorithm} {actual}, expected {expected}; the corrupt "
                "file was deleted, run again to download it anew."
            )
    os.replace(partial, destination)
    return destination


def unsafe_member_reason(member: zipfile.ZipInfo) -> str | None:
    """Why a zip member could escape the extraction folder, or None when it is safe."""
    name = member.filename.replace("\\", "/")
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        return "has an absolute path"
    if ".." in PurePosixPath(name).parts:
        return "climbs out with '..'"
    if (member.external_attr >> 16) & 0o170000 == 0o120000:
        return "is a symbolic link"
    return None


def extract_zip_safely(archive: Path, folder: Path, progress: bool = True) -> None:
    """Extract `archive` into `folder`, refusing the whole archive if any member is unsafe.

    Members with absolute paths, `..` components or symbolic links are refused
    before anything is written.
    """
    try:
        zip_file = zipfile.ZipFile(archive)
    except zipfile.BadZipFile:
        raise InputError(f"archive {archive} is not a valid zip file.") from None
    with zip_file:
        members = zip_file.infolist()
        for member in members:
            reason = unsafe_member_reason(member)
            if reason is not None:
                raise InputError(
                    f"archive {archive} member {member.filename!r} {reason}; refusing to extract."
                )
        root = folder.resolve()
        for member in progress_bar(members, desc=f"extracting {archive.name}", unit="file",
                           disable=not progress):  # fmt: skip
            path = (root / member.filename.replace("\\", "/")).resolve()
            if not path.is_relative_to(root):
                raise InputError(f"archive {archive} member {member.filename!r} escapes {folder}.")
            if member.is_dir():
                path.mkdir(parents=True, exist_ok=True)
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            with zip_file.open(member) as source, path.open("wb") as target:
                shutil.copyfileobj(source, target, CHUNK_BYTES)


def find_class_root(folder: Path) -> Path | None:
    """The shallowest folder at or below `folder` holding EuroSAT class folders."""
    level = [folder]
    while level:
        for candidate in sorted(level):
            if any((candidate / name).is_dir() for name in CLASS_NAMES):
                return candidate
        level = [child for parent in level for child in sorted(parent.iterdir()) if child.is_dir()]
    return None


def download_eurosat(
    kind: str, source: Path, url: str | None, checksum: str | None, progress: bool
) -> None:
    """Make `source` the EuroSAT class folders of the official `kind` ("rgb"|"ms") zip.

    Nothing happens when `source` already holds class folders. The zip is kept
    beside `source` (delete it yourself to save space); the extraction goes to
    a temporary folder that is renamed to `source` when complete.
    """
    if source.is_dir() and find_class_root(source) == source:
        print(f"{source} already holds the EuroSAT class folders; not downloading.")
        return
    if source.exists() and (not source.is_dir() or any(source.iterdir())):
        raise InputError(
            f"source {source} exists but holds no EuroSAT class folders; remove it or choose "
            "another --source for the download."
        )
    official_url, official_checksum = EUROSAT_ARCHIVES[kind]
    url = url or official_url
    checksum = checksum or (official_checksum if url == official_url else None)
    archive = source.parent / PurePosixPath(urllib.parse.urlsplit(url).path).name
    if not archive.name.endswith(".zip"):
        archive = source.parent / f"EuroSAT_{kind.upper()}.zip"
    if archive.exists():
        print(f"using the archive already downloaded: {archive}")
    else:
        download_file(url, archive, checksum, progress)
    clear_leftovers(source)
    temporary = temporary_name(source)
    shutil.rmtree(temporary, ignore_errors=True)
    try:
        extract_zip_safely(archive, temporary, progress)
        class_root = find_class_root(temporary)
        if class_root is None:
            raise InputError(f"archive {archive} holds no EuroSAT class folders.")
        if source.exists():
            source.rmdir()  # an empty folder, checked above
        os.replace(class_root, source)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


# ---------------------------------------------------------------------------
# Split
# ---------------------------------------------------------------------------


def list_source(source: Path) -> dict[str, list[str]]:
    """Sorted image file names per class folder of `source`, checked.

    Missing source, no class folders, an empty class folder, or anything in a
    class folder that is not a JPEG/GeoTIFF image raises InputError.
    """
    if not source.is_dir():
        raise InputError(
            f"source folder {source} does not exist; give --source or use --download rgb|ms."
        )
    classes = sorted(child.name for child in source.iterdir() if child.is_dir())
    if not classes:
        raise InputError(f"source folder {source} has no class folders (e.g. {source}/Forest/).")
    listing = {}
    for name in classes:
        entries = sorted(os.listdir(source / name))
        for entry in entries:
            path = source / name / entry
            if not path.is_file() or path.suffix.lower() not in IMAGE_SUFFIXES:
                raise InputError(
                    f"{path} is not a JPEG or GeoTIFF image; class folders may hold only images, "
                    "move it elsewhere."
                )
        if not entries:
            raise InputError(f"class folder {source / name} holds no images.")
        listing[name] = entries
    return listing


def split_files(
    listing: dict[str, list[str]], validation_fraction: float, test_fraction: float, seed: int
) -> dict[str, dict[str, list[str]]]:
    """Assign each class's files to subsets: {class: {subset: [file names]}}.

    One random.Random(seed) shuffles the classes in sorted order, as the
    talk's single random.seed(42) did; per class the first int(n * validation)
    files are validation, the next int(n * test) test, the rest train.
    """
    generator = random.Random(seed)
    assignment = {}
    for name in sorted(listing):
        files = sorted(listing[name])
        generator.shuffle(files)
        n_validation = int(len(files) * validation_fraction)
        n_test = int(len(files) * test_fraction)
        assignment[name] = {
            "validation": files[:n_validation],
            "test": files[n_validation : n_validation + n_test],
            "train": files[n_validation + n_test :],
        }
    return assignment


def smallest_fraction(count: int) -> float:
    """The smallest fraction, to 3 decimals, that gives at least one of `count` images."""
    fraction = -(-1000 // count) / 1000
    while int(count * fraction) < 1:
        fraction = round(fraction + 0.001, 3)
    return fraction


def check_assignment(
    assignment: dict[str, dict[str, list[str]]], validation_fraction: float, test_fraction: float
) -> None:
    """Refuse a split that leaves a class without validation images (or test images,
    when a test set is asked for, or training images), naming the fraction that works."""
    counts = {
        name: sum(len(files) for files in subsets.values()) for name, subsets in assignment.items()
    }
    for subset, fraction, flag in (
        ("validation", validation_fraction, "--validation-fraction"),
        ("test", test_fraction, "--test-fraction"),
    ):
        if subset == "test" and fraction == 0:
            continue
        empty = sorted(name for name, subsets in assignment.items() if not subsets[subset])
        if empty:
            smallest = min(counts[name] for name in empty)
            needed = smallest_fraction(min(counts.values()))
            raise InputError(
                f"{flag} {fraction} leaves class {empty[0]} ({smallest} images"
                f"{f', and {len(empty) - 1} more classes' if len(empty) > 1 else ''}) without "
                f"{subset} images; the smallest fraction that gives every class one is {needed}."
            )
    no_training = sorted(name for name, subsets in assignment.items() if not subsets["train"])
    if no_training:
        raise InputError(
            f"--validation-fraction {validation_fraction} and --test-fraction {test_fraction} "
            f"leave class {no_training[0]} ({counts[no_training[0]]} images) no training image; "
            "lower them or add images."
        )


def check_images(source: Path, listing: dict[str, list[str]], progress: bool = True) -> None:
    """Read every image once: an empty, truncated or unreadable file is named now, not
    in training, and so is an image of another kind (bands, size) than most."""
    paths = [source / name / file for name, files in listing.items() for file in files]
    shapes = {}
    for path in progress_bar(paths, desc="checking images", unit="img", disable=not progress):
        if path.stat().st_size == 0:
            raise InputError(f"image {path} is empty (0 bytes); delete it or copy it again.")
        image = read_image(path)
        shapes[path] = (image.shape[2], image.shape[0], image.shape[1])
    error = odd_image_error(shapes)
    if error is not None:
        raise error
    if shapes:  # all alike: the first stands for them
        first, (_bands, rows, cols) = next(iter(shapes.items()))
        check_window_size(first.parent, rows, cols)


def place_file(source: Path, destination: Path, mode: str) -> None:
    """Copy, hard-link or symlink `source` to `destination`."""
    if mode == "copy":
        shutil.copy2(source, destination)
    elif mode == "hardlink":
        try:
            os.link(source, destination)
        except OSError as error:
            raise InputError(
                f"cannot hard-link {source} to {destination} ({error.strerror}); hard links need "
                "one file system, use --mode copy or symlink."
            ) from None
    else:
        os.symlink(source.resolve(), destination)


def check_target(source: Path, target: Path, overwrite: bool) -> None:
    """Refuse a TARGET that overlaps SOURCE, or exists without being ours to replace."""
    if target.resolve() == source.resolve() or target.resolve().is_relative_to(source.resolve()):
        raise InputError(f"target {target} lies inside source {source}; choose another --target.")
    if source.resolve().is_relative_to(target.resolve()):
        raise InputError(f"source {source} lies inside target {target}; choose another --target.")
    if not (target.exists() or target.is_symlink()):
        return
    if not overwrite:
        raise InputError(f"target {target} already exists; pass --overwrite to replace it.")
    if target.is_symlink() or not target.is_dir():
        raise InputError(f"target {target} is not a folder made by this script; not replacing it.")
    marker = target / SPLIT_CSV
    header = None
    if marker.is_file():
        with marker.open(newline="", encoding="utf-8") as stream:
            header = tuple(next(csv.reader(stream), ()))
    if header != SPLIT_CSV_HEADER:
        raise InputError(
            f"target {target} was not made by this script (no {SPLIT_CSV} of ours in it); "
            "not deleting it, choose another --target or remove it yourself."
        )
    foreign = sorted(entry.name for entry in target.iterdir() if entry.name not in OURS)
    foreign += foreign_subset_files(target)
    if foreign:
        shown = ", ".join(foreign[:3]) + (
            f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
        )
        raise InputError(
            f"target {target} holds files this script did not make ({shown}); "
            "move them out or choose another --target."
        )


def foreign_subset_files(target: Path) -> list[str]:
    """Files under the subset folders of a target that its split.csv does not list
    (relative paths, sorted): a user's own files, which --overwrite must not delete."""
    with (target / SPLIT_CSV).open(newline="", encoding="utf-8") as stream:
        listed = {row[0] for row in list(csv.reader(stream))[1:] if row}
    return [
        entry.relative_to(target).as_posix()
        for subset in SUBSETS
        for entry in sorted((target / subset).rglob("*"))
        if (entry.is_symlink() or not entry.is_dir())
        and entry.relative_to(target).as_posix() not in listed
    ]


def write_split(
    source: Path,
    folder: Path,
    assignment: dict[str, dict[str, list[str]]],
    mode: str,
    progress: bool = True,
) -> None:
    """Fill `folder` with subset/class/file entries and `split.csv` (paths relative to it)."""
    subsets = [subset for subset in SUBSETS if any(files[subset] for files in assignment.values())]
    rows = []
    for name, files in assignment.items():
        for subset in subsets:
            (folder / subset / name).mkdir(parents=True)
            rows.extend((f"{subset}/{name}/{file}", name, subset) for file in files[subset])
    for relative, name, _subset in progress_bar(rows, desc="placing files", unit="file",
                                        disable=not progress):  # fmt: skip
        place_file(source / name / PurePosixPath(relative).name, folder / relative, mode)
    with (folder / SPLIT_CSV).open("w", newline="", encoding="utf-8") as stream:
        writer = csv.writer(stream)
        writer.writerow(SPLIT_CSV_HEADER)
        writer.writerows(sorted(rows))


def format_summary(assignment: dict[str, dict[str, list[str]]]) -> str:
    """A table of file counts per class and subset, with totals."""
    subsets = [subset for subset in SUBSETS if any(files[subset] for files in assignment.values())]
    width = max(len("class"), *(len(name) for name in assignment))
    header = f"{'class':<{width}} " + " ".join(f"{s:>10}" for s in subsets) + f" {'total':>10}"
    lines = [header, "-" * len(header)]
    totals = dict.fromkeys(subsets, 0)
    for name, files in assignment.items():
        counts = [len(files[subset]) for subset in subsets]
        for subset, count in zip(subsets, counts, strict=True):
            totals[subset] += count
        lines.append(
            f"{name:<{width}} " + " ".join(f"{c:>10}" for c in counts) + f" {sum(counts):>10}"
        )
    lines.append("-" * len(header))
    lines.append(
        f"{'total':<{width}} "
        + " ".join(f"{totals[s]:>10}" for s in subsets)
        + f" {sum(totals.values()):>10}"
    )
    return "\n".join(lines)


def check_fractions(validation_fraction: float, test_fraction: float) -> None:
    """Fractions must be in [0, 1) and leave something for training."""
    for flag, value in (("validation", validation_fraction), ("test", test_fraction)):
        if not 0.0 <= value < 1.0:
            raise InputError(f"--{flag}-fraction {value} must be at least 0 and below 1.")
    if validation_fraction + test_fraction >= 1.0:
        raise InputError(
            f"--validation-fraction {validation_fraction} plus --test-fraction {test_fraction} "
            "leave no training data; their sum must be below 1."
        )


# ---------------------------------------------------------------------------
# Split folders: what training and evaluation read
# ---------------------------------------------------------------------------


@dataclass
class SplitInfo:
    """What a split folder holds: classes, chosen bands and their normalisation."""

    folder: Path
    class_names: list[str]
    band_names: list[str]
    band_indices: list[int]
    mean: list[float]
    std: list[float]
    normalisation_source: str
    has_test: bool


def inspect_split(
    folder: str | Path, bands: str, with_statistics: bool = True, progress: bool = True
) -> SplitInfo:
    """Check a split folder (train/, validation/, optional test/) and pick its bands.

    Normalisation (with_statistics) comes from `folder/band_stats.json`
    (statistics.py); when that is missing it is computed from train/ on the spot
    (nothing is written into the split). Without statistics, mean/std are empty.
    Raises InputError for a missing folder, class folders that differ, images
    whose band count differs between the parts, or stats of another band count.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"split folder {folder} does not exist; run 01 to make it.")
    parts = ["train", "validation"] + (["test"] if (folder / "test").is_dir() else [])
    for part in parts[:2]:
        if not (folder / part).is_dir():
            raise InputError(
                f"split folder {folder} has no {part}/ folder; run "
                "01_split_data_to_train_and_validation.py to make one."
            )
    class_names = class_folders(folder / "train")
    for part in parts[1:]:
        other = class_folders(folder / part)
        if other != class_names:
            missing = sorted(set(class_names) - set(other))
            extra = sorted(set(other) - set(class_names))
            raise InputError(
                f"class folders of {folder / part} differ from train/: missing "
                f"{', '.join(missing) or 'none'}, extra {', '.join(extra) or 'none'}."
            )
    band_counts = {}
    for part in parts:
        first = list_class_images(folder / part, class_names)[0][0]
        image = read_image(first)
        check_window_size(first.parent, *image.shape[:2])
        band_counts[part] = image.shape[-1]
    if len(set(band_counts.values())) > 1:
        counts = ", ".join(f"{part}/ {count}" for part, count in band_counts.items())
        raise InputError(f"images of split {folder} differ in band count: {counts}.")
    band_count = band_counts["train"]
    available = default_band_names(band_count)
    band_indices = select_bands(bands, available)
    stats_path = folder / "band_stats.json"
    if not with_statistics:
        stats, source = {"mean": [0.0] * band_count, "std": [1.0] * band_count}, "not read"
    elif stats_path.is_file():
        stats = load_band_stats(stats_path)
        source = str(stats_path)
    else:
        paths = [path for path, _ in list_class_images(folder / "train", class_names)]
        stats = band_statistics(paths, progress=progress)
        source = f"computed from {folder / 'train'} ({stats_path.name} missing)"
    if len(stats["mean"]) != band_count:
        raise InputError(
            f"band statistics {stats_path} describe {len(stats['mean'])} bands but the images "
            f"of {folder / 'train'} have {band_count}."
        )
    return SplitInfo(
        folder=folder,
        class_names=class_names,
        band_names=[available[index] for index in band_indices],
        band_indices=band_indices,
        mean=[float(stats["mean"][index]) for index in band_indices],
        std=[float(stats["std"][index]) for index in band_indices],
        normalisation_source=source,
        has_test="test" in parts,
    )


def band_choice_note(split: SplitInfo, kind: str) -> str | None:
    """A note naming the bands a script trains on when the split's images are not the
    kind it is made for (kind "rgb": 02/03, "ms": 04/05), or None when they are."""
    expected = {"rgb": len(RGB_BAND_NAMES), "ms": len(MS_BAND_NAMES)}[kind]
    first = list_class_images(split.folder / "train", split.class_names)[0][0]
    image_bands = image_shape(first)[0]
    if image_bands == expected:
        return None
    trained = ", ".join(split.band_names)
    if kind == "ms":
        return (
            f"note: {split.folder} holds {image_bands}-band images, not EuroSAT's 13 bands, so "
            f"this multispectral script trains on bands {trained} only (02 and 03 are for RGB)."
        )
    return (
        f"note: {split.folder} holds {image_bands}-band images, not RGB, so this RGB script "
        f"trains on bands {trained} of them (04 and 05 train on all 13 bands)."
    )
