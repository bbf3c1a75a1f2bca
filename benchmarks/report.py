"""Render ``bench/results.json`` as ``report/report.md`` (a PR comment) and ``report/report.html`` (with plots).

    python -m benchmarks.report build/<name>/bench/results.json [--out build/<name>/report]

The markdown says, in order: which file to ship per target, what failed its
budget, then one table per target; then each file's accuracy against the
Keras model on the test split (paired figures, verdict, warnings), the
repair attempts behind each int8 recipe and the per-layer int8 sensitivity
(``benchmarks.report_accuracy``); last, each file on the test photos resized as
apps do (``benchmarks.report_resizers``). The HTML adds the plots: accuracy against
latency per target with the Pareto front (marker area = file size), file
sizes before and after gzip, the confusion matrix of each target's best
file, the most int8-sensitive layers, and where each lossy file's answers differ
from Keras's (``benchmarks.report_flips``). Plots are PNG files beside the
report, also inlined so the HTML is one self-contained file to attach to a
CI run.
"""

from __future__ import annotations

import argparse
import base64
import html
import json
import sys
from pathlib import Path
from typing import Optional

from benchmarks import report_accuracy, report_flips, report_resizers, report_timings, selfcheck, tables
from benchmarks.plotting import annotate_cells, set_log_x
from core import layout
from core.io import atomic_path, write_text

MIB = 1024 * 1024


def _mib(n: Optional[float]) -> str:
    return "–" if n is None else f"{n / MIB:.2f}"


def _num(x: Optional[float], fmt: str = "{:.2f}") -> str:
    return "–" if x is None else fmt.format(x)


def _pct(x: Optional[float]) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def _label(row: dict) -> str:
    return row["artifact"] if row["origin"] != "reference" else f"{row['name']} (reference)"


COLUMNS = ("file", "size MiB", "gzip MiB", "top-1", "Δ pp", "p50 ms", "p50 ±", "p90 ms", "p99 ms", "×Keras p50",
           "load ms", "1st run ms", "peak RSS MiB", "GMAC/s", "% of peak", "budget")


def _cells(row: dict) -> list[str]:
    acc, eff, lat = row["accuracy"], row["efficiency"], row["latency_ms"]
    budget = ("–" if row["budget"] is None else "FAIL: " + "; ".join(row["budget"]["failures"])
              if not row["budget"]["passed"] else "ok, accuracy unproven" if row["budget"].get("notes") else "ok")
    return [
        _label(row), _mib(row["bytes"]), _mib(row["gzip_bytes"]),
        _num(acc["top1"], "{:.4f}") if acc else "n/a", _num(acc["delta_pp"], "{:+.2f}") if acc else "n/a",
        _num(lat["p50"], "{:.3f}"), _num(100 * row["noise"] if "noise" in row else None, "{:.1f}%"),
        _num(lat["p90"], "{:.3f}"), _num(lat["p99"], "{:.3f}"),
        _num(row["ratio_to_keras"].get("p50"), "{:.3f}"),
        _num(row["cold_start"]["load_ms"], "{:.1f}"), _num(row["cold_start"]["first_inference_ms"], "{:.1f}"),
        _num(row["memory"]["peak_rss_mb"], "{:.0f}"),
        _num(eff["gmacs_per_s"], "{:.1f}") if eff else "–", _pct(eff["fraction_of_peak"]) if eff else "–",
        budget,
    ]


def _rows_by_target(results: dict) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {t["name"]: [] for t in results["benchmark"]["targets"]}
    for row in results["benchmark"]["rows"]:
        out[row["target"]].append(row)
    for rows in out.values():
        rows.sort(key=lambda r: r["latency_ms"]["p50"])
    return out


def _target_heading(t: dict) -> str:
    threads = f"{t['threads']} thread{'s' if t['threads'] != 1 else ''}"
    note = f" ({t['note']})" if t.get("note") else ""
    return f"{t['name']}: {t['description']} — {t['runtime']}, {threads}{note}"


def _best_row(rows: list[dict], best: Optional[str]) -> Optional[dict]:
    return next((r for r in rows if r["artifact"] == best), None)


NOTE = ("p50/p90/p99: single-image latency percentiles; p50 ±: half-width of the median's 95% interval, the "
        "wider of the one over single calls and the one over the blocks' medians (speed that wanders for seconds); "
        "×Keras: ratio to the Keras model (compiled tf.function, batch 1) timed in the same run at its fastest "
        "thread count up to the target's; % of peak: "
        "achieved multiply-accumulates per second against this host's measured GEMM peak at the same thread count "
        "(int8 peak for full-integer files).")
REFERENCE_NOTE = "Reference rows are published files with other labels: no accuracy."


def notes(results: dict) -> str:
    """The footnote under the tables: what is in them, nothing about rows that are not."""
    has_reference = any(r["origin"] == "reference" for r in results["benchmark"]["rows"])
    return NOTE + (" " + REFERENCE_NOTE if has_reference else "")


def shading_legend(rows: list[dict]) -> Optional[str]:
    """What each row shading of the HTML tables means, for the shadings this report uses."""
    used = {r["origin"] if r["origin"] != "build" else ("fail" if not r["budget"]["passed"] else "ok") for r in rows}
    meaning = [("keras", "blue: the Keras model, the reference every ratio is to"),
               ("fail", "red: over a budget of its target"),
               ("reference", "grey italics: a published reference file (no accuracy)")]
    said = [text for cls, text in meaning if cls in used]
    return "Row shading: " + "; ".join(said) + "." if said else None


def _best_cells(bench: dict, by_target: dict) -> list[list[str]]:
    out = []
    for t in bench["targets"]:
        row = _best_row(by_target[t["name"]], t["best"])
        if row is None:
            out.append([t["name"], "none meets the budgets", "", "", "", ""])
        else:
            out.append([t["name"], row["artifact"], f"{row['latency_ms']['p50']:.3f}", f"{row['ratio_to_keras']['p50']:.3f}",
                        f"{row['accuracy']['top1']:.4f}", _mib(row["bytes"])])
    return out


BEST_COLUMNS = ("target", "best file", "p50 ms", "×Keras", "top-1", "size MiB")
SELF_CHECK_COLUMNS = ["target", "file", "threads", "p50 ms bench / alone", "p90 ms bench / alone", "p99 ×",
                      "host tail (p99/p50 alone)", "verdict"]


def _self_check_intro(checked: list[dict]) -> str:
    tol = checked[0]["tolerance"]
    return (f"Each target's fastest file timed again alone, in a fresh process with the same threads, after the "
            f"bench: the harness agrees when its p50 is within {tol['p50']:.0%} and its p90 within {tol['p90']:.0%} "
            f"of the file's own. The file is timed alone twice: where those two runs differ by more than the same "
            f"tolerances, the host was unsteady and the check cannot tell. The host tail is how much of a tail the "
            f"host makes with nothing else running.")


def _self_check_cells(e: dict) -> list[str]:
    h, a, r = e["harness"], e["alone"], e["ratio"]
    return [e["target"], e["artifact"], str(e["threads"]), f"{h['p50']:.3f} / {a['p50']:.3f} (×{r['p50']:.2f})",
            f"{h['p90']:.3f} / {a['p90']:.3f} (×{r['p90']:.2f})", f"{r['p99']:.2f}", f"{e['host_tail']:.2f}",
            selfcheck.verdict(e) + (f" (alone twice: p50 ×{e['repeat']['p50']:.2f})" if "repeat" in e else "")]


def keras_threads_note(rows: list[dict]) -> Optional[str]:
    """How the target's Keras reference was timed, when it was timed at more than one thread count."""
    keras = next((r for r in rows if r["origin"] == "keras"), None)
    kt = (keras or {}).get("keras_threads")
    if not kt or len(kt["p50_ms"]) < 2:
        return None
    at = ", ".join(f"{t} thread(s) {ms:.3f} ms" for t, ms in kt["p50_ms"].items())
    return (f"Keras reference at its fastest thread count up to the target's: {kt['chosen']} (p50 at {at}); "
            f"every ×Keras ratio of this target is to that figure.")


def markdown(results: dict) -> str:
    bench = results["benchmark"]
    host = bench["host"]
    by_target = _rows_by_target(results)
    keras = next(r for r in bench["rows"] if r["artifact"] == "keras")
    lines = [
        f"# Benchmark: {results['name']}",
        "",
        f"Host: {host['cpu'] or host['machine']}, {host['cpus']} cores ({host['system']}). "
        f"Not the target device: latencies are this host's; ratios to the Keras model carry across machines.",
        f"Keras fp32 model: test top-1 {keras['accuracy']['top1']:.4f} on {keras['accuracy']['images']} images. "
        f"Benchmark took {bench['seconds']:.0f} s.",
        "",
        "## Best file per target",
        "",
    ]
    lines += tables.markdown(BEST_COLUMNS, _best_cells(bench, by_target))
    lines += ["", "## Over budget", ""]
    if bench["failures"]:
        lines += [f"- **{f['artifact']}** on {f['target']}: {'; '.join(f['reasons'])}" for f in bench["failures"]]
    else:
        lines.append("Every file meets every budget of its targets.")
    for t in bench["targets"]:
        lines += ["", f"## {_target_heading(t)}", ""] + tables.markdown(COLUMNS, [_cells(r) for r in by_target[t["name"]]])
        note = keras_threads_note(by_target[t["name"]])
        if note:
            lines += ["", note]
    lines += ["", notes(results)]
    checked = bench.get("self_check") or []
    if checked:
        lines += ["", "## Self-check: the harness against each file alone", "", _self_check_intro(checked), ""]
        lines += tables.markdown(SELF_CHECK_COLUMNS, [_self_check_cells(e) for e in checked])
    lines += report_accuracy.markdown(results)
    lines += report_flips.markdown(results)
    lines += report_resizers.markdown(results)
    lines += report_timings.markdown(results)
    return "\n".join(lines + [""])


def _pareto(points: list[tuple[float, float]]) -> list[int]:
    """Indices of points no other point beats on both latency (lower) and accuracy (higher), by latency."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best_acc = [], -1.0
    for i in order:
        if points[i][1] > best_acc:
            front.append(i)
            best_acc = points[i][1]
    return front


def plots(results: dict, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")  # no display on CI machines
    import matplotlib.pyplot as plt

    bench = results["benchmark"]
    by_target = _rows_by_target(results)
    paths = []
    for t in bench["targets"]:
        rows = [r for r in by_target[t["name"]] if r["accuracy"]]
        fig, ax = plt.subplots(figsize=(7, 4.5))
        pts = [(r["latency_ms"]["p50"], r["accuracy"]["top1"]) for r in rows]
        sizes = [max(r["bytes"] / MIB, 0.2) * 40 for r in rows]
        kinds = {"keras": ("tab:gray", "Keras model (reference)"), "ok": ("tab:green", "within the target's budgets"),
                 "over": ("tab:red", "over a budget")}
        kind = ["keras" if r["origin"] == "keras" else ("ok" if r["budget"]["passed"] else "over") for r in rows]
        for name, (colour, label) in kinds.items():  # one scatter per colour: each gets its legend entry
            mine = [i for i, k in enumerate(kind) if k == name]
            if mine:
                ax.scatter([pts[i][0] for i in mine], [pts[i][1] for i in mine], s=[sizes[i] for i in mine],
                           c=colour, alpha=0.6, edgecolors="black", label=label)
        for r, (x, y) in zip(rows, pts):
            ax.annotate(r["artifact"], (x, y), textcoords="offset points", xytext=(6, 4), fontsize=8)
        # The front is drawn over the files that meet the budgets only: an over-budget file is no choice.
        ok = [i for i, k in enumerate(kind) if k == "ok"]
        front = [ok[i] for i in _pareto([pts[i] for i in ok])]
        if front:
            ax.plot([pts[i][0] for i in front], [pts[i][1] for i in front], "--o", color="tab:blue",
                    markerfacecolor="none", markersize=14,
                    label="Pareto front of the files within budget (nothing both faster and more accurate)")
        xs = [p[0] for p in pts if p[0] > 0]
        set_log_x(ax, min(xs) / 1.25, max(xs) * 1.6)  # the Keras model is often 10-100x slower than the files
        ax.set_xlabel("p50 latency, ms (this host, log scale)")
        ax.set_ylabel("test top-1")
        ax.set_title(f"{t['name']}: accuracy vs latency (area = file size)")
        ax.legend(loc="lower right", fontsize=8)
        ax.grid(alpha=0.3)
        paths.append(_save(fig, out / f"tradeoff_{t['name']}.png"))

    files = {}
    for r in bench["rows"]:
        files.setdefault(_label(r), (r["bytes"], r["gzip_bytes"]))
    names = sorted(files, key=lambda n: files[n][0])
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(names) + 1.2))
    ys = range(len(names))
    ax.barh([y + 0.2 for y in ys], [files[n][0] / MIB for n in names], height=0.4, label="file")
    ax.barh([y - 0.2 for y in ys], [files[n][1] / MIB for n in names], height=0.4, label="gzip -9")
    ax.set_yticks(list(ys), names, fontsize=8)
    ax.set_xlabel("MiB")
    ax.set_title("Size on disk and after gzip")
    ax.legend(fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    paths.append(_save(fig, out / "sizes.png"))

    classes = results["dataset"]["classes"]
    for t in bench["targets"]:
        row = _best_row(by_target[t["name"]], t["best"])
        if row is None:
            continue
        cm = row["accuracy"]["confusion"]
        side = min(0.45 * len(classes) + 2.5, 7.0)
        fig, ax = plt.subplots(figsize=(side + 0.5, side))
        annotate_cells(ax, ax.imshow(cm, cmap="Blues"), cm)
        ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(len(classes)), classes, fontsize=8)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(f"{t['name']}: {row['artifact']}")
        paths.append(_save(fig, out / f"confusion_{t['name']}.png"))

    fig = report_accuracy.sensitivity_figure(results)
    if fig is not None:
        paths.append(_save(fig, out / "sensitivity.png"))
    fig = report_flips.figure(results)
    if fig is not None:
        paths.append(_save(fig, out / "flips.png"))
    return paths


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)  # tmp keeps the .png suffix that matplotlib picks the format by
    plt.close(fig)
    return path


def html_page(results: dict, images: list[Path]) -> str:
    bench = results["benchmark"]
    by_target = _rows_by_target(results)
    esc = html.escape
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>Benchmark: {esc(results['name'])}</title>",
        "<style>body{font-family:system-ui,sans-serif;margin:2em;max-width:1400px}"
        "table{border-collapse:collapse;margin:1em 0;font-size:13px}td,th{border:1px solid #ccc;padding:3px 6px;"
        "text-align:right}td:first-child,th:first-child{text-align:left}tr.fail td{background:#fde2e2}"
        "tr.reference td{color:#555;font-style:italic}tr.keras td{background:#eef}img.plot{max-width:49%;max-height:520px;margin:.5em 0;vertical-align:top}"
        + report_accuracy.CSS + "</style></head><body>",
    ]
    md = markdown(results).split("\n")
    parts.append(f"<h1>{esc(md[0][2:])}</h1><p>{esc(md[2])}<br>{esc(md[3])}</p>")
    parts.append("<h2>Best file per target</h2>")
    parts.append(tables.html(BEST_COLUMNS, _best_cells(bench, by_target), table_id="best"))
    parts.append("<h2>Over budget</h2>")
    if bench["failures"]:
        parts.append("<ul>" + "".join(f"<li><b>{esc(f['artifact'])}</b> on {esc(f['target'])}: "
                                      f"{esc('; '.join(f['reasons']))}</li>" for f in bench["failures"]) + "</ul>")
    else:
        parts.append("<p>Every file meets every budget of its targets.</p>")
    inline = {p.name: base64.b64encode(p.read_bytes()).decode() for p in images}
    for t in bench["targets"]:
        parts.append(f"<h2>{esc(_target_heading(t))}</h2>")
        rows = by_target[t["name"]]
        parts.append(tables.html(COLUMNS, [_cells(r) for r in rows], css="results", row_classes=[
            r["origin"] if r["origin"] != "build" else ("fail" if not r["budget"]["passed"] else "ok") for r in rows]))
        note = keras_threads_note(by_target[t["name"]])
        if note:
            parts.append(f"<p>{esc(note)}</p>")
        for name in (f"tradeoff_{t['name']}.png", f"confusion_{t['name']}.png"):
            if name in inline:
                parts.append(f"<img class='plot' alt='{esc(name)}' src='data:image/png;base64,{inline[name]}'>")
    if "sizes.png" in inline:
        parts.append(f"<h2>Sizes</h2><img class='plot' alt='sizes.png' src='data:image/png;base64,{inline['sizes.png']}'>")
    legend = shading_legend(bench["rows"])
    parts.append(f"<p>{esc(notes(results))}" + (f"<br>{esc(legend)}" if legend else "") + "</p>")
    checked = bench.get("self_check") or []
    if checked:
        parts.append(f"<h2>Self-check: the harness against each file alone</h2><p>{esc(_self_check_intro(checked))}</p>")
        parts.append(tables.html(SELF_CHECK_COLUMNS, [_self_check_cells(e) for e in checked], css="selfcheck",
                                 row_classes=["" if e["agrees"] else "fail" for e in checked]))
    parts += report_accuracy.html(results, inline)
    parts += report_flips.html(results, inline)
    parts += report_resizers.html(results)
    parts += report_timings.html(results)
    parts.append("</body></html>")
    return "\n".join(parts)


def render(results: dict, out: Path) -> list[Path]:
    """Write report.md, report.html and the PNG plots under ``out``; return their paths."""
    out.mkdir(parents=True, exist_ok=True)
    images = plots(results, out)
    md_path, html_path = out / "report.md", out / "report.html"
    write_text(md_path, markdown(results))
    write_text(html_path, html_page(results, images))
    return [md_path, html_path, *images]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("results", type=Path, help="bench/results.json of a build")
    parser.add_argument("--out", type=Path, help="output folder (default: report/ beside bench/)")
    args = parser.parse_args(argv)
    if not args.results.is_file():
        print(f"error: {args.results} does not exist; run `make bench` first.", file=sys.stderr)
        return 2
    try:
        results = json.loads(args.results.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        print(f"error: {args.results} cannot be read as JSON ({exc.__class__.__name__}); run `make bench` again.",
              file=sys.stderr)
        return 2
    if not isinstance(results, dict) or "benchmark" not in results:
        print(f"error: {args.results} has no benchmark section; run `make bench` first.", file=sys.stderr)
        return 2
    out = args.out or args.results.parent.parent / layout.REPORT
    for path in render(results, out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
