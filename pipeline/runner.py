"""Runs the stages in order, skipping those whose stamp still matches.

A stamp (``build/<name>/<stage>/stamp.json``) holds the sha256 of the stage's
dependency files, of the config sections it reads, of its source code, of any
data outside the build folder, and of every file it wrote. It is written last,
after all outputs are in place, so a run killed mid-stage leaves no stamp and
the stage runs again next time.

In a multi-worker run (``pipeline.distribution``) only the chief does all of
this. The other workers follow it through the stages that train, in a
temporary folder, and write no stamp.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from pipeline import distribution
from pipeline.config import Config
from pipeline.errors import ConfigError, PipelineError
from pipeline.io import sha256_file, write_json
from pipeline.stages import Stage, all_stages

log = logging.getLogger("pipeline")


@dataclass
class RunContext:
    root: Path  # build/<name>
    config_source: str
    outputs: list[str] = field(default_factory=list)
    # What the stage's stamp will record as its inputs; a stage that keeps state across
    # runs (a training checkpoint) compares against it with input_change().
    inputs: dict = field(default_factory=dict)

    def path(self, rel: str) -> Path:
        return self.root / rel

    def record_output(self, path: Path) -> None:
        self.outputs.append(str(Path(path).relative_to(self.root)))


def _code_hash(modules: tuple[str, ...]) -> str:
    digest = hashlib.sha256()
    for name in modules:
        spec = importlib.util.find_spec(name)
        if spec is None or spec.origin is None:
            raise RuntimeError(f"stage code module {name} not found")
        digest.update(name.encode() + b"\0" + Path(spec.origin).read_bytes())
    return digest.hexdigest()


def stage_inputs(stage: Stage, cfg: Config, root: Path) -> dict:
    """What a stage's result depends on, as its stamp records it: dependency files, config, code, source data."""
    deps = {}
    for rel in stage.dependencies(cfg):
        p = root / rel
        deps[rel] = sha256_file(p) if p.exists() else None
    params = {section: cfg.section_hash(section, ignore=stage.ignores) for section in stage.params}
    if stage.derived_params:
        params.update(stage.derived_params(cfg))
    return {
        "deps": deps,
        "params": params,
        "code": _code_hash(stage.code),
        "inputs": stage.external_inputs(cfg) if stage.external_inputs else None,
    }


def stamp_path(root: Path, stage: Stage) -> Path:
    return root / stage.name / "stamp.json"


def input_change(recorded: dict, expected: dict) -> Optional[str]:
    """Why ``recorded`` (a stamp, a checkpoint) was made from other inputs than ``expected``; None if it was not."""
    for rel, digest in expected["deps"].items():
        if digest is None:
            return f"input {rel} missing"
        if recorded.get("deps", {}).get(rel) != digest:
            return f"input {rel} changed"
    if recorded.get("params") != expected["params"]:
        old = recorded.get("params") if isinstance(recorded.get("params"), dict) else {}
        changed = [s for s in expected["params"] if old.get(s) != expected["params"][s]]
        return f"config section(s) {', '.join(changed)} changed"
    if recorded.get("code") != expected["code"]:
        return "stage code changed"
    if recorded.get("inputs") != expected["inputs"]:
        return "source data changed"
    return None


def why_stale(stage: Stage, cfg: Config, root: Path) -> Optional[str]:
    """None when the stage is up to date, else a short reason."""
    path = stamp_path(root, stage)
    if not path.exists():
        return "never run"
    try:
        stamp = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return "stamp unreadable"
    changed = input_change(stamp, stage_inputs(stage, cfg, root))
    if changed:
        return changed
    for rel, digest in stamp.get("outs", {}).items():
        out = root / rel
        if not out.exists():
            return f"output {rel} missing"
        if sha256_file(out) != digest:
            return f"output {rel} modified"
    return None


def status(cfg: Config) -> list[tuple[str, Optional[str]]]:
    """Each stage this config uses, with the reason it would run now (None: up to date).

    Deps are named ``<stage>/<file>``, so a stage that reads from a stale stage
    is reported as running after it.
    """
    root = cfg.build_root
    rows, stale = [], set()
    for stage, _ in all_stages():
        if stage.not_needed and stage.not_needed(cfg):
            continue  # listed by not_needed()
        reason = why_stale(stage, cfg, root)
        if reason is None:
            upstream = [d.split("/")[0] for d in stage.dependencies(cfg) if d.split("/")[0] in stale]
            reason = f"after {upstream[0]} re-runs" if upstream else None
        if reason is not None:
            stale.add(stage.name)
        rows.append((stage.name, reason))
    return rows


def not_needed(cfg: Config) -> list[tuple[str, str]]:
    """Stages this config does not use, each with the reason."""
    return [(stage.name, stage.not_needed(cfg)) for stage, _ in all_stages()
            if stage.not_needed and stage.not_needed(cfg)]


# What the chief tells the other workers before each stage that trains.
_SKIP, _RUN, _STOP = 0, 1, 2


class ChiefStopped(PipelineError):
    """The chief of a multi-worker run stopped; its own log says why."""

    exit_code = 1


def run(cfg: Config, config_source: str, force: tuple[str, ...] = (), through: Optional[str] = None) -> list[str]:
    """Run every stale stage, and the ``force``d ones; return the names of the stages that ran.

    ``through`` stops after that stage: a tool that needs only the decoded splits
    (``benchmarks.train_throughput``) brings the data stage up to date without training.
    """
    stages = all_stages()
    known = [stage.name for stage, _ in stages]
    for name in force:
        if name not in known:
            raise ConfigError(f"--force {name}: no such stage; stages are {', '.join(known)}.")
        stage = next(s for s, _ in stages if s.name == name)
        if stage.not_needed and stage.not_needed(cfg):
            raise ConfigError(f"--force {name}: the stage is not needed for this config ({stage.not_needed(cfg)}).")
    if through is not None:
        if through not in known:
            raise ValueError(f"no stage {through!r}; stages are {', '.join(known)}")
        stages = stages[:known.index(through) + 1]
    cluster = None
    if distribution.wants_multi_worker(cfg.train):
        # Made before TensorFlow runs anything: collectives can only be configured at start-up.
        cluster = distribution.training_setup(cfg.train)
        if not cluster.is_chief:
            return _follow_chief(cfg, config_source, stages, cluster)
    root = cfg.build_root
    root.mkdir(parents=True, exist_ok=True)
    ran: list[str] = []
    waiting = cluster is not None  # the other workers wait for the chief's word on the next training stage
    try:
        for stage, run_stage in stages:
            skip = stage.not_needed(cfg) if stage.not_needed else None
            if skip:
                log.info("[%s] not needed: %s", stage.name, skip)
                continue
            reason = why_stale(stage, cfg, root)
            if reason is None and stage.name in force:
                reason = "forced"
            if cluster is not None and stage.collective:
                waiting = False
                cluster.tell(_SKIP if reason is None else _RUN)
                if reason is not None:
                    cluster.share_files(root, list(stage.dependencies(cfg)))
            if reason is None:
                log.info("[%s] up to date, skipped", stage.name)
            else:
                _run_stage(stage, run_stage, cfg, root, config_source, reason)
                ran.append(stage.name)
            waiting = cluster is not None and any(
                later.collective and not (later.not_needed and later.not_needed(cfg))
                for later, _ in stages[known.index(stage.name) + 1:])
    except BaseException:
        if waiting:
            cluster.tell(_STOP)
        raise
    return ran


def _run_stage(stage: Stage, run_stage, cfg: Config, root: Path, config_source: str, reason: str) -> None:
    log.info("[%s] running (%s)", stage.name, reason)
    # The old stamp goes first: if this run dies, the stage is stale next time.
    stamp_path(root, stage).unlink(missing_ok=True)
    expected = stage_inputs(stage, cfg, root)
    ctx = RunContext(root=root, config_source=config_source, inputs=expected)
    started = time.time()
    run_stage(cfg, ctx)
    elapsed = time.time() - started
    outs = {rel: sha256_file(root / rel) for rel in ctx.outputs}
    write_json(stamp_path(root, stage), {
        "stage": stage.name, **expected, "outs": outs,
        "seconds": round(elapsed, 2), "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    })
    log.info("[%s] done in %.1f s", stage.name, elapsed)


def _follow_chief(cfg: Config, config_source: str, stages, cluster) -> list[str]:
    """A worker other than the chief: the training stages the chief runs, on its files, in a folder removed after."""
    ran: list[str] = []
    task = cluster.task
    with tempfile.TemporaryDirectory(prefix=f"{cfg.name}-{task.task_type}{task.index}-") as tmp:
        root = Path(tmp)
        for stage, run_stage in stages:
            if not stage.collective or (stage.not_needed and stage.not_needed(cfg)):
                continue
            word = cluster.tell(None)
            if word == _STOP:
                raise ChiefStopped(f"The chief stopped before the {stage.name} stage; its log says why "
                                   f"({task.task_type} {task.index} wrote nothing).")
            if word == _SKIP:
                log.info("[%s] up to date on the chief, skipped", stage.name)
                continue
            cluster.share_files(root, list(stage.dependencies(cfg)))
            log.info("[%s] running with the chief (%s %d; files in %s, removed after)", stage.name, task.task_type,
                     task.index, root)
            run_stage(cfg, RunContext(root=root, config_source=config_source, inputs=stage_inputs(stage, cfg, root)))
            ran.append(stage.name)
    return ran
