"""Stages, in the order data flows through them (``pipeline.runner.all_stages``).

Each stage module declares ``STAGE`` (what it reads and writes, and which config
sections it depends on) and one ``run(cfg, ctx)``. The runner skips a stage
whose stamp still matches, like ``dvc.yaml`` + ``dvc.lock``; the code a stamp
holds is the stage module's import closure (``pipeline.stamps``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional


@dataclass(frozen=True)
class Stage:
    name: str
    module: str  # the module that defines run(): its import closure is the stage's code
    deps: tuple[str, ...]  # files under build/<name>/ that earlier stages wrote (core.layout)
    outs: tuple[str, ...]  # files under build/<name>/ it may write (core.layout); the stamp records those written
    params: tuple[str, ...]  # config sections the stage reads
    external_inputs: Optional[Callable] = field(default=None)  # cfg -> fingerprint of data outside build/
    # cfg -> more deps that depend on the config (e.g. the optimized models export reads).
    extra_deps: Optional[Callable] = field(default=None)
    # cfg -> more outs that depend on the config (e.g. one file per format in export.formats).
    extra_outs: Optional[Callable] = field(default=None)
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

    def outputs(self, cfg) -> tuple[str, ...]:
        return self.outs + (tuple(self.extra_outs(cfg)) if self.extra_outs else ())
