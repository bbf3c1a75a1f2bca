"""Stages, in the order data flows through them.

Each stage module declares ``STAGE`` (what it reads, writes and which config
sections it depends on) and one ``run(cfg, ctx)``. The runner skips a stage
whose stamp still matches, like ``dvc.yaml`` + ``dvc.lock``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional


@dataclass(frozen=True)
class Stage:
    name: str
    deps: tuple[str, ...]  # files under build/<name>/ that earlier stages wrote
    params: tuple[str, ...]  # config sections the stage reads
    code: tuple[str, ...]  # modules whose source is part of the stamp
    # Files it writes are recorded by the stage itself through ctx.record_output(...).
    external_inputs: Optional[Callable] = field(default=None)  # cfg -> fingerprint of data outside build/
    # cfg -> more deps that depend on the config (e.g. the optimized models export reads).
    extra_deps: Optional[Callable] = field(default=None)
    # cfg -> {"key (what it means)": JSON-able value}: settings outside ``params``
    # that change what the stage makes; hashed into its stamp like a section.
    derived_params: Optional[Callable] = field(default=None)
    # cfg -> why the stage has nothing to do for this config (None: it is needed).
    not_needed: Optional[Callable] = field(default=None)
    # "section.key"s of ``params`` that do not change what the stage makes, left out of its stamp.
    ignores: tuple[str, ...] = ()
    # It trains under train.distribute: in a multi-worker run every worker takes part in it.
    collective: bool = False

    def dependencies(self, cfg) -> tuple[str, ...]:
        return self.deps + (tuple(self.extra_deps(cfg)) if self.extra_deps else ())


def all_stages():
    """(Stage, run) pairs in order; imported lazily so `import pipeline` stays cheap."""
    from pipeline.stages import bench, data, export, finetune, optimize

    return [(m.STAGE, m.run) for m in (data, finetune, optimize, export, bench)]
