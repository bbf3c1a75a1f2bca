"""Backbone registry and the flat classifier built on it.

The classifier takes raw RGB pixels in [0, 255] and normalizes inside the
graph (``core.layers.Preprocess``; the contract is ``core.contract``). The head sits on
``base.output`` directly: tfmot's ``quantize_model`` refuses a model nested in
another model, so the backbone must not be a sub-model.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

import numpy as np

from core import contract
from core.contract import HEAD_PREFIX, INPUT_NAME, PREPROCESS_LAYER
from core.errors import WeightsError, one_line
from core.keras_compat import keras, tf
from core.layers import Preprocess
from pipeline import weights
from pipeline.config import ModelConfig



@dataclass(frozen=True)
class Backbone:
    name: str
    build: Callable[..., keras.Model]
    # Normalization the pretrained weights expect, applied to RGB [0, 255] input:
    # y = (x[..., channel_order] - mean) / std.
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    channel_order: str  # "RGB" or "BGR"
    uses_alpha: bool


BACKBONES: dict[str, Backbone] = {}


def register_backbone(backbone: Backbone) -> None:
    if backbone.name in BACKBONES:
        raise RuntimeError(f"backbone {backbone.name!r} registered twice")
    BACKBONES[backbone.name] = backbone


# MobileNetV2 was trained on inputs scaled to [-1, 1] (keras.applications.mobilenet_v2.preprocess_input).
register_backbone(Backbone(
    name="mobilenet_v2",
    build=lambda input_tensor, alpha, weights: keras.applications.MobileNetV2(
        input_tensor=input_tensor, alpha=alpha, include_top=False, weights=weights),
    mean=(127.5, 127.5, 127.5), std=(127.5, 127.5, 127.5), channel_order="RGB", uses_alpha=True,
))
# ResNet50 uses "caffe" preprocessing: BGR, ImageNet mean subtracted, no scaling.
register_backbone(Backbone(
    name="resnet50",
    build=lambda input_tensor, alpha, weights: keras.applications.ResNet50(
        input_tensor=input_tensor, include_top=False, weights=weights),
    mean=(103.939, 116.779, 123.68), std=(1.0, 1.0, 1.0), channel_order="BGR", uses_alpha=False,
))


def preprocessing_contract(model_cfg: ModelConfig, image_size: int) -> dict:
    """What a caller must feed every exported file of this backbone; recorded in results and metadata."""
    bb = BACKBONES[model_cfg.backbone]
    return contract.preprocessing_contract(image_size, bb.mean, bb.std, bb.channel_order)


def build_classifier(model_cfg: ModelConfig, num_classes: int, image_size: int) -> keras.Model:
    bb = BACKBONES[model_cfg.backbone]
    weights_file = model_cfg.weights if model_cfg.weights not in ("imagenet", "none") else None
    saved = weights.read_layers(weights_file) if weights_file else None
    inputs = keras.Input((image_size, image_size, 3), name=INPUT_NAME)
    x = Preprocess(bb.mean, bb.std, bb.channel_order, name=PREPROCESS_LAYER)(inputs)
    try:
        base = bb.build(input_tensor=x, alpha=model_cfg.alpha,
                        weights="imagenet" if model_cfg.weights == "imagenet" else None)
    except Exception as exc:  # keras raises bare Exception for download failures
        raise _weights_error(exc, model_cfg) from None
    if weights_file:
        # What keras.applications does with a path, after checking the file fits (Keras loads by position).
        expected = [weights.LayerWeights(layer.name, tuple(tuple(int(d) for d in w.shape) for w in layer.weights))
                    for layer in base.layers if layer.weights]
        weights.check_fits(saved, expected, weights_file, bb.name, model_cfg.alpha if bb.uses_alpha else None)
        base.load_weights(weights_file)
    x = keras.layers.GlobalAveragePooling2D(name=HEAD_PREFIX + "pool")(base.output)
    x = keras.layers.Dropout(model_cfg.dropout, name=HEAD_PREFIX + "dropout")(x)
    # The classifier's last layer stays float32 whatever the compute policy, so
    # softmax probabilities compare exactly across runtimes.
    outputs = keras.layers.Dense(num_classes, activation="softmax", dtype="float32", name=HEAD_PREFIX + "predictions")(x)
    return keras.Model(inputs, outputs, name=f"{bb.name}_classifier")


def _weights_error(exc: Exception, model_cfg: ModelConfig) -> Exception:
    text = str(exc)
    if model_cfg.weights == "imagenet":
        url = re.search(r"URL fetch failure on (\S+): ", text)
        if url:
            return WeightsError(
                "model.weights is 'imagenet' but the weights cannot be downloaded (offline?); set model.weights to "
                f"the path of a local no-top {model_cfg.backbone} .h5 file, or download {url.group(1)} elsewhere "
                "and put it into ~/.keras/models/, or use 'none'."
            )
        if isinstance(exc, (OSError, KeyError)):  # h5py's errors
            # Found in the Keras cache but unreadable, e.g. a download cut short by an older Keras.
            return WeightsError(
                f"model.weights is 'imagenet' but the {model_cfg.backbone} file in the Keras cache ~/.keras/models/ "
                f"cannot be loaded ({one_line(f'{exc.__class__.__name__}: {text}', 160)}); delete it so it is "
                "downloaded again, or set model.weights to a local no-top .h5 file."
            )
    if isinstance(exc, ValueError):
        return WeightsError(f"{model_cfg.backbone} cannot be built with these settings: {one_line(text, 200)}")
    return exc


def backbone_layers(model: keras.Model) -> list:
    """The backbone's layers in graph order, without the input, the preprocessing and the head."""
    return [
        layer for layer in model.layers
        if layer.name not in (INPUT_NAME, PREPROCESS_LAYER) and not layer.name.startswith(HEAD_PREFIX)
    ]


def set_trainable(model: keras.Model, fine_tune_at: int | float, freeze_batchnorm: bool) -> int:
    """Freeze the backbone but its top ``fine_tune_at`` layers (count or fraction); return how many train."""
    layers = backbone_layers(model)
    count = fine_tune_at if isinstance(fine_tune_at, int) else int(round(fine_tune_at * len(layers)))
    count = max(0, min(count, len(layers)))
    top = set(id(layer) for layer in layers[len(layers) - count:]) if count else set()
    for layer in layers:
        is_bn = isinstance(layer, keras.layers.BatchNormalization)
        # A frozen BatchNorm layer also runs in inference mode in Keras 2, which
        # keeps its moving statistics and the pretrained features intact.
        layer.trainable = id(layer) in top and not (is_bn and freeze_batchnorm)
    return count


def set_batchnorm_momentum(model: keras.Model, momentum: float) -> None:
    for layer in backbone_layers(model):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = momentum


def freeze_backbone(model: keras.Model) -> None:
    for layer in backbone_layers(model):
        layer.trainable = False


def compiled_predictor(model: keras.Model, batch_size: int = 64):
    """``predict(images) -> probabilities``: one compiled tf.function in inference mode, batch by batch."""
    fn = tf.function(lambda x: model(x, training=False), reduce_retracing=True)

    def predict(images: np.ndarray) -> np.ndarray:
        out = [fn(tf.constant(images[i:i + batch_size], tf.float32)).numpy() for i in range(0, len(images), batch_size)]
        return np.concatenate(out, axis=0) if out else np.zeros((0, model.output_shape[-1]), np.float32)

    return predict


def predict_probs(model: keras.Model, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Keras reference probabilities for a set of images."""
    return compiled_predictor(model, batch_size)(images)
