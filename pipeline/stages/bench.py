"""bench stage: every published file on each target profile of ``benchmark.targets``, then the report.

The measuring lives in :mod:`benchmarks.run`; this module only ties it into the
stage runner, so ``make export`` ends with a benchmarked build and a later
``make export`` skips it while nothing it measured has changed. ``make bench``
measures again regardless (``--force bench``).
"""

from __future__ import annotations

import logging
from pathlib import Path

from benchmarks import report
from benchmarks.candidates import reference_files
from benchmarks.run import benchmark
from core import layout
from core.io import sha256_file, write_json
from pipeline import timings
from pipeline.config import Config, targets_file
from pipeline.stages import Stage

log = logging.getLogger("pipeline")


def _inputs(cfg: Config) -> dict:
    """The targets file and the reference models are outside build/: their bytes are part of the stamp."""
    def digest(path: Path):
        return sha256_file(path) if path.is_file() else None

    try:
        refs = {str(p): digest(p) for p in reference_files(cfg.benchmark.reference_models)}
    except Exception:  # reported with its remedy when the stage runs
        refs = {"unresolved": list(cfg.benchmark.reference_models)}
    return {"targets_file": digest(targets_file(cfg)), "reference_models": refs}


def _not_needed(cfg: Config):
    return "benchmark.targets is empty" if not cfg.benchmark.targets else None


STAGE = Stage(
    name="bench",
    module=__name__,
    deps=(layout.EXPORT_RESULTS, layout.split("test"), layout.MODEL),
    outs=(layout.BENCH_RESULTS,),
    params=("benchmark",),
    external_inputs=_inputs,
    not_needed=_not_needed,
)


def run(cfg: Config, ctx) -> None:
    # The default targets file is found beside the config when mobile-export runs outside the repository.
    resolved = cfg.benchmark.model_copy(update={"targets_file": str(targets_file(cfg))})
    results = benchmark(cfg.model_copy(update={"benchmark": resolved}), ctx.root)
    # Where the build's time went, this stage included (the report's "Build time" section).
    results["timings"] = timings.of_build(ctx.root, results["artifacts"], stages=timings.STAGES[:-1])
    results["timings"]["stages"]["bench"] = results["benchmark"]["seconds"]
    write_json(ctx.path(layout.BENCH_RESULTS), results)
    ctx.record_output(ctx.path(layout.BENCH_RESULTS))
    # The report is derived from results.json and re-rendered by `make report`: not a recorded output.
    paths = report.render(results, ctx.path(layout.REPORT))
    log.info("[bench] report: %s", ", ".join(str(p) for p in paths))
