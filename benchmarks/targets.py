"""Target profiles (``configs/targets.yaml``), validated like the pipeline config.

A profile says which runtime and thread count stand for a device, which files
may ship there, and the budgets they must meet. The host running the benchmark
is not the device: a profile asking for more threads than the host has cores
runs with the cores there are, and the result says so.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from core.errors import ConfigError, one_line, printable
from core.host import available_cpus
from core.yaml_files import read_yaml
from exporters.registry import RUNTIMES


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Budgets(_Strict):
    p90_ms: Optional[float] = Field(default=None, gt=0)
    size_mb: Optional[float] = Field(default=None, gt=0)
    peak_rss_mb: Optional[float] = Field(default=None, gt=0)
    accuracy_drop_pp: Optional[float] = Field(default=None, ge=0, le=100)


class Regression(_Strict):
    accuracy_pp: float = Field(default=1.0, ge=0, le=100)
    latency_pct: float = Field(default=10.0, ge=0)


class Target(_Strict):
    name: str = ""
    description: str = ""
    runtime: Literal[RUNTIMES]
    threads: int = Field(default=1, ge=1, le=256)
    formats: Optional[tuple[str, ...]] = None
    fully_integer_only: bool = False
    budgets: Budgets = Budgets()
    regression: Regression = Regression()

    @field_validator("formats")
    @classmethod
    def _registered(cls, v):
        from exporters import registry

        for fmt in v or ():
            if fmt not in registry.names():
                raise ValueError(f"unknown format '{fmt}'; valid formats: {', '.join(registry.names())}")
        return v

    def host_threads(self, cpus: Optional[int] = None) -> int:
        return min(self.threads, cpus or available_cpus())

    def thread_note(self, cpus: Optional[int] = None) -> Optional[str]:
        used = self.host_threads(cpus)
        if used < self.threads:
            return f"asks for {self.threads} threads; this host has {used} cores, so it ran with {used}"
        return None

    def admits(self, fmt: str, runtime: str, fully_integer: Optional[bool]) -> bool:
        """Whether a file of this format (and integer-ness, read from the file) may ship to this target."""
        if runtime != self.runtime:
            return False
        if self.formats is not None and fmt not in self.formats:
            return False
        return not self.fully_integer_only or bool(fully_integer)


class TargetsFile(_Strict):
    targets: dict[str, Target]


def load_targets(path: str | Path, names: tuple[str, ...] | list[str]) -> list[Target]:
    """The named profiles from ``path``, in the order asked for; one ConfigError sentence on any problem."""
    path = Path(path)
    raw = read_yaml(path, "Targets file", "set benchmark.targets_file to configs/targets.yaml or a copy of it")
    try:
        parsed = TargetsFile.model_validate(raw or {})
    except ValidationError as exc:
        error = exc.errors()[0]
        key = ".".join(printable(str(p)) for p in error["loc"])
        msg = one_line(error["msg"].removeprefix("Value error, "))
        raise ConfigError(f"{printable(str(path))}: {key}: {msg}.") from None
    out = []
    for name in names:
        if name not in parsed.targets:
            hint = difflib.get_close_matches(name, list(parsed.targets), n=1)
            did_you_mean = f" (did you mean '{hint[0]}'?)" if hint else ""
            raise ConfigError(f"benchmark.targets: unknown target '{name}'{did_you_mean}; "
                              f"{path} defines: {', '.join(parsed.targets)}.")
        out.append(parsed.targets[name].model_copy(update={"name": name}))
    return out
