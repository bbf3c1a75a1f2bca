"""How steady each file's speed is on this host with no harness at all: the floor under a two-run comparison.

Two bench runs can only agree as well as each file agrees with itself. Here every
file of a build's last bench is timed alone, in a fresh worker process (as the
self-check does: ``benchmarks.selfcheck.time_alone``), once per round for several
rounds. Each round times every file in the same order, so a host that drifts moves
them all alike. A file whose alone p50 moves by more than ``--within`` (default 10%) between two
rounds cannot be held to that bound by any bench: the spread is the runtime's and the
host's, not the harness's.

    python -m benchmarks.steadiness build/flowers [--rounds 5] [--seconds 3]
        [--targets phone-little] [--files keras,flowers_int8.tflite] [--within 0.10 [--strict]] [--out F]
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
from pathlib import Path
from typing import Optional

from benchmarks.selfcheck import P50_TOLERANCE, last_bench_rows, one_image_inputs, row_files, time_alone

MIN_ROUNDS = 2


def spread(p50s: list[float], tolerance: float = P50_TOLERANCE) -> dict:
    """What the rounds' medians of one file say about two runs of it: the widest move, and how often two moved past
    ``tolerance``.

    ``widest``: max/min - 1 over the rounds, the most two runs of this file alone moved apart.
    ``pairs_beyond``: of every two rounds, how many moved apart by more than the tolerance
    (either way), i.e. how often two runs of the file alone would miss a bound that tight.
    """
    if len(p50s) < MIN_ROUNDS:
        raise ValueError(f"{len(p50s)} round(s): steadiness needs at least {MIN_ROUNDS}")
    pairs = list(itertools.combinations(p50s, 2))
    beyond = sum(max(a, b) / min(a, b) - 1 > tolerance + 1e-9 for a, b in pairs)
    return {"p50_ms": [round(v, 4) for v in p50s], "widest": round(max(p50s) / min(p50s) - 1, 4),
            "pairs": len(pairs), "pairs_beyond": beyond, "tolerance": tolerance}


def measure(rows: list[dict], paths: dict, inputs: Path, work: Path, rounds: int, seconds: float,
            tolerance: float = P50_TOLERANCE, on_round=None) -> list[dict]:
    """Each row's file alone ``rounds`` times, every row once per round; the rows' ``spread`` entries."""
    p50s: dict[int, list[float]] = {i: [] for i in range(len(rows))}
    for number in range(1, rounds + 1):
        for i, row in enumerate(rows):
            log = work / f"steadiness-{row['target']}-{i}-{number}.log"
            p50s[i].append(time_alone(paths[row["artifact"]], row["runtime"], row["threads"], inputs, log,
                                      seconds)["p50"])
        if on_round:
            on_round(number)
    return [{"target": row["target"], "artifact": row["artifact"], "runtime": row["runtime"],
             "threads": row["threads"], **spread(p50s[i], tolerance)} for i, row in enumerate(rows)]


def select(rows: list[dict], targets: Optional[set], files: Optional[set]) -> list[dict]:
    """The bench rows of ``targets`` whose artifact or file name is in ``files`` (None: every one)."""
    return [r for r in rows if (not targets or r["target"] in targets)
            and (not files or r["artifact"] in files or Path(r["file"]).name in files)]


def describe(entry: dict) -> str:
    ms = " ".join(f"{v:.3f}" for v in entry["p50_ms"])
    return (f"{entry['target']:<14} {entry['artifact']:<34} {entry['threads']} thr  p50 ms {ms}  "
            f"widest {100 * entry['widest']:.1f}%  pairs past {100 * entry['tolerance']:.0f}%: "
            f"{entry['pairs_beyond']} of {entry['pairs']}")


def summary(entries: list[dict]) -> str:
    worst = max(entries, key=lambda e: e["widest"])
    past = [e for e in entries if e["pairs_beyond"]]
    return (f"alone, {len(past)} of {len(entries)} file x target moved by more than "
            f"{100 * worst['tolerance']:.0f}% between two rounds; widest: {worst['artifact']} on {worst['target']} "
            f"({100 * worst['widest']:.1f}%)")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.steadiness", description=__doc__.split("\n\n")[0])
    parser.add_argument("build", type=Path, help="a build folder with a bench run, e.g. build/flowers")
    parser.add_argument("--rounds", type=int, default=5, help=f"times each file is timed alone (default 5, "
                                                              f"at least {MIN_ROUNDS})")
    parser.add_argument("--seconds", type=float, default=3.0, help="timing per file and round (default 3)")
    parser.add_argument("--targets", default="", help="comma-separated target names (default: every one)")
    parser.add_argument("--files", default="", help="comma-separated artifact keys or file names, e.g. "
                                                    "keras,flowers_int8.tflite (default: every one)")
    parser.add_argument("--within", type=float, default=P50_TOLERANCE,
                        help=f"the bound two rounds are held to (default {P50_TOLERANCE:g}, the self-check's and "
                             "bench-compare's)")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a file alone moved past --within")
    parser.add_argument("--out", type=Path, default=None, help="also write the entries as JSON here")
    args = parser.parse_args(argv)
    if args.rounds < MIN_ROUNDS or args.seconds <= 0 or args.within <= 0:
        parser.error(f"--rounds must be at least {MIN_ROUNDS}, and --seconds and --within above 0")
    try:
        rows = last_bench_rows(args.build)
        chosen = select(rows, {n for n in args.targets.split(",") if n}, {n for n in args.files.split(",") if n})
        if not chosen:
            known = sorted({r["target"] for r in rows}), sorted({r["artifact"] for r in rows})
            print(f"error: no bench row matches --targets {args.targets!r} --files {args.files!r}; "
                  f"targets: {', '.join(known[0])}; files: {', '.join(known[1])}.", file=sys.stderr)
            return 2
        paths = row_files(args.build, chosen)
    except FileNotFoundError as missing:
        print(f"error: {missing}", file=sys.stderr)
        return 2
    print(f"{len(chosen)} file x target, {args.rounds} rounds of {args.seconds:g} s each, one fresh process per "
          f"file and round", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        inputs = one_image_inputs(args.build, paths, Path(tmp))
        entries = measure(chosen, paths, inputs, Path(tmp), args.rounds, args.seconds, args.within,
                          on_round=lambda n: print(f"round {n} of {args.rounds} done", flush=True))
    for entry in sorted(entries, key=lambda e: -e["widest"]):
        print(describe(entry))
    print(summary(entries))
    if args.out:
        args.out.write_text(json.dumps({"rounds": args.rounds, "seconds": args.seconds, "entries": entries},
                                       indent=1) + "\n", encoding="utf-8")
    return 1 if args.strict and any(e["pairs_beyond"] for e in entries) else 0


if __name__ == "__main__":
    sys.exit(main())
