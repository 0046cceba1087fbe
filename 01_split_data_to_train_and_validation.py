"""Split EuroSAT into train/validation(/test) folders, stratified per class.

Every class folder of SOURCE is listed in sorted order, shuffled with one
random generator seeded with SEED, and cut: the first int(n * VALIDATION_FRACTION)
files go to validation/<Class>/, the next int(n * TEST_FRACTION) to test/<Class>/,
the rest to train/<Class>/. TARGET/split.csv records (path, class, subset).

With the defaults (seed 42, fraction 0.3, no test) the split is the talk's:
the talk called random.seed(42) once and then random.shuffle on each class's
os.listdir() in turn. The module-level random functions are one hidden
random.Random, so one random.Random(42) shuffling the classes in the same
order gives the same lists. The talk listed folders with os.listdir(), whose
order is alphabetical on Windows NTFS (where the talk ran) and arbitrary on
most Linux file systems; we sort, which equals the NTFS order for EuroSAT's
names, so the talk's Windows split is reproduced on every machine.

Before anything is written, a split that leaves a class without a validation
image (or test image, or training image) is refused with the smallest fraction
that works, and every image is read once: an empty, truncated or unreadable
file, or one of another kind (bands, size) than most, is named.

TARGET is built in a temporary folder beside it and renamed when complete; the
temporary folder of a killed earlier run is removed. --overwrite replaces only
a TARGET this script made (one holding its split.csv) and holding nothing else
(no file in train/ that split.csv does not list); anything else is refused.
--download rgb|ms fetches the official EuroSAT zip first (resumable,
checksum-verified, extracted safely) into SOURCE.
"""

from collections.abc import Sequence
from pathlib import Path

from cnn_sentinel.datasets import (
    SPLIT_CSV,
    check_assignment,
    check_fractions,
    check_images,
    check_target,
    download_eurosat,
    format_summary,
    list_source,
    split_files,
    write_split,
)
from cnn_sentinel.outputs import atomic_output
from cnn_sentinel.settings import parse_settings, run_script

SOURCE = None  # EuroSAT folder of class folders; None: data/EuroSAT_RGB (data/EuroSAT_MS for ms)
TARGET = "split"  # folder to create with train/, validation/ (and test/) and split.csv
VALIDATION_FRACTION = 0.3  # share of each class for validation (talk: 0.3)
TEST_FRACTION = 0.0  # share of each class for a test set (talk: none)
SEED = 42  # seed of the shuffle; 42 with the defaults reproduces the talk's split
MODE = "copy"  # copy | hardlink | symlink: how files get into TARGET
DOWNLOAD = None  # rgb | ms: download the official EuroSAT zip into SOURCE first
DOWNLOAD_URL = None  # URL of the zip; None: the official Zenodo record of EuroSAT
DOWNLOAD_CHECKSUM = None  # "md5:<hex>" or "sha256:<hex>" of the zip; None: the published md5
PROGRESS = True  # show progress bars
OVERWRITE = False  # replace existing outputs: TARGET only if this script made it (split.csv)


def main(argv: Sequence[str] | None = None) -> dict[str, dict[str, list[str]]]:
    """Download (optionally), split, write TARGET and print the summary; returns the split."""
    settings = parse_settings(__file__, None if argv is None else list(argv))
    check_fractions(settings.validation_fraction, settings.test_fraction)
    kind = settings.download or "rgb"
    source = Path(settings.source or f"data/EuroSAT_{kind.upper()}")
    target = Path(settings.target)
    if settings.download:
        download_eurosat(
            settings.download,
            source,
            settings.download_url,
            settings.download_checksum,
            settings.progress,
        )
    listing = list_source(source)
    check_target(source, target, settings.overwrite)
    assignment = split_files(
        listing, settings.validation_fraction, settings.test_fraction, settings.seed
    )
    check_assignment(assignment, settings.validation_fraction, settings.test_fraction)
    check_images(source, listing, settings.progress)
    with atomic_output(target, settings.overwrite) as folder:
        folder.mkdir()
        write_split(source, folder, assignment, settings.mode, settings.progress)
    print(format_summary(assignment))
    print(f"wrote {target}/ and {target / SPLIT_CSV}; next: python statistics.py {target}/train")
    return assignment


if __name__ == "__main__":
    run_script(main)
