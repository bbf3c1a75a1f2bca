"""One artifact in its own process: ``python -m benchmarks.worker FILE RUNTIME THREADS INPUTS.npz``.

The parent (``benchmarks.run``) starts one worker per artifact and target and
drives all of them round by round over stdin/stdout, one JSON object per line,
so every file sees the same machine state. Only the worker's own imports and
the one model live in this process: its load time, first-inference time and
peak memory are that file's alone.

Commands (``{"op": ...}``): ``time`` (``n`` timed calls, after ``warm`` untimed ones,
at least one, and more until ``warm_seconds`` have passed: they wake this file's threads
and the host's cores and refill the caches another process just used), ``memory``, ``predict``
(the accuracy images from INPUTS.npz, ``images``), ``quit``.
"""

from __future__ import annotations

import json
import os
import sys
import time


def _import_runtime(runtime: str, threads: int) -> None:
    """Import the runtime library (and what loading a file needs) before the baseline memory reading."""
    if runtime == "keras":
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        # The one Keras (tf_keras), set up before TensorFlow is imported; then the loader itself.
        from core.keras_compat import tf
        import core.loader  # noqa: F401

        # TensorFlow reads its thread pools once, before the first op: set them first.
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    elif runtime == "litert":
        import ai_edge_litert.interpreter  # noqa: F401
        import ai_edge_litert.schema_py_generated  # noqa: F401  (reads our files' input metadata)
    elif runtime == "onnxruntime":
        import onnxruntime  # noqa: F401


def main(argv: list[str]) -> int:
    path, runtime, threads, inputs = argv[0], argv[1], int(argv[2]), argv[3]
    # Replies go to the real stdout; anything a library prints goes to stderr.
    reply_stream = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    sys.stdout = sys.stderr

    def reply(**payload) -> None:
        reply_stream.write(json.dumps(payload) + "\n")

    import numpy as np

    from benchmarks.memory import peak_rss_mb
    from exporters.runtimes import open_session, time_invocations

    _import_runtime(runtime, threads)
    with np.load(inputs) as data:
        samples = {key: data[key] for key in data.files if key.startswith("sample")}
    # High-water marks both: what the model adds to the peak, not to a momentary reading.
    baseline = peak_rss_mb()

    start = time.perf_counter()
    session = open_session(path, runtime, threads, benchmark=True)
    load_ms = (time.perf_counter() - start) * 1e3
    sample = samples["sample"]
    if session.input_size != sample.shape[1]:
        from benchmarks.inputs import resize

        sample = samples.get(f"sample_{session.input_size}", resize(sample[0], session.input_size)[None])
    feed = session.prepare(sample[:1])
    start = time.perf_counter()
    session.invoke(feed)
    first_ms = (time.perf_counter() - start) * 1e3
    reply(ready=True, load_ms=load_ms, first_inference_ms=first_ms, baseline_rss_mb=baseline,
          input_size=session.input_size)

    for line in sys.stdin:
        command = json.loads(line)
        op = command["op"]
        if op == "time":
            warm_until = time.perf_counter() + float(command.get("warm_seconds", 0.0))
            for _ in range(max(1, int(command.get("warm", 1)))):
                session.invoke(feed)
            while time.perf_counter() < warm_until:
                session.invoke(feed)
            reply(times_ms=time_invocations(session, feed, int(command.get("n", 1)),
                                            float(command.get("max_seconds", float("inf")))))
        elif op == "memory":
            reply(peak_rss_mb=peak_rss_mb(), baseline_rss_mb=baseline)
        elif op == "predict":
            with np.load(inputs) as data:
                images = data["images"]
            probs = session.predict(images.astype(np.float32))
            reply(probs=probs.round(6).tolist())
        elif op == "quit":
            reply(bye=True)
            return 0
        else:
            reply(error=f"unknown op {op!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
