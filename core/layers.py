"""The custom layers a saved classifier holds; importing this module registers them with Keras."""

from __future__ import annotations

from core.keras_compat import keras, tf


@keras.utils.register_keras_serializable(package="pipeline")
class Preprocess(keras.layers.Layer):
    """Channel reorder and per-channel normalization of raw [0, 255] RGB pixels, inside the graph."""

    def __init__(self, mean, std, channel_order="RGB", **kwargs):
        super().__init__(**kwargs)
        self.mean = [float(m) for m in mean]
        self.std = [float(s) for s in std]
        self.channel_order = channel_order

    def call(self, inputs):
        x = tf.cast(inputs, self.compute_dtype)
        if self.channel_order == "BGR":
            x = x[..., ::-1]
        mean = tf.constant(self.mean, dtype=x.dtype)
        inv_std = tf.constant([1.0 / s for s in self.std], dtype=x.dtype)
        return (x - mean) * inv_std

    def get_config(self):
        return {**super().get_config(), "mean": self.mean, "std": self.std, "channel_order": self.channel_order}
