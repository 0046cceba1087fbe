"""01_split_data_to_train_and_validation.py: the talk's split, safety, download."""

from __future__ import annotations

import csv
import hashlib
import http.server
import io
import os
import random
import re
import stat
import subprocess
import sys
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image
from script_modules import load_script

from cnn_sentinel import datasets
from cnn_sentinel.errors import InputError
from image_functions import CLASS_NAMES

REPO_ROOT = Path(__file__).resolve().parent.parent
SCRIPT = REPO_ROOT / "01_split_data_to_train_and_validation.py"


split = load_script(SCRIPT.name, "split_script")


def tiny_jpeg(value: int, size: int = 64) -> bytes:
    """A grey JPEG of one value, 64x64 by default: a real image (01 reads every image)."""
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), (value % 256,) * 3).save(buffer, format="JPEG")
    return buffer.getvalue()


def make_source(folder: Path, counts: dict[str, int] | None = None) -> Path:
    """A EuroSAT-layout folder of tiny JPEGs (the split looks at names; 01 checks they open)."""
    counts = counts or {name: 10 + 3 * index for index, name in enumerate(CLASS_NAMES)}
    for index, (name, count) in enumerate(counts.items()):
        (folder / name).mkdir(parents=True)
        for number in range(1, count + 1):
            (folder / name / f"{name}_{number}.jpg").write_bytes(tiny_jpeg(10 * index + number))
    return folder


def run(source: Path, target: Path, *flags: str) -> dict:
    return split.main(["--source", str(source), "--target", str(target), "--no-progress", *flags])


def read_split_csv(target: Path) -> list[tuple[str, str, str]]:
    with (target / "split.csv").open(newline="") as stream:
        rows = list(csv.reader(stream))
    assert tuple(rows[0]) == ("path", "class", "subset")
    return [tuple(row) for row in rows[1:]]


def talk_split(source: Path) -> dict[str, list[str]]:
    """The talk's algorithm, on a file system whose os.listdir is alphabetical (NTFS)."""
    random.seed(42)
    validation = {}
    for sub_dir in sorted(os.listdir(source)):
        files = sorted(os.listdir(source / sub_dir))
        random.shuffle(files)
        validation[sub_dir] = files[: int(len(files) * 0.3)]
    return validation


# --- the split itself ------------------------------------------------------------


def test_default_split_is_the_talks_split(tmp_path):
    source = make_source(tmp_path / "eurosat")
    assignment = run(source, tmp_path / "split")
    expected = talk_split(source)
    for name in CLASS_NAMES:
        assert assignment[name]["validation"] == expected[name]
        n = len(os.listdir(source / name))
        assert len(assignment[name]["validation"]) == int(n * 0.3)


def test_split_is_disjoint_complete_stratified_and_recorded(tmp_path):
    source = make_source(tmp_path / "eurosat")
    target = tmp_path / "split"
    run(source, target, "--test-fraction", "0.2")
    rows = read_split_csv(target)
    on_disk = {str(path.relative_to(target)) for path in target.rglob("*") if path.is_file()} - {
        "split.csv"
    }
    assert {row[0] for row in rows} == on_disk
    names = [Path(row[0]).name for row in rows]
    assert len(names) == len(set(names)), "a file is in two subsets"
    for name in CLASS_NAMES:
        n = len(os.listdir(source / name))
        per_subset = {
            s: sum(1 for r in rows if r[1] == name and r[2] == s) for s in datasets.SUBSETS
        }
        assert per_subset["validation"] == int(n * 0.3)
        assert per_subset["test"] == int(n * 0.2)
        assert sum(per_subset.values()) == n
        for row in rows:
            assert row[0] == f"{row[2]}/{row[1]}/{Path(row[0]).name}"
    copied = target / "train" / "Forest" / sorted(os.listdir(target / "train" / "Forest"))[0]
    assert copied.read_bytes() == (source / "Forest" / copied.name).read_bytes()


def test_same_seed_same_split_other_seed_other_split(tmp_path):
    source = make_source(tmp_path / "eurosat")
    run(source, tmp_path / "a")
    run(source, tmp_path / "b")
    run(source, tmp_path / "c", "--seed", "7")
    assert (tmp_path / "a" / "split.csv").read_bytes() == (
        tmp_path / "b" / "split.csv"
    ).read_bytes()
    assert read_split_csv(tmp_path / "a") != read_split_csv(tmp_path / "c")


def test_split_does_not_depend_on_listing_order(tmp_path, monkeypatch):
    source = make_source(tmp_path / "eurosat")
    listing = datasets.list_source(source)
    scrambled = {name: list(reversed(files)) for name, files in reversed(listing.items())}
    assert datasets.split_files(scrambled, 0.3, 0.0, 42) == datasets.split_files(
        listing, 0.3, 0.0, 42
    )


@pytest.mark.parametrize("mode", ["hardlink", "symlink"])
def test_link_modes(tmp_path, mode):
    source = make_source(tmp_path / "eurosat", {"Forest": 5, "River": 4})
    target = tmp_path / "split"
    run(source, target, "--mode", mode)
    placed = sorted((target / "train" / "Forest").iterdir())[0]
    original = source / "Forest" / placed.name
    if mode == "hardlink":
        assert not placed.is_symlink() and placed.stat().st_ino == original.stat().st_ino
    else:
        assert placed.is_symlink() and placed.resolve() == original.resolve()


def test_real_ms_samples_split(real_ms_dir, tmp_path):
    target = tmp_path / "split"
    assignment = run(real_ms_dir, target, "--mode", "symlink")
    for name in CLASS_NAMES:
        n = len(list((real_ms_dir / name).iterdir()))
        assert len(assignment[name]["validation"]) == int(n * 0.3)
        assert len(list((target / "train" / name).iterdir())) == n - int(n * 0.3)
    assert len(read_split_csv(target)) == sum(
        len(list((real_ms_dir / name).iterdir())) for name in CLASS_NAMES
    )


# --- bad input -----------------------------------------------------------------------


def test_missing_source_is_a_clear_error(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        run(tmp_path / "nowhere", tmp_path / "split")
    assert not (tmp_path / "split").exists()


def test_source_without_class_folders(tmp_path):
    (tmp_path / "eurosat").mkdir()
    (tmp_path / "eurosat" / "readme.txt").write_text("x")
    with pytest.raises(InputError, match="no class folders"):
        run(tmp_path / "eurosat", tmp_path / "split")


def test_empty_class_folder(tmp_path):
    source = make_source(tmp_path / "eurosat", {"Forest": 3})
    (source / "River").mkdir()
    with pytest.raises(InputError, match="River holds no images"):
        run(source, tmp_path / "split")
    assert not (tmp_path / "split").exists()


def test_non_image_file(tmp_path):
    source = make_source(tmp_path / "eurosat", {"Forest": 3})
    (source / "Forest" / "notes.txt").write_text("x")
    with pytest.raises(InputError, match=r"notes\.txt is not a JPEG or GeoTIFF"):
        run(source, tmp_path / "split")


@pytest.mark.parametrize(
    "flags",
    [["--validation-fraction", "1.5"], ["--validation-fraction", "0.6", "--test-fraction", "0.4"]],
)
def test_bad_fractions(tmp_path, flags):
    source = make_source(tmp_path / "eurosat", {"Forest": 3})
    with pytest.raises(InputError, match="fraction"):
        run(source, tmp_path / "split", *flags)


def test_command_line_error_is_one_sentence_and_exit_2(tmp_path):
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--source", str(tmp_path / "nowhere"), "--target",
         str(tmp_path / "split")],
        capture_output=True, text=True, cwd=tmp_path, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.startswith("error: source folder") and "Traceback" not in result.stderr


# --- overwrite and nothing half-written ------------------------------------------------


def test_existing_target_needs_overwrite(tmp_path):
    source = make_source(tmp_path / "eurosat", {"Forest": 4})
    target = tmp_path / "split"
    run(source, target)
    with pytest.raises(InputError, match="--overwrite"):
        run(source, target, "--seed", "1")
    run(source, target, "--seed", "1", "--overwrite")
    assert (target / "split.csv").is_file()
    assert not list(tmp_path.glob(".split*")), "temporary folder left behind"


def test_overwrite_refuses_a_folder_this_script_did_not_make(tmp_path):
    source = make_source(tmp_path / "eurosat", {"Forest": 4})
    target = tmp_path / "thesis"
    target.mkdir()
    (target / "chapter1.tex").write_text("precious")
    with pytest.raises(InputError, match="not made by this script"):
        run(source, target, "--overwrite")
    assert (target / "chapter1.tex").read_text() == "precious"
    # A split.csv of someone else's (other header) is no licence either.
    (target / "split.csv").write_text("file,label\n")
    with pytest.raises(InputError, match="not made by this script"):
        run(source, target, "--overwrite")
    assert (target / "chapter1.tex").exists()


def test_overwrite_refuses_our_target_with_foreign_files(tmp_path):
    source = make_source(tmp_path / "eurosat", {"Forest": 4})
    target = tmp_path / "split"
    run(source, target)
    (target / "runs").mkdir()
    with pytest.raises(InputError, match="did not make .*runs"):
        run(source, target, "--overwrite")
    assert (target / "runs").is_dir()


def test_target_inside_source_is_refused(tmp_path):
    source = make_source(tmp_path / "eurosat", {"Forest": 4})
    with pytest.raises(InputError, match="inside source"):
        run(source, source / "split")


def test_failure_midway_leaves_nothing_half_written(tmp_path, monkeypatch):
    source = make_source(tmp_path / "eurosat", {"Forest": 6, "River": 6})
    target = tmp_path / "split"
    run(source, target)
    before = read_split_csv(target)
    calls = []

    def failing_place_file(*args):
        calls.append(args)
        if len(calls) == 5:
            raise OSError("disk full")
        datasets.shutil.copy2(*args[:2])

    monkeypatch.setattr(datasets, "place_file", failing_place_file)
    with pytest.raises(OSError, match="disk full"):
        run(source, target, "--seed", "3", "--overwrite")
    assert read_split_csv(target) == before, "the old target was touched"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eurosat", "split"]


# --- download ----------------------------------------------------------------------------


class RangeHandler(http.server.BaseHTTPRequestHandler):
    """Serves `payloads[path]` with HTTP Range support; records the Range headers seen."""

    payloads: dict[str, bytes] = {}
    ranges: list[str | None] = []

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        data = self.payloads.get(self.path)
        if data is None:
            self.send_error(404)
            return
        header = self.headers.get("Range")
        self.ranges.append(header)
        start = int(header.removeprefix("bytes=").split("-")[0]) if header else 0
        if start >= len(data) and header:
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(data)}")
            self.end_headers()
            return
        self.send_response(206 if header else 200)
        if header:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        self.wfile.write(data[start:])

    def log_message(self, *args) -> None:
        pass


@pytest.fixture()
def server() -> Iterator[tuple[str, type[RangeHandler]]]:
    handler = type("Handler", (RangeHandler,), {"payloads": {}, "ranges": []})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", handler
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


def eurosat_zip(per_class: int = 4) -> bytes:
    """A small zip laid out like the official one: EuroSAT_RGB/<Class>/<Class>_<n>.jpg."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name in CLASS_NAMES:
            for number in range(1, per_class + 1):
                archive.writestr(f"EuroSAT_RGB/{name}/{name}_{number}.jpg", tiny_jpeg(number))
    return buffer.getvalue()


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_download_extract_and_split(tmp_path, server):
    url, handler = server
    data = eurosat_zip()
    handler.payloads["/EuroSAT_RGB.zip"] = data
    source = tmp_path / "data" / "EuroSAT_RGB"
    assignment = run(
        source, tmp_path / "split", "--download", "rgb",
        "--download-url", f"{url}/EuroSAT_RGB.zip", "--download-checksum", sha256(data),
    )  # fmt: skip
    assert sorted(p.name for p in source.iterdir()) == sorted(CLASS_NAMES)
    assert (source / "Forest" / "Forest_2.jpg").read_bytes() == tiny_jpeg(2)
    assert (tmp_path / "data" / "EuroSAT_RGB.zip").read_bytes() == data
    assert sum(len(f["train"]) + len(f["validation"]) for f in assignment.values()) == 40
    assert not list((tmp_path / "data").glob(".*")), "temporary extraction folder left behind"
    # Second run: the data is there, nothing is fetched again.
    run(source, tmp_path / "split2", "--download", "rgb", "--download-url", f"{url}/gone.zip")
    assert len(handler.ranges) == 1


def test_download_resumes_a_partial_file(tmp_path, server):
    url, handler = server
    data = eurosat_zip(per_class=20)
    handler.payloads["/a.zip"] = data
    destination = tmp_path / "a.zip"
    (tmp_path / "a.zip.part").write_bytes(data[:1000])
    datasets.download_file(f"{url}/a.zip", destination, sha256(data), progress=False)
    assert handler.ranges == ["bytes=1000-"]
    assert destination.read_bytes() == data
    assert not (tmp_path / "a.zip.part").exists()


def test_download_of_a_complete_partial_file_is_verified(tmp_path, server):
    url, handler = server
    data = eurosat_zip()
    handler.payloads["/a.zip"] = data
    (tmp_path / "a.zip.part").write_bytes(data)
    datasets.download_file(f"{url}/a.zip", tmp_path / "a.zip", sha256(data), progress=False)
    assert (tmp_path / "a.zip").read_bytes() == data


def test_download_checksum_mismatch_deletes_the_file(tmp_path, server):
    url, handler = server
    data = eurosat_zip()
    handler.payloads["/a.zip"] = data
    wrong = "md5:" + hashlib.md5(b"something else").hexdigest()
    with pytest.raises(InputError, match="expected"):
        datasets.download_file(f"{url}/a.zip", tmp_path / "a.zip", wrong, progress=False)
    assert not (tmp_path / "a.zip").exists() and not (tmp_path / "a.zip.part").exists()


def test_download_http_error_is_a_clear_error(tmp_path, server):
    url, _handler = server
    with pytest.raises(InputError, match="HTTP 404"):
        datasets.download_file(f"{url}/missing.zip", tmp_path / "m.zip", None, progress=False)


def test_official_archives_have_published_checksums():
    for kind, (url, checksum) in datasets.EUROSAT_ARCHIVES.items():
        assert url.startswith("https://zenodo.org/records/7711810/files/EuroSAT_")
        algorithm, digest = datasets.parse_checksum(checksum)
        assert algorithm == "md5" and len(digest) == 32, kind


def malicious_zip(member: str, symlink: bool = False) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("EuroSAT_RGB/Forest/Forest_1.jpg", "fine")
        info = zipfile.ZipInfo(member)
        if symlink:
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
        archive.writestr(info, "/etc/passwd" if symlink else "evil")
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("member", "symlink", "reason"),
    [
        ("../evil.txt", False, "climbs out"),
        ("EuroSAT_RGB/../../evil.txt", False, "climbs out"),
        ("/tmp/evil.txt", False, "absolute"),
        ("EuroSAT_RGB/Forest/link", True, "symbolic link"),
    ],
)
def test_malicious_zip_is_refused(tmp_path, server, member, symlink, reason):
    url, handler = server
    data = malicious_zip(member, symlink)
    handler.payloads["/evil.zip"] = data
    source = tmp_path / "deep" / "data" / "EuroSAT_RGB"
    source.parent.mkdir(parents=True)
    with pytest.raises(InputError, match=reason):
        run(
            source, tmp_path / "split", "--download", "rgb",
            "--download-url", f"{url}/evil.zip", "--download-checksum", sha256(data),
        )  # fmt: skip
    assert not source.exists()
    assert not list(tmp_path.rglob("evil.txt"))
    assert sorted(p.name for p in (tmp_path / "deep" / "data").iterdir()) == ["evil.zip"]


# --- a split training can use: every class validated, every image readable ---------------


def test_a_class_without_validation_images_is_refused_with_the_fraction_that_works(tmp_path):
    source = make_source(tmp_path / "eurosat", {"Forest": 3, "River": 10})
    with pytest.raises(InputError) as refused:
        run(source, tmp_path / "split")
    message = str(refused.value)
    assert "leaves class Forest (3 images) without validation images" in message
    assert message.endswith("the smallest fraction that gives every class one is 0.334.")
    assert not (tmp_path / "split").exists()
    assignment = run(source, tmp_path / "split", "--validation-fraction", "0.334")
    assert [len(assignment[name]["validation"]) for name in ("Forest", "River")] == [1, 3]
    with pytest.raises(InputError, match="without test images; .* is 0.334"):
        run(source, tmp_path / "split2", "--validation-fraction", "0.4", "--test-fraction", "0.2")


@pytest.mark.parametrize("damage", ["empty", "truncated"])
def test_an_unreadable_image_is_named_at_split_time(tmp_path, damage):
    source = make_source(tmp_path / "eurosat", {"Forest": 5, "River": 5})
    broken = source / "River" / "River_4.jpg"
    data = broken.read_bytes()
    broken.write_bytes(b"" if damage == "empty" else data[: len(data) // 2])
    expected = r"is empty \(0 bytes\)" if damage == "empty" else "cannot be read"
    with pytest.raises(InputError, match=rf"image .*River_4\.jpg {expected}"):
        run(source, tmp_path / "split")
    assert not (tmp_path / "split").exists()


def write_ms_tiff(path: Path, value: int, bands: int = 13) -> None:
    """A 64x64 uint16 GeoTIFF with `bands` bands of one value."""
    from osgeo import gdal

    dataset = gdal.GetDriverByName("GTiff").Create(str(path), 64, 64, bands, gdal.GDT_UInt16)
    for band in range(bands):
        dataset.GetRasterBand(band + 1).Fill(value + band)
    dataset = None


@pytest.mark.parametrize("odd_name", ["Forest_0.jpg", "Forest_99.jpg"])
def test_a_mixed_folder_blames_the_odd_image_whichever_sorts_first(tmp_path, odd_name):
    source = tmp_path / "eurosat"
    for name in ("Forest", "River"):
        (source / name).mkdir(parents=True)
        for number in range(1, 5):
            write_ms_tiff(source / name / f"{name}_{number}.tif", 100 * number)
    (source / "Forest" / odd_name).write_bytes(tiny_jpeg(7))
    with pytest.raises(InputError) as refused:
        run(source, tmp_path / "split")
    assert str(refused.value).startswith(f"image {source / 'Forest' / odd_name} has 3 bands")
    assert "8 other images have 13 bands" in str(refused.value)
    # statistics.py, given such a folder, blames the same image.
    statistics = load_script("statistics.py", "statistics_script_for_split")
    with pytest.raises(InputError, match=rf"image .*{odd_name} has 3 bands"):
        statistics.main([str(source), "--output", str(tmp_path / "stats.json"), "--no-progress"])


def test_images_smaller_than_the_window_are_refused_where_first_read(tmp_path):
    """32x32 images: 01, statistics.py and a training script on a split made by hand each
    refuse in one sentence naming what the networks need, before writing anything."""
    source = tmp_path / "small"
    for name in ("Forest", "River"):
        (source / name).mkdir(parents=True)
        for number in range(1, 6):
            (source / name / f"{name}_{number}.jpg").write_bytes(tiny_jpeg(40 * number, size=32))
    expected = (
        f"images of {source / 'Forest'} are 32 x 32 pixels, smaller than the 64 x 64 pixel "
        "window every network here takes"
    )
    with pytest.raises(InputError) as refused:
        run(source, tmp_path / "split")
    assert str(refused.value).startswith(expected) and "gdal_translate -outsize 64 64" in str(
        refused.value
    )
    statistics = load_script("statistics.py", "statistics_script_for_small")
    with pytest.raises(InputError, match=re.escape(expected)):
        statistics.main([str(source), "--output", str(tmp_path / "stats.json"), "--no-progress"])
    hand_made = tmp_path / "hand_made"
    for part in ("train", "validation"):
        (hand_made / part).mkdir(parents=True)
        for name in ("Forest", "River"):
            (hand_made / part / name).symlink_to(source / name)
    scratch = load_script("03_train_rgb_from_scratch.py", "scratch_script_for_small")
    with pytest.raises(InputError, match="are 32 x 32 pixels, smaller than the 64 x 64"):
        scratch.main(
            ["--data", str(hand_made), "--output", str(tmp_path / "runs"), "--arch", "tiny"]
        )
    assert sorted(path.name for path in tmp_path.iterdir()) == ["hand_made", "small"]


# --- leftovers and files that are not ours -----------------------------------------------


def test_overwrite_never_deletes_a_users_file_inside_train(tmp_path):
    source = make_source(tmp_path / "eurosat", {"Forest": 4, "River": 4})
    target = tmp_path / "split"
    run(source, target)
    own = target / "train" / "Forest" / "my_label_notes.txt"
    own.write_text("mine")
    with pytest.raises(InputError, match=r"did not make \(train/Forest/my_label_notes\.txt\)"):
        run(source, target, "--overwrite", "--seed", "3")
    assert own.read_text() == "mine"
    own.unlink()
    run(source, target, "--overwrite", "--seed", "3")


def test_a_killed_runs_leftover_folder_is_cleared_by_the_next_run(tmp_path):
    """SIGKILL a real process while it writes the target; the next 01 run removes its
    hidden temporary folder and says so."""
    source = make_source(tmp_path / "eurosat", {"Forest": 4, "River": 4})
    target = tmp_path / "split"
    writer = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time\n"
         f"sys.path.insert(0, {str(REPO_ROOT)!r})\n"
         "from cnn_sentinel.outputs import atomic_output\n"
         f"with atomic_output({str(target)!r}) as folder:\n"
         "    (folder / 'train').mkdir(parents=True)\n"
         "    print('writing', flush=True)\n"
         "    time.sleep(120)\n"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert writer.stdout.readline().strip() == "writing"
    leftover = tmp_path / f".split.partial-{writer.pid}"
    assert (leftover / "train").is_dir()
    writer.kill()
    writer.wait(timeout=30)
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--source", str(source), "--target", str(target),
         "--no-progress"],
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert f"removed {leftover}, left behind by stopped process {writer.pid}." in result.stderr
    assert sorted(path.name for path in tmp_path.iterdir()) == ["eurosat", "split"]


@pytest.mark.slow
def test_class_folders_outside_eurosat_work_through_the_whole_chain(tmp_path):
    """Own class names: 01 -> statistics.py -> 05 -> 06, each as a user runs it."""
    import demo_data

    generated = demo_data.write_demo_dataset(tmp_path / "generated", kind="ms", images_per_class=6)
    source = tmp_path / "own"
    own_classes = {"Glacier": "SeaLake", "Orchard": "PermanentCrop", "Quarry": "Industrial"}
    for own, eurosat in own_classes.items():
        (source / own).mkdir(parents=True)
        for path in (generated / eurosat).iterdir():
            (source / own / path.name.replace(eurosat, own)).symlink_to(path)
    scene, _truth = demo_data.write_demo_scene(tmp_path / "scene.tif", rows=64, cols=64)
    steps = [
        [str(SCRIPT), "--source", str(source), "--target", "split", "--mode", "symlink"],
        [str(REPO_ROOT / "statistics.py"), "split/train"],
        [str(REPO_ROOT / "05_train_ms_from_scratch.py"), "--data", "split", "--arch", "tiny",
         "--epochs", "1", "--steps-per-epoch", "2", "--batch-size", "4",
         "--mixed-precision", "off"],
        [str(REPO_ROOT / "06_classify_image.py"), "--image", str(scene), "--model",
         "runs/ms-scratch-tiny/model.keras", "--output-dir", "classified", "--stride", "16"],
    ]  # fmt: skip
    for step in steps:
        result = subprocess.run(
            [sys.executable, *step, "--no-progress"],
            capture_output=True, text=True, cwd=tmp_path, timeout=600,
        )  # fmt: skip
        assert result.returncode == 0, f"{step[0]}:\n{result.stderr[-3000:]}"
    from osgeo import gdal

    label = gdal.Open(str(tmp_path / "classified" / "scene_label.tif"))
    band = label.GetRasterBand(1)
    band.GetNoDataValue()  # GDAL reads the .aux.xml only after such a query
    assert band.GetCategoryNames()[:3] == sorted(own_classes)


@pytest.mark.parametrize("kind, images, bands", [("ms", "rgb", "all"), ("rgb", "ms", "rgb")])
def test_a_split_of_the_other_kind_says_which_bands_are_trained(
    tmp_path, sample_rgb_dataset, sample_ms_dataset, kind, images, bands
):
    source = sample_rgb_dataset if images == "rgb" else sample_ms_dataset
    for part, chosen in (("train", slice(0, 3)), ("validation", slice(3, 5))):
        for name in CLASS_NAMES[:2]:
            (tmp_path / part / name).mkdir(parents=True)
            for path in sorted((source / name).iterdir())[chosen]:
                (tmp_path / part / name / path.name).symlink_to(path)
    split_info = datasets.inspect_split(tmp_path, bands, with_statistics=False)
    note = datasets.band_choice_note(split_info, kind)
    if kind == "ms":
        assert note == (
            f"note: {tmp_path} holds 3-band images, not EuroSAT's 13 bands, so this multispectral "
            "script trains on bands B04, B03, B02 only (02 and 03 are for RGB)."
        )
    else:
        assert note == (
            f"note: {tmp_path} holds 13-band images, not RGB, so this RGB script trains on bands "
            "B04, B03, B02 of them (04 and 05 train on all 13 bands)."
        )
    assert datasets.band_choice_note(split_info, images) is None
