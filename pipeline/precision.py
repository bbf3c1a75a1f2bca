"""Mixed precision and XLA for the fine-tuning: what ``train.mixed_precision`` and ``train.jit_compile`` turn on.

Both pay off on a GPU (float16 tensor cores, fused kernels) and cost time on a
CPU: on this project's 2-core machine the first epoch of MobileNetV2 0.35 at
32 px (64 images) took 1.5x as long under ``mixed_float16`` and 2.7x under
XLA, which compiles the training step first. So ``auto`` means on with a GPU,
off without one; ``on`` forces them anyway (the tests do, to exercise the paths).
``bfloat16`` (``mixed_bfloat16``: no loss scaling, float32's range) is for CPUs
whose oneDNN kernels have bfloat16 paths (AVX512-BF16, AMX); whether it pays
off is measured with ``make bench-train SET=train.mixed_precision=bfloat16``.

Under ``mixed_float16`` Keras computes in float16 and keeps every variable in
float32; the classifier's last Dense layer and its softmax are float32 already
(``pipeline.models``), so the probabilities compare exactly across runtimes.
The policy is global in Keras, so it is set only around the training and put
back afterwards, and the model that is saved is rebuilt in float32: the
exporters convert exactly what a float32 training would have given them.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

MIXED_POLICY = "mixed_float16"
# train.mixed_precision -> the Keras policy fine-tuning runs under ("auto" is decided by policy_name).
POLICIES = {"on": MIXED_POLICY, "off": "float32", "bfloat16": "mixed_bfloat16"}


def gpu_count() -> int:
    from core.keras_compat import tf

    return len(tf.config.list_physical_devices("GPU"))


def resolve(setting: str, gpus: int) -> bool:
    """``auto``/``on``/``off`` as a decision for a machine with ``gpus`` GPUs."""
    return gpus > 0 if setting == "auto" else setting == "on"


def policy_name(setting: str, gpus: int) -> str:
    """The Keras policy of ``train.mixed_precision`` on a machine with ``gpus`` GPUs."""
    return (MIXED_POLICY if gpus > 0 else "float32") if setting == "auto" else POLICIES[setting]


@contextlib.contextmanager
def policy(name: str) -> Iterator[None]:
    """Inside the block, layers that are built compute under the policy ``name``; the old policy comes back after."""
    from core.keras_compat import keras

    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(name)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


def float32_copy(model):
    """The same model, every layer computing in float32, with the trained weights.

    A model built under a mixed policy records that policy in each layer's
    config, so saving it as it is would hand float16 compute to every stage
    and exporter that loads it. Built outside any strategy scope, so the copy
    is a plain model whatever the training ran under.
    """
    from core.keras_compat import keras

    config = model.get_config()
    for layer in config["layers"]:
        if isinstance(layer["config"].get("dtype"), dict):  # a serialized policy (plain dtypes are strings)
            layer["config"]["dtype"] = "float32"
    with policy("float32"):
        copy = keras.Model.from_config(config)
    copy.set_weights(model.get_weights())
    for original, copied in zip(model.layers, copy.layers):
        copied.trainable = original.trainable
    return copy
