"""Load an exported file in the runtime that ships it and run it on images.

A :class:`Session` separates the two things a benchmark must keep apart:
``prepare`` turns raw RGB pixels into what the file takes (quantized bytes for
a full-integer TFLite file), and ``invoke`` is the single call an app makes per
frame. ``predict`` does both, for accuracy runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from exporters.registry import kind_of_runtime


class Session:
    """One loaded model on one runtime, at a fixed thread count."""

    def prepare(self, images: np.ndarray) -> Any:
        """Raw float32 RGB pixels ``[n, S, S, 3]`` -> the runtime's own input for them."""
        raise NotImplementedError

    def invoke(self, feed: Any) -> np.ndarray:
        """One call of the model on a prepared input; returns its raw output."""
        raise NotImplementedError

    def probabilities(self, raw: np.ndarray) -> np.ndarray:
        return np.asarray(raw, dtype=np.float32)

    def predict(self, images: np.ndarray) -> np.ndarray:
        return self.probabilities(self.invoke(self.prepare(images)))

    @property
    def input_size(self) -> int:
        raise NotImplementedError


def open_session(path: Path, runtime: str, threads: int = 1, benchmark: bool = False) -> Session:
    """``benchmark``: the session shares the CPU with other files timed in turn (see ``OnnxSession``)."""
    path = Path(path)
    kind_of_runtime(runtime)  # an unknown runtime names the valid ones
    if runtime == "litert":
        return LiteRTSession(path, threads)
    if runtime == "onnxruntime":
        return OnnxSession(path, threads, spin=not benchmark)
    return KerasSession(path)


def load_predictor(path: Path, runtime: str, threads: int = 1) -> Callable[[np.ndarray], np.ndarray]:
    """Return ``predict(images_float32_nhwc) -> probabilities`` for ``path`` on ``runtime``."""
    return open_session(path, runtime, threads).predict


class LiteRTSession(Session):
    def __init__(self, path: Path, threads: int):
        # ai-edge-litert is the LiteRT runtime that ships on phones; tf.lite.Interpreter is deprecated.
        from ai_edge_litert.interpreter import Interpreter

        from exporters.inspect import raw_pixel_offset

        self.interpreter = Interpreter(model_path=str(path), num_threads=threads)
        self.interpreter.allocate_tensors()
        self.inp = self.interpreter.get_input_details()[0]
        self.out = self.interpreter.get_output_details()[0]
        self.quantized_in = np.issubdtype(self.inp["dtype"], np.integer)
        self.quantized_out = np.issubdtype(self.out["dtype"], np.integer)
        # Our integer-input files take the camera byte itself (plus an offset for int8),
        # whatever normalization their input quantization carries; others (e.g. older
        # exports, published reference files) take pixels quantized with the file's own
        # scale and zero point.
        self.pixel_offset = raw_pixel_offset(path) if self.quantized_in else None

    @property
    def input_size(self) -> int:
        return int(self.inp["shape"][1])

    def prepare(self, images: np.ndarray) -> np.ndarray:
        x = np.asarray(images, dtype=np.float32)
        if not self.quantized_in:
            return x
        scale, zero = self.inp["quantization"]
        info = np.iinfo(self.inp["dtype"])
        x = np.round(x) + self.pixel_offset if self.pixel_offset is not None else np.round(x / scale + zero)
        return np.clip(x, info.min, info.max).astype(self.inp["dtype"])

    def invoke(self, feed: np.ndarray) -> np.ndarray:
        # One image at a time, the way a phone app calls it.
        results = []
        for image in feed:
            self.interpreter.set_tensor(self.inp["index"], image[None])
            self.interpreter.invoke()
            results.append(self.interpreter.get_tensor(self.out["index"])[0])
        return np.stack(results)

    def probabilities(self, raw: np.ndarray) -> np.ndarray:
        if self.quantized_out:
            scale, zero = self.out["quantization"]
            return ((raw.astype(np.float32) - zero) * scale).astype(np.float32)
        return raw.astype(np.float32)


class OnnxSession(Session):
    def __init__(self, path: Path, threads: int, batch: int = 32, spin: bool = True):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        if not spin:
            # onnxruntime's pool threads busy-wait after each run; when files are timed in
            # turn, that spinning would steal a core from the next file's run.
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0]
        self.batch = batch

    @property
    def input_size(self) -> int:
        return int(self.input.shape[1])

    def prepare(self, images: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(images, dtype=np.float32)

    def invoke(self, feed: np.ndarray) -> np.ndarray:
        parts = [self.session.run(None, {self.input.name: feed[i:i + self.batch]})[0]
                 for i in range(0, len(feed), self.batch)]
        return np.concatenate(parts)


class KerasSession(Session):
    """The Keras model as a compiled ``tf.function`` (not ``model.predict``, whose per-call overhead is not the model's).

    The one Keras predictor: the export stage's reference probabilities, validation and the
    benchmark workers all run a Keras model through it. ``model`` is a loaded model or a
    ``.keras`` path (loaded with ``core.loader``).
    """

    def __init__(self, model, batch: int = 64):
        from core.keras_compat import tf

        if isinstance(model, (str, Path)):
            from core.loader import load_classifier

            model = load_classifier(model)
        self.tf = tf
        self.model = model
        self.fn = tf.function(lambda x: self.model(x, training=False), reduce_retracing=True)
        self.batch = batch

    @property
    def input_size(self) -> int:
        return int(self.model.input_shape[1])

    def prepare(self, images: np.ndarray):
        return self.tf.constant(np.asarray(images, dtype=np.float32))

    def invoke(self, feed) -> np.ndarray:
        parts = [self.fn(feed[i:i + self.batch]).numpy() for i in range(0, int(feed.shape[0]), self.batch)]
        if not parts:
            return np.zeros((0, self.model.output_shape[-1]), np.float32)
        return np.concatenate(parts)


def keras_probabilities(model, images: np.ndarray) -> np.ndarray:
    """The Keras reference probabilities of ``images`` (raw float32 pixels)."""
    return KerasSession(model).predict(images)


def time_invocations(session: Session, feed: Any, runs: int, max_seconds: float = float("inf")) -> list[float]:
    """Wall times in ms of ``runs`` single calls of ``session.invoke(feed)``; stops after ``max_seconds``.

    The one latency timer: the benchmark workers time each round with it, and the
    export stage's quick single-thread figure is its median.
    """
    import time

    times = []
    deadline = time.perf_counter() + max_seconds
    for _ in range(runs):
        start = time.perf_counter()
        session.invoke(feed)
        times.append((time.perf_counter() - start) * 1e3)
        if time.perf_counter() > deadline:
            break
    return times


def median_latency_ms(session: Session, sample: np.ndarray, runs: int, warmup: int = 5,
                      max_seconds: float = 10.0) -> float:
    """Median wall time of single-image calls on ``sample[:1]``, after ``warmup`` calls."""
    feed = session.prepare(np.asarray(sample[:1], dtype=np.float32))
    for _ in range(warmup):
        session.invoke(feed)
    return round(float(np.median(time_invocations(session, feed, runs, max_seconds))), 4)
