"""examples/ci/: both CI files run the same make targets in the same order, and those targets pass on a tiny build."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import yaml

from tests.conftest import REPO, write_config

GITHUB = REPO / "examples/ci/github-actions.yml"
GITLAB = REPO / "examples/ci/gitlab-ci.yml"
# What the README of examples/ci/ promises, in its order.
RECIPE_TARGETS = ["venv", "export", "verify", "bench", "gate"]

MakeCall = tuple[str, dict[str, str]]


# Words after which a word is a command, not an argument.
COMMAND_START = {"then", "do", "else", "{", "!"}


def _operator(word: str) -> bool:
    return set(word) <= set("|&;<>()")


def make_calls(script: str) -> list[MakeCall]:
    """Each ``make TARGET VAR=value ...`` command of a shell script, in order: its target and its variables."""
    calls = []
    for line in script.replace("\\\n", " ").splitlines():
        if not re.search(r"(?<![\w./-])make(?![\w./-])", line):
            continue
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        words = list(lexer)
        for i, word in enumerate(words):
            if word != "make" or (i and not _operator(words[i - 1]) and words[i - 1] not in COMMAND_START):
                continue
            # The command ends at the next pipe, `;`, `&&` or redirection (with its file descriptor: 2>&1).
            end = next((j for j in range(i + 1, len(words)) if _operator(words[j])), len(words))
            args = words[i + 1:end]
            if end < len(words) and words[end][0] in "<>" and args and args[-1].isdigit():
                args.pop()
            targets = [a for a in args if "=" not in a and not a.startswith("-")]
            assert len(targets) == 1, f"one target a make command, not {targets}: {line.strip()}"
            calls.append((targets[0], dict(a.split("=", 1) for a in args if "=" in a)))
    return calls


def github_calls() -> list[MakeCall]:
    workflow = yaml.safe_load(GITHUB.read_text())
    return [call for job in workflow["jobs"].values() for step in job["steps"] for call in make_calls(step.get("run", ""))]


def gitlab_calls() -> list[MakeCall]:
    pipeline = yaml.safe_load(GITLAB.read_text())
    jobs = [job for job in pipeline.values() if isinstance(job, dict) and "script" in job]
    return [call for job in jobs for key in ("before_script", "script") for line in job.get(key, [])
            for call in make_calls(line)]


def test_make_calls_are_read_as_a_shell_reads_them():
    script = ("make venv\n# make clean\nset -o pipefail\nmake gate BASELINE=\"a b/results.json\" 2>&1 | tee gate.txt\n"
              "cd x && make -s export \\\n  SET=\"$SET benchmark.targets=[]\"; make verify > out.txt\n"
              "echo make cmake ./make\nif true; then make bench; fi\n")
    assert make_calls(script) == [("venv", {}), ("gate", {"BASELINE": "a b/results.json"}),
                                  ("export", {"SET": "$SET benchmark.targets=[]"}), ("verify", {}), ("bench", {})]


def test_both_recipes_run_the_same_make_targets_in_the_same_order():
    github, gitlab = github_calls(), gitlab_calls()
    assert [target for target, _ in github] == RECIPE_TARGETS
    assert github == gitlab


def _expand(value: str, env: dict[str, str]) -> str:
    return re.sub(r"\$\{?(\w+)\}?", lambda m: env[m[1]], value)


def _make(call: MakeCall, env: dict[str, str], **override: str) -> subprocess.CompletedProcess:
    """One recipe call, run the way CI runs it (from the repo root, CONFIG and SET in the environment), but
    with this interpreter: ``-o`` keeps make from rebuilding a venv whose stamp is older than pyproject.toml."""
    target, variables = call
    variables = {**{k: _expand(v, env) for k, v in variables.items()}, **override, "PY": sys.executable}
    command = ["make", "--no-print-directory", "-o", ".venv/.installed", target, *(f"{k}={v}" for k, v in variables.items())]
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def test_the_recipe_passes_on_a_tiny_build_against_a_baseline_and_fails_against_a_better_one(tmp_path):
    calls = github_calls()
    assert [target for target, _ in calls][-1] == "gate"
    # One LiteRT target. Its latency budget is wide: two timings of a second each on a busy 2-core machine
    # differ by more than 10%, and the gate's latency rule has its own test (test_bench.py). Accuracy is
    # the same for the same files on the same images: the failing case below raises the baseline's.
    targets = tmp_path / "targets.yaml"
    targets.write_text(yaml.safe_dump({"targets": {"ci-little": {
        "runtime": "litert", "threads": 1, "regression": {"accuracy_pp": 1.0, "latency_pct": 1000}}}}))
    bench = {"targets": ["ci-little"], "targets_file": str(targets), "min_runs": 5, "max_runs": 60, "burst": 2,
             "burst_warmup": 1, "burst_warm_seconds": 0, "warmup": 2, "blocks": 1, "peak_seconds": 0.05,
             "self_check_seconds": 0}
    config = write_config(tmp_path / "ci.yaml", name="ci", benchmark=bench,
                          export={"formats": ["keras", "tflite-fp32"], "latency_runs": 0})
    drop = {"MAKEFLAGS", "MFLAGS", "MAKELEVEL", "BASELINE", "VERBOSE"}  # a `make test` around this test passes them
    env = {**{k: v for k, v in os.environ.items() if k not in drop},
           "CONFIG": str(config), "SET": "benchmark.max_seconds=1", "GATE_FLAGS": ""}
    root = Path(subprocess.run([sys.executable, "-m", "pipeline", "path", "--config", str(config)], cwd=REPO,
                               capture_output=True, text=True, check=True).stdout.strip())

    def run(call: MakeCall, **override: str) -> subprocess.CompletedProcess:
        out = _make(call, env, **override)
        assert out.returncode == 0, f"make {call[0]}: exit {out.returncode}\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
        return out

    # The main branch's run: everything but the gate; its results.json is the baseline.
    for call in calls[:-1]:
        run(call)
    baseline = tmp_path / "baseline" / "results.json"
    baseline.parent.mkdir()
    baseline.write_bytes((root / "bench/results.json").read_bytes())
    # The pull request's run, the gate last.
    for call in calls[:-1]:
        run(call)
    assert (root / "report/report.md").is_file()
    gate = run(calls[-1], BASELINE=str(baseline))
    compared = re.search(r"gate passed: (\d+) file x target results", gate.stdout)
    assert compared and int(compared[1]) >= 1, gate.stdout

    # A baseline 5 points more accurate: the same step fails, with the gate's exit code 1.
    raised = json.loads(baseline.read_text())
    for row in raised["benchmark"]["rows"]:
        if row["artifact"] == "tflite-fp32":
            assert row["accuracy"]["top1"] <= 0.95, "the tiny model is too good to be beaten by 5 points"
            row["accuracy"]["top1"] += 0.05
    better = tmp_path / "better" / "results.json"
    better.parent.mkdir()
    better.write_text(json.dumps(raised))
    failed = _make(calls[-1], env, BASELINE=str(better))
    assert failed.returncode == 2, failed.stdout + failed.stderr  # make's own code for a failed command
    assert re.search(r"\bgate\] Error 1$", failed.stderr, re.M), failed.stderr
    assert "gate FAILED: 1 regression(s)" in failed.stdout and "tflite-fp32 on ci-little: top-1" in failed.stdout
