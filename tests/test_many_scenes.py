"""Tests of 06 on many scenes: scene lists, row strips assembled into the whole-scene
outputs, Dask distributed against the in-process run (same labels, probabilities
within 1e-6), the manifest that resumes a run, a bad scene failing alone, COG
outputs, the mosaic and the summary, and a worker killed mid-run.

Scenes are generated and small, models tiny; one LocalCluster of 2 workers serves
the module (its address is passed as --scheduler), one test starts its own.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import helpers
import numpy as np
import pytest
from osgeo import gdal
from script_modules import load_script

import demo_data
from cnn_sentinel.errors import InputError
from cnn_sentinel.scene import blocks, job, listing, manifest, many, reading
from cnn_sentinel.scene import plan as scene_plan
from cnn_sentinel.scene.cluster import choose_scheduler
from image_functions import MS_BAND_NAMES, RGB_BAND_NAMES, talk_constants

classify_image = load_script("06_classify_image.py", "classify_image_many")

# Flags of every run here: small blocks and row strips, so a 96-row scene has several.
# --adapt off: every band would measure and adapt to the whole scene again (the same
# numbers, at a cost); the tests that check it with adaptation say so.
SMALL = ["--block-rows", "16", "--band-rows", "32", "--no-progress", "--adapt", "off"]
ADAPTED = ["--adapt", "on", "--adapt-windows", "128"]


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """A cloudy 13-band scene, a plain 13-band scene (no cloud bands used), and a tiny
    dense-capable 13-band model."""
    folder = tmp_path_factory.mktemp("many")
    scenes = folder / "scenes"
    scenes.mkdir()
    cloudy = helpers.write_scene(
        scenes / "cloudy.tif", helpers.cloudy_scene(96, 80), descriptions=MS_BAND_NAMES
    )
    plain = helpers.write_scene(
        scenes / "plain.tif",
        np.moveaxis(demo_data.demo_scene(70, 64, 3)[0], 0, -1).astype(np.uint16),
        descriptions=MS_BAND_NAMES,
    )
    model = helpers.save_model(helpers.valid_model(13), folder / "model", MS_BAND_NAMES)
    mean, std = talk_constants(3)
    rgb_model = helpers.save_model(
        helpers.tiny_model(3, mean, std), folder / "rgb_model", RGB_BAND_NAMES
    )
    return {
        "folder": folder,
        "cloudy": cloudy,
        "plain": plain,
        "model": model,
        "rgb_model": rgb_model,
    }


@pytest.fixture(scope="module")
def cluster():
    """A LocalCluster of 2 single-threaded worker processes for the module."""
    from dask.distributed import LocalCluster

    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
    ) as local:
        yield local


def run(images, model, output, *flags) -> dict:
    arguments = ["--image", *images, "--model", model, "--output-dir", output, *SMALL, *flags]
    return classify_image.main([str(value) for value in arguments])


def read_outputs(folder: Path, stem: str) -> tuple[np.ndarray, np.ndarray]:
    return (
        helpers.read_raster(folder / f"{stem}_label.tif"),
        helpers.read_raster(folder / f"{stem}_prob.tif"),
    )


def assert_same_outputs(folder: Path, reference: Path, stem: str) -> None:
    labels, probabilities = read_outputs(folder, stem)
    expected_labels, expected_probabilities = read_outputs(reference, stem)
    np.testing.assert_array_equal(labels, expected_labels)
    np.testing.assert_allclose(probabilities, expected_probabilities, rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------
# Scenes from --image, row strips
# ---------------------------------------------------------------------------


def test_scene_lists_take_paths_globs_folders_and_text_files(tmp_path):
    folder = tmp_path / "scenes"
    folder.mkdir()
    for name in ("b.tif", "a.tif", "c.vrt", "a_label.tif", "a_prob.tif", ".hidden.tif", "x.txt"):
        (folder / name).write_text("")
    (tmp_path / "list.txt").write_text("# my scenes\nscenes/c.vrt\n\nscenes/a.tif\n")
    assert listing.list_scenes([str(folder)]) == [
        folder / "a.tif",
        folder / "b.tif",
        folder / "c.vrt",
    ]
    assert listing.list_scenes([str(folder / "[ab].tif")]) == [folder / "a.tif", folder / "b.tif"]
    assert listing.list_scenes([str(tmp_path / "list.txt"), str(folder / "a.tif")]) == [
        folder / "c.vrt",
        folder / "a.tif",
    ]
    assert listing.list_scenes(["missing.tif"]) == [Path("missing.tif")]  # fails as its scene
    with pytest.raises(InputError, match=r"no scene matches .*\*\.jp2"):
        listing.list_scenes([str(folder / "*.jp2")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="folder .*empty holds no scene"):
        listing.list_scenes([str(tmp_path / "empty")])


def test_same_names_in_different_folders_collide_only_in_one_output_folder(tmp_path):
    """Without --output-dir each scene writes beside itself: a.tif in two folders is fine;
    with one --output-dir both would write a_label.tif there."""
    scenes = [tmp_path / "one" / "a.tif", tmp_path / "two" / "a.tif"]
    for scene in scenes:
        scene.parent.mkdir()
        scene.write_text("")
    listed = listing.list_scenes([str(scene) for scene in scenes])
    assert listed == scenes
    settings = classify_image.parse_settings(classify_image.__file__, [])
    listing.refuse_shared_outputs(scene_plan.plan_run(settings), listed)
    settings.output_dir = str(tmp_path / "maps")
    with pytest.raises(InputError, match=r"would both write .*maps/a_label.tif; classify them"):
        listing.refuse_shared_outputs(scene_plan.plan_run(settings), listed)


def test_scheduler_choice():
    assert choose_scheduler("auto", 1) == "none"
    assert choose_scheduler("auto", 3) == "local"
    assert choose_scheduler("tcp://10.0.0.1:8786", 3) == "tcp://10.0.0.1:8786"
    with pytest.raises(InputError, match="scheduler must be auto, none, local or an address"):
        choose_scheduler("slurm", 2)


def test_row_strips_are_whole_row_blocks():
    assert job.row_strips(100, 32, 1, 16) == [(0, 32), (32, 64), (64, 96), (96, 100)]
    # Strips are rounded to the blocks a run reads (block rows rounded to the stride).
    assert job.row_strips(100, 40, 16, 16) == [(0, 32), (32, 64), (64, 96), (96, 100)]
    assert job.row_strips(100, 8, 16, 40) == [(0, 32), (32, 64), (64, 96), (96, 100)]
    assert job.row_strips(10, 2048, 1, 256) == [(0, 10)]


@pytest.mark.parametrize(
    ("stride", "cloud_mask", "probabilities"),
    [(1, "auto", "max"), (1, "off", "max"), (16, "auto", "max"), (16, "off", "all")],
)
def test_strips_assemble_into_the_whole_scene_outputs(
    case, tmp_path, stride, cloud_mask, probabilities
):
    """classify_rows on each strip (halo from the scene's real rows) then assemble_scene
    give the outputs of classify_one: labels identical, probabilities within 1e-6."""
    flags = [
        "--model", case["model"], "--stride", stride, "--cloud-mask", cloud_mask,
        "--block-rows", "16", "--probabilities", probabilities, "--no-progress",
        *(ADAPTED if stride == 1 and cloud_mask == "auto" else ["--adapt", "off"]),
    ]  # fmt: skip
    whole = classify_image.main(
        [str(value) for value in ["--image", case["cloudy"], "--output-dir", tmp_path / "whole",
         *flags]]
    )  # fmt: skip
    settings = classify_image.parse_settings(
        classify_image.__file__,
        [str(value) for value in ["--output-dir", tmp_path / "strips", *flags]],
    )
    plan = scene_plan.plan_scene(settings, case["cloudy"])
    strips_folder = tmp_path / "strips" / ".cloudy.strips"
    strips = [
        job.classify_rows(plan, first, last, strips_folder)
        for first, last in reversed(job.row_strips(96, 32, stride, 16))
    ]
    assert len(strips) == 3 and (strips_folder / "rows000032.json").exists()
    summary = job.assemble_scene(plan, strips, strips_folder)
    assert not strips_folder.exists()
    assert_same_outputs(tmp_path / "strips", tmp_path / "whole", "cloudy")
    for name in ("windows", "classified", "pixels", "cloud", "nodata"):
        assert summary[name] == whole[name]
    assert read_outputs(tmp_path / "strips", "cloudy")[1].ndim == (
        3 if probabilities == "all" else 2
    )
    assert (summary["cloud"] > 0) == (cloud_mask == "auto")
    labels = gdal.Open(str(tmp_path / "strips" / "cloudy_label.tif"))
    labels.GetGeoTransform()  # GDAL 3.6 reads the .aux.xml on this first query
    assert labels.GetGeoTransform() == helpers.ORIGIN
    if cloud_mask == "auto":
        assert labels.GetRasterBand(1).GetCategoryNames()[blocks.CLOUD_LABEL] == "Cloud"


def test_outputs_are_cloud_optimized_with_names_and_colours(case, tmp_path):
    run([case["plain"]], case["model"], tmp_path, "--stride", "4")
    label = gdal.Open(str(tmp_path / "plain_label.tif"))
    label.GetGeoTransform()
    assert label.GetMetadata("IMAGE_STRUCTURE")["LAYOUT"] == "COG"
    band = label.GetRasterBand(1)
    assert band.GetOverviewCount() == 0  # 70 x 60 pixels: smaller than one tile
    assert band.GetCategoryNames()[:2] == ["AnnualCrop", "Forest"]
    assert band.GetColorTable().GetColorEntry(1)[:3] == blocks.CLASS_COLOURS["Forest"]
    assert band.GetNoDataValue() == blocks.LABEL_NODATA
    probability = gdal.Open(str(tmp_path / "plain_prob.tif"))
    assert probability.GetMetadata("IMAGE_STRUCTURE")["LAYOUT"] == "COG"
    assert probability.GetRasterBand(1).GetDescription() == "probability"
    # A scene larger than a COG tile gets overviews: mode for labels, average for probabilities.
    big = helpers.write_scene(
        tmp_path / "big.tif", helpers.smooth_scene(600, 520, 3, np.uint8, 30.0, seed=1),
        descriptions=RGB_BAND_NAMES,
    )  # fmt: skip
    run([big], case["rgb_model"], tmp_path, "--stride", "64", "--block-rows", "256")
    info = gdal.Info(str(tmp_path / "big_label.tif"), format="json")
    assert info["metadata"]["IMAGE_STRUCTURE"]["LAYOUT"] == "COG"
    assert len(info["bands"][0]["overviews"]) >= 1
    assert info["bands"][0]["colorTable"]["count"] == 256
    # Mode overviews hold only class values; average ones would blend them.
    big_label = gdal.Open(str(tmp_path / "big_label.tif"))
    overview = big_label.GetRasterBand(1).GetOverview(0).ReadAsArray()
    assert set(np.unique(overview)) <= set(np.unique(big_label.ReadAsArray()))


# ---------------------------------------------------------------------------
# Many scenes: in-process and on Dask
# ---------------------------------------------------------------------------


def test_many_scenes_in_process_resume_and_a_bad_scene(case, tmp_path, capsys):
    """A bad scene fails alone (its sentence in the summary, exit status of an input
    error); a rerun skips the finished scenes; --overwrite redoes them."""
    bad = tmp_path / "broken.tif"
    bad.write_text("not a raster")
    images = [case["cloudy"], bad, case["plain"]]
    output = tmp_path / "run"
    with pytest.raises(
        InputError, match=r"1 of 3 scenes failed \(first: scene .*broken.tif is not"
    ):
        run(images, case["model"], output, "--scheduler", "none", "--stride", "8")
    summary = json.loads((output / "summary.json").read_text())["scenes"]
    assert [row["status"] for row in summary] == ["done", "failed", "done"]
    assert summary[1]["error"] == f"scene {bad} is not a raster GDAL can read."
    assert summary[0]["cloud_share"] > 0.1 and summary[2]["cloud_share"] < 0.05
    assert sum(summary[0]["shares"].values()) + summary[0]["cloud_share"] == pytest.approx(1)
    csv_lines = (output / "summary.csv").read_text().splitlines()
    assert csv_lines[0].startswith("scene,status,seconds,windows_per_second,share_")
    assert len(csv_lines) == 4 and ",failed," in csv_lines[2]
    records = json.loads((output / "manifest.json").read_text())["scenes"]
    finished = [path for path, record in records.items() if record["status"] == "finished"]
    assert sorted(finished) == sorted(str(Path(path).resolve()) for path in images[::2])
    record = records[str(case["cloudy"].resolve())]
    assert record["settings"]["stride"] == 8
    assert record["outputs"][str(output / "cloudy_label.tif")] == manifest.file_sha256(
        output / "cloudy_label.tif"
    )
    assert (output / "mosaic.vrt").exists() and (output / "mosaic_quicklook.png").exists()
    written = (output / "cloudy_label.tif").stat().st_mtime_ns
    capsys.readouterr()

    bad.unlink()
    run(images[::2], case["model"], output, "--scheduler", "none", "--stride", "8")
    assert capsys.readouterr().out.count("finished before with these settings") == 2
    assert (output / "cloudy_label.tif").stat().st_mtime_ns == written
    statuses = [
        row["status"] for row in json.loads((output / "summary.json").read_text())["scenes"]
    ]
    assert statuses == ["skipped", "skipped"]

    # Other settings, or --overwrite: redone.
    run(images[:1], case["model"], output, "--scheduler", "none", "--stride", "8", "--overwrite")
    assert (output / "cloudy_label.tif").stat().st_mtime_ns != written
    with pytest.raises(InputError, match="already exists; pass --overwrite"):
        run(images[:1], case["model"], output, "--scheduler", "none", "--stride", "4")
    # Many scenes: the manifest says why their outputs are not replaced.
    with pytest.raises(InputError, match=r"other settings \(stride 8, now 4\); pass --overwrite"):
        run(images[::2], case["model"], output, "--scheduler", "none", "--stride", "4")


def test_a_changed_scene_is_refused_saying_it_changed(case, tmp_path):
    """A rerun after a scene got a new modification time: refused with a sentence that
    says the scene changed (not only that its outputs exist); --overwrite redoes it."""
    scenes = []
    for name in ("one", "two"):
        scenes.append(tmp_path / f"{name}.tif")
        scenes[-1].write_bytes(case["plain"].read_bytes())
    output = tmp_path / "maps"
    run(scenes, case["model"], output, "--scheduler", "none", "--stride", "16")
    stat = scenes[0].stat()
    os.utime(scenes[0], ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    with pytest.raises(InputError) as raised:
        run(scenes, case["model"], output, "--scheduler", "none", "--stride", "16")
    assert f"scene {scenes[0]} changed since its outputs {output / 'one_label.tif'}" in str(
        raised.value
    )
    assert "pass --overwrite to classify it again" in str(raised.value)
    rows = json.loads((output / "summary.json").read_text())["scenes"]
    assert [row["status"] for row in rows] == ["failed", "skipped"]
    run(scenes[:1], case["model"], output, "--scheduler", "none", "--stride", "16", "--overwrite")


@pytest.mark.parametrize("stride", [1, 16])
def test_dask_gives_the_in_process_outputs(case, cluster, tmp_path, stride):
    """Two scenes, one cut into row strips across 2 workers, one with clouds, plus a bad one:
    --scheduler none and the cluster give the same labels and probabilities (1e-6), also
    with the scene adaptation (stride 16)."""
    images = [case["cloudy"], case["plain"], tmp_path / "missing.tif"]
    flags = ["--stride", stride, *(ADAPTED if stride == 16 else [])]  # adapted per strip too
    with pytest.raises(InputError, match="1 of 3 scenes failed"):
        run(images, case["model"], tmp_path / "none", "--scheduler", "none", *flags)
    with pytest.raises(InputError, match="1 of 3 scenes failed"):
        run(
            images,
            case["model"],
            tmp_path / "dask",
            "--scheduler",
            cluster.scheduler_address,
            *flags,
        )
    for stem in ("cloudy", "plain"):
        assert_same_outputs(tmp_path / "dask", tmp_path / "none", stem)
        assert not (tmp_path / "dask" / f".{stem}.strips").exists()
    rows = json.loads((tmp_path / "dask" / "summary.json").read_text())["scenes"]
    assert [row["status"] for row in rows] == ["done", "done", "failed"]
    assert rows[2]["error"] == f"scene {images[2]} does not exist."
    reference = json.loads((tmp_path / "none" / "summary.json").read_text())["scenes"]
    assert [row["shares"] for row in rows] == [row["shares"] for row in reference]
    mosaic = gdal.Open(str(tmp_path / "dask" / "mosaic.vrt"))
    assert (mosaic.RasterXSize, mosaic.RasterYSize) == (80, 96)  # both scenes share an origin
    assert mosaic.GetRasterBand(1).GetColorTable() is not None


def test_the_model_is_loaded_once_per_worker(case, cluster, tmp_path):
    from dask.distributed import Client

    with Client(cluster) as client:
        client.run(reading._LOADED_MODELS.clear)
        run([case["cloudy"], case["plain"]], case["model"], tmp_path, "--scheduler",
            cluster.scheduler_address, "--stride", "16")  # fmt: skip
        loaded = client.run(lambda: len(reading._LOADED_MODELS))
        threads = client.run(lambda: __import__("tensorflow").config.threading
                             .get_intra_op_parallelism_threads())  # fmt: skip
    assert set(loaded.values()) <= {0, 1} and sum(loaded.values()) >= 1
    assert set(threads.values()) <= {0, 1}


def test_a_cached_model_comes_back_with_its_weights_as_loaded(case):
    """The scene side's one loader keeps a model per process and thread when asked (Dask
    workers' tasks: many.cached_model): a task that changes the model (the scene
    adaptation sets batch-normalisation statistics) leaves nothing for the next task."""
    path = str(case["model"])
    model, info = reading.load_scene_model(path, cache=True)
    loaded = [weights.copy() for weights in model.get_weights()]
    model.set_weights([weights + 1.0 for weights in loaded])
    again, again_info = many.cached_model(path)
    assert again is model and again_info == info
    for weights, expected in zip(again.get_weights(), loaded, strict=True):
        np.testing.assert_array_equal(weights, expected)
    assert reading.load_scene_model(path)[0] is not model  # uncached: read again
    other_thread = []
    thread = threading.Thread(
        target=lambda: other_thread.append(reading.load_scene_model(path, cache=True)[0])
    )
    thread.start()
    thread.join()
    assert other_thread[0] is not model  # threads never share one model
    with pytest.raises(InputError, match="model .*missing.keras does not exist"):
        many.cached_model(str(case["model"].parent / "missing.keras"))


def test_local_cluster_from_the_flags(case, tmp_path, capsys):
    summary = run(
        [case["cloudy"], case["plain"]], case["model"], tmp_path,
        "--scheduler", "local", "--workers", "1", "--stride", "16",
    )  # fmt: skip
    assert [row["status"] for row in summary["scenes"]] == ["done", "done"]
    out = capsys.readouterr().out
    assert "Dask: 1 workers; dashboard http" in out
    assert "wrote " + str(tmp_path / "cloudy_label.tif") in out


@pytest.mark.slow
def test_a_killed_worker_changes_nothing(case, tmp_path):
    """kill -9 a worker process while the scene's row strips are being classified: Dask
    runs its tasks again on the other worker (or the one the nanny restarts), and the
    outputs are complete and identical to the in-process run."""
    from dask.distributed import Client, LocalCluster

    scene = helpers.write_scene(
        tmp_path / "large.tif", helpers.cloudy_scene(320, 160), descriptions=MS_BAND_NAMES
    )
    flags = ["--stride", "1", "--band-rows", "32", "--block-rows", "16"]
    classify_image.main(
        [str(value) for value in ["--image", scene, "--model", case["model"], "--output-dir",
         tmp_path / "none", *flags, "--no-progress"]]
    )  # fmt: skip
    strips = tmp_path / "dask" / ".large.strips"
    killed = []
    with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=":0") as local:
        with Client(local) as client:
            pids = client.run(os.getpid)

            def kill_when_classifying() -> None:
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline and not list(strips.glob("*.json")):
                    time.sleep(0.05)
                busy = [address for address, keys in client.processing().items() if keys]
                if busy:
                    os.kill(pids[busy[0]], signal.SIGKILL)
                    killed.append(busy[0])

            watcher = threading.Thread(target=kill_when_classifying)
            watcher.start()
            classify_image.main(
                [str(value) for value in ["--image", scene, "--model", case["model"],
                 "--output-dir", tmp_path / "dask", "--scheduler", local.scheduler_address,
                 *flags, "--no-progress"]]
            )  # fmt: skip
            watcher.join()
    assert killed, "no worker was busy to be killed"
    assert_same_outputs(tmp_path / "dask", tmp_path / "none", "large")
