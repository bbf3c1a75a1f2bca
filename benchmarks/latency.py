"""Interleaved single-image latency of model files on their own runtimes.

Each round runs every file once, so machine drift hits all files alike; the
figure per file is the median over rounds, at a fixed thread count. (The full
benchmark harness, with subprocess isolation and percentiles, builds on this.)

    python -m benchmarks.latency --threads 1 --rounds 300 a.tflite b.tflite c.onnx
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from exporters.runtimes import load_predictor

RUNTIME_BY_SUFFIX = {".tflite": "litert", ".onnx": "onnxruntime", ".keras": "keras"}


def interleaved_medians(paths: list[Path], threads: int, rounds: int, warmup: int = 10, seed: int = 0) -> dict:
    predictors = {}
    for path in paths:
        predict = load_predictor(path, RUNTIME_BY_SUFFIX[path.suffix], threads)
        predictors[path] = (predict, _input_for(path))
    times = {path: [] for path in paths}
    order = list(paths)
    rng = np.random.default_rng(seed)
    for r in range(warmup + rounds):
        rng.shuffle(order)  # no file always runs right after the same neighbour
        for path in order:
            predict, x = predictors[path]
            start = time.perf_counter()
            predict(x)
            if r >= warmup:
                times[path].append(time.perf_counter() - start)
    return {str(p): {"median_ms": round(float(np.median(t)) * 1e3, 4),
                     "p90_ms": round(float(np.percentile(t, 90)) * 1e3, 4), "runs": len(t)} for p, t in times.items()}


def _input_for(path: Path) -> np.ndarray:
    """A raw-pixel image of the file's own input size (the contract: float32 RGB in [0, 255])."""
    if path.suffix == ".tflite":
        from ai_edge_litert.interpreter import Interpreter

        shape = Interpreter(model_path=str(path)).get_input_details()[0]["shape"]
    else:
        import onnx

        dims = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim
        shape = [d.dim_value or 1 for d in dims]
    side = int(shape[1])
    return np.random.default_rng(0).integers(0, 256, (1, side, side, 3)).astype(np.float32)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.latency", description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args(argv)
    missing = [str(p) for p in args.files if not p.is_file() or p.suffix not in RUNTIME_BY_SUFFIX]
    if missing:
        print(f"error: not a .tflite/.onnx/.keras file: {', '.join(missing)}", file=sys.stderr)
        return 2
    print(json.dumps(interleaved_medians(args.files, args.threads, args.rounds), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
