"""CI gate: compare a build's ``bench/results.json`` with a baseline one; exit 1 on a regression.

    python -m benchmarks.gate --baseline path/to/baseline/results.json [--results build/<name>/bench/results.json]

For every file benchmarked on a target in both runs:

- accuracy: its test top-1 may not fall by more than the target's
  ``regression.accuracy_pp`` percentage points;
- latency: its p50 *ratio to the Keras model measured in the same run at the
  file's own thread count* (``ratio_to_keras_at_threads``) may not rise by
  more than ``regression.latency_pct`` percent **and** by more than the noise
  both runs measured (the relative half-widths of the 95% intervals of the
  four medians involved, root-sum-squared). Ratios, not milliseconds, so a
  baseline from a faster or slower CI machine still applies; the same thread
  count, so a host whose speed for multi-threaded work shifts between runs
  moves the file and its reference together. A results.json from before that
  field was recorded is compared on ``ratio_to_keras`` (Keras at its best
  count), both runs alike.

A file or target in the baseline that the new run lacks is a regression too.
With ``--budgets`` the new run's own target budget failures also fail the gate.
Exit codes: 0 pass, 1 regression, 2 unusable input.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Optional


class GateInputError(Exception):
    pass


SCHEMA = Path(__file__).with_name("results.schema.json")


def load_results(path: Path, what: str) -> dict:
    """A bench/results.json, checked against its schema (``what``: "baseline" or "results", for the message)."""
    import jsonschema

    try:
        results = json.loads(path.read_text())
    except FileNotFoundError:
        raise GateInputError(f"{what} {path} does not exist; "
                             + ("run `make bench` first." if what == "results" else "pass the results.json of an earlier run."))
    except OSError as exc:
        raise GateInputError(f"{what} {path} cannot be read ({exc.__class__.__name__}).")
    except json.JSONDecodeError as exc:
        raise GateInputError(f"{what} {path} is not JSON ({exc.msg} at line {exc.lineno}).")
    if not isinstance(results, dict) or "benchmark" not in results:
        raise GateInputError(f"{what} {path} has no benchmark section; it must be a bench/results.json of `make bench`.")
    try:
        jsonschema.validate(results, json.loads(SCHEMA.read_text()))
    except jsonschema.ValidationError as exc:
        where = "/".join(str(p) for p in exc.absolute_path) or "(top level)"
        raise GateInputError(f"{what} {path} does not follow {SCHEMA.name} at {where}: {exc.message}.")
    return results


def load_pair(baseline: Path, results: Path) -> Optional[tuple[dict, dict]]:
    """Both results.json files of a comparison; None, after one line on stderr, when either is unusable."""
    try:
        return load_results(baseline, "baseline"), load_results(results, "results")
    except GateInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None


def rows_by_key(results: dict) -> dict[tuple[str, str], dict]:
    """The benchmark rows by (target, artifact)."""
    return {(r["target"], r["artifact"]): r for r in results["benchmark"]["rows"]}


def _keras(rows: dict, target: str) -> dict:
    return rows[(target, "keras")]


def combined_noise(*noises: float) -> float:
    """Relative noise of a change in a median or a ratio: the medians' relative half-widths, combined as
    independent errors (root-sum-squared)."""
    return math.sqrt(sum(n ** 2 for n in noises))


def latency_ratio(row: dict, keras: dict, same_threads: bool) -> tuple[float, float]:
    """The row's p50 ratio to Keras that the gate compares, and the noise of the Keras median behind it."""
    if same_threads:
        at = row["ratio_to_keras_at_threads"]
        return at["p50"], at["keras_noise"]
    return row["ratio_to_keras"]["p50"], keras["noise"]


def compare(baseline: dict, current: dict, check_budgets: bool = False,
            sensitivity: Optional[dict] = None) -> list[str]:
    """One line per regression (empty: the gate passes).

    ``sensitivity``, when given, receives for every file x target compared on latency its
    budget and the runs' measured noise (fractions): the gate flags a rise beyond both.
    """
    base_rows, cur_rows = rows_by_key(baseline), rows_by_key(current)
    regression = {t["name"]: t["regression"] for t in current["benchmark"]["targets"]}
    failures = []
    for (target, artifact), base in sorted(base_rows.items()):
        if artifact == "keras":
            continue
        cur = cur_rows.get((target, artifact))
        if cur is None:
            missing = "target" if target not in regression else "file"
            failures.append(f"{artifact} on {target}: benchmarked in the baseline, missing now (the {missing} is gone)")
            continue
        budget = regression[target]
        if base.get("accuracy") and cur.get("accuracy"):
            drop = 100 * (base["accuracy"]["top1"] - cur["accuracy"]["top1"])
            if drop > budget["accuracy_pp"]:
                failures.append(f"{artifact} on {target}: top-1 {base['accuracy']['top1']:.4f} -> "
                                f"{cur['accuracy']['top1']:.4f} ({-drop:+.2f} pp, budget -{budget['accuracy_pp']:g} pp)")
        same_threads = "ratio_to_keras_at_threads" in base and "ratio_to_keras_at_threads" in cur
        base_ratio, base_keras_noise = latency_ratio(base, _keras(base_rows, target), same_threads)
        cur_ratio, cur_keras_noise = latency_ratio(cur, _keras(cur_rows, target), same_threads)
        rise = cur_ratio / base_ratio - 1
        noise = combined_noise(base["noise"], base_keras_noise, cur["noise"], cur_keras_noise)
        if sensitivity is not None:
            sensitivity[(target, artifact)] = (budget["latency_pct"] / 100, noise)
        if rise > budget["latency_pct"] / 100 and rise > noise:
            at = f" at {cur['threads']} thread(s)" if same_threads else ""
            failures.append(f"{artifact} on {target}: p50 latency ratio to Keras{at} {base_ratio:.3f} -> {cur_ratio:.3f} "
                            f"({100 * rise:+.1f}%, budget +{budget['latency_pct']:g}%, measured noise ±{100 * noise:.1f}%)")
    if check_budgets:
        failures += [f"{f['artifact']} on {f['target']}: over budget: {'; '.join(f['reasons'])}"
                     for f in current["benchmark"]["failures"]]
    return failures


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", type=Path, required=True, help="bench/results.json of the accepted run")
    parser.add_argument("--results", type=Path, required=True,
                        help="bench/results.json of the new run (make gate finds its build's from CONFIG)")
    parser.add_argument("--budgets", action="store_true", help="also fail on the new run's target budget failures")
    args = parser.parse_args(argv)
    pair = load_pair(args.baseline, args.results)
    if pair is None:
        return 2
    baseline, current = pair
    sensitivity: dict = {}
    failures = compare(baseline, current, args.budgets, sensitivity)
    checked = sum(1 for key in rows_by_key(baseline) if key[1] != "keras")
    if failures:
        print(f"gate FAILED: {len(failures)} regression(s) against {args.baseline}:")
        for line in failures:
            print(f"  {line}")
        return 1
    print(f"gate passed: {checked} file x target results within budget of {args.baseline}")
    line = sensitivity_line(sensitivity)
    if line:
        print(line)
    return 0


def sensitivity_line(sensitivity: dict) -> Optional[str]:
    """What a pass is worth: the smallest slowdown the gate could have flagged, and where noise widened it."""
    if not sensitivity:
        return None
    widened = {key: noise for key, (budget, noise) in sensitivity.items() if noise > budget}
    budgets = sorted({f"{100 * budget:g}%" for budget, _ in sensitivity.values()})
    line = (f"sensitivity: {len(sensitivity) - len(widened)} of {len(sensitivity)} file x target would have failed "
            f"on a latency ratio rise past the budget ({', '.join(budgets)})")
    if widened:
        (target, artifact), widest = max(widened.items(), key=lambda item: item[1])
        line += (f"; the other {len(widened)} only past their runs' measured noise "
                 f"({100 * min(widened.values()):.1f}% to {100 * widest:.1f}%; widest: {artifact} on {target})")
    return line


if __name__ == "__main__":
    sys.exit(main())
