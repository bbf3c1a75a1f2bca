"""The converter of each registered format: the converter modules, joined to the registry's rows by name."""

from __future__ import annotations

from exporters import keras_format, onnx, tflite
from exporters import registry
from exporters.converter import Converter, ExportContext

_CONVERTERS: dict[str, type[Converter]] = {}
for _cls in (*keras_format.CONVERTERS, *tflite.CONVERTERS, *onnx.CONVERTERS):
    if _cls.format in _CONVERTERS:
        raise RuntimeError(f"two converters for format {_cls.format!r}")
    registry.get(_cls.format)  # a converter for no row is our bug
    _CONVERTERS[_cls.format] = _cls
_missing = [name for name in registry.names() if name not in _CONVERTERS]
if _missing:
    raise RuntimeError(f"no converter for format(s) {', '.join(_missing)}")


def get(name: str) -> Converter:
    """The converter of format ``name`` (an unknown name is the registry's error, listing the valid ones)."""
    registry.get(name)
    return _CONVERTERS[name]()


__all__ = ["ExportContext", "get"]
