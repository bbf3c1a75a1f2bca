"""A user's own training script, apart from the pipeline: trains a small tf_keras classifier and saves it.

``python byo_user_script.py KIND OUT DATA SIZE``: KIND says which model (below), OUT where it goes
(``.keras``, ``.h5``, or a folder for a SavedModel), DATA an image folder (one sub-folder per class),
SIZE the input side. The model is trained on (x - 127.5) / 127.5 outside the model, the
``mobilenet_v2`` preset. It imports tf_keras as a user would, not the pipeline.
"""

import os
import sys
from pathlib import Path

os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tf_keras as keras  # noqa: E402
from PIL import Image  # noqa: E402

kind, out, data, size = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4])
# A file the Lambda and custom layers below would create if the pipeline ever ran their code.
marker = Path(os.environ.get("BYO_MARKER", out.parent / "code_ran"))

classes = sorted(p.name for p in data.iterdir() if p.is_dir() and not p.name.startswith("."))
images, labels = [], []
for index, name in enumerate(classes):
    for file in sorted((data / name).iterdir()):
        try:
            img = Image.open(file).convert("RGB").resize((size, size))
        except OSError:
            continue
        images.append(np.asarray(img, np.float32))
        labels.append(index)
x = (np.stack(images) - 127.5) / 127.5
y = np.array(labels)
order = [line for line in os.environ.get("BYO_CLASS_ORDER", "").split(",") if line]
if order:  # outputs in another order than the sorted folders: the labels file says which
    y = np.array([order.index(classes[i]) for i in y])


def write_marker(t):
    marker.write_text("a Lambda layer's code ran")
    return t


@keras.utils.register_keras_serializable(package="user")
class Doubler(keras.layers.Layer):
    def call(self, t):
        marker.write_text("a custom layer's code ran")
        return t * 2


def features(inputs):
    h = keras.layers.Conv2D(8, 3, strides=2, activation="relu", name="conv")(inputs)
    h = keras.layers.BatchNormalization(name="bn")(h)
    return keras.layers.GlobalAveragePooling2D(name="pool")(h)


n = len(classes)
if kind == "nested":  # as the tutorials write it: Sequential([base, pooling, dense])
    i = keras.Input((size, size, 3))
    h = keras.layers.Conv2D(8, 3, strides=2, activation="relu", name="conv")(i)
    base = keras.Model(i, keras.layers.BatchNormalization(name="bn")(h), name="base")
    model = keras.Sequential([base, keras.layers.GlobalAveragePooling2D(name="pool"),
                              keras.layers.Dense(n, activation="softmax", name="dense")])
    model.build((None, size, size, 3))
else:
    inputs = keras.Input((size, size, 3))
    h = features(inputs)
    if kind == "lambda":
        h = keras.layers.Lambda(write_marker, name="sneaky")(h)
    if kind == "custom":
        h = Doubler(name="doubler")(h)
    # "logits": a final linear layer, trained with from_logits (the pipeline appends the softmax).
    outputs = keras.layers.Dense(n, activation=None if kind == "logits" else "softmax", name="dense")(h)
    model = keras.Model(inputs, outputs)
keras.utils.set_random_seed(0)
model.compile(keras.optimizers.Adam(0.05),
              keras.losses.SparseCategoricalCrossentropy(from_logits=kind == "logits"), metrics=["accuracy"])
if kind not in ("lambda", "custom"):  # refused before they run: no need to train them
    model.fit(x, y, epochs=8, batch_size=16, verbose=0)
accuracy = model.evaluate(x, y, verbose=0)[1]
model.save(out)
marker.unlink(missing_ok=True)  # building and training the model called its layers
print(f"saved {out} ({kind}), training accuracy {accuracy:.3f}")
