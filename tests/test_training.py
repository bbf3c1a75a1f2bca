"""Same seed, same machine: the same trained weights, bit for bit, through the real augmenting input pipeline."""

from __future__ import annotations

import numpy as np

from pipeline import data
from pipeline.training import seed_everything


def _train_once(images: np.ndarray, labels: np.ndarray) -> list[np.ndarray]:
    from core.keras_compat import keras

    seed_everything(11)
    ds = data.make_dataset(images, labels, 8, training=True, augment=("horizontal_flip", "crop", "brightness",
                                                                      "contrast"), seed=11)
    model = keras.Sequential([
        keras.Input((16, 16, 3)),
        keras.layers.Rescaling(1 / 255.0),
        keras.layers.Conv2D(8, 3, activation="relu"),
        keras.layers.BatchNormalization(),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dropout(0.3),
        keras.layers.Dense(3, activation="softmax"),
    ])
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy")
    model.fit(ds, epochs=2, verbose=0)
    return model.get_weights()


def test_two_trainings_with_the_same_seed_give_identical_weights():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (48, 16, 16, 3)).astype(np.uint8)
    labels = rng.integers(0, 3, 48)
    first, second = _train_once(images, labels), _train_once(images, labels)
    assert len(first) == len(second) > 0
    assert all(np.array_equal(a, b) for a, b in zip(first, second))
    assert not np.array_equal(first[1], np.zeros_like(first[1]))  # it did train
