"""06 on a real Dask cluster: a scheduler and a worker started as separate processes on
127.0.0.1 (`dask scheduler`, `dask worker`), as docs/scaling.md starts them, in their own
working folder and without the project on their Python path. Relative paths, the project
shipped to the cluster, a missing module named before the first task, and interrupts:
Ctrl-C or SIGTERM of the client (tcp or local scheduler) and kill -9 of the scheduler
stop the run's tasks, and the same command again finishes with the uninterrupted maps."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import helpers
import numpy as np
import pytest
from script_modules import load_script

from cnn_sentinel.errors import InputError
from cnn_sentinel.scene import cluster
from image_functions import MS_BAND_NAMES

classify_image = load_script("06_classify_image.py", "classify_image_cluster")

REPO_ROOT = Path(__file__).resolve().parent.parent
DASK = str(Path(sys.executable).parent / "dask")
# The cluster's processes: no project on their path (the client ships it), quiet TensorFlow.
CLUSTER_ENVIRONMENT = {
    **{name: value for name, value in os.environ.items() if name != "PYTHONPATH"},
    "TF_CPP_MIN_LOG_LEVEL": "3",
}
# 06 as a user runs it from the checkout.
CLIENT_ENVIRONMENT = {**CLUSTER_ENVIRONMENT, "PYTHONPATH": str(REPO_ROOT)}
FLAGS = ["--block-rows", "16", "--band-rows", "32", "--no-progress", "--adapt", "off"]


class Cluster:
    """`dask scheduler` and `dask worker` processes on 127.0.0.1, each in its own folder."""

    def __init__(self, folder: Path, threads: int = 2, port: int = 0):
        self.folder = folder
        (folder / "scheduler").mkdir(parents=True, exist_ok=True)
        (folder / "worker").mkdir(parents=True, exist_ok=True)
        scheduler_file = folder / "scheduler.json"
        scheduler_file.unlink(missing_ok=True)
        self.scheduler = self.start(
            [DASK, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard",
             "--scheduler-file", str(scheduler_file)], "scheduler",
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while not scheduler_file.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(0.2)
        self.address = json.loads(scheduler_file.read_text())["address"]
        self.worker = self.start(
            [DASK, "worker", self.address, "--nworkers", "1", "--nthreads", str(threads),
             "--no-dashboard", "--local-directory", str(folder / "worker" / "space")], "worker",
        )  # fmt: skip
        from dask.distributed import Client

        with Client(self.address, timeout="30s") as client:
            client.wait_for_workers(1, timeout=60)

    def start(self, command: list[str], name: str) -> subprocess.Popen:
        log = (self.folder / f"{name}.log").open("a")
        return subprocess.Popen(
            command, cwd=self.folder / name, env=CLUSTER_ENVIRONMENT, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip

    def executing(self) -> int:
        """Tasks the worker's threads run now (cancelled ones not yet stopped too)."""
        from dask.distributed import Client

        with Client(self.address, timeout="30s") as client:
            return sum(client.run(cluster.running_keys).values(), []).__len__()

    def stop(self) -> None:
        for process in (self.worker, self.scheduler):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


@pytest.fixture(scope="module")
def dask_cluster(tmp_path_factory):
    started = Cluster(tmp_path_factory.mktemp("cluster"))
    yield started
    started.stop()


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """Two 13-band scenes, one cut into row strips, a tiny dense model, and their maps from
    an uninterrupted in-process run (the reference)."""
    folder = tmp_path_factory.mktemp("tcp")
    (folder / "crops").mkdir()
    scenes = [
        helpers.write_scene(folder / "crops" / "c0.tif", helpers.cloudy_scene(96, 80),
                            descriptions=MS_BAND_NAMES),
        helpers.write_scene(folder / "crops" / "c1.tif", helpers.cloudy_scene(64, 72, seed=1),
                            descriptions=MS_BAND_NAMES),
    ]  # fmt: skip
    model = helpers.save_model(helpers.valid_model(13), folder / "model", MS_BAND_NAMES)
    classify_image.main(
        [str(value) for value in ["--image", *scenes, "--model", model, "--output-dir",
         folder / "reference", "--scheduler", "none", "--stride", "4", *FLAGS]]
    )  # fmt: skip
    return {"folder": folder, "scenes": scenes, "model": model}


def assert_reference_maps(folder: Path, reference: Path, stems) -> None:
    for stem in stems:
        np.testing.assert_array_equal(
            helpers.read_raster(folder / f"{stem}_label.tif"),
            helpers.read_raster(reference / f"{stem}_label.tif"),
        )


def test_relative_paths_reach_workers_in_another_folder(case, dask_cluster, monkeypatch):
    """The worker runs in its own folder, without the project: relative scenes, model and
    --output-dir are resolved by 06 before they are sent, the project is shipped."""
    monkeypatch.chdir(case["folder"])
    summary = classify_image.main(
        ["--image", "crops/c0.tif", "crops/c1.tif", "--model", "model/model.keras",
         "--output-dir", "out_tcp", "--scheduler", dask_cluster.address, "--stride", "4", *FLAGS]
    )  # fmt: skip
    assert [row["status"] for row in summary["scenes"]] == ["done", "done"]
    assert_reference_maps(case["folder"] / "out_tcp", case["folder"] / "reference", ["c0", "c1"])
    assert not list((dask_cluster.folder / "worker").rglob("*_label.tif"))


def test_the_cluster_is_checked_before_the_first_task(case, dask_cluster, tmp_path, monkeypatch):
    monkeypatch.setattr(cluster, "ENVIRONMENT_MODULES", (*cluster.ENVIRONMENT_MODULES, "no_such"))
    with pytest.raises(InputError) as raised:
        classify_image.main(
            [str(value) for value in ["--image", *case["scenes"], "--model", case["model"],
             "--output-dir", tmp_path, "--scheduler", dask_cluster.address, *FLAGS]]
        )  # fmt: skip
    assert str(raised.value) == (
        f"the Dask cluster at {dask_cluster.address} cannot run 06's tasks: the scheduler "
        f"lacks no_such; {next(iter(worker_addresses(dask_cluster)))} lacks no_such; install "
        "requirements.txt in the environment its scheduler and workers run in."
    )
    assert not list(tmp_path.glob("*_label.tif"))


def test_a_cluster_running_code_another_06_sent_is_refused(case, dask_cluster, monkeypatch):
    """The workers keep the modules they imported from the zip an earlier 06 sent: a 06
    whose code differs (another zip name) says to restart them, before any task."""
    monkeypatch.chdir(case["folder"])
    arguments = ["--image", "crops/c0.tif", "--model", "model/model.keras", "--scheduler",
                 dask_cluster.address, "--stride", "16", *FLAGS]  # fmt: skip
    classify_image.main([*arguments, "--output-dir", "out_first"])  # sends the code if needed
    monkeypatch.setattr(cluster, "project_zip_name", lambda: "cnn_sentinel_project_other.zip")
    with pytest.raises(InputError, match=r"run the project's code that another version of 06 "
                       r"sent them; restart the scheduler and the workers"):  # fmt: skip
        classify_image.main([*arguments, "--output-dir", "out_stale"])
    assert not (case["folder"] / "out_stale" / "c0_label.tif").exists()


def worker_addresses(started: Cluster) -> list[str]:
    from dask.distributed import Client

    with Client(started.address, timeout="30s") as client:
        return list(client.nthreads())


# ---------------------------------------------------------------------------
# Interrupted runs: the same command again finishes with the uninterrupted maps
# ---------------------------------------------------------------------------

# One forward pass per window: each scene is seconds of work, so a signal lands mid-task.
SLOW_FLAGS = ["--method", "windows", "--stride", "2", "--cloud-mask", "off", "--block-rows", "16",
              "--band-rows", "64", "--no-progress", "--adapt", "off"]  # fmt: skip
STEMS = ["s0", "s1", "tall"]


@pytest.fixture(scope="module")
def slow_case(tmp_path_factory):
    """Two scenes of one task each and one of two row strips, a tiny model, and their maps
    from an uninterrupted in-process run."""
    folder = tmp_path_factory.mktemp("interrupted")
    scenes = [
        helpers.write_scene(folder / f"{stem}.tif", helpers.cloudy_scene(rows, 128, seed=seed),
                            descriptions=MS_BAND_NAMES)
        for stem, rows, seed in (("s0", 64, 0), ("s1", 64, 1), ("tall", 128, 2))
    ]  # fmt: skip
    model = helpers.save_model(helpers.valid_model(13), folder / "model", MS_BAND_NAMES)
    classify_image.main(
        [str(value) for value in ["--image", *scenes, "--model", model, "--output-dir",
         folder / "reference", "--scheduler", "none", *SLOW_FLAGS]]
    )  # fmt: skip
    return {"folder": folder, "scenes": scenes, "model": model}


def classify_command(case: dict, output: Path, scheduler: str) -> list[str]:
    arguments = ["--image", *case["scenes"], "--model", case["model"], "--output-dir", output,
                 "--scheduler", scheduler, "--workers", "1", *SLOW_FLAGS]  # fmt: skip
    return [sys.executable, str(REPO_ROOT / "06_classify_image.py"), *map(str, arguments)]


def start_06(command: list[str], folder: Path, name: str) -> subprocess.Popen:
    """06 as a user starts it: in its own process group (a terminal's Ctrl-C reaches the
    whole group), SIGINT at its default even when the suite runs in the background."""
    return subprocess.Popen(
        command, env=CLIENT_ENVIRONMENT, stdout=(folder / f"{name}.out").open("w"),
        stderr=(folder / f"{name}.err").open("w"), start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip


def wait_until_writing(output: Path, process: subprocess.Popen) -> None:
    """Until a task writes its first block (a hidden .partial- output exists)."""
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if any(".partial-" in path.name for path in output.rglob("*")):
                return
        except FileNotFoundError:
            pass
        time.sleep(0.02)
    process.kill()
    pytest.fail("no task began writing before the run ended or 180 s passed")


def unrecorded_outputs(output: Path) -> list[str]:
    """Label maps in `output` that the manifest does not record as finished."""
    manifest_path = output / "manifest.json"
    records = json.loads(manifest_path.read_text())["scenes"] if manifest_path.exists() else {}
    recorded = {
        name for record in records.values() if record.get("status") == "finished"
        for name in record["outputs"]
    }  # fmt: skip
    return [str(path) for path in output.glob("*_label.tif") if str(path) not in recorded]


def rerun_gives_the_reference_maps(case: dict, output: Path, scheduler: str) -> None:
    again = subprocess.run(
        classify_command(case, output, scheduler), env=CLIENT_ENVIRONMENT, capture_output=True,
        text=True, timeout=300,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr[-3000:]
    assert_reference_maps(output, case["folder"] / "reference", STEMS)
    rows = json.loads((output / "summary.json").read_text())["scenes"]
    assert {row["status"] for row in rows} <= {"done", "skipped"}


@pytest.mark.slow
def test_an_interrupted_client_stops_its_tasks_on_the_cluster(slow_case, dask_cluster, tmp_path):
    """Ctrl-C of 06 on a tcp:// scheduler (its process group is 06 alone); SIGTERM takes
    the same path (KeyboardInterrupt), tested with the local cluster below."""
    output = tmp_path / "maps"
    client = start_06(classify_command(slow_case, output, dask_cluster.address), tmp_path, "run")
    wait_until_writing(output, client)
    os.killpg(client.pid, signal.SIGINT)
    assert client.wait(timeout=120) == 130
    err = (tmp_path / "run.err").read_text()
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("interrupted:")
    assert dask_cluster.executing() == 0  # nothing keeps writing after 06 has ended
    time.sleep(2)
    assert unrecorded_outputs(output) == []
    rerun_gives_the_reference_maps(slow_case, output, dask_cluster.address)


def running(process) -> bool:
    """Whether a process still runs (one that has ended but is not yet reaped does not)."""
    import psutil

    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.slow
def test_sigterm_of_a_run_on_its_local_cluster_leaves_no_process(slow_case, tmp_path):
    """SIGTERM, as a batch system stops a job, to 06 alone: its LocalCluster's processes
    end with it, and nothing is written after it has ended."""
    import psutil

    output = tmp_path / "maps"
    client = start_06(classify_command(slow_case, output, "local"), tmp_path, "run")
    wait_until_writing(output, client)
    processes = psutil.Process(client.pid).children(recursive=True)
    assert processes  # the LocalCluster's worker, multiprocessing's resource tracker
    trackers = [process for process in processes if "resource_tracker" in str(process.cmdline())]
    client.send_signal(signal.SIGTERM)
    assert client.wait(timeout=120) == 143, (tmp_path / "run.err").read_text()[-3000:]
    # The workers have ended before 06 exits; multiprocessing's resource tracker ends by
    # itself when 06's end closes its pipe, a moment later (it still ran under CI's load).
    assert [process for process in processes if process not in trackers and running(process)] == []
    psutil.wait_procs(trackers, timeout=30)
    assert [process for process in processes if running(process)] == []
    time.sleep(2)
    assert unrecorded_outputs(output) == []
    rerun_gives_the_reference_maps(slow_case, output, "local")


@pytest.mark.slow
def test_a_killed_scheduler_ends_the_run_in_a_sentence_and_the_rerun_finishes(slow_case, tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    started = Cluster(tmp_path / "cluster", port=port)
    output = tmp_path / "maps"
    try:
        client = start_06(classify_command(slow_case, output, started.address), tmp_path, "run")
        wait_until_writing(output, client)
        started.scheduler.kill()
        assert client.wait(timeout=180) == 2
        err = (tmp_path / "run.err").read_text()
        assert "Traceback" not in err, err[-3000:]
        assert err.strip().splitlines()[-1].startswith("error: ")
        assert f"the Dask scheduler {started.address} went away" in err
        rows = json.loads((output / "summary.json").read_text())["scenes"]
        assert "failed" in {row["status"] for row in rows}
    finally:
        started.stop()
    # The user starts the cluster again and runs the same command.
    again = Cluster(tmp_path / "cluster", port=port)
    try:
        rerun_gives_the_reference_maps(slow_case, output, started.address)
    finally:
        again.stop()


# ---------------------------------------------------------------------------
# Interrupted in this process, at a chosen moment: the summary says where the run stood
# ---------------------------------------------------------------------------


def finished_outputs(output: Path) -> dict[str, str]:
    """{scene file name: manifest status} of a run's manifest."""
    records = json.loads((output / "manifest.json").read_text())["scenes"]
    return {Path(scene).name: record["status"] for scene, record in records.items()}


@pytest.mark.slow
def test_a_run_interrupted_mid_scene_writes_where_it_stood(slow_case, tmp_path, monkeypatch):
    """KeyboardInterrupt (Ctrl-C; SIGTERM raises it too) while the second scene writes its
    first block, in-process: the first is done and recorded, the second interrupted and
    the third never started, as summary.json and summary.csv say; the rerun finishes."""
    from cnn_sentinel.scene import job

    whole_scene = job.classify_one

    def interrupted_in_s1(plan, *args, **kwargs):
        if plan.stem != "s1":
            return whole_scene(plan, *args, **kwargs)
        blocks = []

        def stop():  # called before each block is written
            blocks.append(1)
            if len(blocks) == 2:
                raise KeyboardInterrupt

        return whole_scene(plan, *args, stop=stop, **kwargs)

    monkeypatch.setattr(job, "classify_one", interrupted_in_s1)
    output = tmp_path / "maps"
    command = [str(value) for value in classify_command(slow_case, output, "none")[2:]]
    with pytest.raises(KeyboardInterrupt):
        classify_image.main(command)
    rows = json.loads((output / "summary.json").read_text())["scenes"]
    assert [(Path(row["scene"]).stem, row["status"]) for row in rows] == [
        ("s0", "done"),
        ("s1", "interrupted"),
        ("tall", "not started"),
    ]
    assert rows[0]["seconds"] > 0 and rows[1]["seconds"] is None
    csv_rows = (output / "summary.csv").read_text().splitlines()[1:]
    assert [line.split(",")[1] for line in csv_rows] == ["done", "interrupted", "not started"]
    assert finished_outputs(output) == {"s0.tif": "finished", "s1.tif": "started",
                                        "tall.tif": "started"}  # fmt: skip
    assert sorted(path.name for path in output.iterdir() if path.name.startswith(("s1", "t"))) == []
    assert not [path for path in output.rglob("*") if ".partial-" in path.name]
    assert unrecorded_outputs(output) == []
    monkeypatch.setattr(job, "classify_one", whole_scene)
    rows = classify_image.main(command)["scenes"]
    assert [row["status"] for row in rows] == ["skipped", "done", "done"]
    assert_reference_maps(output, slow_case["folder"] / "reference", STEMS)


@pytest.mark.slow
def test_a_run_on_a_cluster_interrupted_writes_where_it_stood(
    slow_case, dask_cluster, tmp_path, monkeypatch
):
    """KeyboardInterrupt in the client as the first scene ends, the others' tasks running
    or queued on the cluster: the summary has that scene done (with any other whose last
    task had ended, recorded too) and each other one interrupted (its tasks had begun) or
    not started, none with outputs, and nothing runs on after; the same command again
    finishes."""
    from cnn_sentinel.scene import many

    real_bar = many.progress_bar

    def interrupting_bar(*args, **kwargs):
        bar = real_bar(*args, **kwargs)

        def update(count=1):  # a scene has ended
            raise KeyboardInterrupt

        bar.update = update
        return bar

    monkeypatch.setattr(many, "progress_bar", interrupting_bar)
    output = tmp_path / "maps"
    command = [str(value) for value in classify_command(slow_case, output, dask_cluster.address)]
    with pytest.raises(KeyboardInterrupt):
        classify_image.main(command[2:])
    assert dask_cluster.executing() == 0
    rows = json.loads((output / "summary.json").read_text())["scenes"]
    statuses = [row["status"] for row in rows]
    assert 1 <= statuses.count("done") < 3, statuses
    assert set(statuses) - {"done"} <= {"interrupted", "not started"}
    if statuses.count("done") == 1:
        assert "interrupted" in statuses  # two worker threads: another scene had begun
    done = [Path(row["scene"]).name for row in rows if row["status"] == "done"]
    assert [name for name, status in finished_outputs(output).items() if status == "finished"] == (
        done
    )
    time.sleep(2)
    assert unrecorded_outputs(output) == []
    monkeypatch.setattr(many, "progress_bar", real_bar)
    again = classify_image.main(command[2:])["scenes"]
    assert [row["status"] for row in again] == [
        "skipped" if row["status"] == "done" else "done" for row in rows
    ]
    assert_reference_maps(output, slow_case["folder"] / "reference", STEMS)
