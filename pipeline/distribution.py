"""tf.distribute for the training stages (fine-tuning, pruning, QAT): which strategy, what batch, what learning rate.

``train.distribute`` picks the strategy:

- ``none``: TensorFlow's default strategy, one device;
- ``mirrored``: ``tf.distribute.MirroredStrategy`` over this machine's GPUs
  (over its logical CPU devices when it has none, which is how the tests split
  one CPU in two);
- ``multi_worker``: ``tf.distribute.MultiWorkerMirroredStrategy`` over the
  machines that ``TF_CONFIG`` lists, one process per machine;
- ``auto``: ``multi_worker`` when ``TF_CONFIG`` names more than one task,
  ``mirrored`` with more than one GPU, else ``none``.

``train.batch_size`` is per replica: each step takes ``batch_size x replicas``
images, and the learning rates are scaled by ``train.lr_scaling``.

In a multi-worker run the chief (the ``chief`` task, else worker 0) runs the
pipeline as a single machine would. The other workers take part only in the
stages that train (``Stage.collective``): the chief tells them which of those
run, and sends them the stage's input files, so they need neither the photos
nor the earlier stages. They work in a temporary folder that is removed at the
end, as TensorFlow's multi-worker guide recommends for non-chief workers, so
only the chief writes outputs, checkpoints and stamps.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from pipeline import precision
from core.errors import ConfigError, one_line

log = logging.getLogger("pipeline")

LR_FACTORS = {"linear": float, "sqrt": math.sqrt, "none": lambda replicas: 1.0}
LAUNCH_HELP = "see \"Training on several GPUs or machines\" in the README"
# Collective reductions of 8 M int32 words (32 MiB) at a time: a large dataset is
# sent in several reductions instead of one tensor as large as the file.
_CHUNK_WORDS = 8 << 20


@dataclass(frozen=True)
class Task:
    """This process's place in the cluster that ``TF_CONFIG`` describes."""

    task_type: str
    index: int
    tasks: int  # chief and workers, all together
    has_chief: bool = False

    @property
    def is_chief(self) -> bool:
        # TensorFlow's rule: the "chief" task if the cluster has one, else worker 0.
        return self.task_type == "chief" or (self.task_type == "worker" and self.index == 0 and not self.has_chief)


def task_from_env(environ=None) -> Optional[Task]:
    """This process's task from ``TF_CONFIG``; None when it is not set."""
    raw = (os.environ if environ is None else environ).get("TF_CONFIG", "").strip()
    if not raw:
        return None
    try:
        config = json.loads(raw)
        cluster, task = config["cluster"], config["task"]
        task_type, index = str(task["type"]), int(task["index"])
        members = {name: list(cluster.get(name) or []) for name in ("chief", "worker")}
        if index < 0 or index >= len(members.get(task_type, [])):
            raise ValueError(f"task {task_type} {index} is not in the cluster")
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ConfigError(f"TF_CONFIG is not usable ({one_line(f'{exc.__class__.__name__}: {exc}', 120)}); set it to "
                          f"JSON with \"cluster\" and \"task\" on every machine ({LAUNCH_HELP}).") from None
    return Task(task_type, index, len(members["chief"]) + len(members["worker"]), has_chief=bool(members["chief"]))


def resolve_kind(setting: str, gpus: int, task: Optional[Task]) -> str:
    """``train.distribute`` as the strategy this process uses."""
    if setting == "auto":
        if task is not None and task.tasks > 1:
            return "multi_worker"
        return "mirrored" if gpus > 1 else "none"
    if setting == "multi_worker" and task is None:
        raise ConfigError(f"train.distribute is multi_worker but TF_CONFIG is not set; set TF_CONFIG on every machine "
                          f"({LAUNCH_HELP}), or use mirrored for the GPUs of one machine.")
    return setting


def wants_multi_worker(train_cfg) -> bool:
    """Cheap (no TensorFlow): whether this config makes this process one worker of several."""
    if train_cfg.distribute not in ("auto", "multi_worker"):
        return False
    task = task_from_env()
    return resolve_kind(train_cfg.distribute, 0, task) == "multi_worker"


@functools.lru_cache(maxsize=None)
def _strategy(kind: str):
    """One strategy per kind and process: TensorFlow configures collectives only once per process."""
    from core.keras_compat import tf

    if kind == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    if kind == "mirrored":
        devices = [d.name for d in tf.config.list_logical_devices("GPU")]
        return tf.distribute.MirroredStrategy(devices or [d.name for d in tf.config.list_logical_devices("CPU")])
    return tf.distribute.get_strategy()


@dataclass
class Setup:
    """How this process trains: the strategy and its replicas, mixed precision, XLA, batch and learning-rate scaling."""

    kind: str
    strategy: object
    task: Optional[Task]
    precision_policy: str  # the Keras policy fine-tuning runs under (pipeline.precision)
    jit_compile: bool
    lr_scaling: str

    @property
    def mixed_precision(self) -> bool:
        return self.precision_policy != "float32"

    @property
    def replicas(self) -> int:
        return int(self.strategy.num_replicas_in_sync)

    @property
    def multi_worker(self) -> bool:
        return self.kind == "multi_worker"

    @property
    def is_chief(self) -> bool:
        return not self.multi_worker or self.task.is_chief

    def global_batch(self, per_replica: int) -> int:
        return per_replica * self.replicas

    @property
    def lr_factor(self) -> float:
        return float(LR_FACTORS[self.lr_scaling](self.replicas))

    def lr(self, lr: float) -> float:
        return lr * self.lr_factor

    def describe(self, per_replica_batch: int) -> dict:
        """What history.json and a checkpoint record; a checkpoint made with another setup is not resumed."""
        return {"distribute": self.kind, "replicas": self.replicas,
                "global_batch_size": self.global_batch(per_replica_batch), "lr_factor": round(self.lr_factor, 6),
                "mixed_precision": self.mixed_precision, "precision_policy": self.precision_policy,
                "jit_compile": self.jit_compile}

    def summary(self, per_replica_batch: int) -> str:
        if self.kind == "multi_worker":
            where = (f"MultiWorkerMirroredStrategy over {self.task.tasks} workers (this is {self.task.task_type} "
                     f"{self.task.index})")
        elif self.kind == "mirrored":
            where = f"MirroredStrategy over {', '.join(self.strategy.extended.worker_devices)}"
        else:
            where = "one device"
        return (f"{where}; {self.replicas} replica(s), global batch {self.global_batch(per_replica_batch)} "
                f"({per_replica_batch} per replica), learning rates x{self.lr_factor:g} (train.lr_scaling "
                f"{self.lr_scaling}); mixed precision {self.precision_policy if self.mixed_precision else 'off'}, XLA "
                f"{'on' if self.jit_compile else 'off'}")

    # What the chief shares with the other workers of a multi-worker run.

    def _sum(self, words: np.ndarray, everyone: bool = False) -> np.ndarray:
        """Sum of ``words`` over the replicas: every replica's (``everyone``), or the chief's first replica's alone."""
        from core.keras_compat import tf

        zeros = np.zeros_like(words)

        def value(context):
            # MultiWorkerMirroredStrategy numbers the chief's devices first, so replica 0 is on the chief.
            return tf.constant(words if everyone or context.replica_id_in_sync_group == 0 else zeros)

        per_replica = self.strategy.experimental_distribute_values_from_function(value)
        return self.strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None).numpy()

    def broadcast(self, payload: Optional[bytes]) -> bytes:
        """The chief's ``payload``, on every worker (the others pass None)."""
        size = int(self._sum(np.array([len(payload) if self.is_chief else 0], np.int64))[0])
        data = (payload if self.is_chief else b"").ljust(-(-size // 4) * 4, b"\0")
        words = np.frombuffer(data, np.int32) if self.is_chief else np.zeros(len(data) // 4, np.int32)
        chunks = [self._sum(words[i:i + _CHUNK_WORDS]) for i in range(0, len(words), _CHUNK_WORDS)]
        return (np.concatenate(chunks).astype(np.int32).tobytes() if chunks else b"")[:size]

    def tell(self, value: Optional[int]) -> int:
        """The chief's ``value`` (an int), on every worker."""
        return int(self._sum(np.array([value if self.is_chief else 0], np.int64))[0])

    def share_files(self, root: Path, rels: list[str]) -> None:
        """The chief's files (paths relative to ``root``; missing ones are skipped) written under every worker's ``root``."""
        if self.is_chief:
            present = [rel for rel in rels if (root / rel).is_file()]
            contents = [(root / rel).read_bytes() for rel in present]
            header = json.dumps([[rel, len(c)] for rel, c in zip(present, contents)]).encode()
            payload = struct.pack("<Q", len(header)) + header + b"".join(contents)
            self.broadcast(payload)
            return
        payload = self.broadcast(None)
        (length,) = struct.unpack("<Q", payload[:8])
        offset = 8 + length
        for rel, size in json.loads(payload[8:offset]):
            path = root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(payload[offset:offset + size])
            offset += size

    def share_folder(self, root: Path, rel: str) -> None:
        """Every worker's ``root/rel`` becomes a copy of the chief's (empty when the chief has none)."""
        import shutil

        folder = root / rel
        files = sorted(str(p.relative_to(root)) for p in folder.rglob("*") if p.is_file()) if self.is_chief else []
        if not self.is_chief:
            shutil.rmtree(folder, ignore_errors=True)
        self.share_files(root, files)

    def check_same(self, digest: str, what: str) -> None:
        """Raise on every worker unless each one holds the same ``digest`` (hex) as the chief."""
        mine = int(digest[:15], 16)  # 60 bits: fits an int64 and the sum below
        chiefs = self.tell(mine if self.is_chief else None)
        differing = int(self._sum(np.array([int(mine != chiefs)], np.int64), everyone=True)[0])
        if differing:
            raise RuntimeError(f"{differing} worker(s) ended with other {what} than the chief: the replicas diverged")


def training_setup(train_cfg) -> Setup:
    """The setup ``train_cfg`` gives on this machine (the strategy is made on first use and kept)."""
    gpus = precision.gpu_count()
    # TF_CONFIG is read only where it can matter, so a stale one cannot stop a run that trains alone.
    task = task_from_env() if train_cfg.distribute in ("auto", "multi_worker") else None
    kind = resolve_kind(train_cfg.distribute, gpus, task)
    if task is not None and task.tasks > 1 and kind != "multi_worker":
        log.warning("TF_CONFIG lists %d tasks but train.distribute is %s: this process trains alone", task.tasks, kind)
    return Setup(kind=kind, strategy=_strategy(kind), task=task if kind == "multi_worker" else None,
                 precision_policy=precision.policy_name(train_cfg.mixed_precision, gpus),
                 jit_compile=precision.resolve(train_cfg.jit_compile, gpus), lr_scaling=train_cfg.lr_scaling)
