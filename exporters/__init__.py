"""Exporters: each registered format turns the fine-tuned Keras model into a deployable file.

Importing this package is cheap; TensorFlow, tf2onnx and the runtimes are
imported inside the exporters when they run.
"""

from exporters import keras_format, tflite, onnx  # noqa: F401,I001  (registration order = table order)
from exporters.registry import ExportContext, Exporter, get, names, register, table

__all__ = ["ExportContext", "Exporter", "get", "names", "register", "table"]
