"""Backbone weights files (Keras HDF5 ``.h5``): their layout, and whether it fits the model.

Keras loads an ``.h5`` file by position: the n-th layer with weights in the file
goes into the n-th such layer of the model, and a file saved from another
network or width fails deep inside TensorFlow with a count or shape error.
Reading the layout first (layer names and weight shapes, with h5py, no
TensorFlow) turns each way a file can be wrong into one sentence: unreadable or
truncated, not Keras weights, another network, a classifier top included,
another width.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from core.errors import WeightsError, one_line, show


@dataclass(frozen=True)
class LayerWeights:
    name: str
    shapes: tuple[tuple[int, ...], ...]


def read_layers(path: str | Path, source: str | None = None) -> list[LayerWeights]:
    """The layers with weights in ``path``, in file order; one WeightsError sentence if Keras could not read them."""
    what = f"{source + ': ' if source else ''}model.weights file {show(str(path))}"
    name = Path(path).name.lower()
    if not name.endswith((".h5", ".hdf5")) or name.endswith(".weights.h5"):
        # Keras picks the loader by the name: other names are read as TensorFlow checkpoints,
        # `.weights.h5` as the Keras 3 weights format, neither of which the backbones come in.
        raise WeightsError(f"{what} is not named *.h5; use a no-top .h5 weights file saved by tf_keras "
                           "(keras.applications or model.save_weights), or rename it to end in .h5.")
    if not Path(path).is_file():
        raise WeightsError(f"{what} does not exist; point model.weights at a no-top .h5 weights file, or use "
                           "'imagenet' or 'none'.")
    import h5py

    try:
        with h5py.File(path, "r") as f:
            # A whole model saved as .h5 keeps its weights under model_weights, where Keras looks too.
            group = f if _has_attribute(f, "layer_names") else f.get("model_weights")
            if group is None or not _has_attribute(group, "layer_names"):
                raise WeightsError(f"{what} is an HDF5 file without Keras layer weights; use a no-top .h5 file saved "
                                   "by keras.applications or model.save_weights().")
            layers = []
            for layer in _attribute(group, "layer_names"):
                weight_names = _attribute(group[layer], "weight_names")
                if weight_names:
                    shapes = tuple(tuple(int(d) for d in group[layer][w].shape) for w in weight_names)
                    layers.append(LayerWeights(layer, shapes))
            return layers
    except WeightsError:
        raise
    except Exception as exc:  # h5py raises OSError, KeyError, ValueError...: each means a bad file
        text = str(exc)
        reason = ("it is truncated (an interrupted download or copy?)" if "truncated" in text
                  else "it is not an HDF5 file" if "signature" in text
                  else one_line(f"{exc.__class__.__name__}: {text}", 120))
        raise WeightsError(f"{what} cannot be read: {reason}; download or copy the no-top .h5 file again.") from None


def _has_attribute(group, name: str) -> bool:
    return name in group.attrs or f"{name}0" in group.attrs


def _attribute(group, name: str) -> list[str]:
    """A string-list attribute; Keras splits one over 64 KiB into ``name0``, ``name1``, ..."""
    if name in group.attrs:
        values = list(group.attrs[name])
    else:
        values, chunk = [], 0
        while f"{name}{chunk}" in group.attrs:
            values.extend(group.attrs[f"{name}{chunk}"])
            chunk += 1
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values]


def check_fits(saved: list[LayerWeights], expected: list[LayerWeights], path: str | Path, backbone: str,
               alpha: float | None) -> None:
    """Raise one WeightsError sentence unless Keras can load ``saved`` into a backbone whose layers are ``expected``.

    ``alpha`` is the model's width for a backbone that has one (MobileNetV2), else None.
    """
    if [layer.shapes for layer in saved] == [layer.shapes for layer in expected]:
        return
    what = f"model.weights file {show(str(path))}"
    network = backbone if alpha is None else f"{backbone} alpha {alpha:g}"
    saved_by_name = {layer.name: layer for layer in saved}
    expected_names = {layer.name for layer in expected}
    shared = [layer for layer in expected if layer.name in saved_by_name]
    if len(shared) < len(expected) / 2:
        first = ", ".join(show(layer.name, 40) for layer in saved[:3]) or "none"
        raise WeightsError(f"{what} holds weights for another network than {backbone} (its first layers: {first}); "
                           f"point model.weights at a no-top {backbone} .h5 file, or set model.backbone to the network "
                           "the file was saved from.")
    extra = [layer.name for layer in saved if layer.name not in expected_names]
    if len(shared) == len(expected) and extra:
        raise WeightsError(f"{what} holds {backbone} weights with a classifier on top (layer {show(extra[-1], 40)}); "
                           "use the no-top file (saved with include_top=False).")
    differs = next(((layer, saved_by_name[layer.name]) for layer in shared
                    if saved_by_name[layer.name].shapes != layer.shapes), None)
    if differs is None:
        detail = f"{len(saved)} layers with weights in the file, {len(expected)} in the model"
    else:
        model_layer, file_layer = differs
        detail = (f"layer {show(model_layer.name, 40)} holds {_first_shape(file_layer)} in the file but the model needs "
                  f"{_first_shape(model_layer)}")
    if alpha is not None and differs is not None:
        raise WeightsError(f"{what} holds {backbone} weights of another width than alpha {alpha:g} ({detail}); set "
                           "model.alpha to the width the file was saved for, or use the file saved for "
                           f"alpha {alpha:g}.")
    raise WeightsError(f"{what} does not fit {network} ({detail}); use the no-top .h5 file saved for it.")


def _first_shape(layer: LayerWeights) -> str:
    """The first weight's shape, e.g. (3, 3, 3, 32) for a kernel."""
    return str(layer.shapes[0])
