"""The one place that decides which Keras the pipeline uses.

tensorflow-model-optimization only supports Keras 2, which TensorFlow 2.16+
ships separately as ``tf_keras``; ``TF_USE_LEGACY_KERAS=1`` has to be set
before TensorFlow is first imported so that ``tf.keras`` and the TFLite
converter agree with it. Every other module imports ``keras`` and ``tf`` from
here and never from ``tensorflow.keras`` or ``keras`` directly.
"""

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
# TensorFlow's C++ start-up chatter (CUDA probing, oneDNN notices) buries the
# progress a user wants to see; real errors still come through as exceptions.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402

tf.get_logger().setLevel("ERROR")

__all__ = ["keras", "tf"]
