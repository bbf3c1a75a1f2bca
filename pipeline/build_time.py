"""``make bench-build``: one whole build from a clean folder, timed, beside the figures that must not change.

The build runs as ``make export`` would (``python -m pipeline run``, a fresh
process) in its own folder, ``<build_dir>/bench-build/<name>/``, emptied first, so
the user's build is never touched and no stage is skipped as up to date. Written
to ``<build_dir>/bench-build/<name>.json``, which survives the next run:

- ``wall_seconds`` of the whole command, and the build's own ``timings``
  (``pipeline.timings``: per stage, per training phase, per exported format's step);
- ``figures``: the Keras model's test top-1, and for every exported file its
  status, verdict, test top-1, Δ top-1 and top-1 agreement with Keras.

A speed change must leave ``figures`` as they were. When the file already exists,
the new figures are compared with it and every change is named;
``--fail-on-change`` makes a change exit 1 (for CI).

    python -m pipeline.build_time --config configs/flowers.yaml [--set KEY=VALUE ...] [--fail-on-change]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

from core import layout
from core.errors import PipelineError
from core.io import write_json
from pipeline import manifest, timings
from pipeline.config import load_config

SUBFOLDER = "bench-build"


def figures(results: dict) -> dict:
    """What a faster build must not change, from ``export/results.json``."""
    files = {}
    for e in results["artifacts"]:
        validation = e.get("validation") or {}
        files[e["format"]] = {
            "status": e["status"], "verdict": e.get("verdict"),
            "top1": (e.get("accuracy") or {}).get("top1"), "delta_pp": (e.get("accuracy") or {}).get("delta_pp"),
            "top1_agreement": validation.get("top1_agreement"),
        }
    return {"keras_top1": results["reference"]["accuracy"]["top1"], "test_images": results["dataset"]["test_images"],
            "files": files}


def changes(before: dict, after: dict) -> list[str]:
    """Every figure of ``before`` that ``after`` does not repeat, one line each (empty: the same)."""
    out = []
    if before.get("keras_top1") != after.get("keras_top1"):
        out.append(f"Keras test top-1 {before.get('keras_top1')} -> {after.get('keras_top1')}")
    old, new = before.get("files", {}), after.get("files", {})
    for fmt in sorted(set(old) | set(new)):
        if fmt not in new:
            out.append(f"{fmt}: no longer made")
        elif fmt not in old:
            out.append(f"{fmt}: new")
        else:
            out += [f"{fmt} {key} {old[fmt].get(key)} -> {new[fmt].get(key)}"
                    for key in new[fmt] if old[fmt].get(key) != new[fmt].get(key)]
    return out


def _print_timings(record: dict) -> None:
    t = record["timings"]
    print(f"bench-build {record['config']}: {record['wall_seconds']:.0f} s wall ({record['wall_seconds'] / 60:.1f} min)")
    for name, seconds in t["stages"].items():
        print(f"  {name:<10} {seconds:8.1f} s")
    for name, phase in t["phases"].items():
        per = f" ({phase['epochs']} epochs, {phase['seconds_per_epoch']:.1f} s each)" if "epochs" in phase else ""
        print(f"    {name:<30} {phase['seconds']:8.1f} s{per}")
    for fmt, steps in t["export"].items():
        print(f"    export {fmt:<22} " + ", ".join(f"{k} {v:.1f}" for k, v in steps.items()))


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.build_time", description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--fail-on-change", action="store_true",
                        help="exit 1 when a figure differs from the previous bench-build of this config")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    folder = Path(cfg.build_dir) / SUBFOLDER
    root, out = folder / cfg.name, folder / f"{cfg.name}.json"
    shutil.rmtree(root, ignore_errors=True)  # ours alone: the user's build is under build_dir/<name>
    command = [sys.executable, "-m", "pipeline", "run", "--config", args.config,
               *[f"--set={o}" for o in args.overrides], f"--set=build_dir={folder}"]
    print(f"bench-build: {' '.join(command[1:])} (from a clean {root})", flush=True)
    started = time.perf_counter()
    code = subprocess.run(command).returncode
    wall = time.perf_counter() - started
    results = timings.read_json(root / layout.EXPORT_RESULTS)
    if results is None:
        print(f"error: the build exited {code} before its export stage wrote results; see its log above "
              f"(and {root / 'tool-output.log'}).", file=sys.stderr)
        return code or 1
    record = {
        "config": args.config, "overrides": args.overrides, "exit_code": code, "wall_seconds": round(wall, 1),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "pipeline": manifest.git_state(Path(__file__).resolve().parent),
        "host": {"machine": platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "timings": timings.of_build(root), "figures": figures(results),
    }
    previous = timings.read_json(out)
    write_json(out, record)
    _print_timings(record)
    print(f"written: {out}")
    if code:
        print(f"error: the build exited {code}; its timings and figures are written all the same.", file=sys.stderr)
        return code
    if previous is None or "figures" not in previous:
        return 0
    changed = changes(previous["figures"], record["figures"])
    if not changed:
        print(f"figures unchanged from the previous bench-build ({previous.get('created')}, "
              f"{previous.get('wall_seconds')} s wall)")
        return 0
    print(f"{'error' if args.fail_on_change else 'warning'}: {len(changed)} figure(s) differ from the previous "
          f"bench-build ({previous.get('created')}): " + "; ".join(changed), file=sys.stderr)
    return 1 if args.fail_on_change else 0


if __name__ == "__main__":
    sys.exit(main())
