"""Runs the stages in order, skipping those whose stamp still matches (``pipeline.stamps``).

A stamp is written last, after all outputs are in place, so a run killed
mid-stage leaves no stamp and the stage runs again next time. A stage may write
only the outputs it declares (``Stage.outs``).

In a multi-worker run (``pipeline.distribution``) only the chief does all of
this. The other workers follow it through the stages that train, in a
temporary folder, and write no stamp.
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from core.errors import ConfigError, PipelineError
from core.io import sha256_file, write_json
from pipeline import distribution
from pipeline.config import Config
from pipeline.stages import Stage, bench, data, export, finetune, optimize
from pipeline.stamps import stage_inputs, stamp_path, why_stale

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
        self.outputs.append(Path(path).relative_to(self.root).as_posix())


def all_stages():
    """(Stage, run) pairs in the order data flows through them."""
    return [(m.STAGE, m.run) for m in (data, finetune, optimize, export, bench)]


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
    (``pipeline.train_throughput``) brings the data stage up to date without training.
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
            raise ConfigError(f"--through {through}: no such stage; stages are {', '.join(known)}.")
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
    undeclared = [rel for rel in ctx.outputs if rel not in stage.outputs(cfg)]
    if undeclared:  # our bug: the layout and the stage disagree
        raise RuntimeError(f"stage {stage.name} wrote {', '.join(undeclared)}, which it does not declare in its outs")
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
