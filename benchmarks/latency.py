"""Latency of model files, each in its own worker process, interleaved round by round.

Each round runs every worker once in a fresh random order, so machine drift
(thermal, other load) hits all files alike and no file always follows the same
neighbour. Rounds go on until every file has ``min_runs`` samples and the 95%
confidence interval of every median is within ``rel_ci`` of it, or until
``max_runs`` / ``max_seconds`` is reached.

    python -m benchmarks.latency --threads 1 --max-seconds 20 a.tflite b.tflite c.onnx
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from benchmarks import worker as worker_module  # imported for its name: each worker process runs it (and stamps see it)
from exporters.registry import is_model_file, kind_of_file

REPO = Path(__file__).resolve().parents[1]


def median_ci95(sorted_times: np.ndarray) -> tuple[float, float]:
    """Distribution-free 95% interval of the median: order statistics chosen from the exact binomial.

    With B ~ Binomial(n, 1/2) and l the 2.5% quantile of B, the sorted sample's
    l-th and (n - l + 1)-th values (1-based) cover the true median with at least
    95% probability, whatever the distribution of the times.
    """
    from scipy.stats import binom

    n = len(sorted_times)
    l = int(binom.ppf(0.025, n, 0.5))
    if l < 1:  # too few runs for a 95% interval: the whole range
        return float(sorted_times[0]), float(sorted_times[-1])
    return float(sorted_times[l - 1]), float(sorted_times[n - l])


def summarize(times_ms: list[float]) -> dict:
    t = np.sort(np.asarray(times_ms, dtype=np.float64))
    lo, hi = median_ci95(t)
    return {
        "p50": round(float(np.median(t)), 4),
        "p90": round(float(np.percentile(t, 90)), 4),
        "p99": round(float(np.percentile(t, 99)), 4),
        "mean": round(float(t.mean()), 4),
        "std": round(float(t.std(ddof=1)) if len(t) > 1 else 0.0, 4),
        "ci95": [round(lo, 4), round(hi, 4)],
        "runs": int(len(t)),
    }


def relative_ci(stats: dict) -> float:
    """Half-width of the median's 95% interval as a fraction of the median: the noise of independent calls."""
    lo, hi = stats["ci95"]
    return (hi - lo) / 2 / stats["p50"] if stats["p50"] > 0 else 1.0


# Slices with fewer timed calls than this say little about where their median lies.
MIN_SLICE_RUNS = 5


def slice_medians(times_ms: list[float], starts: list[int]) -> list[float]:
    """The median of each timing slice (``starts``: where each began in ``times_ms``) that has enough calls."""
    bounds = list(starts) + [len(times_ms)]
    parts = [times_ms[a:b] for a, b in zip(bounds, bounds[1:])]
    return [float(np.median(p)) for p in parts if len(p) >= MIN_SLICE_RUNS]


def slice_noise(times_ms: list[float], starts: list[int]) -> Optional[float]:
    """Relative half-width of a 95% interval of the median from its slices' medians (batch means); None under 3 slices.

    The binomial interval of :func:`median_ci95` treats every call as independent. A
    runtime whose speed wanders for seconds at a time breaks that: TensorFlow's 1-thread
    Keras model, timed alone in one process in 4-second windows, had window medians
    from 5.8 to 7.8 ms, and its p50 moved 13-15% between two benches whose binomial
    intervals were ±0.7%. One target's slices are spread over the whole bench (on
    flowers, about a minute apart), so their medians are close to independent, and
    their Student-t interval covers that wander.
    """
    from scipy.stats import t

    medians = slice_medians(times_ms, starts)
    if len(medians) < 3:
        return None
    k = len(medians)
    centre = float(np.median(times_ms))
    half = t.ppf(0.975, k - 1) * float(np.std(medians, ddof=1)) / math.sqrt(k)
    return half / centre if centre > 0 else 1.0


def slug(key: str) -> str:
    """A worker key (``reference:x.tflite``, ``keras@1``) as a file-name part, for its log."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in key)


class WorkerError(RuntimeError):
    pass


@dataclass
class Worker:
    """A ``benchmarks.worker`` process holding one loaded model."""

    key: str
    path: Path
    runtime: str
    threads: int
    inputs: Path
    log: Optional[Path] = None
    ready: dict = field(default_factory=dict)
    times: list = field(default_factory=list)
    slices: list = field(default_factory=list)  # where each timing slice (one `interleave` call) began in `times`
    proc: Optional[subprocess.Popen] = None
    _log_file: Optional[object] = None

    def start(self) -> "Worker":
        self.proc = subprocess.Popen(
            # Absolute paths: the worker starts in the package's folder, the user's may be anywhere.
            [sys.executable, "-m", worker_module.__name__, str(Path(self.path).resolve()), self.runtime,
             str(self.threads), str(Path(self.inputs).resolve())],
            cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log_stream(), text=True, bufsize=1,
        )
        self.ready = self._read()
        return self

    def _log_stream(self):
        # A file, not a pipe: a chatty runtime (TensorFlow) would fill a pipe nobody reads and hang.
        if self.log is None:
            return subprocess.DEVNULL
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self._log_file = self.log.open("w")
        return self._log_file

    def _died(self) -> WorkerError:
        try:
            code = self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = "killed"
        tail = self.log.read_text().strip().splitlines()[-1:] if self.log and self.log.exists() else []
        where = f" (log: {self.log})" if self.log else ""
        return WorkerError(f"benchmark worker for {self.path} exited with code {code}: "
                           f"{tail[0] if tail else 'no output'}{where}")

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise self._died()
        try:
            reply = json.loads(line)
        except json.JSONDecodeError:
            raise WorkerError(f"benchmark worker for {self.path} wrote {line[:80]!r} instead of a reply") from None
        if "error" in reply:
            raise WorkerError(f"benchmark worker for {self.path}: {reply['error']}")
        return reply

    def ask(self, **command) -> dict:
        try:
            self.proc.stdin.write(json.dumps(command) + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            raise self._died() from None
        return self._read()

    def close(self) -> None:
        if self.proc and self.proc.poll() is None:
            try:
                self.ask(op="quit")
                self.proc.wait(timeout=30)
            except (WorkerError, OSError, subprocess.TimeoutExpired, ValueError):
                self.proc.kill()
        for stream in (self.proc.stdin, self.proc.stdout, self._log_file) if self.proc else ():
            if stream:
                stream.close()


def interleave(workers: list[Worker], *, min_runs: int = 30, max_runs: int = 2000, max_seconds: float = 30.0,
               rel_ci: float = 0.01, burst: int = 20, burst_warmup: int = 5, burst_warm_seconds: float = 0.0,
               warmup: int = 10, seed: int = 0, progress=None) -> float:
    """Time every worker round by round until each median is stable or a bound is hit; returns seconds spent.

    Each round of a worker is ``burst_warmup`` untimed calls, more until ``burst_warm_seconds``
    have passed, then ``burst`` timed ones.
    """
    rng = np.random.default_rng(seed)
    order = list(workers)
    for worker in order:  # caches, thread pools and lazy allocations settle before any timing counts
        worker.ask(op="time", n=warmup)
    before = {id(w): len(w.times) for w in workers}  # bounds count this call's runs (workers may carry earlier ones)
    for worker in workers:
        worker.slices.append(len(worker.times))
    started = time.perf_counter()
    while True:
        rng.shuffle(order)
        for worker in order:
            worker.times.extend(worker.ask(op="time", n=burst, warm=burst_warmup,
                                                 warm_seconds=burst_warm_seconds)["times_ms"])
        elapsed = time.perf_counter() - started
        runs = min(len(w.times) - before[id(w)] for w in workers)
        if progress is not None:
            progress(elapsed, runs)
        if runs >= max_runs or elapsed >= max_seconds:
            return elapsed
        if rel_ci > 0 and runs >= min_runs and all(relative_ci(summarize(w.times)) <= rel_ci for w in workers):
            return elapsed


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.latency", description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--max-seconds", type=float, default=20.0)
    parser.add_argument("--max-runs", type=int, default=2000)
    parser.add_argument("--rounds", type=int, help="exactly this many timed runs per file (sets min and max runs)")
    args = parser.parse_args(argv)
    if args.rounds:
        args.max_runs, args.max_seconds = args.rounds, float("inf")
    missing = [str(p) for p in args.files if not p.is_file() or not is_model_file(p)]
    if missing:
        print(f"error: not a .tflite/.onnx/.keras file: {', '.join(missing)}", file=sys.stderr)
        return 2
    import tempfile

    from benchmarks.inputs import input_size, write_inputs

    with tempfile.TemporaryDirectory() as tmp:
        inputs = write_inputs(Path(tmp) / "inputs.npz", None, sizes={input_size(p) for p in args.files} - {None})
        workers = [Worker(str(p), p, kind_of_file(p).runtime, args.threads, inputs, Path(tmp) / f"{i}.log")
                   for i, p in enumerate(args.files)]
        try:
            for w in workers:
                w.start()
            interleave(workers, max_seconds=args.max_seconds, max_runs=args.max_runs,
                       min_runs=min(30, args.max_runs), rel_ci=0.0 if args.rounds else 0.01)
        except WorkerError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        finally:
            for w in workers:
                w.close()
    print(json.dumps({w.key: summarize(w.times) for w in workers}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
