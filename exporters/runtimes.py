"""Load an exported file in the runtime that ships it and run it on a batch of images."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np


def load_predictor(path: Path, runtime: str, threads: int = 1) -> Callable[[np.ndarray], np.ndarray]:
    """Return ``predict(images_float32_nhwc) -> probabilities`` for ``path`` on ``runtime``."""
    path = Path(path)
    if runtime == "litert":
        return _litert(path, threads)
    if runtime == "onnxruntime":
        return _onnxruntime(path, threads)
    if runtime == "keras":
        return _keras(path)
    raise ValueError(f"unknown runtime {runtime!r}")


def _litert(path: Path, threads: int):
    # ai-edge-litert is the LiteRT runtime that ships on phones; tf.lite.Interpreter is deprecated.
    from ai_edge_litert.interpreter import Interpreter

    from exporters.tflite import raw_pixel_offset

    interpreter = Interpreter(model_path=str(path), num_threads=threads)
    interpreter.allocate_tensors()
    inp = interpreter.get_input_details()[0]
    out = interpreter.get_output_details()[0]

    in_scale, in_zero = inp["quantization"]
    out_scale, out_zero = out["quantization"]
    quantized_in = np.issubdtype(inp["dtype"], np.integer)
    quantized_out = np.issubdtype(out["dtype"], np.integer)
    # Our integer-input files take the camera byte itself (plus an offset for int8),
    # whatever normalization their input quantization carries; others (e.g. older
    # exports) take pixels quantized with the file's own scale and zero point.
    pixel_offset = raw_pixel_offset(path) if quantized_in else None

    def to_input(x: np.ndarray) -> np.ndarray:
        if not quantized_in:
            return x
        info = np.iinfo(inp["dtype"])
        if pixel_offset is not None:
            x = np.round(x) + pixel_offset
        else:
            x = np.round(x / in_scale + in_zero)
        return np.clip(x, info.min, info.max).astype(inp["dtype"])

    def predict(images: np.ndarray) -> np.ndarray:
        # One image at a time, the way a phone app calls it.
        results = []
        for image in images:
            interpreter.set_tensor(inp["index"], to_input(image[None]))
            interpreter.invoke()
            y = interpreter.get_tensor(out["index"])[0]
            if quantized_out:
                y = (y.astype(np.float32) - out_zero) * out_scale
            results.append(y.astype(np.float32))
        return np.stack(results)

    return predict


def _onnxruntime(path: Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def predict(images: np.ndarray, batch: int = 32) -> np.ndarray:
        parts = [session.run(None, {name: images[i:i + batch].astype(np.float32)})[0] for i in range(0, len(images), batch)]
        return np.concatenate(parts).astype(np.float32)

    return predict


def _keras(path: Path):
    from pipeline.models import compiled_predictor
    from pipeline.stages.finetune import load_model

    return compiled_predictor(load_model(path))


def median_latency_ms(predict: Callable[[np.ndarray], np.ndarray], sample: np.ndarray, runs: int,
                      warmup: int = 5, max_seconds: float = 10.0) -> float:
    """Median wall time of single-image calls, after warm-up; stops early after ``max_seconds``."""
    import time

    sample = sample[:1].astype(np.float32)
    for _ in range(warmup):
        predict(sample)
    times = []
    deadline = time.perf_counter() + max_seconds
    for _ in range(runs):
        start = time.perf_counter()
        predict(sample)
        times.append(time.perf_counter() - start)
        if time.perf_counter() > deadline:
            break
    return round(float(np.median(times)) * 1000.0, 4)
