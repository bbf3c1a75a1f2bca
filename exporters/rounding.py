"""Weight rounding chosen on calibration data, for post-training int8 files that stay fully integer.

A quantizer rounds each folded weight (the convolution's kernel times its BatchNorm's
``gamma / sqrt(var + eps)``) to the nearest step of its channel's int8 grid. That is
the best choice one weight at a time, not for the layer's output: the errors of a
channel's weights add up over each input patch. On the flowers MobileNetV2 (128 px),
the first depthwise layer's folded weights rounded that way cost, alone, half of the
whole int8 file's KL divergence from the Keras model (val KL 0.0075 of 0.0147;
agreement 0.971), and no calibration of activation ranges can give it back.

This module changes the Keras weights so that the quantizer's nearest rounding lands
where the layer's output error is smallest, in two parts (Nagel et al. 2019, "Data-Free
Quantization Through Weight Equalization and Bias Correction", and Nagel et al. 2020,
"Up or Down? Adaptive Rounding for Post-Training Quantization", give the ideas):

- **rounding** (depthwise layers): for each channel, the up-or-down choice of its k×k
  weights that minimizes the output's error variance ``e^T Σ e``, with Σ the covariance
  of the layer's input patches on the calibration images (every one of the 2^9 choices
  for 3×3; a coordinate search beyond 10 weights);
- **bias correction** (every convolution followed by a BatchNorm, and the depthwise
  ones after their rounding): the mean output error ``e · E[patch]`` is taken off the
  channel's bias (the BatchNorm's beta).

The chosen weights are written on the grid itself: the channel's largest weight keeps
its value, so the quantizer computes the same scale, and every other weight sits at an
integer multiple of it, which the quantizer's rounding keeps. Zero weights (pruned)
stay zero. The grid is the format's: symmetric per output channel with ``levels``
steps on each side (127 for TFLite and onnxruntime int8 weights; 64 for onnxruntime's
reduce_range). The input model is not changed: a copy is.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
from dataclasses import dataclass

import numpy as np

log = logging.getLogger("pipeline")

ROUNDINGS = ("nearest", "adaptive")

# Up to this many weights per channel every rounding is tried (2^9 = 512 for a 3x3 kernel).
EXHAUSTIVE_WEIGHTS = 10


@dataclass(frozen=True)
class Fold:
    """A convolution and the BatchNorm after it (or its own bias)."""

    conv: object
    norm: object | None
    depthwise: bool

    def factor(self) -> np.ndarray:
        """Per output channel, what the fold multiplies the kernel by."""
        if self.norm is None:
            return np.ones(self.channels(), np.float64)
        gamma, _, _, var = self._norm_weights()
        return gamma / np.sqrt(var + self.norm.epsilon)

    def channels(self) -> int:
        kernel = self.conv.get_weights()[0]
        return kernel.shape[2] * kernel.shape[3] if self.depthwise else kernel.shape[3]

    def _norm_weights(self):
        weights = {w.name.split("/")[-1].split(":")[0]: w.numpy().astype(np.float64) for w in self.norm.weights}
        c = self.channels()
        return (weights.get("gamma", np.ones(c)), weights.get("beta", np.zeros(c)),
                weights["moving_mean"], weights["moving_variance"])


def folds(model) -> list[Fold]:
    """The model's Conv2D / DepthwiseConv2D layers whose output only a BatchNorm (last axis) reads, or
    that carry their own bias; in model order."""
    from core.keras_compat import keras

    out = []
    for layer in model.layers:
        depthwise = isinstance(layer, keras.layers.DepthwiseConv2D)
        if not depthwise and not (type(layer) is keras.layers.Conv2D and layer.groups == 1):
            continue
        # Only what a converter folds: a linear, channels-last convolution.
        if layer.activation is not keras.activations.linear or layer.data_format != "channels_last":
            continue
        consumers = [node.outbound_layer for node in layer.outbound_nodes]
        if len(consumers) == 1 and isinstance(consumers[0], keras.layers.BatchNormalization) \
                and consumers[0].axis in ([3], [-1], 3, -1) and consumers[0].center:
            out.append(Fold(layer, consumers[0], depthwise))
        elif getattr(layer, "use_bias", False):
            out.append(Fold(layer, None, depthwise))
    return out


@dataclass
class LayerChange:
    layer: str
    rounding: bool
    changed_weights: int
    bias_shift: float  # largest |change| of a channel's folded bias
    error_before: float  # mean over channels of the output error variance, nearest rounding
    error_after: float

    def as_dict(self) -> dict:
        return {"layer": self.layer, "rounding": self.rounding, "changed_weights": self.changed_weights,
                "bias_shift": round(self.bias_shift, 6), "error_before": float(f"{self.error_before:.4g}"),
                "error_after": float(f"{self.error_after:.4g}")}


# The repair search converts one model many ways (other methods, integer types, float layers):
# the layer statistics of one model on one set of images are measured once, and each rounded
# copy is made once (which also lets exporters.onnx reuse its tf2onnx conversion).
_MOMENTS: dict[tuple, tuple[object, dict]] = {}
_ROUNDED: dict[tuple, tuple[object, object]] = {}
_KEEP = 4


def _remember(cache: dict, key: tuple, value: tuple) -> None:
    while len(cache) >= _KEEP:
        cache.pop(next(iter(cache)))
    cache[key] = value  # the value holds the model, so its id is not reused while the entry lives


def rounded(model, images: np.ndarray, rounding: str, levels: int, keep_float: tuple[str, ...] = ()):
    """``model`` as a quantizer should see it for ``rounding`` (see ``ROUNDINGS``): itself for "nearest"."""
    if rounding not in ROUNDINGS:
        raise ValueError(f"unknown weight rounding {rounding!r}; valid: {', '.join(ROUNDINGS)}")
    if rounding == "nearest":
        return model
    key = (id(model), _digest(images), levels, tuple(sorted(keep_float)))
    hit = _ROUNDED.get(key)
    if hit is not None and hit[0] is model:
        return hit[1]
    copy, changes = round_weights(model, images, levels, keep_float=keep_float)
    log.debug("weight rounding: %s", [c.as_dict() for c in changes])
    _remember(_ROUNDED, key, (model, copy))
    return copy


def _digest(images) -> str:
    return "" if images is None else hashlib.sha256(np.ascontiguousarray(images).tobytes()).hexdigest()


def round_weights(model, images: np.ndarray, levels: int = 127, batch: int = 16, keep_float: tuple[str, ...] = ()):
    """A copy of ``model`` whose folded conv weights round as well as they can; and what changed per layer.

    ``images``: calibration images as ``model`` takes them. ``keep_float``: layers a mixed file
    leaves in float, whose weights stay as trained.
    """
    from core.keras_compat import keras

    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    found = [f for f in folds(copy) if f.conv.name not in keep_float]
    if not found or images is None or not len(images):
        return copy, []
    key = (id(model), _digest(images))
    hit = _MOMENTS.get(key)
    if hit is None or hit[0] is not model:
        # Measured on the copy before any weight changes: its graph is the model's alone (a layer of
        # ``model`` may also belong to the keras.applications graph it was built in).
        hit = (model, _input_moments(copy, folds(copy), images, batch))
        _remember(_MOMENTS, key, hit)
    moments = hit[1]
    changes = []
    for fold in found:
        mean, covariance = moments[fold.conv.name]
        changes.append(_apply(fold, mean, covariance, levels))
    return copy, changes


def _patches(x, layer):
    """[N, kh*kw, C] input patches of a depthwise layer; [N, kh*kw*Cin, 1] of a regular conv (all one group)."""
    from core.keras_compat import tf

    kh, kw = layer.kernel_size
    channels = x.shape[-1]
    if (kh, kw) == (1, 1) and tuple(layer.strides) == (1, 1):
        return tf.reshape(x, [-1, 1, channels])
    patches = tf.image.extract_patches(x, sizes=[1, kh, kw, 1], strides=[1, *layer.strides, 1],
                                       rates=[1, *layer.dilation_rate, 1], padding=layer.padding.upper())
    return tf.reshape(patches, [-1, kh * kw, channels])


def _input_moments(model, found: list[Fold], images: np.ndarray, batch: int) -> dict:
    """Per layer: the mean input patch, and for depthwise layers the per-channel patch covariance.

    The second moments are summed in float32 about a shift (the first batch's mean), so that
    subtracting the mean's square at the end does not cancel away the variance; measured on
    flowers' MobileNetV2 (200 images, 128 px), float64 einsums took 18 of 35 s.
    """
    from core.keras_compat import keras, tf

    probe = keras.Model(model.inputs, [f.conv.input for f in found])
    sums, outer, count, shift = {}, {}, {}, {}
    for start in range(0, len(images), batch):
        outputs = probe(tf.constant(images[start:start + batch], tf.float32), training=False)
        outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
        for fold, x in zip(found, outputs):
            p = _patches(x, fold.conv)  # [N, K, C]
            name = fold.conv.name
            sums[name] = sums.get(name, 0) + tf.reduce_sum(p, 0).numpy().astype(np.float64)
            count[name] = count.get(name, 0) + int(p.shape[0])
            if fold.depthwise:
                if name not in shift:
                    shift[name] = tf.reduce_mean(p, 0)
                centred = p - shift[name]
                outer[name] = outer.get(name, 0) + tf.einsum("nkc,nlc->ckl", centred, centred).numpy().astype(np.float64)
    moments = {}
    for fold in found:
        name = fold.conv.name
        mean = sums[name] / count[name]  # [K, C]
        covariance = None
        if fold.depthwise:
            offset = (mean - shift[name].numpy().astype(np.float64)).T  # [C, K]
            covariance = outer[name] / count[name] - np.einsum("ck,cl->ckl", offset, offset)
        moments[name] = (mean, covariance)
    return moments


def _apply(fold: Fold, mean: np.ndarray, covariance, levels: int) -> LayerChange:
    kernel = fold.conv.get_weights()[0].astype(np.float64)
    k = fold.factor()
    if fold.depthwise:
        kh, kw, cin, mult = kernel.shape
        folded = kernel.reshape(kh * kw, cin * mult) * k  # [K, C]; channel c*mult+m reads input c
        patch_mean = np.repeat(mean, mult, axis=1)  # [K, C]
    else:
        kh, kw, cin, cout = kernel.shape
        folded = kernel.reshape(kh * kw * cin, cout) * k  # [K, C]; patches are ordered (kh, kw, cin) too
        patch_mean = mean.reshape(-1, 1)  # [K, 1]: every output channel reads the same patch
    absmax = np.max(np.abs(folded), axis=0)
    live = (absmax > 0) & (np.abs(k) > 0) & np.isfinite(k)
    scale = np.where(live, absmax / levels, 1.0)
    nearest = np.clip(np.round(folded / scale), -levels, levels)
    chosen = nearest.copy()
    before = after = 0.0
    if fold.depthwise and covariance is not None:
        cov = np.repeat(covariance, mult, axis=0) if mult > 1 else covariance  # [C, K, K]
        for c in np.flatnonzero(live):
            q, b, a = _best_rounding(folded[:, c] / scale[c], cov[c] * scale[c] ** 2, levels)
            chosen[:, c], before, after = q, before + b, after + a
        before, after = before / max(1, live.sum()), after / max(1, live.sum())
    error = (chosen - folded / scale) * scale  # [K, C], folded units
    error[:, ~live] = 0.0
    shift = -np.sum(error * patch_mean, axis=0)  # the mean output error, taken off the bias
    # Back to the kernel the converter folds again; a dead channel (zero weights or factor) is left as it is.
    new_kernel = np.where(live, chosen * scale / np.where(live, k, 1.0), kernel.reshape(folded.shape))
    weights = fold.conv.get_weights()
    weights[0] = new_kernel.reshape(kernel.shape).astype(weights[0].dtype)
    if fold.norm is None:
        weights[1] = (weights[1].astype(np.float64) + shift).astype(weights[1].dtype)
        fold.conv.set_weights(weights)
    else:
        fold.conv.set_weights(weights)
        beta = fold.norm.beta
        beta.assign((beta.numpy().astype(np.float64) + shift).astype(beta.dtype.as_numpy_dtype))
    return LayerChange(fold.conv.name, bool(fold.depthwise), int(np.sum(chosen != nearest)),
                       float(np.max(np.abs(shift))) if shift.size else 0.0, before, after)


def _best_rounding(w: np.ndarray, cov: np.ndarray, levels: int) -> tuple[np.ndarray, float, float]:
    """Integer weights near ``w`` (in steps) minimizing ``e^T cov e``; with the cost of nearest and of the choice.

    The largest weight keeps its value (it sets the scale), and zeros stay zero.
    """
    nearest = np.clip(np.round(w), -levels, levels)
    floor = np.floor(w)
    fixed = (np.abs(np.abs(w) - levels) < 1e-6) | (w == 0)
    free = np.flatnonzero(~fixed)

    def cost(q):
        e = q - w
        return float(e @ cov @ e)

    base = cost(nearest)
    if not len(free):
        return nearest, base, base
    if len(free) <= EXHAUSTIVE_WEIGHTS:
        ups = np.array(list(itertools.product((0.0, 1.0), repeat=len(free))))  # [2^n, n]
        candidates = np.repeat(nearest[None], len(ups), axis=0)
        candidates[:, free] = floor[free] + ups
        candidates = np.clip(candidates, -levels, levels)
        errors = candidates - w
        costs = np.einsum("pk,kl,pl->p", errors, cov, errors)
        best = int(np.argmin(costs))
        if costs[best] < base:
            return candidates[best], base, float(costs[best])
        return nearest, base, base
    q = nearest.copy()
    improved = True
    while improved:  # flip one weight to its other neighbour while that lowers the cost
        improved = False
        for i in free:
            other = floor[i] + (1.0 if q[i] == floor[i] else 0.0)
            if abs(other) > levels:
                continue
            trial = q.copy()
            trial[i] = other
            if cost(trial) < cost(q) - 1e-15:
                q, improved = trial, True
    return q, base, cost(q)
