"""The one loader of a saved classifier: export, the benchmarks and their worker processes all load through it."""

from __future__ import annotations

import core.layers  # noqa: F401  (registers the custom layers a saved model holds)
from core.keras_compat import keras


def load_classifier(path) -> keras.Model:
    """A ``.keras`` classifier, uncompiled.

    ``safe_mode``: a ``.keras`` file cannot run arbitrary code (Lambda layers) when loaded.
    """
    return keras.models.load_model(path, compile=False, safe_mode=True)
