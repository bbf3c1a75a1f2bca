"""Pruning and quantization-aware training: what tfmot leaves in the model, and the optimize stage in the pipeline."""

from __future__ import annotations

import numpy as np
import pytest

from core import contract, layers
from exporters.runtimes import keras_probabilities
from pipeline import compression, models
from pipeline.config import ModelConfig
from core.errors import ConfigError
from core.keras_compat import keras

SIZE = 32


@pytest.fixture()
def model():
    keras.utils.set_random_seed(5)
    return models.build_classifier(ModelConfig(alpha=0.35, weights="none", dropout=0.0), 4, SIZE)


def _data(n=64):
    rng = np.random.default_rng(1)
    return rng.uniform(0, 255, (n, SIZE, SIZE, 3)).astype(np.float32), np.arange(n) % 4


def _kernel_sparsity(model, layer_type):
    values = [np.mean(layer.kernel.numpy() == 0) if layer_type is not keras.layers.DepthwiseConv2D
              else np.mean(layer.depthwise_kernel.numpy() == 0)
              for layer in model.layers if type(layer) is layer_type]
    return values


@pytest.mark.parametrize("total_steps, ramp", [(2, 0.6), (12, 0.6), (95, 0.6), (300, 1.0), (1000, 0.3)])
def test_pruning_schedule_ends_on_a_pruning_step_inside_the_run(total_steps, ramp):
    schedule = compression.pruning_schedule(0.5, total_steps, ramp)
    assert 1 <= schedule.end_step <= total_steps - 1
    assert schedule.end_step % schedule.frequency == 0  # tfmot prunes only on these steps
    assert schedule.final_sparsity == 0.5


def _pruned(model, target=0.5, epochs=2):
    x, y = _data()
    steps = len(x) // 16 * epochs
    pruning = compression.apply_pruning(model, compression.pruning_schedule(target, steps, 0.6))
    pruning.compile("adam", "sparse_categorical_crossentropy")
    pruning.fit(x, y, batch_size=16, epochs=epochs, verbose=0, callbacks=compression.pruning_callbacks())
    return compression.strip_pruning(pruning)


@pytest.fixture(scope="session")
def pruned():
    """``model`` pruned to 50% in two epochs, made once for the tests that start from it."""
    keras.utils.set_random_seed(5)
    return _pruned(models.build_classifier(ModelConfig(alpha=0.35, weights="none", dropout=0.0), 4, SIZE))


@pytest.mark.xdist_group("pruned")
def test_pruning_zeroes_conv_and_dense_kernels_and_strips_the_wrappers(model, pruned):
    assert [type(layer) for layer in pruned.layers] == [type(layer) for layer in model.layers]
    for layer_type in (keras.layers.Conv2D, keras.layers.Dense):
        assert all(s == pytest.approx(0.5, abs=0.01) for s in _kernel_sparsity(pruned, layer_type)), layer_type
    # tfmot leaves depthwise kernels dense; they are not counted as prunable.
    assert all(s == 0 for s in _kernel_sparsity(pruned, keras.layers.DepthwiseConv2D))
    per_layer = compression.layer_sparsity(pruned)
    assert "Conv1" in per_layer and "head_predictions" in per_layer and "expanded_conv_depthwise" not in per_layer
    assert compression.overall_sparsity(pruned) == pytest.approx(0.5, abs=0.005)


# False shows plain QAT training the zeros away (~45 s on 2 cores): in the slow suite.
@pytest.mark.parametrize("preserve", [True, pytest.param(False, marks=pytest.mark.slow)])
@pytest.mark.xdist_group("pruned")
def test_only_sparsity_preserving_qat_keeps_the_zeros(pruned, preserve):
    qat = compression.quantize_aware(pruned, preserve_sparsity=preserve)
    # The custom preprocessing layer stays as it is; everything after it is wrapped.
    assert type(qat.get_layer(contract.PREPROCESS_LAYER)) is layers.Preprocess
    assert qat.get_layer("quant_Conv1") is not None
    x, y = _data()
    qat.compile(keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy")
    qat.fit(x, y, batch_size=16, epochs=1, verbose=0)
    after = compression.overall_sparsity(qat)
    if preserve:
        assert after == pytest.approx(0.5, abs=0.005)
    else:
        assert after < 0.1  # plain QAT trains the zeros away


def test_qat_activation_ranges_start_from_the_data(model):
    x, _ = _data(16)
    qat = compression.quantize_aware(model)
    relu = qat.get_layer("quant_Conv1_relu")
    untouched = {v.name: float(v.numpy()) for v in relu.weights if "output_m" in v.name}
    assert sorted(untouched.values()) == [-6.0, 6.0]  # tfmot's starting range
    bn_mean = qat.get_layer("quant_bn_Conv1").weights[2].numpy().copy()
    assert compression.initialize_ranges(qat, x) > 0
    low, high = (float(v.numpy()) for v in sorted((v for v in relu.weights if "output_m" in v.name),
                                                  key=lambda v: "max" in v.name))
    # ReLU6 after Conv1: the range is [0, the batch's largest activation], measured on the float model.
    probe = keras.Model(model.input, model.get_layer("Conv1_relu").output)
    expected = float(np.max(probe(x, training=True)))
    assert low == pytest.approx(0.0, abs=1e-2) and high == pytest.approx(expected, rel=0.05)
    # The calibration pass leaves BatchNorm statistics alone.
    np.testing.assert_array_equal(qat.get_layer("quant_bn_Conv1").weights[2].numpy(), bn_mean)


# The optimize stage end to end (pruning, sparsity-preserving QAT, the files it publishes, what
# re-runs it) is tests/test_distribution.py's mirrored-model test: the same stage under a strategy.


def test_excluded_layers_stay_dense_and_unknown_names_are_a_config_error(model):
    schedule = compression.pruning_schedule(0.5, 8, 0.6)
    pruning = compression.apply_pruning(model, schedule, exclude=("Conv1",))
    assert type(pruning.get_layer("Conv1")) is keras.layers.Conv2D  # not wrapped
    assert type(pruning.get_layer("prune_low_magnitude_block_1_expand")).__name__ == "PruneLowMagnitude"
    with pytest.raises(ConfigError, match="optimize.prune.exclude names Conv2"):
        compression.apply_pruning(model, schedule, exclude=("Conv2",))


def test_distillation_loss_is_cross_entropy_plus_kl_to_the_teacher(model):
    from pipeline.config import TrainConfig
    from pipeline.distillation import compile_distillation, with_teacher

    teacher = keras.models.clone_model(model)
    teacher.set_weights(model.get_weights())
    combined = with_teacher(model, teacher)
    assert combined.output_shape == (None, 8) and not teacher.trainable
    x, y = _data(16)
    probs = keras_probabilities(model, x)
    cross_entropy = float(np.mean(-np.log(probs[np.arange(16), y])))
    for weight in (0.0, 0.5, 1.0):
        compile_distillation(combined, 1e-3, 1, 1, TrainConfig(label_smoothing=0.0), 4, weight)
        loss, accuracy = combined.evaluate(x, y, verbose=0)
        # Teacher and student agree here, so the KL term is zero: only the labels' share is left.
        assert loss == pytest.approx((1 - weight) * cross_entropy, rel=1e-3, abs=1e-5)
        assert accuracy == pytest.approx(float(np.mean(probs.argmax(1) == y)))
