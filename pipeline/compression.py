"""Magnitude pruning and quantization-aware training (tfmot) of the flat classifier.

Both wrap the model layer by layer through ``clone_model`` rather than calling
``prune_low_magnitude``/``quantize_model`` on the whole model: the in-graph
``preprocess`` layer is our own layer, which tfmot does not know. It is not
pruned, and for QAT it gets an explicit config that fake-quantizes only its
output, the normalized image.

tf_keras cannot reload a quantization-aware model from a ``.keras`` file
(its wrappers save more variables than they declare), so a QAT model is
stored as weights only and rebuilt here with :func:`load_quantize_aware`.
"""

from __future__ import annotations

import numpy as np

from core.contract import PREPROCESS_LAYER
from core.errors import ConfigError
from core.keras_compat import keras
from core.layers import Preprocess
from exporters import inspect


def _tfmot():
    import tensorflow_model_optimization as tfmot

    return tfmot


def pruning_schedule(target_sparsity: float, total_steps: int, ramp_fraction: float):
    """PolynomialDecay from 0 to ``target_sparsity`` over the first ``ramp_fraction`` of the steps.

    tfmot only prunes on steps that are a multiple of ``frequency`` up to
    ``end_step``, so ``end_step`` is put on such a step: the last pruning step
    then reaches the target exactly, and the remaining steps fine-tune at it.
    """
    last = max(0, total_steps - 1)  # UpdatePruningStep counts steps from 0
    ramp = min(last, max(1, int(total_steps * ramp_fraction)))
    frequency = max(1, ramp // 10)
    end_step = max(frequency, (ramp // frequency) * frequency) if last else 0
    return _tfmot().sparsity.keras.PolynomialDecay(
        initial_sparsity=0.0, final_sparsity=target_sparsity, begin_step=0, end_step=end_step, frequency=frequency)


def apply_pruning(model: keras.Model, schedule, exclude=()) -> keras.Model:
    """The model with every conv/dense kernel but those of the ``exclude`` layers wrapped for magnitude pruning."""
    prune = _tfmot().sparsity.keras.prune_low_magnitude
    unknown = set(exclude) - {layer.name for layer in model.layers if isinstance(layer, PRUNABLE)}
    if unknown:
        raise ConfigError(f"optimize.prune.exclude names {', '.join(sorted(unknown))}, not a conv or dense layer of "
                          f"this model; use names such as Conv1 or head_predictions.")

    def wrap(layer):
        if isinstance(layer, PRUNABLE) and layer.name not in exclude:
            return prune(layer, pruning_schedule=schedule)
        return layer

    return keras.models.clone_model(model, clone_function=wrap)


def pruning_callbacks() -> list:
    # Advances the pruning step every batch; without it fit() raises.
    return [_tfmot().sparsity.keras.UpdatePruningStep()]


def strip_pruning(model: keras.Model) -> keras.Model:
    """The same architecture as the fine-tuned model, with the zeros baked into the kernels."""
    return _tfmot().sparsity.keras.strip_pruning(model)


PRUNABLE = inspect.prunable_layers()
# Sparsity is read where the exported files' sparsity is read, so both count the same weights.
layer_sparsity = inspect.layer_sparsity
overall_sparsity = inspect.keras_sparsity


def _prune_preserve_scheme():
    """tfmot's Default8BitPrunePreserveQuantizeScheme, minus one bug in its registry.

    Its registry calls every layer without weights "supported", including our
    ``preprocess`` layer, then fails to find a config for it when that layer's
    output feeds a quantized layer. Asking the default 8-bit registry as well
    leaves ``preprocess`` un-quantized, exactly as the default scheme does.
    """
    tfmot = _tfmot()
    # Private modules: the public API exposes the scheme but not its registry.
    from tensorflow_model_optimization.python.core.quantization.keras.collab_opts.prune_preserve import (
        prune_preserve_quantize_registry as prune_preserve)
    from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import (
        default_8bit_quantize_registry as default_8bit)

    class Registry(prune_preserve.Default8bitPrunePreserveQuantizeRegistry):
        def supports(self, layer):
            return super().supports(layer) and default_8bit.Default8BitQuantizeRegistry().supports(layer)

    class Scheme(tfmot.experimental.combine.Default8BitPrunePreserveQuantizeScheme):
        def get_quantize_registry(self):
            return Registry()

    return Scheme()


def quantize_aware(model: keras.Model, preserve_sparsity: bool = False) -> keras.Model:
    """Insert int8 fake-quantization in every layer but the preprocessing.

    ``preserve_sparsity`` uses tfmot's collaborative-optimization scheme
    (Default8BitPrunePreserveQuantizeScheme): zeros of a pruned model stay
    zero through QAT, so the quantized file keeps the pruned sparsity.
    """
    tfmot = _tfmot()
    q = tfmot.quantization.keras
    plan = qat_plan(model)
    output_only = _output_quantize_config()

    def annotate(layer):
        how = plan.get(layer.name, "default")
        if how == "float":
            return layer
        if how == "output":
            return q.quantize_annotate_layer(layer, output_only)
        return q.quantize_annotate_layer(layer)

    annotated = keras.models.clone_model(model, clone_function=annotate)
    with q.quantize_scope({"Preprocess": Preprocess, type(output_only).__name__: type(output_only)}):
        if preserve_sparsity:
            return q.quantize_apply(annotated, _prune_preserve_scheme())
        return q.quantize_apply(annotated)


# Layers tfmot cannot wrap at all (tensorflow/model-optimization#1145, #647): MobileNetV3's
# hard-swish arithmetic (TFOpLambda) and in-model Rescaling/Normalization. They stay float in
# the QAT graph; the int8 converter calibrates their outputs on real images like any
# post-training op, so the file is still fully integer.
_NOT_WRAPPABLE = ("TFOpLambda", "Rescaling", "Normalization")
# tfmot folds a BatchNormalization into the convolution before it; one that follows anything
# else (ResNet50V2's pre-activations) has no quantize config of its own.
_FOLDS_BATCHNORM = ("Conv2D", "DepthwiseConv2D", "SeparableConv2D", "Dense")


def qat_plan(model: keras.Model) -> dict[str, str]:
    """How QAT treats each layer that is not tfmot's default: "output" (fake-quantize its output only) or "float".

    The default 8-bit registry has no config for Multiply (squeeze-and-excite in MobileNetV3 and
    EfficientNet) nor for a BatchNormalization that follows no convolution: both get their output
    fake-quantized, which is what the int8 kernels (MUL, and BN as MUL+ADD) compute anyway.
    """
    plan = {PREPROCESS_LAYER: "float"}
    for layer in model.layers:
        kind = type(layer).__name__
        if kind in _NOT_WRAPPABLE:
            plan[layer.name] = "float"
        elif isinstance(layer, keras.layers.Multiply):
            plan[layer.name] = "output"
        elif isinstance(layer, keras.layers.BatchNormalization):
            before = layer.inbound_nodes[0].inbound_layers if layer.inbound_nodes else None
            if type(before).__name__ not in _FOLDS_BATCHNORM:
                plan[layer.name] = "output"
    return plan


def _output_quantize_config():
    from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import (
        default_8bit_quantize_configs as configs)  # the public API does not export it

    return configs.Default8BitOutputQuantizeConfig()


# Activation ranges that tfmot's MovingAverageQuantizer keeps as an exponential
# moving average (decay 0.999) of each batch's min/max, starting from [-6, 6].
_EMA_RANGE_NAMES = ("output", "pre_activation", "post_activation")
_EMA_DECAY = 0.999


def _ema_range_variables(model: keras.Model) -> list:
    out = []
    for v in model.non_trainable_variables:
        base = v.name.split("/")[-1].split(":")[0]
        stem, _, end = base.rpartition("_")
        if end in ("min", "max") and stem in _EMA_RANGE_NAMES:
            out.append(v)
    return out


def initialize_ranges(model: keras.Model, images: np.ndarray, rounds: int = 3) -> int:
    """Start QAT from the activation ranges of real images instead of tfmot's [-6, 6].

    With decay 0.999 the moving averages need thousands of steps to forget
    their start; a fine-tuning run of a few hundred steps would otherwise
    quantize a [-1, 1] activation with a [-6, 6] grid, or clip a residual sum
    that exceeds 6. One training-mode forward pass moves each average by
    (1 - decay) toward the batch's range, so that range is solved for from
    the before and after values; a few rounds let later layers see the
    calibrated ranges of earlier ones. Everything else the pass touches
    (BatchNorm statistics, step counters) is put back. Returns how many range
    variables were set.
    """
    ranges = _ema_range_variables(model)
    # Weight ranges (LastValueQuantizer) are simply set from the current kernels by
    # the pass and stay; statistics and counters the pass also moves are put back.
    others = [v for v in model.non_trainable_variables
              if not v.name.split(":")[0].endswith(("_min", "_max"))]
    kept = [v.numpy() for v in others]
    batch = np.asarray(images, dtype=np.float32)
    for _ in range(rounds):
        before = [v.numpy() for v in ranges]
        model(batch, training=True)
        for v, start in zip(ranges, before):
            v.assign((v.numpy() - _EMA_DECAY * start) / (1.0 - _EMA_DECAY))
    for v, value in zip(others, kept):
        v.assign(value)
    return len(ranges)


def freeze_batchnorm(model: keras.Model) -> None:
    """Keep BatchNorm (also inside quantize wrappers) in inference mode, as fine-tuning did."""
    for layer in model.layers:
        if isinstance(getattr(layer, "layer", layer), keras.layers.BatchNormalization):
            layer.trainable = False


def save_weights(model: keras.Model, path) -> None:
    # Legacy HDF5 weights, matched by layer name: the format tfmot's wrappers reload.
    model.save_weights(str(path), save_format="h5")


def load_quantize_aware(base: keras.Model, weights_path, preserve_sparsity: bool = False) -> keras.Model:
    """Rebuild a QAT model on ``base`` (the model QAT started from) and load its trained weights."""
    model = quantize_aware(base, preserve_sparsity=preserve_sparsity)
    model.load_weights(str(weights_path))
    return model
