"""The Dask side of a many-scene run, as its client sees it: which scheduler, the client
of an embedded LocalCluster or of a cluster's scheduler, what the scheduler and workers
need before the first task, and stopping the run's tasks when the run is interrupted.

    client = start_client(scheduler, workers, threads_per_worker)
    prepare_cluster(client, scheduler)        # ships the project where it is missing
    ...
    stop_tasks(client, futures, run)          # interrupted: cancel, wait until they stop

The scheduler unpickles the tasks and the workers run them: both need the project's
code and its environment (requirements.txt). The project's code (the package and
image_functions.py) is shipped to a cluster that lacks it, as one zip, with Dask's own
mechanism (Client.upload_file: workers that join later get it too); a missing package
of the environment is one sentence naming it and the machines, before any task.
dask.distributed is imported inside the functions that need it.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import sys
import tempfile
import time
import zipfile
from pathlib import Path

from cnn_sentinel.errors import InputError

# The checkout holding the package and image_functions.py.
PROJECT_ROOT = Path(__file__).resolve().parents[2]
# The project's own modules, shipped to a cluster that cannot import them.
PROJECT_MODULES = ("cnn_sentinel", "image_functions")
# The environment's modules that 06's tasks import (requirements.txt installs them).
ENVIRONMENT_MODULES = ("numpy", "osgeo.gdal", "tensorflow", "keras", "s2cloudless", "tqdm")
# The start of the name of the project's zip sent to a cluster.
ZIP_PREFIX = "cnn_sentinel_project_"
# Seconds an interrupted run waits for the workers to stop its running tasks (each stops
# before its next block).
STOP_WAIT_SECONDS = 60


def choose_scheduler(scheduler: str, scene_count: int) -> str:
    """ "none", "local" or a cluster's address, from --scheduler ("auto": none for one
    scene, local for several)."""
    if scheduler == "auto":
        return "none" if scene_count == 1 else "local"
    if scheduler in ("none", "local") or "://" in scheduler:
        return scheduler
    raise InputError(
        f"scheduler must be auto, none, local or an address such as tcp://host:8786, "
        f"not {scheduler}."
    )


def start_client(scheduler: str, workers: int, threads_per_worker: int):
    """A dask.distributed Client: of a new LocalCluster ("local": `workers` processes,
    0: the cores divided by `threads_per_worker`) or of the cluster at an address."""
    from dask.distributed import Client, LocalCluster

    if threads_per_worker < 1:
        raise InputError(f"threads per worker must be at least 1, not {threads_per_worker}.")
    if scheduler != "local":
        try:
            return Client(scheduler, timeout="20s")
        except OSError as error:
            raise InputError(f"no Dask scheduler answers at {scheduler}: {error}.") from None
    count = workers or max(1, (os.cpu_count() or 1) // threads_per_worker)
    cluster = LocalCluster(n_workers=count, threads_per_worker=threads_per_worker, processes=True)
    return Client(cluster)


def describe_client(client) -> str:
    """ "Dask: 2 workers; dashboard http://..." (the dashboard where the scheduler has one)."""
    words = f"Dask: {len(client.nthreads())} workers"
    if "dashboard" in client.scheduler_info().get("services", {}):
        words += f"; dashboard {client.dashboard_link}"
    return words


def stop_client(client, scheduler: str) -> None:
    """Close the client; an embedded cluster stops with its workers, a cluster's own stays up.
    A client whose scheduler went away (said in a sentence already) closes quietly."""
    if client.status != "running":
        logging.getLogger("distributed.client").setLevel(logging.CRITICAL)
    if scheduler == "local":
        pids = list(client.run(os.getpid).values()) if client.status == "running" else []
        client.shutdown()
        end_processes(pids)
    else:
        client.close()


def end_processes(pids: list[int], wait: float = 10.0) -> None:
    """Wait until the processes `pids` (an embedded cluster's workers) have ended, and
    kill those still running after `wait` seconds: none outlives 06."""
    import psutil

    def running(pid: int) -> bool:
        try:
            return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    deadline = time.monotonic() + wait
    while (left := [pid for pid in pids if running(pid)]) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in left:
        with contextlib.suppress(psutil.NoSuchProcess):
            psutil.Process(pid).kill()


# ---------------------------------------------------------------------------
# What the scheduler and the workers need
# ---------------------------------------------------------------------------


def module_origins(names: list[str]) -> dict[str, str | None]:
    """Run on the scheduler and each worker (sent by value, standard library only): where
    each module of `names` would be imported from there (None: it cannot be)."""
    import importlib.util

    origins: dict[str, str | None] = {}
    for name in names:
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            spec = None
        origins[name] = None if spec is None else str(spec.origin)
    return origins


def running_keys(dask_worker) -> list[str]:
    """Run on each worker (sent by value): the keys of the tasks its threads run now,
    also those cancelled but not yet stopped."""
    return [str(task.key) for task in dask_worker.state.executing]


def cluster_origins(client, names: list[str]) -> dict[str, dict[str, str | None]]:
    """{"the scheduler" or a worker's address: module_origins(names) there}."""
    import cloudpickle

    # These functions travel by value: the cluster may lack this very module.
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    found = {"the scheduler": client.run_on_scheduler(module_origins, names)}
    found.update(client.run(module_origins, names))
    return found


def missing_in(origins: dict[str, dict[str, str | None]], names) -> dict[str, list[str]]:
    """{machine: the `names` it cannot import}, for the machines that miss some."""
    missing = {
        machine: [name for name in names if found.get(name) is None]
        for machine, found in origins.items()
    }
    return {machine: lacking for machine, lacking in missing.items() if lacking}


def project_files() -> list[Path]:
    """The project's code: the package's modules and image_functions.py."""
    return sorted(
        path
        for path in [
            *(PROJECT_ROOT / "cnn_sentinel").rglob("*.py"),
            PROJECT_ROOT / "image_functions.py",
        ]
        if "__pycache__" not in path.parts
    )


def project_zip_name() -> str:
    """The name of the project's zip, by its content: a changed project has another."""
    digest = hashlib.sha256()
    for path in project_files():
        digest.update(str(path.relative_to(PROJECT_ROOT)).encode() + b"\0" + path.read_bytes())
    return f"{ZIP_PREFIX}{digest.hexdigest()[:12]}.zip"


def project_zip(folder: Path) -> Path:
    """The project's code as one zip in `folder` (named by project_zip_name)."""
    archive = folder / project_zip_name()
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as handle:
        for path in project_files():
            handle.write(path, str(path.relative_to(PROJECT_ROOT)))
    return archive


def machines_words(machines: dict[str, list[str]]) -> str:
    return "; ".join(
        f"{machine} lacks {', '.join(missing)}" for machine, missing in machines.items()
    )


def refuse_stale_code(origins: dict[str, dict[str, str | None]], scheduler: str) -> None:
    """InputError when a machine runs the project's code that another version of 06 sent
    (a zip of another name): a process keeps the modules it has imported, so only
    restarting it takes this version's."""
    name = project_zip_name()
    stale = [
        machine
        for machine, found in origins.items()
        if any(ZIP_PREFIX in str(origin) and name not in str(origin) for origin in found.values())
    ]
    if stale:
        raise InputError(
            f"{', '.join(stale)} of the Dask cluster at {scheduler} run the project's code "
            "that another version of 06 sent them; restart the scheduler and the workers to "
            "take this version's."
        )


def prepare_cluster(client, scheduler: str, report=print) -> None:
    """Before the first task: ship the project's code to a cluster whose scheduler or
    workers cannot import it (Client.upload_file of a zip), then check that every
    machine has the environment's modules; InputError naming what is missing where."""
    if not client.nthreads():
        raise InputError(f"the Dask scheduler at {scheduler} has no workers; start some.")
    needed = [*PROJECT_MODULES, *ENVIRONMENT_MODULES]
    origins = cluster_origins(client, needed)
    refuse_stale_code(origins, scheduler)
    lacking = missing_in(origins, PROJECT_MODULES)
    if lacking:
        with tempfile.TemporaryDirectory() as folder:
            archive = project_zip(Path(folder))
            try:
                client.upload_file(str(archive))
            except Exception as error:  # the upload imports it there: the environment's fault
                raise InputError(
                    f"the Dask cluster at {scheduler} cannot take the project's code "
                    f"({type(error).__name__}: {error}); install requirements.txt in its "
                    "workers' and scheduler's environment."
                ) from None
        report(
            f"note: sent the project's code to the Dask cluster ({machines_words(lacking)}); "
            "workers that join later get it too."
        )
        origins = cluster_origins(client, needed)
    lacking = missing_in(origins, needed)
    if lacking:
        raise InputError(
            f"the Dask cluster at {scheduler} cannot run 06's tasks: {machines_words(lacking)}; "
            "install requirements.txt in the environment its scheduler and workers run in."
        )


# ---------------------------------------------------------------------------
# An interrupted run
# ---------------------------------------------------------------------------


def stop_tasks(client, futures: list, run: str, wait: float = STOP_WAIT_SECONDS) -> bool:
    """Cancel the run's `futures` (none not yet started will start) and wait until the
    workers run none of its tasks (a running one stops before its next block; all keys
    of the run contain `run`). Returns whether they stopped within `wait` seconds."""
    client.cancel(futures, force=True)
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if not running_tasks(client, run):
            return True
        time.sleep(0.5)
    return False


def running_tasks(client, run: str) -> list[str]:
    """The keys of the run's tasks (all contain `run`) that the workers' threads run now."""
    import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    return [key for keys in client.run(running_keys).values() for key in keys if run in key]
