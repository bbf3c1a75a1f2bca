"""How far apart two bench runs of the same files are: is this host steady enough to read milliseconds from?

    python -m benchmarks.repeatability BASELINE_RESULTS RESULTS [--within 0.10]

For every file × target in both ``bench/results.json`` files, three changes of
its p50 from the first run to the second:

- ``p50``: the milliseconds themselves, which a host whose speed drifts between
  runs moves as much as a real change of the file does;
- ``vs Keras``: its ratio to the Keras model at the file's own thread count
  (``ratio_to_keras_at_threads``), read as ``benchmarks.gate`` reads it;
- ``vs fp32``: its ratio to the fp32 file of the same build on the same target
  and runtime (tflite-fp32 for LiteRT files, onnx-fp32 for onnxruntime ones),
  timed in the same rounds: a reference that shares the file's runtime and
  threads, so host drift cancels best in it.

Beside them, ``noise``: the two medians' own noise (each row's ``noise``,
root-sum-squared), and a ``*`` where the p50 moved by more than that, i.e. by
more than the two runs' timings could tell apart.

It prints every row, worst first, and the worst of each. ``--within F`` exits 1
when a p50 changed by more than the fraction F (e.g. 0.10): the check that two
runs "agree within 10%". The gate judges regressions; this measures the host.
Exit codes: 0, 1 (outside ``--within``), 2 (an input that is not a results.json).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

from benchmarks.gate import combined_noise, latency_ratio, load_pair, rows_by_key

MEASURES = ("p50", "vs_keras", "vs_fp32")


def _fp32_sibling(rows: dict, row: dict) -> Optional[dict]:
    """The build's fp32 file on the row's target and runtime (None for the Keras row and for that file itself)."""
    if row["origin"] == "keras":
        return None
    for (target, _), other in rows.items():
        if (target == row["target"] and other["runtime"] == row["runtime"] and other["origin"] == "build"
                and other["precision"] == "fp32" and other is not row):
            return other
    return None


def _ratio_to_keras(rows: dict, row: dict, same_threads: bool) -> Optional[float]:
    """The ratio the gate compares (None for the Keras row itself)."""
    if row["origin"] == "keras":
        return None
    return latency_ratio(row, rows[(row["target"], "keras")], same_threads)[0]


def shifts(baseline: dict, current: dict) -> list[dict]:
    """Per file × target in both runs: each measure's relative change (None where it does not apply)."""
    base_rows, cur_rows = rows_by_key(baseline), rows_by_key(current)
    out = []
    for key, cur in cur_rows.items():
        base = base_rows.get(key)
        if base is None or not base.get("latency_ms") or not cur.get("latency_ms"):
            continue
        row = {"target": key[0], "artifact": key[1], "threads": cur["threads"],
               "p50_ms": [base["latency_ms"]["p50"], cur["latency_ms"]["p50"]],
               "p50": cur["latency_ms"]["p50"] / base["latency_ms"]["p50"] - 1,
               # Results from before the noise field have none: no judgement there.
               "noise": combined_noise(base["noise"], cur["noise"]) if "noise" in base and "noise" in cur else None}
        same_threads = "ratio_to_keras_at_threads" in base and "ratio_to_keras_at_threads" in cur
        before, after = _ratio_to_keras(base_rows, base, same_threads), _ratio_to_keras(cur_rows, cur, same_threads)
        row["vs_keras"] = after / before - 1 if before and after else None
        sib_base, sib_cur = _fp32_sibling(base_rows, base), _fp32_sibling(cur_rows, cur)
        row["vs_fp32"] = None
        if sib_base and sib_cur and sib_base["artifact"] == sib_cur["artifact"]:
            row["vs_fp32"] = ((cur["latency_ms"]["p50"] / sib_cur["latency_ms"]["p50"])
                              / (base["latency_ms"]["p50"] / sib_base["latency_ms"]["p50"]) - 1)
        out.append(row)
    return sorted(out, key=lambda r: -abs(r["p50"]))


def worst(rows: list[dict], measure: str) -> Optional[dict]:
    applicable = [r for r in rows if r[measure] is not None]
    return max(applicable, key=lambda r: abs(r[measure])) if applicable else None


def beyond_noise(row: dict) -> bool:
    """The p50 moved by more than the two medians' measured noise: more than the runs' own timings explain."""
    return row["noise"] is not None and abs(row["p50"]) > row["noise"]


def _pct(value: Optional[float]) -> str:
    return "" if value is None else f"{100 * value:+.1f}%"


def report(rows: list[dict], baseline: dict, current: dict, within: Optional[float]) -> list[str]:
    lines = [f"{'target':13s} {'file':46s} thr {'p50 ms':>17s} {'p50':>7s} {'noise':>7s} {'vs Keras':>8s} {'vs fp32':>7s}"]
    for r in rows:
        a, b = r["p50_ms"]
        noise = "" if r["noise"] is None else f"±{100 * r['noise']:.1f}%" + ("*" if beyond_noise(r) else " ")
        lines.append(f"{r['target']:13s} {r['artifact'][:46]:46s} {r['threads']:3d} {a:8.3f}->{b:<8.3f} "
                     f"{_pct(r['p50']):>7s} {noise:>8s}{_pct(r['vs_keras']):>8s} {_pct(r['vs_fp32']):>7s}")
    for measure in MEASURES:
        w = worst(rows, measure)
        if w is not None:
            over = "" if within is None else \
                f"; {sum(1 for r in rows if r[measure] is not None and abs(r[measure]) > within)} over {100 * within:g}%"
            lines.append(f"worst {measure:8s} {100 * abs(w[measure]):5.1f}% ({w['artifact']} on {w['target']}){over}")
    judged = [r for r in rows if r["noise"] is not None]
    if judged:
        beyond = [r for r in judged if beyond_noise(r)]
        lines.append(f"p50 moved beyond its measured noise (*): {len(beyond)} of {len(judged)} rows; "
                     f"the widest noise ±{100 * max(r['noise'] for r in judged):.1f}%")
    seconds = [run["benchmark"]["seconds"] for run in (baseline, current)]
    lines.append(f"bench seconds {seconds[0]} and {seconds[1]}; {len(rows)} file x target rows in both")
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.repeatability", description=__doc__.split("\n\n")[0])
    parser.add_argument("baseline", type=Path, help="bench/results.json of the first run")
    parser.add_argument("results", type=Path, help="bench/results.json of the second run")
    parser.add_argument("--within", type=float, help="exit 1 when a p50 changed by more than this fraction (0.10)")
    args = parser.parse_args(argv)
    pair = load_pair(args.baseline, args.results)
    if pair is None:
        return 2
    baseline, current = pair
    rows = shifts(baseline, current)
    print("\n".join(report(rows, baseline, current, args.within)))
    if args.within is not None and any(abs(r["p50"]) > args.within for r in rows):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
