"""End-to-end runs of the training scripts 02-05 on tiny splits (arch "tiny", few steps)."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import FAST, SCRIPTS, WRONG_WEIGHTS_WARNING, make_split, read_history
from script_modules import load_script

import image_functions as imf
from cnn_sentinel import networks as nf
from cnn_sentinel import training
from cnn_sentinel.errors import InputError
from cnn_sentinel.scene import reading as scenes
from image_functions import CLASS_NAMES, MS_BAND_NAMES, list_images

REPO_ROOT = Path(__file__).resolve().parent.parent


def script_main(number: str):
    """The main() of a numbered script (file names start with digits, so no plain import)."""
    return load_script(SCRIPTS[number], f"script_{number}").main


@pytest.fixture(scope="module")
def ms_split(sample_ms_dataset, tmp_path_factory) -> Path:
    return make_split(sample_ms_dataset, tmp_path_factory.mktemp("ms_split"), with_test=True)


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory) -> Path:
    """A random 3-band tiny backbone saved like ImageNet weights (tests never download)."""
    import keras

    keras.mixed_precision.set_global_policy("float32")
    keras.utils.set_random_seed(3)
    path = tmp_path_factory.mktemp("weights") / "tiny.weights.h5"
    nf.build_backbone("tiny", 3).save_weights(path)
    return path


def assert_complete_run(run: Path, stages: list[str], bands: list[str], parts=("validation",)):
    """The files of a finished run and what they must say."""
    for name in ("model.keras", "model.json", "history.csv", "state.json"):
        assert (run / name).is_file(), name
    assert list((run / "logs").rglob("events.out.tfevents*"))
    info = json.loads((run / "model.json").read_text())
    assert info["class_names"] == list(CLASS_NAMES)
    assert info["band_names"] == bands
    assert info["input_size"] == [64, 64]
    assert len(info["mean"]) == len(info["std"]) == len(bands)
    assert [stage["name"] for stage in info["stages"]] == stages
    metrics = json.loads((run / "report" / "metrics.json").read_text())
    for part in parts:
        result = metrics[part]
        matrix = np.array(result["confusion_matrix"])
        assert matrix.shape == (10, 10)
        assert matrix.sum() == result["images"] == (20 if part == "validation" else 10)
        assert result["overall_accuracy"] == pytest.approx(np.trace(matrix) / matrix.sum())
        assert info["metrics"][part]["overall_accuracy"] == result["overall_accuracy"]
        assert set(result["per_class"]) == set(CLASS_NAMES)
        assert set(result["per_class"]["Forest"]) == {"precision", "recall", "f1", "support"}
        suffix = "" if part == "validation" else f"_{part}"
        assert (run / "report" / f"confusion_matrix{suffix}.png").read_bytes()[:4] == b"\x89PNG"
    assert (run / "report" / "training_curves.png").is_file()
    assert "Forest" in (run / "report" / "classification_report.txt").read_text()
    history = read_history(run)
    assert [row["stage"] for row in history] == [
        stage for stage in stages for _ in range(len(history) // len(stages))
    ]
    assert [int(row["epoch"]) for row in history] == list(range(1, len(history) + 1))
    return info, metrics


def assert_reload_predicts_identically(run: Path, split: Path, band_indices=None) -> None:
    """A reloaded model gives the same predictions as the best checkpoint it was saved from,
    and reproduces the report's accuracy on the whole validation set."""
    import keras

    from image_functions import load_arrays

    images, labels, _ = load_arrays(split / "validation", band_indices, progress=False)
    pixels = images.astype(np.float32)
    model = keras.saving.load_model(run / "model.keras")
    info = json.loads((run / "model.json").read_text())
    best = run / "checkpoints" / json.loads((run / "state.json").read_text())["best_checkpoint"]
    checkpoint = nf.load_model(best)
    predictions = model.predict(pixels, verbose=0)
    assert np.array_equal(predictions, model.predict(pixels, verbose=0))
    if info["mixed_precision"] == "float32":
        assert np.array_equal(predictions, checkpoint.predict(pixels, verbose=0))
    else:  # bfloat16: oneDNN may pick other kernels for the two graphs (8-bit mantissa)
        np.testing.assert_allclose(predictions, checkpoint.predict(pixels, verbose=0), atol=2e-2)
    accuracy = float((predictions.argmax(axis=1) == labels).mean())
    assert accuracy == pytest.approx(info["metrics"]["validation"]["overall_accuracy"])


def test_02_rgb_finetuning_end_to_end(rgb_split, tiny_weights, tmp_path):
    script_main("02")(
        ["--data", str(rgb_split), "--weights", str(tiny_weights), "--epochs", "2",
         "--output", str(tmp_path), *FAST]
    )  # fmt: skip
    run = tmp_path / "rgb-finetuning-tiny"
    info, _ = assert_complete_run(run, ["head", "fine-tune"], ["B04", "B03", "B02"])
    assert info["settings"]["head_learning_rate"] == 1.0
    assert info["epochs_trained"] == 4
    assert_reload_predicts_identically(run, rgb_split)


def test_03_rgb_from_scratch_talk_epochs_and_bf16(rgb_split, tmp_path):
    script_main("03")(
        ["--data", str(rgb_split), "--epochs", "2", "--steps-per-epoch", "3",
         "--output", str(tmp_path), "--run-name", "scratch", "--arch", "tiny",
         "--batch-size", "4", "--mixed-precision", "bf16"]
    )  # fmt: skip
    run = tmp_path / "scratch"
    info, _ = assert_complete_run(run, ["train"], ["B04", "B03", "B02"])
    assert info["mixed_precision"] == "mixed_bfloat16"
    assert len(read_history(run)) == 2
    assert_reload_predicts_identically(run, rgb_split)


def test_recipe_talk_takes_the_talks_settings_except_flags_given(rgb_split, tmp_path):
    # --batch-size 128 and --learning-rate 0.1 equal the script's defaults: given, so kept.
    script_main("03")(
        ["--data", str(rgb_split), "--recipe", "talk", "--epochs", "1", "--steps-per-epoch", "2",
         "--arch", "tiny", "--output", str(tmp_path), "--run-name", "talk",
         "--mixed-precision", "off", "--batch-size", "128", "--learning-rate", "0.1"]
    )  # fmt: skip
    settings = json.loads((tmp_path / "talk" / "model.json").read_text())["settings"]
    assert "_flags_given" not in settings
    # Given as flags: kept. Not given: the talk's (Adam, rotations in the model, patience 50).
    assert (settings["arch"], settings["epochs"]) == ("tiny", 1)
    assert (settings["optimizer"], settings["learning_rate"]) == ("adam", 0.1)
    assert (settings["batch_size"], settings["augmentation"]) == (128, "talk")
    assert (settings["schedule"], settings["label_smoothing"], settings["patience"]) == (
        "constant",
        0.0,
        50,
    )


@pytest.mark.parametrize("number", ["03", "05"])
def test_recipe_talk_keeps_a_constant_edited_at_the_top_of_the_script(number, tmp_path, capsys):
    from cnn_sentinel import recipes
    from cnn_sentinel.settings import script_constants

    script = REPO_ROOT / SCRIPTS[number]
    # The shipped constants are what the recipe compares with: unedited, all talk values.
    shipped = {name.lower(): value for name, value, _ in script_constants(script)}
    expected = recipes.shipped_fast_recipe(script)
    assert {key: shipped[key] for key in expected} == expected
    assert set(expected) == set(recipes.TALK_SCRATCH_RECIPE)
    untouched = recipes.parse_training_settings(str(script), ["--recipe", "talk"])
    for key, value in recipes.TALK_SCRATCH_RECIPE.items():
        assert getattr(untouched, key) == value, key
    # A copy with BATCH_SIZE and EPOCHS edited: both kept, each named in a note.
    edited = tmp_path / script.name
    source = script.read_text(encoding="utf-8")
    source = source.replace("BATCH_SIZE = 128  #", "BATCH_SIZE = 32  #")
    source = source.replace(f"EPOCHS = {expected['epochs']}  #", "EPOCHS = 7  #")
    edited.write_text(source, encoding="utf-8")
    settings = recipes.parse_training_settings(str(edited), ["--recipe", "talk", "--shift", "2"])
    assert (settings.batch_size, settings.epochs, settings.shift) == (32, 7, 2)
    assert (settings.arch, settings.optimizer, settings.learning_rate) == ("vgg16", "adam", 0.001)
    assert (settings.augmentation, settings.patience) == ("talk", 50)
    notes = capsys.readouterr().out
    assert "keeps BATCH_SIZE = 32" in notes and "keeps EPOCHS = 7" in notes
    assert "SHIFT" not in notes  # given as a flag: kept without a note
    # The fast recipe leaves every edited constant as it is.
    fast = recipes.parse_training_settings(str(edited), [])
    assert (fast.batch_size, fast.epochs, fast.arch) == (32, 7, "resnet-valid-narrow")


@pytest.mark.parametrize("variant", ["adapter", "first-conv"])
def test_04_ms_finetuning_both_variants(ms_split, tiny_weights, tmp_path, variant):
    script_main("04")(
        ["--data", str(ms_split), "--weights", str(tiny_weights), "--variant", variant,
         "--epochs", "1", "--output", str(tmp_path), *FAST]
    )  # fmt: skip
    run = tmp_path / f"ms-finetuning-{variant}-tiny"
    info, _ = assert_complete_run(
        run, ["head", "fine-tune"], list(MS_BAND_NAMES), parts=("validation", "test")
    )
    assert info["variant"] == variant
    import keras

    model = keras.saving.load_model(run / "model.keras")
    first_conv = model.get_layer("tiny").get_layer("block1_conv1")
    assert first_conv.kernel.shape[2] == (3 if variant == "adapter" else 13)
    assert (variant == "adapter") == (nf.ADAPTER_LAYER in [layer.name for layer in model.layers])


def test_05_ms_from_scratch_with_test_part_and_evaluate_only(ms_split, tmp_path):
    """Not a repeat of the README chain's 05 run (conftest's readme_chain), which only has to
    exit with 0: here the split has a test/ part, and the files, the reload, --evaluate-only
    and --tta are checked."""
    main = script_main("05")
    main(["--data", str(ms_split), "--epochs", "2", "--output", str(tmp_path), *FAST])
    run = tmp_path / "ms-scratch-tiny"
    _, metrics = assert_complete_run(
        run, ["train"], list(MS_BAND_NAMES), parts=("validation", "test")
    )
    assert_reload_predicts_identically(run, ms_split)
    main(["--data", str(ms_split), "--evaluate-only", str(run / "model.keras"), *FAST])
    evaluation = json.loads((run / f"report-{ms_split.name}" / "metrics.json").read_text())
    for part in ("validation", "test"):
        assert evaluation[part]["confusion_matrix"] == metrics[part]["confusion_matrix"]
    assert not evaluation["dihedral_averaging"]
    # --tta: the 8 flips/rotations of every image, averaged, into a report of its own.
    main(["--data", str(ms_split), "--evaluate-only", str(run / "model.keras"), "--tta", *FAST])
    averaged = json.loads((run / f"report-{ms_split.name}-tta" / "metrics.json").read_text())
    assert averaged["dihedral_averaging"] and averaged["validation"]["images"] == 20
    assert np.array(averaged["test"]["confusion_matrix"]).sum() == 10


def test_ms_script_on_an_rgb_split_names_the_bands_it_trains_on(rgb_split, tmp_path, capsys):
    arguments = ["--data", str(rgb_split), "--output", str(tmp_path), "--epochs", "1"]
    script_main("05")([*arguments, "--steps-per-epoch", "1", *FAST])
    printed = capsys.readouterr().out
    assert "holds 3-band images, not EuroSAT's 13 bands" in printed
    assert "trains on bands B04, B03, B02 only" in printed
    info = json.loads((tmp_path / "ms-scratch-tiny" / "model.json").read_text())
    assert info["band_names"] == ["B04", "B03", "B02"]


def test_rerun_resumes_after_interruption_and_refuses_finished_run(
    rgb_split, tmp_path, monkeypatch
):
    main = script_main("03")
    arguments = ["--data", str(rgb_split), "--epochs", "3", "--output", str(tmp_path), *FAST]
    original = training.progress_callback

    def interrupting(run_folder, state, stage):
        callback = original(run_folder, state, stage)
        on_epoch_end = callback.on_epoch_end

        def end_then_interrupt(epoch, logs=None):
            on_epoch_end(epoch, logs)
            if epoch == 1:
                raise KeyboardInterrupt

        callback.on_epoch_end = end_then_interrupt
        return callback

    monkeypatch.setattr(training, "progress_callback", interrupting)
    with pytest.raises(KeyboardInterrupt):
        main(arguments)
    run = tmp_path / "rgb-scratch-tiny"
    assert not (run / "model.keras").exists() and not (run / "report").exists()
    assert len(read_history(run)) == 2
    state = json.loads((run / "state.json").read_text())
    assert state["last_checkpoint"] == "epoch-002.keras" and state["epoch"] == 2
    checkpoints = {path.name for path in (run / "checkpoints").iterdir()}
    assert checkpoints == {state["last_checkpoint"], state["best_checkpoint"], "model.json"}
    nf.load_model(run / "checkpoints" / state["last_checkpoint"])  # the last good checkpoint
    # A checkpoint used as a model (06 --model) knows its run's classes and bands.
    _model, info = scenes.load_scene_model(run / "checkpoints" / state["last_checkpoint"])
    assert info.class_names == sorted(path.name for path in (rgb_split / "train").iterdir())
    assert info.band_names == ["B04", "B03", "B02"] and info.arch == "tiny"
    assert info.source == str(run / "checkpoints" / "model.json")
    # Runs saved before the checkpoints were named by epoch resume too (state.json
    # without checkpoint names; checkpoints/last.keras and <stage>-best.keras).
    checkpoints = run / "checkpoints"
    best = (checkpoints / state.pop("best_checkpoint")).read_bytes()
    (checkpoints / state.pop("last_checkpoint")).rename(checkpoints / "last.keras")
    for path in checkpoints.glob("epoch-*.keras"):
        path.unlink()
    (checkpoints / "train-best.keras").write_bytes(best)
    (run / "state.json").write_text(json.dumps(state))
    monkeypatch.setattr(training, "progress_callback", original)
    main(arguments)
    history = read_history(run)
    assert [int(row["epoch"]) for row in history] == [1, 2, 3]
    accuracies = [float(row["val_categorical_accuracy"]) for row in history]
    metrics = json.loads((run / "report" / "metrics.json").read_text())
    assert metrics["validation"]["overall_accuracy"] == pytest.approx(max(accuracies))
    assert json.loads((run / "state.json").read_text())["finished"]
    with pytest.raises(InputError, match="already complete"):
        main(arguments)
    main([*arguments, "--overwrite", "--epochs", "1"])
    assert len(read_history(run)) == 1


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("no-validation", "has no validation/ folder"),
        ("class-differs", "missing Forest, extra none"),
        ("unknown-band", "band B08 is not among the available bands"),
        ("stats-bands", "describe 13 bands but the images"),
        pytest.param(
            "wrong-weights",
            "does not fit a tiny backbone without top",
            marks=pytest.mark.filterwarnings(WRONG_WEIGHTS_WARNING),
        ),
        ("output-is-file", "is a file"),
        ("negative-shift", "shift must be 0 to 63 pixels, not -1"),
    ],
)
def test_bad_input_is_one_sentence_and_writes_nothing(rgb_split, tmp_path, case, message):
    split = tmp_path / "split"
    for part in ("train", "validation"):
        for class_folder in (rgb_split / part).iterdir():
            (split / part).mkdir(parents=True, exist_ok=True)
            if case != "class-differs" or part == "train" or class_folder.name != "Forest":
                (split / part / class_folder.name).symlink_to(class_folder)
    output = tmp_path / "runs"
    arguments = ["--data", str(split), "--output", str(output), "--epochs", "1", *FAST]
    if case == "no-validation":
        (split / "validation").rename(tmp_path / "elsewhere")
    if case == "unknown-band":
        arguments += ["--bands", "B04,B08"]
    if case == "stats-bands":
        stats = {"bands": list(MS_BAND_NAMES), "mean": [1.0] * 13, "std": [1.0] * 13}
        (split / "band_stats.json").write_text(json.dumps(stats))
    if case == "wrong-weights":
        import keras

        keras.mixed_precision.set_global_policy("float32")
        nf.build_backbone("vgg16", 3).save_weights(tmp_path / "vgg16.weights.h5")
        arguments += ["--weights", str(tmp_path / "vgg16.weights.h5")]
    if case == "output-is-file":
        output.write_text("not a folder")
    if case == "negative-shift":
        arguments += ["--shift", "-1"]
    with pytest.raises(InputError, match=message) as raised:
        script_main("02" if case == "wrong-weights" else "03")(arguments)
    assert "\n" not in str(raised.value)
    if case != "output-is-file":
        assert not output.exists()


def dihedral_variants(image: np.ndarray) -> list[np.ndarray]:
    """The 8 symmetries of the square of one (rows, cols, bands) image."""
    turns = [np.rot90(image, k, axes=(0, 1)) for k in range(4)]
    return turns + [turn[:, ::-1] for turn in turns]


def shifted_variants(image: np.ndarray, shift: int) -> list[tuple[int, int, np.ndarray]]:
    """(row offset, column offset, image) for every shift of up to `shift` pixels,
    edges reflected."""
    size = image.shape[0]
    padded = np.pad(image, ((shift, shift), (shift, shift), (0, 0)), mode="reflect")
    return [
        (dy - shift, dx - shift, padded[dy : dy + size, dx : dx + size])
        for dy in range(2 * shift + 1)
        for dx in range(2 * shift + 1)
    ]


def test_random_shift_moves_each_image_by_its_own_offset_with_reflected_edges():
    import tensorflow as tf

    tf.random.set_seed(0)
    images = np.random.default_rng(0).normal(size=(96, 9, 9, 2)).astype(np.float32)
    shifted = imf.random_shift(tf.constant(images), 1).numpy()
    offsets = []
    for image, result in zip(images, shifted, strict=True):
        found = [
            (dy, dx)
            for dy, dx, moved in shifted_variants(image, 1)
            if np.array_equal(moved, result)
        ]
        assert found, "every result is the image moved by at most 1 pixel, edges reflected"
        offsets.append(found[0])
    assert set(offsets) == {(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)}
    assert max(offsets.count(offset) for offset in set(offsets)) < 30  # drawn per image
    # Reflection repeats no edge pixel: the row above row 0 is row 1.
    moved_down = shifted_variants(images[0], 1)[1][2]
    assert np.array_equal(moved_down[0], images[0][1]) and np.array_equal(
        moved_down[1:], images[0][:-1]
    )


def test_pipeline_augmentation_is_a_symmetry_then_a_shift_and_only_in_training():
    import tensorflow as tf

    assert imf.pipeline_augmentation("none", 0) is None
    assert imf.pipeline_augmentation("talk", 0) is None
    tf.random.set_seed(1)
    images = np.random.default_rng(1).normal(size=(32, 8, 8, 3)).astype(np.float32)
    augment = imf.pipeline_augmentation("dihedral", 2)
    results = augment(tf.constant(images)).numpy()
    moved = 0
    for image, result in zip(images, results, strict=True):
        candidates = [
            (dy, dx)
            for variant in dihedral_variants(image)
            for dy, dx, shifted in shifted_variants(variant, 2)
            if np.array_equal(shifted, result)
        ]
        assert candidates
        moved += all(offset != (0, 0) for offset in candidates)
    assert moved > 16  # 24 of 25 offsets move the image
    assert np.array_equal(augment(tf.constant(images), training=False).numpy(), images)
    only_shift = imf.pipeline_augmentation("none", 3)(tf.constant(images)).numpy()
    assert all(
        any(np.array_equal(shifted, result) for *_, shifted in shifted_variants(image, 3))
        for image, result in zip(images, only_shift, strict=True)
    )


def test_script_exit_status_and_instant_help(tmp_path):
    environment = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    script = str(REPO_ROOT / SCRIPTS["05"])
    result = subprocess.run(
        [sys.executable, script, "--data", str(tmp_path / "missing"), "--output", str(tmp_path)],
        capture_output=True, text=True, env=environment, cwd=tmp_path, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: split folder")
    assert list(tmp_path.iterdir()) == []
    code = (
        f"import runpy, sys; sys.argv = [{script!r}, '--help']; runpy.run_path({script!r}, "
        "run_name='__main__')"
    )
    check = f"{code}\nassert 'tensorflow' not in sys.modules, 'TensorFlow imported for --help'"
    result = subprocess.run(
        [sys.executable, "-c", f"try:\n    exec({check!r})\nexcept SystemExit:\n    pass\n"
         "import sys\nassert 'tensorflow' not in sys.modules"],
        capture_output=True, text=True, env=environment, cwd=REPO_ROOT, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "--steps-per-epoch" in result.stdout and "--evaluate-only" in result.stdout


@pytest.mark.slow
def test_05_learns_real_multispectral_samples_well_above_chance(real_ms_dir, tmp_path):
    """05 on the real EuroSAT MS samples (about 30 per class, 70/30 split) beats chance
    (10 %) clearly within a few minutes on a laptop CPU."""
    split = tmp_path / "split"
    for class_name in CLASS_NAMES:
        images = list_images(real_ms_dir / class_name)
        cut = int(len(images) * 0.7)
        for part, chosen in (("train", images[:cut]), ("validation", images[cut:])):
            (split / part / class_name).mkdir(parents=True)
            for image in chosen:
                (split / part / class_name / image.name).symlink_to(image)
    script_main("05")(
        ["--data", str(split), "--output", str(tmp_path / "runs"), "--arch", "tiny",
         "--batch-size", "16", "--epochs", "40", "--patience", "15", "--learning-rate", "0.003"]
    )  # fmt: skip
    metrics = json.loads(
        (tmp_path / "runs" / "ms-scratch-tiny" / "report" / "metrics.json").read_text()
    )
    assert metrics["validation"]["overall_accuracy"] >= 0.4


def test_a_full_disk_in_training_is_one_sentence_and_the_run_resumes(
    rgb_split, tmp_path, monkeypatch
):
    """The disk fills while epoch 2's checkpoint is written (ENOSPC from the write)."""
    import keras

    arguments = ["--data", str(rgb_split), "--epochs", "2", "--output", str(tmp_path), *FAST]
    original_save = keras.Model.save
    saved = []

    def save_until_full(model, path, *args, **kwargs):
        saved.append(path)
        if len(saved) == 2:
            Path(path).write_bytes(b"half a checkpoint")
            raise OSError(errno.ENOSPC, "No space left on device")
        return original_save(model, path, *args, **kwargs)

    monkeypatch.setattr(keras.Model, "save", save_until_full)
    with pytest.raises(InputError) as raised:
        script_main("03")(arguments)
    run = tmp_path / "rgb-scratch-tiny"
    first = (run / "checkpoints" / "epoch-001.keras").stat().st_size
    assert str(raised.value).startswith(
        f"no space left in {run / 'checkpoints'} for epoch-002.keras ("
    )
    assert f"about {first / 2**20:.1f} MB needed)" in str(raised.value)
    assert json.loads((run / "state.json").read_text())["epoch"] == 1
    assert not [path for path in run.rglob("*") if ".partial-" in path.name]
    monkeypatch.setattr(keras.Model, "save", original_save)
    script_main("03")(arguments)  # space freed: the same command resumes and finishes
    assert json.loads((run / "model.json").read_text())["epochs_trained"] == 2
