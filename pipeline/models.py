"""Backbone registry and the flat classifier built on it.

The classifier takes raw RGB pixels in [0, 255] and normalizes inside the
graph (``core.layers.Preprocess``; the contract is ``core.contract``). The head sits on
``base.output`` directly: tfmot's ``quantize_model`` refuses a model nested in
another model, so the backbone must not be a sub-model.
"""

from __future__ import annotations

import re
import numpy as np

from core import contract
from core.contract import HEAD_PREFIX, INPUT_NAME, PREPROCESS_LAYER
from core.errors import WeightsError, one_line
from core.keras_compat import keras, tf
from core.layers import Preprocess
from pipeline import weights
from pipeline.backbones import BACKBONES, Backbone
from pipeline.config import ModelConfig

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
        base = _application(bb, x, model_cfg.alpha, "imagenet" if model_cfg.weights == "imagenet" else None)
    except Exception as exc:  # keras raises bare Exception for download failures
        raise _weights_error(exc, model_cfg, image_size) from None
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
    model = keras.Model(inputs, outputs, name=f"{bb.name}_classifier")
    return _without_own_normalization(model) if bb.folds_own_normalization else model


def _application(bb: Backbone, input_tensor, alpha: float, weights: str | None) -> keras.Model:
    build = getattr(keras.applications, bb.application)
    extra = {"alpha": alpha} if bb.uses_alpha else {}
    return build(input_tensor=input_tensor, include_top=False, weights=weights, **extra, **bb.kwargs)


# The layers EfficientNet puts between its input and its stem: x / 255, the ImageNet
# normalization, and (with weights="imagenet") a correction multiply, a TFOpLambda.
_OWN_NORMALIZATION = ("Rescaling", "Normalization", "TFOpLambda")


def _without_own_normalization(model: keras.Model) -> keras.Model:
    """The model with the backbone's own normalization layers taken out, their work left to ``preprocess``.

    tfmot refuses Rescaling and Normalization layers (tensorflow/model-optimization#647), and
    exporters fold only the ``preprocess`` layer into the input quantization. The layers are
    removed from the functional config, which is rebuilt with the same names and weights:
    the backbone row's mean and std are what they computed with ImageNet weights. They are
    taken out only after the weights were loaded, since Keras loads a weights file by position.
    """
    config = model.get_config()
    consumers = {}
    for layer in config["layers"]:
        for source in _inbound_names(layer["inbound_nodes"]):
            consumers.setdefault(source, []).append(layer["name"])
    chain, current = [], PREPROCESS_LAYER
    while len(consumers.get(current, [])) == 1:
        nxt = next(layer for layer in config["layers"] if layer["name"] == consumers[current][0])
        if nxt["class_name"] not in _OWN_NORMALIZATION:
            break
        chain.append(nxt["name"])
        current = nxt["name"]
    if not chain:
        return model
    last = chain[-1]
    config["layers"] = [layer for layer in config["layers"] if layer["name"] not in chain]
    for layer in config["layers"]:
        layer["inbound_nodes"] = _renamed(layer["inbound_nodes"], last, PREPROCESS_LAYER)
    rebuilt = keras.Model.from_config(config, custom_objects={"Preprocess": Preprocess})
    for layer in rebuilt.layers:
        if layer.weights:
            layer.set_weights(model.get_layer(layer.name).get_weights())
    return rebuilt


def _inbound_names(nodes) -> list[str]:
    # tf_keras writes a call as [[name, node_index, tensor_index, kwargs], ...] per node.
    if isinstance(nodes, list) and len(nodes) >= 3 and isinstance(nodes[0], str) and isinstance(nodes[1], int):
        return [nodes[0]]
    if isinstance(nodes, list):
        return [name for item in nodes for name in _inbound_names(item)]
    return []


def _renamed(nodes, old: str, new: str):
    if isinstance(nodes, list) and len(nodes) >= 3 and nodes[0] == old and isinstance(nodes[1], int):
        return [new, 0, 0, *nodes[3:]]
    if isinstance(nodes, list):
        return [_renamed(item, old, new) for item in nodes]
    return nodes


def _weights_error(exc: Exception, model_cfg: ModelConfig, image_size: int) -> Exception:
    text = str(exc)
    file = BACKBONES[model_cfg.backbone].weights_file_for(model_cfg.alpha, image_size)
    if model_cfg.weights == "imagenet":
        url = re.search(r"URL fetch failure on (\S+): ", text)
        if url:
            return WeightsError(
                f"model.weights is 'imagenet' but the weights cannot be downloaded (offline?): Keras's "
                f"{model_cfg.backbone} file is {file}; set model.weights to the path of a local copy of it, or "
                f"download {url.group(1)} elsewhere and put it into ~/.keras/models/, or use 'none'."
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
