"""cnn_sentinel.settings, console and outputs: constants as flags (loudly), one-sentence
errors, atomic outputs and their leftovers, quiet TensorFlow, progress bars in logs."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cnn_sentinel import console, outputs, settings
from cnn_sentinel.errors import InputError

REPO_ROOT = Path(__file__).resolve().parent.parent
# Every script a user runs; each must answer --help at once, without TensorFlow.
SCRIPTS = sorted(
    [path.name for path in REPO_ROOT.glob("[0-9][0-9]_*.py")]
    + ["statistics.py", "demo.py", "demo_data.py"]
)
# What TensorFlow, CUDA and absl print natively on a machine without a GPU driver.
NATIVE_NOISE = ("cuInit", "cudart_stub", "absl::InitializeLog", "cpu_feature_guard", "oneDNN")


def run_python(code: str, *arguments: str, **environment: str) -> subprocess.CompletedProcess:
    env = {**os.environ, **environment}
    for name in ("TF_CPP_MIN_LOG_LEVEL", console.QUIET_MARK_VARIABLE):
        if name not in environment:
            env.pop(name, None)
    return subprocess.run(
        [sys.executable, "-c", code, *arguments],
        cwd=REPO_ROOT, capture_output=True, text=True, env=env, timeout=180,
    )  # fmt: skip


# --- settings --------------------------------------------------------------------------


def test_import_is_light():
    result = run_python(
        "import sys, image_functions, cnn_sentinel.settings; print('tensorflow' in sys.modules)"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_settings_from_constants(tmp_path):
    script = tmp_path / "99_example.py"
    script.write_text(
        '"""Example script.\n\nMore text."""\n'
        "from typing import Final\n"
        "BATCH_SIZE = 64  # images per batch\n"
        'ARCH = "vgg16"  # vgg16 | densenet201: backbone\n'
        "OVERWRITE = False  # replace existing outputs\n"
        "WEIGHTS = None  # weights file\n"
        "RATE = 0.5  # a fraction\n"
        "BBOX = ()  # four numbers\n"
        "TABLE: Final = {'a': 1}\n"
    )
    parsed = settings.parse_settings(script, ["--batch-size", "8", "--overwrite"])
    assert parsed.batch_size == 8 and parsed.overwrite is True
    assert parsed.arch == "vgg16" and parsed.weights is None and parsed.rate == 0.5
    assert parsed.bbox == () and parsed.verbose is False and parsed.progress is True
    assert not hasattr(parsed, "table")
    # Flags given are told from defaults by presence, not by value (64 is the default).
    given = settings.parse_settings(script, ["--batch-size", "64", "--no-overwrite"])
    assert settings.flags_given(given) == {"batch_size", "overwrite"}
    assert settings.flags_given(settings.parse_settings(script, [])) == frozenset()
    assert "_flags_given" not in settings.settings_values(given)
    assert settings.settings_values(given)["batch_size"] == 64
    assert settings.parse_settings(script, ["--arch", "densenet201"]).arch == "densenet201"
    with pytest.raises(SystemExit):
        settings.parse_settings(script, ["--arch", "resnet"])  # the comment's choices
    with pytest.raises(SystemExit):
        settings.parse_settings(script, ["--arch", "densenet201"], choices={"ARCH": ["vgg16"]})
    assert settings.declared_choices("copy | hardlink | symlink: how") == [
        "copy",
        "hardlink",
        "symlink",
    ]
    assert settings.declared_choices("exact mean and std: per band") is None


@pytest.mark.parametrize(
    "line, problem",
    [
        ("EPOCHS = 30\n", "EPOCHS has no trailing comment"),
        ("EPOCHS = 3 * 10  # epochs\n", "EPOCHS has a computed value"),
        ("EPOCHS: int = 30  # epochs\n", "EPOCHS is annotated"),
        ("EPOCHS = PATIENCE = 30  # epochs\n", "EPOCHS, PATIENCE must be assigned one at a time"),
        ('MODE = "move"  # copy | symlink: how\n', "MODE = 'move' is not one of copy, symlink"),
    ],
)
def test_a_constant_that_would_silently_not_be_a_flag_is_an_error(tmp_path, line, problem):
    script = tmp_path / "99_example.py"
    script.write_text('"""Example."""\nSEED = 0  # seed\n' + line)
    with pytest.raises(InputError, match=re.escape(problem)) as refused:
        settings.parse_settings(script, [])
    assert "line 3" in str(refused.value) or "not one of" in str(refused.value)


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_script_answers_help_at_once_with_every_setting_as_a_flag(script):
    code = (
        "import runpy, sys\n"
        f"sys.argv = [{script!r}, '--help']\n"
        "try:\n"
        f"    runpy.run_path({script!r}, run_name='__main__')\n"
        "except SystemExit as exit:\n"
        "    assert exit.code == 0, exit.code\n"
        "assert 'tensorflow' not in sys.modules, 'TensorFlow imported for --help'\n"
    )
    result = run_python(code)
    assert result.returncode == 0, result.stderr[-2000:]
    help_text = result.stdout
    constants = settings.script_constants(REPO_ROOT / script)
    for name, _default, _help in constants:
        assert "--" + name.lower().replace("_", "-") in help_text, name
    # 07 runs no TensorFlow and shows no progress bar: it offers neither flag.
    common = script != "07_evaluate_map.py"
    assert ("--verbose" in help_text and "--no-progress" in help_text) == common
    # Defaults as a user writes them, never a Python literal.
    for literal in ("(default: ())", "(default: None)", "(default: [])", "None =", "None:"):
        assert literal not in help_text, literal
    overwrite = [entry for entry in constants if entry[0] == "OVERWRITE"]
    if overwrite:  # one form everywhere: the last setting, False, "replace existing outputs..."
        assert constants[-1][0] == "OVERWRITE", "OVERWRITE is not the last setting"
        assert overwrite[0][1] is False
        assert overwrite[0][2].startswith("replace existing outputs")


# --- atomic outputs ------------------------------------------------------------------------


def test_atomic_output(tmp_path):
    target = tmp_path / "out" / "result.txt"
    with outputs.atomic_output(target) as temporary:
        temporary.write_text("done")
        assert not target.exists()
    assert target.read_text() == "done"
    with pytest.raises(InputError, match="already exists"):
        with outputs.atomic_output(target):
            pass
    with pytest.raises(RuntimeError):
        with outputs.atomic_output(target, overwrite=True) as temporary:
            temporary.write_text("half")
            raise RuntimeError("interrupted")
    assert target.read_text() == "done"
    assert sorted(path.name for path in target.parent.iterdir()) == ["result.txt"]
    with pytest.raises(InputError, match="not a regular file"):
        with outputs.atomic_output("/dev/null", overwrite=True):
            pass
    shutil.rmtree(tmp_path / "out")


def test_write_atomic_text_bytes_json_and_a_writer_of_a_folder(tmp_path):
    assert outputs.write_atomic(tmp_path / "a.txt", "text").read_text() == "text"
    assert outputs.write_atomic(tmp_path / "b.bin", b"\x00\x01").read_bytes() == b"\x00\x01"
    outputs.write_atomic(tmp_path / "c.json", {"mean": [1.5]})
    assert json.loads((tmp_path / "c.json").read_text()) == {"mean": [1.5]}
    assert (tmp_path / "c.json").read_text().endswith("}\n")

    def make_folder(folder: Path) -> None:
        folder.mkdir()
        (folder / "inside.txt").write_text("new")

    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "old.txt").write_text("old")
    with pytest.raises(InputError, match="already exists"):
        outputs.write_atomic(tmp_path / "model", make_folder)
    outputs.write_atomic(tmp_path / "model", make_folder, overwrite=True)
    assert [path.name for path in (tmp_path / "model").iterdir()] == ["inside.txt"]
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        "a.txt",
        "b.bin",
        "c.json",
        "model",
    ]


def test_a_users_side_file_is_never_replaced_without_overwrite(tmp_path):
    """A user's own <stem>_label.tif.aux.xml beside an output that does not exist yet."""
    label = tmp_path / "scene_label.tif"
    own = tmp_path / "scene_label.tif.aux.xml"
    own.write_text("<PAMDataset>mine</PAMDataset>")
    with pytest.raises(InputError, match=r"output .*scene_label\.tif\.aux\.xml already exists"):
        with outputs.atomic_output(label) as temporary:
            temporary.write_text("raster")
    assert own.read_text() == "<PAMDataset>mine</PAMDataset>" and not label.exists()
    with outputs.atomic_output(label, overwrite=True) as temporary:
        temporary.write_text("raster")
        Path(f"{temporary}.aux.xml").write_text("<PAMDataset>ours</PAMDataset>")
    assert label.read_text() == "raster" and "ours" in own.read_text()


def start_writer(target: Path) -> subprocess.Popen:
    """A real process inside atomic_output(target), holding its temporary file."""
    code = (
        "import sys, time\n"
        f"sys.path.insert(0, {str(REPO_ROOT)!r})\n"
        "from cnn_sentinel.outputs import atomic_output\n"
        f"with atomic_output({str(target)!r}) as temporary:\n"
        "    temporary.write_text('half')\n"
        "    print('writing', flush=True)\n"
        "    time.sleep(120)\n"
    )
    writer = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert writer.stdout.readline().strip() == "writing"
    return writer


def test_leftovers_of_killed_processes_are_cleared_and_running_ones_named(tmp_path, capsys):
    target = tmp_path / "scene_label.tif"
    running = start_writer(target)
    try:
        killed = start_writer(target)
        killed.kill()
        killed.wait(timeout=30)
        leftover = tmp_path / f".scene_label.partial-{killed.pid}.tif"
        busy = tmp_path / f".scene_label.partial-{running.pid}.tif"
        assert leftover.read_text() == "half" and busy.exists()
        with outputs.atomic_output(target) as temporary:
            temporary.write_text("complete")
        messages = capsys.readouterr().err
        assert f"removed {leftover}, left behind by stopped process {killed.pid}." in messages
        assert f"note: {busy} is being written by running process {running.pid}" in messages
        assert not leftover.exists() and busy.exists() and target.read_text() == "complete"
    finally:
        running.kill()
        running.wait(timeout=30)


# --- quiet TensorFlow and progress bars ------------------------------------------------------

TENSORFLOW_SCRIPT = (
    "import sys\n"
    f"sys.path.insert(0, {str(REPO_ROOT)!r})\n"
    "from cnn_sentinel.errors import InputError\n"
    "from cnn_sentinel.settings import run_script\n"
    "def main():\n"
    "    import tensorflow as tf\n"
    "    print('devices', len(tf.config.list_physical_devices()), flush=True)\n"
    "    print('a line of ours', file=sys.stderr)\n"
    "    raise InputError('the end.')\n"
    "run_script(main)\n"
)


def test_no_tensorflow_log_lines_reach_the_user_unless_asked():
    quiet = run_python(TENSORFLOW_SCRIPT)
    assert quiet.returncode == 2 and quiet.stdout.startswith("devices")
    assert quiet.stderr == "a line of ours\nerror: the end.\n", quiet.stderr
    verbose = run_python(TENSORFLOW_SCRIPT, "--verbose")
    assert verbose.returncode == 2
    native = [
        line for line in verbose.stderr.splitlines() if console.NATIVE_LOG_LINE.match(line.encode())
    ]
    assert native, verbose.stderr  # TensorFlow always logs something natively at start-up
    assert verbose.stderr.endswith("a line of ours\nerror: the end.\n")
    own_level = run_python(TENSORFLOW_SCRIPT, TF_CPP_MIN_LOG_LEVEL="0")
    assert any(
        console.NATIVE_LOG_LINE.match(line.encode()) for line in own_level.stderr.splitlines()
    )


def test_progress_bars_redraw_every_few_seconds_in_a_log():
    code = (
        "import sys, time\n"
        f"sys.path.insert(0, {str(REPO_ROOT)!r})\n"
        "from cnn_sentinel.console import progress_bar\n"
        "for _ in progress_bar(range(30), desc='work'):\n"
        "    time.sleep(0.05)\n"
    )
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    redraws = [part for part in re.split(r"[\r\n]", result.stderr) if "work" in part]
    assert redraws[-1].startswith("work: 100%")
    # 1.5 s of work: tqdm's default (every 0.1 s) would draw about 15 times.
    assert len(redraws) <= 3, redraws


def test_no_progress_on_a_script_without_a_progress_constant(tmp_path):
    script = tmp_path / "99_example.py"
    script.write_text('"""Example."""\nSEED = 0  # seed\n')
    assert settings.parse_settings(script, ["--no-progress"]).progress is False
    assert settings.parse_settings(script, []).progress is True


def test_a_warning_reaches_the_user_as_one_line_without_internal_paths(tmp_path):
    """A scene without georeference: the warning names the scene, not our source."""
    program = (
        "from osgeo import gdal\n"
        "from cnn_sentinel.scene.reading import warn_if_not_georeferenced\n"
        "from cnn_sentinel.settings import run_script\n"
        "scene = gdal.GetDriverByName('MEM').Create('', 4, 4, 1)\n"
        "run_script(lambda: warn_if_not_georeferenced(scene, 'plain.tif'))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", program],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == (
        "warning: scene plain.tif is not georeferenced; its outputs will not be either.\n"
    )


@pytest.mark.parametrize(
    "error",
    [
        OSError(errno.ENOSPC, "No space left on device"),
        RuntimeError("map.tif: Free disk space available is 0 bytes, whereas 65536 are at "
                     "least necessary. No space left on device"),
    ],
)  # fmt: skip
def test_a_full_disk_is_one_sentence_naming_the_folder_and_the_space(tmp_path, error):
    def write_until_full(temporary: Path) -> None:
        temporary.write_bytes(b"x" * 1000)
        raise error

    with pytest.raises(InputError) as raised:
        outputs.write_atomic(tmp_path / "map.tif", write_until_full, space_needed=3 * 2**20)
    message = str(raised.value)
    assert re.fullmatch(
        rf"no space left in {re.escape(str(tmp_path))} for map\.tif \([\d.]+ [MG]B free, "
        r"about 3\.0 MB needed\); free some space there or choose another output folder, "
        r"then run the same command again\.",
        message,
    ), message
    assert list(tmp_path.iterdir()) == []
    # Other errors pass through unchanged.
    with pytest.raises(OSError, match="Permission denied"):
        outputs.write_atomic(
            tmp_path / "map.tif",
            lambda temporary: (_ for _ in ()).throw(OSError(errno.EACCES, "Permission denied")),
        )
