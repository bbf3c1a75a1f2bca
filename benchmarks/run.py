"""The benchmark of one build: every published file on every target profile, against the Keras model.

For each target, one worker process per file (and one for the Keras model,
compiled ``tf.function``, batch 1, same thread count) is started; all are
timed round by round in the same run (``benchmarks.latency``), then asked for
their peak memory and their predictions on the test split. Every figure is
also given as a ratio to the Keras model measured beside it, the figure that
holds across machines of different speed. Returns what the bench stage
writes to ``bench/results.json`` (with the build's timings) and renders as
the report (``report/``).
"""

from __future__ import annotations

import json
import logging
import math
import platform
import time
from pathlib import Path
from typing import Optional

import numpy as np

from benchmarks import accuracy, efficiency, resizers, selfcheck
from benchmarks.candidates import KERAS_KEY, candidates, reference_files
from benchmarks.inputs import input_size, write_inputs
from benchmarks.latency import Worker, WorkerError, interleave, relative_ci, slice_medians, slice_noise, slug, summarize
from benchmarks.targets import Target, load_targets
from exporters import registry
from core import layout, stats
from core.errors import PipelineError
from core.host import available_cpus
from core.splits import load_split

log = logging.getLogger("pipeline")

SCHEMA_VERSION = 2
MIB = 1024 * 1024
# Idle seconds after the Keras model's fewer-thread slice before the next block: its TensorFlow worker's
# threads go quiet before a file is timed again.
SETTLE_SECONDS = 0.5


class BenchmarkError(PipelineError):
    """A worker could not load or run a file: the message names it."""

    exit_code = 1


def count_macs(entry: dict) -> Optional[int]:
    try:
        if entry["runtime"] == "litert":
            return efficiency.tflite_macs(entry["path"])
        if entry["runtime"] == "onnxruntime":
            return efficiency.onnx_macs(entry["path"])
        from core.loader import load_classifier

        return efficiency.keras_macs(load_classifier(entry["path"]))
    except Exception as exc:  # a file we cannot count still gets timed
        log.warning("[bench] cannot count multiply-accumulates of %s: %s", entry["path"], exc)
        return None


def _budget_failures(target: Target, row: dict) -> list[str]:
    b, out = target.budgets, []
    if b.p90_ms is not None and not row["latency_ms"]["p90"] <= b.p90_ms:
        out.append(f"p90 {row['latency_ms']['p90']:.2f} ms > {b.p90_ms:g} ms")
    if b.size_mb is not None and not row["bytes"] / MIB <= b.size_mb:
        out.append(f"size {row['bytes'] / MIB:.2f} MiB > {b.size_mb:g} MiB")
    if b.peak_rss_mb is not None and not row["memory"]["peak_rss_mb"] <= b.peak_rss_mb:
        out.append(f"peak RSS {row['memory']['peak_rss_mb']:.0f} MiB > {b.peak_rss_mb:g} MiB")
    paired = (row.get("accuracy") or {}).get("paired")
    if paired is not None and paired.get("verdict") == "over":
        # The same rule as the export stage's verdicts: the whole 95% interval of the drop is past the budget.
        low, high = paired["delta_interval_pp"]
        out.append(f"top-1 {paired['delta_pp']:+.2f} pp vs Keras (95% {low:+.2f}..{high:+.2f}), "
                   f"over the {b.accuracy_drop_pp:g} pp budget")
    return out


def _log_label(row: dict) -> str:
    """The row's name in the bench's log; the Keras row says when it runs at fewer threads than its target."""
    kt = row.get("keras_threads")
    if kt and kt["chosen"] != kt["target"]:
        return f"{row['artifact']} at {kt['chosen']} thread(s): its fastest"
    return row["artifact"]


def _budget_notes(row: dict, lossless: bool = False) -> list[str]:
    """What the test split cannot tell about a row's accuracy budget: not a failure, said beside it.

    ``lossless``: a format the export stage holds to Keras's own outputs (agreement and max |Δp|,
    not a drop budget). When it gives Keras's top-1 on every test image, it computes what Keras
    does, and a sampling interval has nothing to add (the quickstart's fp32 files on 270 images:
    ±1.4 pp, "unproven" against 1 pp, while the export stage called them within).
    """
    paired = (row.get("accuracy") or {}).get("paired")
    if paired is None or paired.get("verdict") != "unproven":
        return []
    if lossless and paired["agreed"] == paired["images"]:
        return []
    low, high = paired["delta_interval_pp"]
    return [f"top-1 {paired['delta_pp']:+.2f} pp (95% {low:+.2f}..{high:+.2f}) neither within nor over "
            f"the {paired['budget_pp']:g} pp budget on {paired['images']} test images; "
            f"{stats.settle_text(paired.get('images_to_settle'))}"]


def _ratios(row: dict, keras: dict) -> dict:
    """Every figure of a row over the Keras model's, same target, same run."""
    pairs = {k: (row["latency_ms"][k], keras["latency_ms"][k]) for k in ("p50", "p90", "p99", "mean")}
    pairs.update({k: (row["cold_start"][k], keras["cold_start"][k]) for k in ("load_ms", "first_inference_ms")})
    pairs["peak_rss_mb"] = (row["memory"]["peak_rss_mb"], keras["memory"]["peak_rss_mb"])
    pairs["bytes"] = (row["bytes"], keras["bytes"])
    return {k: round(a / b, 6) if b > 0 else None for k, (a, b) in pairs.items()}


def measure(plan: list[tuple[Target, list[dict]]], inputs: Path, settings, work: Path,
            progress: bool = True) -> tuple[dict, float]:
    """Time every file of the planned targets, interleaved round by round; then each worker's memory and predictions.

    Returns ``{(target, key): {"worker", "memory", "probs"}}`` and the timing seconds per target.
    """
    from tqdm import tqdm

    quiet = None if progress else True
    workers: dict[tuple[str, str], Worker] = {}
    fewer: list[list[Worker]] = []  # per target: the Keras model at fewer threads than the target's
    bar = _progress_bar(", ".join(t.name for t, _ in plan), settings.max_seconds * len(plan)) if progress else None
    where = ""
    try:
        for target, entries in plan:
            for e in entries:
                where = f"target {target.name}"
                log_file = work / f"{target.name}-{slug(e['key'])}.log"
                workers[(target.name, e["key"])] = Worker(e["key"], e["path"], e["runtime"], target.host_threads(),
                                                          inputs, log_file)
            keras = next(e for e in entries if e["key"] == KERAS_KEY)
            fewer.append([])
            for threads in range(1, target.host_threads()):
                # The Keras reference also at fewer threads: TensorFlow at batch 1 can be slower with more.
                key = keras_key(threads)
                workers[(target.name, key)] = Worker(key, keras["path"], "keras", threads, inputs,
                                                     work / f"{target.name}-{slug(key)}.log")
                fewer[-1].append(workers[(target.name, key)])
        for w in tqdm(list(workers.values()), desc="[bench] loading", leave=False, disable=quiet):
            w.start()
        where = "one of the targets"
        groups = [[workers[(t.name, e["key"])] for e in entries] for t, entries in plan]
        seconds = {t.name: 0.0 for t, _ in plan}
        # Each target is timed in `blocks` slices spread over the whole benchmark, one target
        # at a time: a slow minute of a shared machine then lands on every target alike, and
        # no multi-threaded file runs beside another target's idle-spinning thread pools.
        # Only a target timed in one stretch may stop early once its medians are stable.
        one = settings.blocks == 1
        done = 0.0
        # How every round of a file runs, in the targets' slices and the fewer-thread Keras slices alike.
        rounds = dict(max_runs=math.ceil(settings.max_runs / settings.blocks), burst=settings.burst,
                      burst_warmup=settings.burst_warmup, burst_warm_seconds=settings.burst_warm_seconds,
                      warmup=settings.warmup)
        for block in range(settings.blocks):
            for (target, _), group in zip(plan, groups):
                spent = interleave(group, min_runs=settings.min_runs if one else 1,
                                   max_seconds=settings.max_seconds / settings.blocks,
                                   rel_ci=settings.rel_ci if one else 0.0, **rounds)
                seconds[target.name] += spent
                done += spent
                if bar is not None:
                    bar(done, min(len(w.times) for g in groups for w in g))
            # The Keras model at fewer threads gets a slice of its own after each block's targets, so
            # it is spread over the run like every file: timed in one stretch at the end, its p50
            # followed whatever the host did in those seconds (flowers, 2 cores: the 1-thread Keras
            # p50 was 6.94 ms in one bench and 5.71 ms in the next while every file agreed within
            # 3%). Beside the files, or in a slice between targets, its TensorFlow worker made the
            # next 2-thread files' p90 1.2-1.9x their own, so the next block starts after a pause.
            for group in fewer:
                if group:
                    interleave(group, min_runs=1, max_seconds=settings.max_seconds / 4 / settings.blocks, rel_ci=0.0,
                               **rounds)
            if any(fewer) and block + 1 < settings.blocks:
                time.sleep(SETTLE_SECONDS)
        out = {k: {"worker": w, "memory": w.ask(op="memory"), "probs": None} for k, w in workers.items()}
        origin = {(t.name, e["key"]): e["origin"] for t, entries in plan for e in entries}
        # Reference files have other labels; the Keras model at fewer threads predicts what it does at the target's.
        scored = [k for k in workers if origin.get(k) in ("build", "keras")]
        for k in tqdm(scored, desc="[bench] accuracy", leave=False, disable=quiet):
            out[k]["probs"] = np.asarray(workers[k].ask(op="predict")["probs"], np.float32)
    except WorkerError as exc:
        raise BenchmarkError(f"{exc}; the file cannot be benchmarked on {where}.") from None
    finally:
        if bar is not None:
            bar.close()
        for w in workers.values():
            w.close()
    return out, seconds


def target_rows(target: Target, entries: list[dict], measured: dict, seconds: float, labels: np.ndarray,
                class_names: list[str], peak: dict) -> tuple[dict, list[dict]]:
    """One target's rows from the shared measurements, with ratios, accuracy, efficiency and budgets."""
    threads = target.host_threads()
    workers = {e["key"]: measured[(target.name, e["key"])]["worker"] for e in entries}
    memory = {e["key"]: measured[(target.name, e["key"])]["memory"] for e in entries}
    probs = {e["key"]: measured[(target.name, e["key"])]["probs"] for e in entries
             if measured[(target.name, e["key"])]["probs"] is not None}
    keras_acc = accuracy.metrics(probs[KERAS_KEY], labels, class_names)
    rows = []
    for e in entries:
        w = workers[e["key"]]
        row = {
            "target": target.name, "artifact": e["key"], "name": e["name"], "origin": e["origin"],
            "format": e["format"], "runtime": e["runtime"], "precision": e["precision"], "file": e["file"],
            "threads": threads, "bytes": e["bytes"], "gzip_bytes": e["gzip_bytes"],
            "fully_integer": e["fully_integer"], "sparsity": e["sparsity"],
            **_measured_fields(w, memory[e["key"]]),
            "accuracy": None,
            "efficiency": None,
        }
        rows.append(row)
    keras_row = next(r for r in rows if r["artifact"] == KERAS_KEY)
    _keras_at_its_best(keras_row, {t: measured[(target.name, keras_key(t))] for t in range(1, threads)})
    by_format = {r["format"]: r for r in rows if r["origin"] == "build"}
    for e, row in zip(entries, rows):
        row["ratio_to_keras"] = _ratios(row, keras_row)
        row["ratio_to_keras_at_threads"] = _ratio_at_threads(row, keras_row)
        sibling = registry.get(e["format"]).all_int8 if e["origin"] == "build" and e["format"] else None
        if sibling in by_format:
            # What keeping layers in float costs, measured beside the all-int8 file in the same run.
            row["ratio_to_all_int8"] = {"format": sibling, **_ratios(row, by_format[sibling])}
        if e["key"] in probs:
            acc = accuracy.metrics(probs[e["key"]], labels, class_names)
            acc["delta_pp"] = round(100 * (acc["top1"] - keras_acc["top1"]), 4) + 0.0
            if e["key"] != KERAS_KEY:
                acc["vs_keras"] = accuracy.flips(probs[KERAS_KEY], probs[e["key"]])
            if target.budgets.accuracy_drop_pp is not None and e["key"] != KERAS_KEY:
                acc["paired"] = stats.paired(probs[KERAS_KEY], probs[e["key"]], labels).as_dict(
                    target.budgets.accuracy_drop_pp)
            row["accuracy"] = acc
        if e.get("macs"):
            kind = efficiency.peak_precision(e["format"]) if e["format"] else ("int8" if e["fully_integer"] else "fp32")
            row["efficiency"] = {**efficiency.efficiency(e["macs"], row["latency_ms"]["p50"], peak[f"{kind}_gmacs"]),
                                 "peak_kind": kind}
        if e["origin"] == "build":
            failures = _budget_failures(target, row)
            lossless = registry.get(e["format"]).max_accuracy_drop_pp is None
            row["budget"] = {"passed": not failures, "failures": failures, "notes": _budget_notes(row, lossless)}
        else:
            row["budget"] = None  # the Keras model and published files are comparisons, not candidates
    summary = {"name": target.name, "description": target.description, "runtime": target.runtime,
               "threads_requested": target.threads, "threads": threads, "note": target.thread_note(),
               "fully_integer_only": target.fully_integer_only,
               "formats": list(target.formats) if target.formats is not None else None,
               "budgets": target.budgets.model_dump(), "regression": target.regression.model_dump(),
               "seconds": round(seconds, 2), "best": _best(rows)}
    return summary, rows


def _ratio_at_threads(row: dict, keras: dict) -> dict:
    """The p50 over the Keras model's at the row's own thread count (what the gate compares).

    A host whose speed for 2-thread work shifts between runs moves a 2-thread file and
    Keras at 2 threads together, but not Keras at its best count (often 1): this ratio
    cancels that shift, ``ratio_to_keras`` does not.
    """
    kt = keras["keras_threads"]
    n = str(row["threads"])
    return {"p50": round(row["latency_ms"]["p50"] / kt["p50_ms"][n], 6), "keras_threads": row["threads"],
            "keras_noise": kt["noise"][n]}


def keras_key(threads: int) -> str:
    """The worker key of the Keras reference timed at ``threads`` below its target's count."""
    return f"{KERAS_KEY}@{threads}"


def _keras_at_its_best(row: dict, fewer: dict) -> None:
    """Make the Keras row its fastest thread count's (up to the target's), and record every count's p50.

    ``fewer``: thread count -> the measurement at that count, below the target's. The row
    keeps its accuracy (the same model); its latency, cold start and memory become the
    fastest count's, so every ``ratio_to_keras`` is taken against Keras run at its best.
    """
    measured = {t: _measured_fields(m["worker"], m["memory"]) for t, m in fewer.items()}
    p50 = {row["threads"]: row["latency_ms"]["p50"], **{t: f["latency_ms"]["p50"] for t, f in measured.items()}}
    noise = {row["threads"]: row["noise"], **{t: f["noise"] for t, f in measured.items()}}
    best = min(p50, key=lambda t: (p50[t], t))
    row["keras_threads"] = {"chosen": best, "target": row["threads"],
                            "p50_ms": {str(t): p50[t] for t in sorted(p50)},
                            "noise": {str(t): noise[t] for t in sorted(noise)}}
    if best != row["threads"]:
        row.update(threads=best, **measured[best])


def _measured_fields(worker: Worker, memory: dict) -> dict:
    """A row's figures from its worker: latency and its noise, cold start, memory."""
    stats = summarize(worker.times)
    within, between = relative_ci(stats), slice_noise(worker.times, worker.slices)
    stats["slice_p50"] = [round(m, 4) for m in slice_medians(worker.times, worker.slices)]
    # The larger of the two: a runtime whose speed wanders between slices is only as steady as its slices agree.
    return {"latency_ms": stats, "noise": round(max(within, between or 0.0), 4),
            "noise_parts": {"calls": round(within, 4), "slices": None if between is None else round(between, 4)},
            "cold_start": {"load_ms": round(worker.ready["load_ms"], 2),
                           "first_inference_ms": round(worker.ready["first_inference_ms"], 2)},
            "memory": {"peak_rss_mb": memory["peak_rss_mb"], "baseline_rss_mb": memory["baseline_rss_mb"],
                       "model_rss_mb": round(memory["peak_rss_mb"] - memory["baseline_rss_mb"], 2)}}


def _best(rows: list[dict]) -> Optional[str]:
    """The fastest of this build's files that meets every budget of the target (smaller file on a tie)."""
    ok = [r for r in rows if r["origin"] == "build" and r["budget"]["passed"]]
    if not ok:
        return None
    return min(ok, key=lambda r: (r["latency_ms"]["p50"], r["bytes"]))["artifact"]


class _progress_bar:
    """Timing progress against the time bound (timing may stop earlier, once every median is stable)."""

    def __init__(self, name: str, total_seconds: float):
        from tqdm import tqdm

        self.total = total_seconds
        self.done = 0.0
        self.bar = tqdm(total=round(total_seconds, 1), desc=f"[bench] {name}: timing", unit="s", leave=False,
                        bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} s {postfix}", disable=None)

    def __call__(self, elapsed: float, runs: int) -> None:
        step = min(elapsed, self.total) - self.done
        if step > 0:
            self.bar.update(step)
            self.done += step
        self.bar.set_postfix_str(f"{runs} runs each", refresh=False)

    def close(self) -> None:
        self.bar.close()


def host_info() -> dict:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"machine": platform.machine(), "system": platform.system(), "cpu": cpu, "cpus": available_cpus(),
            "python": platform.python_version(),
            "note": "latencies are this host's, not a phone's; ratios to the Keras model carry across machines"}


def benchmark(cfg, root: Path, progress: bool = True) -> dict:
    """Benchmark the build under ``root``: the results the bench stage writes to ``bench/results.json``."""
    started = time.time()
    settings = cfg.benchmark
    targets = load_targets(settings.targets_file, settings.targets)
    export_results = json.loads((root / layout.EXPORT_RESULTS).read_text())
    entries = candidates(root, export_results, reference_files(settings.reference_models))
    for e in entries:
        e["macs"] = count_macs(e)
    x_test, y_test = load_split(root / layout.split("test"))
    if settings.accuracy_images:
        x_test, y_test = x_test[:settings.accuracy_images], y_test[:settings.accuracy_images]
    class_names = export_results["dataset"]["classes"]
    work = root / layout.BENCH_WORK
    inputs = write_inputs(work / "inputs.npz", x_test,
                          sizes={e.get("input_size") or input_size(e["path"]) or cfg.data.image_size for e in entries})

    peak = {}
    for threads in sorted({t.host_threads() for t in targets}):
        measured = efficiency.measure_peak(threads, settings.peak_seconds)
        peak[str(threads)] = measured
        log.info("[bench] host peak at %d thread(s): fp32 %.1f GMAC/s, int8 %.1f GMAC/s",
                 threads, measured["fp32_gmacs"], measured["int8_gmacs"])

    plan = []
    for target in targets:
        chosen = [e for e in entries if e["origin"] == "keras" or
                  target.admits(e["format"] or "", e["runtime"], e["fully_integer"]) or
                  (e["origin"] == "reference" and e["runtime"] == target.runtime
                   and (not target.fully_integer_only or e["fully_integer"]))]
        log.info("[bench] %s: %s, %d thread(s), %d file(s) + Keras", target.name, target.runtime,
                 target.host_threads(), len(chosen) - 1)
        plan.append((target, chosen))
    measured, seconds = measure(plan, inputs, settings, work, progress)

    summaries, rows = [], []
    for target, chosen in plan:
        summary, these = target_rows(target, chosen, measured, seconds[target.name], y_test, class_names,
                                     peak[str(target.host_threads())])
        summaries.append(summary)
        rows.extend(these)
        for r in these:
            acc = f"top-1 {r['accuracy']['top1']:.4f}" if r["accuracy"] else "top-1 n/a"
            log.info("[bench] %-14s %-40s p50 %8.3f ms  p90 %8.3f ms  x%.3f Keras  %s  RSS %.0f MiB%s",
                     target.name, _log_label(r), r["latency_ms"]["p50"], r["latency_ms"]["p90"],
                     r["ratio_to_keras"]["p50"], acc, r["memory"]["peak_rss_mb"],
                     "" if not r["budget"] else ("  unproven: " + "; ".join(r["budget"]["notes"])
                                                 if r["budget"]["passed"] and r["budget"]["notes"] else
                                                 "" if r["budget"]["passed"] else
                                                 "  OVER BUDGET: " + "; ".join(r["budget"]["failures"])))

    checked = []
    if settings.self_check_seconds:
        # Each target's fastest file again, alone in a fresh process: does the harness distort it?
        picked = [selfcheck.pick([r for r in rows if r["target"] == t.name]) for t, _ in plan]
        checked = selfcheck.check([r for r in picked if r is not None], {e["key"]: e["path"] for e in entries},
                                  inputs, work, settings.self_check_seconds)
        for entry in checked:
            log.info("[bench] self-check %s", selfcheck.describe(entry))
        unsteady = [f"{e['target']} {e['artifact']}" for e in checked if e["verdict"] == "host unsteady"]
        apart = [f"{e['target']} {e['artifact']}" for e in checked if e["verdict"] == "disagrees"]
        if unsteady:
            log.warning("[bench] self-check: the same file timed alone twice gave figures apart by more than the "
                        "tolerances for %s: this host's timing was not steady (another process, or cores that sleep "
                        "between runs), so the check cannot tell whether the harness moved them; run `make bench` "
                        "again on a quiet machine to know (the build itself is unaffected)", ", ".join(unsteady))
        if apart:
            log.warning("[bench] self-check: the bench's figures for %s are apart from the same file timed alone, "
                        "twice, steadily: the interleaving moved them; read those targets' percentiles with care "
                        "(the build itself is unaffected)", ", ".join(apart))

    # After the timing, in this process: the app's resize, each file on the test photos resized as apps do.
    resized = resizers.measure(root, entries, settings.resizers, settings.accuracy_images, available_cpus(), progress)

    results = {**export_results, "schema_version": SCHEMA_VERSION}
    results["benchmark"] = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": host_info(),
        "settings": settings.model_dump(mode="json"),
        "accuracy_images": int(len(y_test)),
        "peak": peak,
        "targets": summaries,
        "rows": rows,
        "failures": [{"target": r["target"], "artifact": r["artifact"], "reasons": r["budget"]["failures"]}
                     for r in rows if r["budget"] and not r["budget"]["passed"]],
        "self_check": checked,
        "resizers": resized,
        "seconds": round(time.time() - started, 1),
    }
    (work / "inputs.npz").unlink(missing_ok=True)  # a copy of the test split; the worker logs stay
    return results
