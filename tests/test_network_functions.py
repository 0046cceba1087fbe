"""Tests of cnn_sentinel.networks (heads, freezing, weight transfer) and precision, of the
optimisers of optimisation.py and the strategy of strategy.py, and of the metrics of reports.py."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from helpers import WRONG_WEIGHTS_WARNING

from cnn_sentinel import fonts, precision, reports
from cnn_sentinel import networks as nf
from cnn_sentinel.errors import InputError
from cnn_sentinel.optimisation import Stage, compile_for_stage, make_optimizer
from cnn_sentinel.strategy import choose_strategy, is_chief
from image_functions import MS_BAND_NAMES, RGB_BAND_NAMES

MEAN3, STD3 = [100.0, 100.0, 100.0], [30.0, 30.0, 30.0]
MEAN13, STD13 = [1000.0] * 13, [300.0] * 13


@pytest.fixture
def keras_backend():
    """Keras with a float32 global policy and cleared session around each test."""
    import keras

    keras.backend.clear_session()
    keras.mixed_precision.set_global_policy("float32")
    yield keras
    keras.mixed_precision.set_global_policy("float32")


def save_backbone(arch: str, path, seed: int = 1):
    """A 3-band backbone with random weights saved to `path` (stands in for ImageNet)."""
    import keras

    keras.utils.set_random_seed(seed)
    backbone = nf.build_backbone(arch, 3)
    if str(path).endswith(".weights.h5"):
        backbone.save_weights(path)
    else:
        backbone.save(path)  # legacy full-model .h5, read like Keras' ImageNet files
    return backbone


def assert_same_weights(expected, actual) -> None:
    assert len(expected) == len(actual)
    for left, right in zip(expected, actual, strict=True):
        assert np.array_equal(left, right)


def layer_names(model) -> list[str]:
    return [layer.name for layer in model.layers]


def test_vgg16_head_and_talk_freezing(keras_backend):
    model = nf.build_network("vgg16", RGB_BAND_NAMES, 10, MEAN3, STD3)
    assert layer_names(model)[-4:] == ["average_pool", "head_dense1", "head_dense2", "predictions"]
    assert [model.get_layer(f"head_dense{i}").units for i in (1, 2)] == [2048, 2048]
    assert model.output_shape == (None, 10)
    backbone = model.get_layer("vgg16")
    nf.set_trainable(model, "vgg16", "head")
    assert not any(layer.trainable for layer in backbone.layers)
    assert model.get_layer("head_dense1").trainable
    nf.set_trainable(model, "vgg16", "above-block1")
    frozen = [layer.name for layer in backbone.layers if not layer.trainable]
    # The talk froze layers[:4]: input and block 1.
    assert frozen == layer_names(backbone)[:4]
    assert frozen[1:] == ["block1_conv1", "block1_conv2", "block1_pool"]
    nf.set_trainable(model, "vgg16", "all")
    assert all(layer.trainable for layer in backbone.layers)


def test_densenet201_head_and_talk_freezing(keras_backend):
    model = nf.build_network("densenet201", RGB_BAND_NAMES, 7, MEAN3, STD3)
    assert layer_names(model)[-2:] == ["average_pool", "predictions"]
    assert model.output_shape == (None, 7)
    backbone = model.get_layer("densenet201")
    nf.set_trainable(model, "densenet201", "above-block1")
    frozen = [layer.name for layer in backbone.layers if not layer.trainable]
    # The talk froze layers[:7]: the stem up to and including pool1.
    assert frozen == layer_names(backbone)[:7]
    assert frozen[-1] == "pool1" and "conv1_conv" in frozen
    assert backbone.layers[7].trainable


def test_batch_normalised_vgg16_keeps_the_layout_and_names(keras_backend):
    model = nf.build_network("vgg16-bn", MS_BAND_NAMES, 10, MEAN13, STD13)
    backbone = model.get_layer("vgg16-bn")
    reference = keras_backend.applications.VGG16(
        include_top=False, weights=None, input_shape=(64, 64, 13)
    )
    convolutions = [layer.name for layer in backbone.layers if "conv" in layer.name]
    assert convolutions == [layer.name for layer in reference.layers if "conv" in layer.name]
    normalisations = [layer for layer in backbone.layers if "bn" in layer.name]
    assert len(normalisations) == len(convolutions) == 13
    assert backbone.output_shape == reference.output_shape == (None, 2, 2, 512)
    assert [layer.units for layer in model.layers if hasattr(layer, "units")] == [2048, 2048, 10]
    nf.set_trainable(model, "vgg16-bn", "above-block1")
    assert not backbone.get_layer("block1_conv2").trainable
    assert backbone.get_layer("block2_conv1").trainable
    with pytest.raises(InputError, match="no ImageNet weights for arch vgg16-bn"):
        nf.resolve_weights("vgg16-bn", "imagenet")


def test_model_owns_preprocessing_and_float32_softmax(keras_backend):
    with precision.dtype_policy("mixed_bfloat16"):
        model = nf.build_network("tiny", MS_BAND_NAMES, 10, MEAN13, STD13)
    assert keras_backend.mixed_precision.global_policy().name == "float32"
    assert model.get_layer("normalization").dtype_policy.name == "float32"
    assert model.get_layer("augmentation").dtype_policy.name == "float32"
    assert model.get_layer("tiny").get_layer("block1_conv1").compute_dtype == "bfloat16"
    assert model.get_layer("predictions").compute_dtype == "float32"
    pixels = np.full((2, 64, 64, 13), 1000.0, np.float32)
    first = np.asarray(model(pixels, training=False))
    assert first.dtype == np.float32
    np.testing.assert_allclose(first.sum(axis=1), 1.0, rtol=1e-5)
    # Augmentation is active only in training: inference is deterministic.
    assert np.array_equal(first, np.asarray(model(pixels, training=False)))


@pytest.mark.parametrize("suffix", [".weights.h5", ".h5"])
def test_rgb_weights_file_is_transferred_exactly(keras_backend, tmp_path, suffix):
    source = save_backbone("tiny", tmp_path / f"backbone{suffix}")
    model = nf.build_network(
        "tiny", RGB_BAND_NAMES, 10, MEAN3, STD3, weights=tmp_path / f"backbone{suffix}"
    )
    assert_same_weights(source.get_weights(), model.get_layer("tiny").get_weights())


def test_float32_weights_file_loads_exactly_under_mixed_precision(keras_backend, tmp_path):
    # The file is saved from stock BatchNormalization layers; under mixed precision the
    # backbone uses fused ones, which must receive the same values.
    source = save_backbone("tiny", tmp_path / "backbone.weights.h5")
    with precision.dtype_policy("mixed_bfloat16"):
        model = nf.build_network(
            "tiny", RGB_BAND_NAMES, 10, MEAN3, STD3, weights=tmp_path / "backbone.weights.h5"
        )
    backbone = model.get_layer("tiny")
    assert type(backbone.get_layer("block1_bn")).__name__ == "FusedBatchNormalization"
    assert_same_weights(source.get_weights(), backbone.get_weights())


def test_first_conv_variant_maps_rgb_kernels_and_copies_the_rest(keras_backend, tmp_path):
    source = save_backbone("vgg16", tmp_path / "vgg16.weights.h5")
    model = nf.build_network(
        "vgg16", MS_BAND_NAMES, 10, MEAN13, STD13,
        weights=tmp_path / "vgg16.weights.h5", variant="first-conv",
    )  # fmt: skip
    backbone = model.get_layer("vgg16")
    assert backbone.input_shape == (None, 64, 64, 13)
    for source_layer, layer in zip(source.layers, backbone.layers, strict=True):
        if layer.name != "block1_conv1":
            assert_same_weights(source_layer.get_weights(), layer.get_weights())
    rgb_kernel, rgb_bias = source.get_layer("block1_conv1").get_weights()
    kernel, bias = backbone.get_layer("block1_conv1").get_weights()
    assert kernel.shape == (3, 3, 13, 64)
    assert np.array_equal(bias, rgb_bias)
    # VGG16's ImageNet kernels take Caffe BGR: channel 0 = blue (B02), 2 = red (B04).
    for channel, band in enumerate(("B02", "B03", "B04")):
        assert np.array_equal(kernel[:, :, MS_BAND_NAMES.index(band)], rgb_kernel[:, :, channel])
    others = [i for i, band in enumerate(MS_BAND_NAMES) if band not in ("B02", "B03", "B04")]
    assert 0 < kernel[:, :, others].std() < 0.2 * rgb_kernel.std()
    nf.set_trainable(model, "vgg16", "head", variant="first-conv")
    trainable = [layer.name for layer in backbone.layers if layer.trainable]
    assert trainable == ["block1_conv1"]


def test_adapter_variant_selects_rgb_bands_in_front_of_copied_backbone(keras_backend, tmp_path):
    source = save_backbone("tiny", tmp_path / "tiny.weights.h5")
    model = nf.build_network(
        "tiny", MS_BAND_NAMES, 10, MEAN13, STD13,
        weights=tmp_path / "tiny.weights.h5", variant="adapter",
    )  # fmt: skip
    assert_same_weights(source.get_weights(), model.get_layer("tiny").get_weights())
    kernel, bias = model.get_layer(nf.ADAPTER_LAYER).get_weights()
    expected = np.zeros((1, 1, 13, 3), np.float32)
    for channel, band in enumerate(RGB_BAND_NAMES):  # tiny takes RGB order
        expected[0, 0, MS_BAND_NAMES.index(band), channel] = 1.0
    assert np.array_equal(kernel, expected)
    assert not bias.any()
    nf.set_trainable(model, "tiny", "head", variant="adapter")
    assert model.get_layer(nf.ADAPTER_LAYER).trainable
    assert not any(layer.trainable for layer in model.get_layer("tiny").layers)


@pytest.mark.filterwarnings(WRONG_WEIGHTS_WARNING)
def test_wrong_architecture_weights_file_is_one_clear_error(keras_backend, tmp_path):
    save_backbone("tiny", tmp_path / "tiny.weights.h5")
    with pytest.raises(InputError, match=r"does not fit a vgg16 backbone without top"):
        nf.build_network(
            "vgg16", RGB_BAND_NAMES, 10, MEAN3, STD3, weights=tmp_path / "tiny.weights.h5"
        )
    with pytest.raises(InputError, match="does not exist"):
        nf.build_network("tiny", RGB_BAND_NAMES, 10, MEAN3, STD3, weights=tmp_path / "no.h5")


def test_pretrained_weights_need_a_variant_for_13_bands(keras_backend, tmp_path):
    save_backbone("tiny", tmp_path / "tiny.weights.h5")
    with pytest.raises(InputError, match="use variant adapter or first-conv"):
        nf.build_network(
            "tiny", MS_BAND_NAMES, 10, MEAN13, STD13, weights=tmp_path / "tiny.weights.h5"
        )


def test_imagenet_download_failure_says_where_to_put_the_file(keras_backend, tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))

    def offline(*args, **kwargs):
        raise Exception("URL fetch failure: Name or service not known")  # noqa: TRY002

    monkeypatch.setattr(keras_backend.utils, "get_file", offline)
    expected = tmp_path / "keras" / "models" / "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"
    with pytest.raises(InputError) as raised:
        nf.resolve_weights("vgg16", "imagenet")
    message = str(raised.value)
    assert str(expected) in message and "--weights PATH" in message
    assert message.count(". ") == 0 and "\n" not in message
    expected.parent.mkdir(parents=True)
    expected.write_bytes(b"cached")
    assert nf.resolve_weights("vgg16", "imagenet") == expected
    with pytest.raises(InputError, match="no ImageNet weights for arch tiny"):
        nf.resolve_weights("tiny", "imagenet")
    assert nf.resolve_weights("tiny", "none") is None


def test_cpu_bfloat16_detection_reads_cpu_flags(tmp_path):
    with_amx = tmp_path / "amx"
    with_amx.write_text("processor : 0\nflags : fpu sse avx512f amx_bf16 amx_tile\n")
    plain = tmp_path / "plain"
    plain.write_text("processor : 0\nflags : fpu sse avx2\n")
    assert precision.cpu_has_bfloat16(with_amx)
    assert not precision.cpu_has_bfloat16(plain)
    assert not precision.cpu_has_bfloat16(tmp_path / "missing")
    avx512_only = tmp_path / "avx512"
    avx512_only.write_text("processor : 0\nflags : fpu avx512f avx512_bf16\n")
    assert precision.cpu_has_bfloat16(avx512_only)
    assert precision.cpu_has_amx(with_amx)
    assert not precision.cpu_has_amx(avx512_only)  # bfloat16 instructions, but slower than float32


def test_precision_modes(keras_backend, monkeypatch):
    assert precision.precision_policy("off") == "float32"
    assert precision.precision_policy("bf16") == "mixed_bfloat16"
    assert precision.precision_policy("fp16") == "mixed_float16"
    monkeypatch.setattr(precision, "cpu_has_amx", lambda: True)
    assert precision.precision_policy("auto") == "mixed_bfloat16"
    monkeypatch.setattr(precision, "cpu_has_amx", lambda: False)
    assert precision.precision_policy("auto") == "float32"
    with pytest.raises(InputError):
        precision.precision_policy("int8")
    assert precision.set_mixed_precision("bf16") == "mixed_bfloat16"
    assert keras_backend.mixed_precision.global_policy().name == "mixed_bfloat16"


def test_fp16_compiles_with_loss_scaling(keras_backend):
    with precision.dtype_policy("mixed_float16"):
        model = nf.build_network("tiny", RGB_BAND_NAMES, 10, MEAN3, STD3)
        compile_for_stage(model, Stage("s", "all", "sgd", 0.01, 1), "tiny")
    assert type(model.optimizer).__name__ == "LossScaleOptimizer"


def test_talk_optimizers_keep_explicit_learning_rates():
    adadelta = make_optimizer("adadelta", 1.0)
    sgd = make_optimizer("sgd", 1e-4, 0.9)
    assert float(adadelta.learning_rate) == 1.0
    assert float(sgd.learning_rate) == pytest.approx(1e-4) and sgd.momentum == 0.9


def test_default_strategy_without_tf_config(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    strategy = choose_strategy()
    assert strategy.num_replicas_in_sync == 1
    assert is_chief(strategy)


def test_classification_metrics_and_plots(tmp_path):
    labels = np.array([0, 0, 1, 1, 2, 2])
    probabilities = np.eye(3)[[0, 1, 1, 1, 2, 0]]
    metrics = reports.classification_metrics(labels, probabilities, ["a", "b", "c"])
    assert metrics["overall_accuracy"] == pytest.approx(4 / 6)
    assert metrics["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert metrics["per_class"]["b"]["precision"] == pytest.approx(2 / 3)
    assert metrics["per_class"]["b"]["recall"] == 1.0
    assert metrics["per_class"]["a"]["f1"] == pytest.approx(0.5)
    json.dumps(metrics)
    reports.plot_confusion_matrix(
        metrics["confusion_matrix"], ["a", "b", "c"], "t", tmp_path / "c.png"
    )
    history = [
        {"epoch": 1, "loss": 2.0, "val_loss": 2.1, "categorical_accuracy": 0.2},
        {"epoch": 2, "loss": 1.0, "val_loss": 1.5, "val_categorical_accuracy": 0.5},
    ]
    reports.plot_training_curves(history, [0, 1], tmp_path / "curves.png")
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "curves.png").stat().st_size > 1000


def test_class_names_in_any_alphabet_draw_without_glyph_warnings(tmp_path, capsys):
    """Cyrillic and Greek are in matplotlib's own font; Chinese takes an installed font
    that has it, or one note (this machine may have none) instead of a warning per glyph."""
    names = ["Лес", "森林", "Ελιά"]
    fonts._say_no_font_has.cache_clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for number in (1, 2):
            reports.plot_confusion_matrix(
                np.eye(3, dtype=int), names, "t", tmp_path / f"{number}.png"
            )
    assert not [str(warning.message) for warning in caught if "Glyph" in str(warning.message)]
    notes = capsys.readouterr().err.count("note: no installed font has the characters 林森")
    assert notes == (1 if fonts.font_with("森林") is None else 0)
    assert fonts.font_with("Лес") is not None and (tmp_path / "2.png").stat().st_size > 1000


def test_tiny_valid_is_a_dense_network_at_a_fifth_of_tinys_cost(keras_backend):
    """The demo's network: 5 x 5 x 64 features, exact in 06's whole-block pass (also
    averaged over the 8 symmetries), and under a fifth of tiny's FLOPs per patch."""
    from cnn_sentinel.model_info import ModelInfo
    from cnn_sentinel.scene.dense import DenseNetwork, dihedral_unsupported_reason

    def flops(backbone):  # 2 per multiply-add of every convolution
        return sum(
            2 * np.prod(layer.kernel.shape) * np.prod(layer.output.shape[1:3])
            for layer in backbone.layers
            if type(layer).__name__ == "Conv2D"
        )

    mean, std = [1000.0] * 13, [500.0] * 13
    model = nf.build_network("tiny-valid", MS_BAND_NAMES, 10, mean, std, augment=False)
    backbone = model.get_layer("tiny-valid")
    assert tuple(backbone.output.shape[1:]) == (5, 5, 64)
    assert dihedral_unsupported_reason(model) is None
    assert flops(backbone) < flops(nf.build_backbone("tiny", 13)) / 5
    # The whole-block pass at stride 4 equals one pass per window.
    image = np.random.default_rng(0).uniform(0, 3000, (80, 76, 13)).astype(np.float32)
    config = ModelInfo([f"c{index}" for index in range(10)], list(MS_BAND_NAMES), 64)
    rows, cols = np.arange(0, 17, 4), np.arange(0, 13, 4)
    dense = DenseNetwork(model, config).tile(image, rows, cols)
    windows = np.stack([image[r : r + 64, c : c + 64] for r in rows for c in cols])
    expected = np.asarray(model(windows)).reshape(len(rows), len(cols), 10)
    np.testing.assert_allclose(dense, expected, atol=1e-5)


def test_mixed_precision_backbones_use_fused_batch_normalization(keras_backend):
    import keras

    keras.utils.set_random_seed(0)
    stock = nf.build_backbone("tiny", 3)
    with precision.dtype_policy("mixed_bfloat16"):
        fused = nf.with_fused_batch_normalization(stock)
        built = nf.build_backbone("tiny", 3)
    fused_class = nf.fused_batch_normalization_class()
    assert type(built.get_layer("block1_bn")) is fused_class
    assert type(stock.get_layer("block1_bn")) is keras.layers.BatchNormalization
    assert_same_weights(stock.get_weights(), fused.get_weights())
    pixels = np.random.default_rng(0).normal(size=(4, 64, 64, 3)).astype(np.float32)
    for training in (False, True):
        np.testing.assert_allclose(
            np.asarray(fused(pixels, training=training), np.float32),
            np.asarray(stock(pixels, training=training)),
            atol=0.1,
        )
    moving_mean = fused.get_layer("block1_bn").moving_mean.numpy()
    assert not np.array_equal(moving_mean, np.zeros_like(moving_mean))  # training updated it
    # The fused kernel really runs (not Keras' stock path as a silent fallback).
    import tensorflow as tf

    for backbone in (fused, built):
        for training in (False, True):
            step = tf.function(lambda x, b=backbone, t=training: b(x, training=t))
            graph = step.get_concrete_function(tf.TensorSpec((4, 64, 64, 3))).graph
            assert "FusedBatchNormV3" in {op.type for op in graph.get_operations()}
