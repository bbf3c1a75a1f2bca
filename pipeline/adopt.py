"""Bring your own model: an existing Keras classifier becomes the build's fine-tuned model, untrained.

The later stages expect one flat classifier: the input ``image`` (RGB [0, 255]),
the ``preprocess`` layer (``core.layers.Preprocess``), the model's own layers,
softmax probabilities out. A user's model is rebuilt that way from its
architecture: its input layer is cut off and its first layers are rewired to
our ``preprocess`` output, a nested model (``Sequential([base, pooling, dense])``,
as the tutorials write it) is inlined, since tfmot's QAT refuses a model inside
a model, and its weights are copied in by layer name. A model that already is
such a classifier (a ``finetune/model.keras`` of an earlier build) is adopted
as it is, so its exports are the same bytes as the build that trained it.

Nothing in the file runs before its architecture is read as JSON and every
class in it is known to be one of tf_keras's own layers or our ``Preprocess``:
a ``Lambda`` layer carries Python bytecode, a custom class names code to import.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import zipfile
from pathlib import Path

import numpy as np

from core import contract
from core.contract import INPUT_NAME, PREPROCESS_LAYER
from core.errors import ConfigError, one_line, show
from core.keras_compat import keras
from core.layers import Preprocess

log = logging.getLogger("pipeline")

MODEL_CLASSES = ("Functional", "Sequential", "Model")
# TFOpLambda replays a TensorFlow function named in the file (what `x / 127.5 - 1` or
# `preprocess_input(x)` leaves in a functional model). Only pure tensor maths is taken:
# a name such as `io.write_file` would be a way to run an arbitrary TensorFlow op.
TF_FUNCTION_PREFIXES = ("math.", "nn.", "__operators__.")
TF_FUNCTIONS = frozenset({"cast", "clip_by_value", "concat", "expand_dims", "identity", "reshape", "squeeze", "stack",
                          "transpose", "compat.v1.transpose", "image.resize"})
SOFTMAX_LAYER = "probabilities"  # appended to a model whose output layer gives logits


def fingerprint(path: str | Path) -> str:
    """sha256 of a model file, or of a SavedModel folder's files (relative names and contents, sorted)."""
    path = Path(path)
    if path.is_file():
        return _sha256(path)
    digest = hashlib.sha256()
    for item in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(item.relative_to(path).as_posix().encode("utf-8") + b"\0" + _sha256(item).encode() + b"\n")
    return digest.hexdigest()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# --- reading the architecture, before anything is loaded --------------------------------------------------------


def read_architecture(path: str | Path) -> dict:
    """The model's ``{"class_name", "config"}`` as saved, read as JSON: nothing in the file is run."""
    path = Path(path)
    shown = show(str(path))
    if path.is_dir():
        meta = path / "keras_metadata.pb"
        if not meta.is_file():
            raise ConfigError(f"model.path {shown} is a folder without keras_metadata.pb, so it is not a Keras model; "
                              "save it with model.save(...) from tf_keras, as a .keras file or a SavedModel folder.")
        root = _saved_model_root(meta.read_bytes())
        if root is None or "config" not in root:
            raise ConfigError(f"model.path {shown}: its keras_metadata.pb holds no model architecture; save the "
                              "model with model.save(...) from tf_keras (a .keras file is the surest).")
        return {"class_name": root.get("class_name"), "config": _untupled(root["config"])}
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                if "config.json" not in archive.namelist():
                    raise ConfigError(f"model.path {shown} is a zip without config.json, not a .keras model; save "
                                      "it with model.save('model.keras') from tf_keras.")
                arch = json.loads(archive.read("config.json"))
        elif path.read_bytes()[:8] == b"\x89HDF\r\n\x1a\n":
            import h5py

            with h5py.File(path, "r") as h5:
                raw = h5.attrs.get("model_config")
            if raw is None:
                raise ConfigError(f"model.path {shown} holds weights only, no architecture; save the whole model "
                                  "with model.save(...), not model.save_weights(...).")
            arch = json.loads(raw.decode("utf-8") if isinstance(raw, bytes) else raw)
        else:
            raise ConfigError(f"model.path {shown} is neither a .keras nor an .h5 file nor a SavedModel folder; "
                              "save the model with model.save('model.keras') from tf_keras.")
    except (OSError, ValueError, zipfile.BadZipFile) as exc:  # json's errors are ValueErrors
        raise ConfigError(f"model.path {shown} cannot be read ({one_line(f'{type(exc).__name__}: {exc}', 160)}); "
                          "save the model again with model.save('model.keras') from tf_keras.") from None
    if not isinstance(arch, dict) or "config" not in arch:
        raise ConfigError(f"model.path {shown} holds no model architecture; save the model with model.save(...).")
    return arch


def _saved_model_root(data: bytes) -> dict | None:
    """The root object's metadata (JSON) in a SavedModel's ``keras_metadata.pb``.

    Read straight from the protobuf wire format (SavedMetadata: field 1, repeated
    SavedObject; in each, field 3 the node path, field 5 the metadata) so the file's
    contents are never handed to a deserializer before they are checked.
    """
    try:
        for _, node in _fields(data, 1):
            fields = dict((number, value) for number, value in _fields(node))
            if fields.get(3, b"") == b"root" and 5 in fields:
                return json.loads(fields[5].decode("utf-8"))
    except (IndexError, ValueError):
        return None
    return None


def _untupled(value):
    """A SavedModel's JSON with its tuples (``{"class_name": "__tuple__", "items": [...]}``) as plain lists."""
    if isinstance(value, dict):
        if value.get("class_name") == "__tuple__" and "items" in value:
            return [_untupled(v) for v in value["items"]]
        return {k: _untupled(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_untupled(v) for v in value]
    return value


def _fields(data: bytes, wanted: int | None = None):
    """(field number, bytes or int) of each field of one protobuf message, optionally only field ``wanted``."""
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(data, pos)
        elif wire == 2:
            size, pos = _varint(data, pos)
            value, pos = data[pos:pos + size], pos + size
        elif wire in (1, 5):
            value, pos = data[pos:pos + (8 if wire == 1 else 4)], pos + (8 if wire == 1 else 4)
        else:
            raise ValueError(f"protobuf wire type {wire}")
        if wanted is None or number == wanted:
            yield number, value


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        value |= (byte & 0x7F) << shift
        pos += 1
        if not byte & 0x80:
            return value, pos
        shift += 7


def check_safe(arch: dict, path: str | Path) -> None:
    """Refuse, in one sentence naming the layer, anything that would run code of the file's choosing when loaded."""
    shown = show(str(path))
    for layer in _all_layers(arch):
        kind, name = layer.get("class_name"), (layer.get("config") or {}).get("name", "?")
        if kind == "Lambda":
            raise ConfigError(f"model.path {shown} has a Lambda layer {name!r}, which holds Python code and is not "
                              "loaded; rebuild the model with built-in layers in its place (e.g. Rescaling for "
                              "x / 255) and save it again.")
        if kind in ("TFOpLambda", "SlicingOpLambda"):
            function = str(layer["config"].get("function", ""))
            if not (function.startswith(TF_FUNCTION_PREFIXES) or function in TF_FUNCTIONS):
                raise ConfigError(f"model.path {shown} has layer {name!r} calling tf.{function}, which is not tensor "
                                  "maths and is not loaded; rebuild the model without that call.")
            continue
        if kind in MODEL_CLASSES or _is_preprocess(layer) or _builtin_layer(kind, layer.get("registered_name")):
            continue
        raise ConfigError(f"model.path {shown} has layer {name!r} of class {kind!r}, which is not a tf_keras layer "
                          "and is not loaded (custom code); rebuild the model with tf_keras's built-in layers.")
    for obj in (o for layer in _all_layers(arch) for o in _nested_objects(_own_config(layer))):
        module = str(obj.get("module") or "")
        if obj.get("class_name") == "function" or (module and not module.startswith(("keras", "tf_keras"))):
            raise ConfigError(f"model.path {shown} refers to {obj.get('config')!r} from module {module!r}, which is "
                              "custom code and is not loaded; use tf_keras's built-in activations, initializers and "
                              "regularizers.")


def _all_layers(arch: dict):
    """Every layer entry of the architecture, into nested models and wrappers (TimeDistributed, Bidirectional)."""
    todo = [arch]
    while todo:
        entry = todo.pop()
        if not isinstance(entry, dict):
            continue
        config = entry.get("config") or {}
        if entry is not arch:
            yield entry
        if isinstance(config, dict):
            todo.extend(config.get("layers") or [])
            todo.extend(config[k] for k in ("layer", "backward_layer") if isinstance(config.get(k), dict))


def _own_config(layer: dict) -> dict:
    """A layer's config without the layers it holds (those are checked as layers)."""
    config = layer.get("config")
    if not isinstance(config, dict):
        return {}
    return {k: v for k, v in config.items() if k not in ("layers", "layer", "backward_layer")}


def _nested_objects(value):
    """Serialized objects (dicts with a ``class_name``) in a layer's config: activations, initializers, policies."""
    if isinstance(value, dict):
        if "class_name" in value and value.get("class_name") != "__keras_tensor__":
            yield value
        for item in value.values():
            yield from _nested_objects(item)
    elif isinstance(value, list):
        for item in value:
            yield from _nested_objects(item)


def _is_preprocess(layer: dict) -> bool:
    # A .keras file names the registered class in registered_name; a legacy .h5 puts it into class_name.
    return (layer.get("class_name") == "Preprocess" and layer.get("registered_name") == "pipeline>Preprocess") \
        or layer.get("class_name") == "pipeline>Preprocess"


def _builtin_layer(kind, registered) -> bool:
    cls = getattr(keras.layers, str(kind), None)
    return (registered in (None, kind) and isinstance(cls, type) and issubclass(cls, keras.layers.Layer)
            and cls.__module__.startswith("tf_keras.") and kind != "Lambda")


# --- one flat functional config ----------------------------------------------------------------------------------


class _Refusal(Exception):
    """A model this module cannot rebuild flat; the message is the end of a sentence."""


def _functional(kind: str, config: dict) -> tuple[list[dict], list[list], list[list]]:
    """(layer entries, input refs, output refs) of a model's config, nested models inlined."""
    if kind == "Sequential":
        layers, inputs, previous = [], [], None
        entries = list(config["layers"])
        if entries and entries[0]["class_name"] == "InputLayer":
            first = entries.pop(0)
            layers.append({**first, "name": first["config"]["name"], "inbound_nodes": []})
            previous = [first["config"]["name"], 0, 0]
        elif config.get("build_input_shape"):
            name = f"{config['name']}_input"
            layers.append({"class_name": "InputLayer", "name": name, "inbound_nodes": [],
                           "config": {"batch_input_shape": config["build_input_shape"], "dtype": "float32",
                                      "sparse": False, "ragged": False, "name": name}})
            previous = [name, 0, 0]
        else:
            raise _Refusal("is a Sequential model that was never built, so its input shape is unknown; call "
                           "model.build((None, H, W, 3)) before saving it")
        inputs = [previous]
        for entry in entries:
            if entry["class_name"] in MODEL_CLASSES:
                inner, inner_in, inner_out = _functional(entry["class_name"], entry["config"])
                if len(inner_in) != 1 or len(inner_out) != 1:
                    raise _Refusal(f"nests model {entry['config'].get('name')!r} with several inputs or outputs")
                body = [e for e in inner if not (e["class_name"] == "InputLayer" and e["name"] == inner_in[0][0])]
                layers.extend(_rewired(body, {_key(inner_in[0]): previous}))
                previous = list(inner_out[0])
                continue
            layers.append({**entry, "name": entry["config"]["name"], "inbound_nodes": [[previous + [{}]]]})
            previous = [entry["config"]["name"], 0, 0]
        return layers, inputs, [previous]
    layers = [dict(e) for e in config["layers"]]
    # A model of one input or output may store it as a single ref rather than a list of them.
    inputs, outputs = ([list(r) for r in ([refs] if _is_ref(refs) else refs)]
                       for refs in (config["input_layers"], config["output_layers"]))
    mapping: dict[tuple, list] = {}
    flat: list[dict] = []
    for entry in layers:
        if entry["class_name"] not in MODEL_CLASSES:
            flat.append(entry)
            continue
        calls = [refs for refs in _tensor_refs(entry.get("inbound_nodes") or [], grouped=True)]
        if len(calls) != 1:
            raise _Refusal(f"calls its nested model {entry['name']!r} {len(calls)} times (shared weights)")
        inner, inner_in, inner_out = _functional(entry["class_name"], entry["config"])
        if len(inner_in) != len(calls[0]):
            raise _Refusal(f"feeds its nested model {entry['name']!r} another number of inputs than it takes")
        outer = {_key(ref): fed for ref, fed in zip(inner_in, calls[0])}
        inner_names = {ref[0] for ref in inner_in}
        flat.extend(_rewired([e for e in inner if not (e["class_name"] == "InputLayer" and e["name"] in inner_names)],
                             outer))
        for index, ref in enumerate(inner_out):
            mapping[(entry["name"], 0, index)] = _resolve(ref, outer)
    return _rewired(flat, mapping), inputs, [_resolve(ref, mapping) for ref in outputs]


def _key(ref) -> tuple:
    return (ref[0], int(ref[1]), int(ref[2]))


def _resolve(ref, mapping: dict) -> list:
    seen = 0
    while _key(ref) in mapping and seen < 100:  # a nested model's output may itself be a nested model's
        ref, seen = mapping[_key(ref)], seen + 1
    return list(ref)


def _is_ref(value) -> bool:
    return (isinstance(value, list) and len(value) in (3, 4) and isinstance(value[0], str)
            and isinstance(value[1], int) and isinstance(value[2], int) and (len(value) == 3 or isinstance(value[3], dict)))


def _tensor_refs(inbound, grouped: bool = False):
    """The [name, node, tensor] refs of a layer's inbound nodes: per call (``grouped``), or all of them."""
    calls = []
    for node in inbound:
        found: list = []
        _collect(node, found)
        calls.append(found)
    return calls if grouped else [ref for call in calls for ref in call]


def _collect(value, found: list) -> None:
    if _is_ref(value):
        found.append(value[:3])
        if len(value) == 4:  # call arguments may hold more tensors
            _collect(value[3], found)
    elif isinstance(value, dict):
        history = value.get("config", {}).get("keras_history") if value.get("class_name") == "__keras_tensor__" else None
        if history:
            found.append(history[:3])
        for item in value.values():
            _collect(item, found)
    elif isinstance(value, list):
        for item in value:
            _collect(item, found)


def _rewired(entries: list[dict], mapping: dict) -> list[dict]:
    """The entries with every tensor ref in ``mapping`` replaced, in inbound nodes and call arguments alike."""
    def replace(value):
        if _is_ref(value):
            head = _resolve(value[:3], mapping) if _key(value) in mapping else list(value[:3])
            return head + [replace(v) for v in value[3:]]
        if isinstance(value, dict):
            if value.get("class_name") == "__keras_tensor__" and "keras_history" in value.get("config", {}):
                history = value["config"]["keras_history"]
                new = _resolve(history[:3], mapping) if _key(history) in mapping else history[:3]
                return {**value, "config": {**value["config"], "keras_history": new}}
            return {k: replace(v) for k, v in value.items()}
        if isinstance(value, list):
            return [replace(v) for v in value]
        return value

    return [{**e, "inbound_nodes": replace(e.get("inbound_nodes") or [])} for e in entries]


# --- adopting ----------------------------------------------------------------------------------------------------


def is_own_classifier(arch: dict) -> bool:
    """A flat classifier as this pipeline builds it: input ``image`` straight into our ``preprocess`` layer."""
    config = arch.get("config") or {}
    if arch.get("class_name") not in ("Functional", "Model") or "layers" not in config:
        return False
    by_name = {e.get("name"): e for e in config["layers"]}
    pre = by_name.get(PREPROCESS_LAYER)
    return (config.get("input_layers") == [[INPUT_NAME, 0, 0]] and pre is not None and _is_preprocess(pre)
            and [r[0] for r in _tensor_refs(pre.get("inbound_nodes") or [])] == [INPUT_NAME])


def adopt(cfg, class_names: list[str], sample: np.ndarray, out: Path) -> dict:
    """Write the flat classifier made from ``cfg.model.path`` to ``out`` (a .keras path); return what was done.

    ``sample``: a few training images (uint8 RGB at data.image_size) the rebuilt model is checked on.
    """
    path = Path(cfg.model.path)
    arch = read_architecture(path)
    check_safe(arch, path)
    own = is_own_classifier(arch)
    if own and cfg.model.preprocessing != "none":
        raise ConfigError(f"model.path {show(str(path))} already normalizes its input in its {PREPROCESS_LAYER!r} "
                          "layer (it is a classifier this pipeline built); set model.preprocessing: none.")
    source = _load(path)
    if own:
        model, changes = source, {"rebuilt": False}
    else:
        model, changes = _rebuild(arch, source, cfg, path)
    _check(model, cfg, class_names, path)
    _check_same_outputs(model, source, cfg, sample, changes)
    probabilities = model.predict(sample.astype(np.float32), verbose=0)
    if not (np.all(probabilities >= -1e-6) and np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-3)):
        raise ConfigError(f"model.path {show(str(path))}: its outputs are not probabilities (they do not sum to 1 "
                          "over the classes); end the model with a softmax layer and save it again.")
    if own and path.suffix == ".keras" and path.is_file():
        shutil.copyfile(path, out)  # the very bytes: exports and repair recipes match the build it came from
    else:
        for layer in model.layers:  # later stages choose their own trainable flags (as finetune saves)
            layer.trainable = True
        model.save(out)
    return {"path": str(path), "sha256": fingerprint(path), "adopted_unchanged": own, **changes,
            "layers": len(model.layers), "parameters": int(model.count_params())}


def _load(path: Path):
    """The user's model, loaded only after check_safe passed: safe_mode, and no custom objects but ours."""
    try:
        return keras.models.load_model(path, compile=False, safe_mode=True)
    except (ValueError, TypeError, OSError, KeyError) as exc:
        raise ConfigError(f"model.path {show(str(path))} cannot be loaded by tf_keras "
                          f"({one_line(f'{type(exc).__name__}: {exc}', 200)}); save it again with model.save(...) "
                          "from tf_keras 2.") from None


def _rebuild(arch: dict, source, cfg, path: Path):
    """The flat classifier: our input and ``preprocess``, the user's layers rewired onto it, their weights copied."""
    shown = show(str(path))
    try:
        layers, inputs, outputs = _functional(arch.get("class_name"), arch["config"])
    except _Refusal as exc:
        raise ConfigError(f"model.path {shown} {exc}, so it cannot be rebuilt as one flat model; save it as a "
                          "single functional model.") from None
    if len(inputs) != 1 or len(outputs) != 1:
        raise ConfigError(f"model.path {shown} has {len(inputs)} inputs and {len(outputs)} outputs; the pipeline "
                          "exports image classifiers with one image in and one set of probabilities out.")
    names = [e["name"] for e in layers]
    for taken in (INPUT_NAME, PREPROCESS_LAYER, SOFTMAX_LAYER):
        if taken in names and not (taken == names[0] == inputs[0][0]):
            raise ConfigError(f"model.path {shown} has a layer named {taken!r}, a name the pipeline gives its own "
                              "layer; rename that layer and save the model again.")
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ConfigError(f"model.path {shown} has two layers named {twice[0]!r} once its nested models are "
                          "inlined; give the layers distinct names and save the model again.")
    user_input = next(e for e in layers if e["name"] == inputs[0][0])
    shape = list(user_input["config"].get("batch_input_shape") or user_input["config"].get("batch_shape") or [])
    _check_input_shape(shape, cfg.data.image_size, shown)
    mean, std, order = cfg.model.normalization()
    size = cfg.data.image_size
    image = keras.layers.serialize(keras.layers.InputLayer((size, size, 3), name=INPUT_NAME))
    pre = keras.layers.serialize(Preprocess(mean, std, order, name=PREPROCESS_LAYER))
    entries = [{**image, "name": INPUT_NAME, "inbound_nodes": []},
               {**pre, "name": PREPROCESS_LAYER, "inbound_nodes": [[[INPUT_NAME, 0, 0, {}]]]}]
    body = _rewired([e for e in layers if e is not user_input], {_key(inputs[0]): [PREPROCESS_LAYER, 0, 0]})
    entries += [_float32(e) for e in body]
    output = list(outputs[0])
    appended = _needs_softmax(next(e for e in entries if e["name"] == output[0]), shown)
    if appended:
        softmax = keras.layers.serialize(keras.layers.Softmax(name=SOFTMAX_LAYER, dtype="float32"))
        entries.append({**softmax, "name": SOFTMAX_LAYER, "inbound_nodes": [[output + [{}]]]})
        output = [SOFTMAX_LAYER, 0, 0]
    config = {"name": arch["config"].get("name", "classifier"), "layers": entries,
              "input_layers": [[INPUT_NAME, 0, 0]], "output_layers": [output]}
    model = keras.Model.from_config(config)
    originals = _layers_by_name(source)
    copied = 0
    for layer in model.layers:
        if layer.weights:
            layer.set_weights(originals[layer.name].get_weights())
            copied += 1
    left = [name for name, layer in originals.items() if layer.weights and name not in {l.name for l in model.layers}]
    if left:  # our bug: every weight of the user's model must be in the rebuilt one
        raise RuntimeError(f"layers {left} of {path} were not carried into the flat model")
    nested = sum(1 for e in _all_layers(arch) if e.get("class_name") in MODEL_CLASSES)
    return model, {"rebuilt": True, "inlined_models": nested, "appended_softmax": appended,
                   "preprocessing": {"mean": list(mean), "std": list(std), "channel_order": order},
                   "layers_with_weights": copied}


def _layers_by_name(model) -> dict:
    """Every layer of ``model`` by name, those of its nested models too (the names are checked unique)."""
    found = {}
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            found.update(_layers_by_name(layer))
        else:
            found[layer.name] = layer
    return found


def _float32(entry: dict) -> dict:
    """A layer entry computing in float32: a mixed-precision model's policy would put float16 into the exports."""
    config = entry.get("config") or {}
    if isinstance(config.get("dtype"), dict):  # a Policy such as mixed_float16; the weights are float32 already
        return {**entry, "config": {**config, "dtype": "float32"}}
    return entry


def _check_input_shape(shape: list, size: int, shown: str) -> None:
    if len(shape) != 4 or shape[3] != 3:
        raise ConfigError(f"model.path {shown} takes input of shape {tuple(shape)}; the pipeline feeds RGB images "
                          "(None, H, W, 3), so save a model that takes those.")
    height, width = shape[1], shape[2]
    if height is not None and width is not None and height != width:
        raise ConfigError(f"model.path {shown} takes {width}×{height} px images; the pipeline feeds square images "
                          "(data.image_size), so save a model with a square input or one of any size (None, None).")
    side = height if height is not None else width
    if side is not None and side != size:
        raise ConfigError(f"model.path {shown} takes {side}×{side} px images but data.image_size is {size}; set "
                          f"data.image_size: {side}.")


def _needs_softmax(entry: dict, shown: str) -> bool:
    """Whether the output layer gives logits (a softmax is appended); refuse any other non-probability output."""
    config = entry.get("config") or {}
    kind, activation = entry.get("class_name"), config.get("activation")
    if isinstance(activation, dict):
        activation = activation.get("config", activation.get("class_name"))
    if kind == "Softmax" or activation == "softmax":
        return False
    if activation == "linear" and kind in ("Dense", "Conv2D", "Conv1D", "EinsumDense"):
        return True
    raise ConfigError(f"model.path {shown} ends in layer {entry.get('name')!r} ({kind}, activation "
                      f"{activation!r}), not softmax probabilities or logits over the classes; end it with a Dense "
                      "layer (softmax or linear) and save it again.")


def _check(model, cfg, class_names: list[str], path: Path) -> None:
    """The adopted model fits the data: input side, and one output per class."""
    shown = show(str(path))
    shape = list(model.input_shape)
    _check_input_shape(shape, cfg.data.image_size, shown)
    outputs = model.output_shape
    if len(outputs) != 2:
        raise ConfigError(f"model.path {shown} gives outputs of shape {tuple(outputs)}, not one probability per "
                          "class; end the model with a Dense layer of one unit per class.")
    if outputs[-1] != len(class_names):
        where = "model.labels" if cfg.model.labels else "the class folders of data.path"
        raise ConfigError(f"model.path {shown} gives {outputs[-1]} class outputs but {where} name "
                          f"{len(class_names)} classes; point data.path (or model.labels) at the classes the model "
                          "was trained on, in its output order.")


def _check_same_outputs(model, source, cfg, sample: np.ndarray, changes: dict) -> None:
    """The rebuilt model gives what the user's model gives on the preprocessed images (our bug if not)."""
    if not changes.get("rebuilt"):
        return
    mean, std, order = cfg.model.normalization()
    x = sample.astype(np.float32)
    fed = ((x[..., ::-1] if order == "BGR" else x) - np.array(mean, np.float32)) / np.array(std, np.float32)
    theirs = source.predict(fed, verbose=0)
    if changes["appended_softmax"]:
        theirs = np.exp(theirs - theirs.max(axis=1, keepdims=True))
        theirs = theirs / theirs.sum(axis=1, keepdims=True)
    ours = model.predict(x, verbose=0)
    worst = float(np.max(np.abs(ours - theirs))) if len(x) else 0.0
    if worst > 1e-4:
        raise RuntimeError(f"the flat rebuild of {cfg.model.path} differs from it by {worst:.2e} on training images")
    changes["max_abs_diff_to_source"] = worst


def preprocessing_contract(model, image_size: int) -> dict:
    """The contract of an adopted model, read from its own ``preprocess`` layer."""
    layer = model.get_layer(PREPROCESS_LAYER)
    return contract.preprocessing_contract(image_size, layer.mean, layer.std, layer.channel_order)
