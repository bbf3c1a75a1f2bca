"""Self-check of the latency harness: a file timed alone, in a fresh process, against its interleaved figures.

The bench times every file in turns with the others (``benchmarks.latency``), which
protects against drift but could distort a file's figures (another file's thread
pool still awake, caches it left cold). Here the same file runs alone: a new worker
process, the same runtime and thread count, one long burst after ``WARM_SECONDS`` of
untimed calls, with nothing else running. The harness agrees when its p50 is within
``P50_TOLERANCE`` and its p90 within ``P90_TOLERANCE`` of the file's own. The file is
timed alone twice, in two processes one after the other: when those two runs differ by
more than the same tolerances, the host itself was unsteady and a disagreement says
nothing about the harness (the quickstart's 0.08 ms file at 2 threads, alone three
times on a 2-core VM: p50 0.162, 0.074 and 0.071 ms).

The bench does it for one file per target (its fastest, where the harness's own cost
would show most) and writes ``benchmark.self_check`` in results.json; the command
does it for every file of a build's last bench, and exits 1 when one disagrees:

    python -m benchmarks.selfcheck build/flowers [--seconds 3]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Optional

from benchmarks.latency import Worker, slug, summarize

P50_TOLERANCE = 0.10
P90_TOLERANCE = 0.20
WARM = 50
# Untimed calls for this long first: a host idle a moment before runs its first second slower
# (measured on a 2-core VM: flowers' fp32 file at 2 threads 0.84 ms in the first 3 s after a
# pause, 0.71 ms in the next 3 s), which is drift, not the harness.
WARM_SECONDS = 1.5
QUANTILES = ("p50", "p90", "p99")


def time_alone(path: Path, runtime: str, threads: int, inputs: Path, log: Optional[Path] = None,
               seconds: float = 3.0, max_runs: int = 3000) -> dict:
    """``path``'s latency summary from a fresh worker process timed in one stretch (``seconds`` at most)."""
    worker = Worker(str(path), Path(path), runtime, threads, inputs, log).start()
    try:
        times = worker.ask(op="time", n=max_runs, warm=WARM, warm_seconds=WARM_SECONDS, max_seconds=seconds)["times_ms"]
    finally:
        worker.close()
    return summarize(times)


def _within(ratio: float, tolerance: float) -> bool:
    return abs(ratio - 1) <= tolerance + 1e-9  # 1.1 - 1 is 0.10000000000000009 in binary


def _agree(ratio: dict) -> bool:
    return _within(ratio["p50"], P50_TOLERANCE) and _within(ratio["p90"], P90_TOLERANCE)


def compare(harness: dict, alone: dict, again: Optional[dict] = None) -> dict:
    """The harness's percentiles over the file's own, and whether they agree within the tolerances.

    ``again``: the file alone a second time. ``verdict`` is "agrees", "disagrees" (the two
    alone runs agree with each other, so the harness moved the figures) or "host unsteady"
    (they do not: this host cannot tell). ``host_tail``: the file's own p99 over its p50,
    alone: how much of a tail the host makes by itself.
    """
    ratio = {q: round(harness[q] / alone[q], 3) for q in QUANTILES}
    entry = {"harness": {q: harness[q] for q in QUANTILES}, "alone": {q: alone[q] for q in QUANTILES},
             "alone_runs": alone["runs"], "ratio": ratio, "agrees": _agree(ratio),
             "host_tail": round(alone["p99"] / alone["p50"], 3),
             "tolerance": {"p50": P50_TOLERANCE, "p90": P90_TOLERANCE}}
    steady = True
    if again is not None:
        entry["alone_again"] = {q: again[q] for q in QUANTILES}
        entry["repeat"] = {q: round(again[q] / alone[q], 3) for q in QUANTILES}
        steady = entry["host_steady"] = _agree(entry["repeat"])
    entry["verdict"] = "agrees" if entry["agrees"] else "disagrees" if steady else "host unsteady"
    return entry


def pick(rows: list[dict]) -> Optional[dict]:
    """The row a target's self-check times: its fastest file of this build (else its fastest of any)."""
    ours = [r for r in rows if r["origin"] == "build"] or rows
    return min(ours, key=lambda r: r["latency_ms"]["p50"]) if ours else None


def check(rows: list[dict], paths: dict, inputs: Path, work: Path, seconds: float = 3.0) -> list[dict]:
    """Time each row's file alone twice (``paths``: artifact key -> file; ``seconds`` shared by the two runs)
    and compare it with the row's figures."""
    out = []
    for row in rows:
        # One log per run: a worker opens its log for writing, so a shared one would keep only the second run's.
        alone, again = [time_alone(paths[row["artifact"]], row["runtime"], row["threads"], inputs,
                                   work / f"selfcheck-{row['target']}-{slug(row['artifact'])}-{run}.log", seconds / 2)
                        for run in (1, 2)]
        out.append({"target": row["target"], "artifact": row["artifact"], "threads": row["threads"],
                    **compare(row["latency_ms"], alone, again)})
    return out


def verdict(entry: dict) -> str:
    """The entry's verdict as the log and the report write it (an entry from before the second run has none)."""
    found = entry.get("verdict") or ("agrees" if entry["agrees"] else "disagrees")
    return found.upper() if found == "disagrees" else found


def describe(entry: dict) -> str:
    """One line of a self-check entry, for the log and the command's table."""
    h, a, r = entry["harness"], entry["alone"], entry["ratio"]
    return (f"{entry['target']:<14} {entry['artifact']:<34} {entry['threads']} thr  "
            f"p50 {h['p50']:.3f} vs {a['p50']:.3f} ms (x{r['p50']:.2f})  p90 {h['p90']:.3f} vs {a['p90']:.3f} ms "
            f"(x{r['p90']:.2f})  p99 x{r['p99']:.2f}  {verdict(entry)}"
            + (f" (alone twice: p50 x{entry['repeat']['p50']:.2f}, p90 x{entry['repeat']['p90']:.2f})"
               if "repeat" in entry else ""))


def row_path(build: Path, row: dict) -> Path:
    """Where a bench row's file is: ``file`` is relative to the artifacts (ours), the build (Keras) or here."""
    from core import layout

    if row["origin"] == "build":
        return build / layout.ARTIFACTS / row["file"]
    return Path(row["file"]) if row["origin"] == "reference" else build / row["file"]


def last_bench_rows(build: Path) -> list[dict]:
    """The rows of ``build``'s last bench; FileNotFoundError, with the remedy, when it has none."""
    from core import layout

    results_path = build / layout.BENCH_RESULTS
    if not results_path.is_file():
        raise FileNotFoundError(f"{results_path} not found; run the bench first (make bench).")
    return json.loads(results_path.read_text(encoding="utf-8"))["benchmark"]["rows"]


def row_files(build: Path, rows: list[dict]) -> dict:
    """Each row's file by artifact key; FileNotFoundError, with the remedy, when one is gone."""
    paths = {r["artifact"]: row_path(build, r) for r in rows}
    missing = sorted({str(p) for p in paths.values() if not p.is_file()})
    if missing:
        raise FileNotFoundError(f"{', '.join(missing)} not found; run the export and bench again.")
    return paths


def one_image_inputs(build: Path, paths: dict, folder: Path) -> Path:
    """The workers' input file: the build's first test image at every input size among ``paths``."""
    from core import layout
    from core.splits import load_split
    from benchmarks.inputs import input_size, write_inputs

    x_test, _ = load_split(build / layout.split("test"))
    return write_inputs(folder / "inputs.npz", x_test[:1], sizes={input_size(p) for p in paths.values()} - {None})


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.selfcheck", description=__doc__.split("\n\n")[0])
    parser.add_argument("build", type=Path, help="a build folder with a bench run, e.g. build/flowers")
    parser.add_argument("--seconds", type=float, default=3.0, help="timing per file alone (default 3)")
    args = parser.parse_args(argv)
    try:
        rows = last_bench_rows(args.build)
        paths = row_files(args.build, rows)
    except FileNotFoundError as missing:
        print(f"error: {missing}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        inputs = one_image_inputs(args.build, paths, Path(tmp))
        entries = []
        for row in rows:
            (entry,) = check([row], paths, inputs, Path(tmp), args.seconds)
            entries.append(entry)
            print(describe(entry), flush=True)
    worst = {q: max(entries, key=lambda e: abs(e["ratio"][q] - 1)) for q in ("p50", "p90")}
    for q, e in worst.items():
        print(f"worst {q}: x{e['ratio'][q]:.3f} ({e['target']}, {e['artifact']})")
    return 0 if all(e["agrees"] for e in entries) else 1


if __name__ == "__main__":
    sys.exit(main())
