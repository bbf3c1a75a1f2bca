"""Resumable training: the model, its optimizer and the training loop's own state, saved after every epoch.

One folder per stage (``build/<name>/finetune/checkpoint/``) holds
``state.json`` and the one save it names: a ``tf.train.Checkpoint`` of the
model and its optimizer (every weight, BatchNorm statistics, Adam's moments and
step count, which the learning-rate schedule reads) and any extra weight lists
as ``.npz``. A save is written to a hidden temporary folder and renamed;
``state.json`` is replaced after that, atomically, and older saves are removed
last. A run killed at any moment therefore leaves the previous checkpoint or
the new one, never a half-written one that the next run trusts.

``state.json`` also records the stage's inputs as the runner computes them for
its stamps (dependency hashes, config sections, stage code, source data) and
the training setup (replicas, global batch, mixed precision: what
``train.distribute: auto`` and the other ``auto`` settings resolved to on the
machine); a checkpoint made from other inputs or with another setup is
discarded, not resumed.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Optional

import numpy as np

from core.io import write_json
from pipeline.stamps import input_change

log = logging.getLogger("pipeline")

STATE = "state.json"
_CKPT_PREFIX = "ckpt"


class TrainingCheckpoint:
    def __init__(self, directory: Path, inputs: dict, stage: str, setup: Optional[dict] = None):
        self.directory = Path(directory)
        self.inputs = inputs
        self.stage = stage
        self.setup = setup

    def load(self) -> Optional[dict]:
        """The saved state, or None: there is none, or it cannot be used (then it is removed, with a log line)."""
        state_path = self.directory / STATE
        if not state_path.exists():
            # A run killed before its first save may have left a temporary folder.
            self.discard()
            return None
        try:
            state = json.loads(state_path.read_text(encoding="utf-8"))
            folder = self.directory / state["folder"]
        except (OSError, ValueError, KeyError, TypeError):
            return self._drop("it cannot be read")
        why = input_change(state.get("inputs") or {}, self.inputs)
        if why:
            return self._drop(f"it was made before {why}")
        old = state.get("setup")
        if old != self.setup:
            # Another optimizer (loss scaling), or another number of steps per epoch for the schedule.
            changed = [f"{key} {(old or {}).get(key)} -> {value}" for key, value in (self.setup or {}).items()
                       if (old or {}).get(key) != value]
            return self._drop(f"it was made with another training setup ({', '.join(changed) or 'unknown'})")
        if not (folder / f"{_CKPT_PREFIX}.index").is_file():
            return self._drop(f"{folder.name} is incomplete")
        return state

    def _drop(self, reason: str) -> None:
        log.info("[%s] discarding checkpoint %s: %s; starting over", self.stage, self.directory, reason)
        self.discard()
        return None

    def save(self, state: dict, trackables: dict, arrays: dict[str, list[np.ndarray]]) -> None:
        """Save ``trackables`` (e.g. model=…, optimizer=…) and ``arrays`` (name -> weight list), then ``state``."""
        from core.keras_compat import tf

        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".save-", dir=self.directory))
        tf.train.Checkpoint(**trackables).write(str(tmp / _CKPT_PREFIX))
        for name, weights in arrays.items():
            with open(tmp / f"{name}.npz", "wb") as fh:
                np.savez(fh, *weights)
        folder = self.directory / tmp.name.lstrip(".")
        os.replace(tmp, folder)
        write_json(self.directory / STATE, {**state, "inputs": self.inputs, "setup": self.setup, "folder": folder.name})
        for entry in self.directory.iterdir():
            if entry.name not in (STATE, folder.name):
                shutil.rmtree(entry, ignore_errors=True)

    def restore(self, state: dict, trackables: dict) -> None:
        """Load the saved values into ``trackables``; every variable they already have must be in the save."""
        from core.keras_compat import tf

        prefix = self.directory / state["folder"] / _CKPT_PREFIX
        tf.train.Checkpoint(**trackables).read(str(prefix)).assert_existing_objects_matched()

    def arrays(self, state: dict, name: str) -> list[np.ndarray]:
        with np.load(self.directory / state["folder"] / f"{name}.npz") as npz:
            return [npz[f"arr_{i}"] for i in range(len(npz.files))]

    def discard(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)
