"""finetune stage: feature extraction with a frozen backbone, then fine-tuning its top layers.

Phase 1 trains the new head on a frozen backbone (BatchNorm in inference
mode). Phase 2 unfreezes the top ``train.fine_tune_at`` backbone layers
(BatchNorm stays frozen unless ``train.freeze_batchnorm`` is false) and trains
at the lower ``train.fine_tune_lr``. Each phase stops early on validation
accuracy; the weights with the best validation accuracy over both phases are
the ones saved.

The model, its optimizers and every compile are made inside the
``train.distribute`` strategy's scope and, with ``train.mixed_precision``,
under the ``mixed_float16`` policy (``pipeline.distribution``,
``pipeline.precision``); the saved model is float32 either way.
"""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path
from typing import Optional

import numpy as np

from core import layout
from core.io import atomic_path, write_json
from core.keras_compat import keras, tf
from core.layout import read_labels
from core.loader import load_classifier
from core.splits import load_split
from pipeline import adopt, data, distribution, interrupt, models, precision
from pipeline.config import Config
from pipeline.interrupt import Interrupted, StopRequest
from pipeline.resume import TrainingCheckpoint
from pipeline.stages import Stage
from pipeline.training import compile_model, epoch_summary, fit_verbosity, seed_everything

log = logging.getLogger("pipeline")

STAGE = Stage(
    name="finetune",
    module=__name__,
    deps=(layout.split("train"), layout.split("val"), layout.LABELS),
    outs=(layout.MODEL, layout.HISTORY),
    # data too: augmentation and the shuffle seed live there.
    params=("data", "model", "train"),
    # A model brought with model.path: its file's (or folder's) contents, so a changed model is adopted again.
    external_inputs=lambda cfg: None if cfg.model.path is None else {
        "model.path": adopt.fingerprint(cfg.model.path) if Path(cfg.model.path).exists() else "missing"},
    collective=True,
)
PHASES = ("head", "fine_tune")


class BestWeights(keras.callbacks.Callback):
    """Remembers the weights with the best val_accuracy across every fit() it is passed to."""

    def __init__(self):
        super().__init__()
        self.best = -np.inf
        self.best_epoch = None
        self.weights = None
        self.phase = ""

    def on_epoch_end(self, epoch, logs=None):
        acc = (logs or {}).get("val_accuracy")
        if acc is not None and acc > self.best:
            self.best, self.best_epoch, self.weights = acc, f"{self.phase} epoch {epoch + 1}", self.model.get_weights()


class ResumableEarlyStopping(keras.callbacks.EarlyStopping):
    """EarlyStopping that can start a phase part-way through, with the patience it had already used."""

    def __init__(self, resume: Optional[dict] = None, **kwargs):
        super().__init__(**kwargs)
        self.resume = resume

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)  # resets the counters, so the saved ones go in after it
        if self.resume:
            self.wait, self.best_epoch = self.resume["wait"], self.resume["best_epoch"]
            self.best = -np.inf if self.resume["best"] is None else self.resume["best"]

    def state(self) -> dict:
        return {"wait": int(self.wait), "best_epoch": int(self.best_epoch),
                "best": None if not np.isfinite(self.best) else float(self.best)}


class Training:
    """Both phases, checkpointed after every epoch and stoppable between batches by SIGINT or SIGTERM."""

    def __init__(self, model, train_ds, val_ds, checkpoint: TrainingCheckpoint, saved: Optional[dict],
                 stop: StopRequest, patience: int):
        self.model, self.train_ds, self.val_ds = model, train_ds, val_ds
        self.checkpoint, self.stop, self.patience = checkpoint, stop, patience
        self.best = BestWeights()
        self.history: dict[str, dict[str, list[float]]] = {phase: {} for phase in PHASES}
        # What the checkpoint on disk holds, e.g. "phase head, epoch 1 of 2".
        self.saved: Optional[str] = describe(saved) if saved else None
        self.announce: Optional[dict] = None  # a restored state whose resume point is not logged yet
        self.epoch_seconds: dict[str, list[float]] = {phase: [] for phase in PHASES}  # this run's epochs

    def fit(self, phase: str, epochs: int, resume: Optional[dict]) -> None:
        """Train ``phase`` for ``epochs``, or what is left of it when ``resume`` is this phase's checkpoint."""
        self.best.phase = phase
        done = 0
        if resume is not None:
            done = epochs if resume["finished"] else resume["epoch"]
        if done >= epochs:
            return
        if self.announce is not None:
            log.info("[finetune] resuming from checkpoint: phase %s, epoch %d of %d", phase, done + 1, epochs)
            self.announce = None
        stop = ResumableEarlyStopping(resume=resume["early_stopping"] if resume else None,
                                      monitor="val_accuracy", patience=self.patience, mode="max")
        saver = EpochCheckpoint(self, phase, epochs, stop)
        log.info("[finetune] %s: %d epoch(s), %d trainable weight tensors",
                 phase, epochs, len(self.model.trainable_weights))
        self.model.fit(self.train_ds, validation_data=self.val_ds, epochs=epochs, initial_epoch=done,
                       callbacks=[self.best, stop, saver], verbose=fit_verbosity())

    def restore(self, state: dict) -> None:
        """Load the checkpoint into the model compiled for ``state``'s phase, and the loop's own state."""
        self.model.optimizer.build(self.model.trainable_variables)  # slots exist, so they are restored now
        self.checkpoint.restore(state, {"model": self.model, "optimizer": self.model.optimizer})
        self.history = {phase: dict(state["history"].get(phase, {})) for phase in PHASES}
        best = state["best"]
        if best["weights"] is not None:
            self.best.best, self.best.best_epoch = best["val_accuracy"], best["epoch"]
            self.best.weights = (self.model.get_weights() if best["weights"] == "model"
                                 else self.checkpoint.arrays(state, best["weights"]))
        # Keras makes a new iterator over the training data when fit() starts and
        # one per epoch, and each one reshuffles; making as many as the run had made
        # replays the shuffle order an uninterrupted run would have had.
        fits = [phase for phase in PHASES if self.history[phase]]
        iterators = sum(1 + len(self.history[phase].get("loss", [])) for phase in fits)
        if not state["finished"]:
            iterators -= 1  # the phase's own fit() makes that one again
        for _ in range(iterators):
            iter(self.train_ds)
        self.saved = describe(state)
        self.announce = state

    def save(self, phase: str, epoch: int, epochs: int, finished: bool, stop: ResumableEarlyStopping) -> None:
        state = {"phase": phase, "epoch": epoch, "epochs": epochs, "finished": finished,
                 "history": self.history, "early_stopping": stop.state(),
                 "best": {"val_accuracy": None, "epoch": None, "weights": None}}
        arrays = {}
        if self.best.weights is not None:
            current = self.best.best_epoch == f"{phase} epoch {epoch}"
            state["best"] = {"val_accuracy": float(self.best.best), "epoch": self.best.best_epoch,
                             "weights": "model" if current else "best"}
            if not current:
                arrays["best"] = self.best.weights
        self.checkpoint.save(state, {"model": self.model, "optimizer": self.model.optimizer}, arrays)
        self.saved = describe(state)
        log.info("[finetune] checkpoint saved: %s", self.saved)

    def interrupted(self, signum: int) -> Interrupted:
        if self.saved is None:
            return Interrupted(signum, "fine-tuning stopped before its first epoch ended; the next run starts it over.")
        return Interrupted(signum, f"fine-tuning stopped; its checkpoint after {self.saved} is in "
                                   f"{self.checkpoint.directory}, and the next run resumes from it.")


class EpochCheckpoint(keras.callbacks.Callback):
    """Saves the checkpoint after every epoch; stops the fit between batches once a signal came."""

    def __init__(self, training: Training, phase: str, epochs: int, stop: ResumableEarlyStopping):
        super().__init__()
        self.training, self.phase, self.epochs, self.stop = training, phase, epochs, stop

    def on_train_batch_begin(self, batch, logs=None):
        # Before the batch: a signal that came during the last one, or during validation
        # and the save after it, stops here, and the checkpoint on disk is complete.
        self.training.stop.check()

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch_started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        # Runs after BestWeights and EarlyStopping (the list's order), so their state is this epoch's.
        history = self.training.history[self.phase]
        for key, value in (logs or {}).items():
            history.setdefault(key, []).append(float(value))
        # Training and validation of this epoch, in this run (pipeline.timings reads it; not checkpointed).
        seconds = time.perf_counter() - self.epoch_started
        self.training.epoch_seconds[self.phase].append(round(seconds, 2))
        log.info("[finetune] %s epoch %d of %d: %s", self.phase, epoch + 1, self.epochs, epoch_summary(logs, seconds))
        finished = epoch + 1 >= self.epochs or bool(self.model.stop_training)
        self.training.save(self.phase, epoch + 1, self.epochs, finished, self.stop)


def describe(state: dict) -> str:
    text = f"phase {state['phase']}, epoch {state['epoch']} of {state['epochs']}"
    return text + (" (the phase stopped early)" if state["finished"] and state["epoch"] < state["epochs"] else "")


def datasets(cfg: Config, root: Path, batch_size: int):
    """The training and validation datasets fine-tuning reads, and the two splits' sizes.

    ``batch_size`` is the global batch (``train.batch_size`` times the replicas);
    the optimize stage and ``pipeline.train_throughput`` read the same datasets.
    """
    x_train, y_train = load_split(root / layout.split("train"), mmap=True)
    x_val, y_val = load_split(root / layout.split("val"), mmap=True)
    batch, cache = batch_size, dict(cache=cfg.data.cache, cache_dir=root / layout.CACHE)
    train_ds = data.make_dataset(x_train, y_train, batch, training=True, augment=cfg.data.augment,
                                 seed=cfg.data.seed, label="train", **cache)
    val_ds = data.make_dataset(x_val, y_val, batch, training=False, label="val", **cache)
    return train_ds, val_ds, len(y_train), len(y_val)


def build_model(cfg: Config, num_classes: int) -> keras.Model:
    """The classifier as fine-tuning starts from it (``pipeline.train_throughput`` trains the same)."""
    model = models.build_classifier(cfg.model, num_classes, cfg.data.image_size)
    if cfg.train.batchnorm_momentum is not None:
        models.set_batchnorm_momentum(model, cfg.train.batchnorm_momentum)
    return model


def run(cfg: Config, ctx) -> None:
    if cfg.model.path is not None:
        _adopt(cfg, ctx)
        return
    seed_everything(cfg.data.seed)
    setup = distribution.training_setup(cfg.train)
    class_names = read_labels(ctx.root)
    t = cfg.train
    # The datasets are batched by the global batch; the strategy splits each batch over the replicas.
    batch = setup.global_batch(t.batch_size)
    train_ds, val_ds, n_train, n_val = datasets(cfg, ctx.root, batch)
    devices = [d.device_type for d in tf.config.list_logical_devices()]
    log.info("[finetune] %s alpha=%s weights=%s on %s; %d train / %d val images",
             cfg.model.backbone, cfg.model.alpha, cfg.model.weights, "GPU" if "GPU" in devices else "CPU",
             n_train, n_val)
    log.info("[finetune] training on %s", setup.summary(t.batch_size))

    if cfg.model.weights == "none" and (t.freeze_batchnorm or t.fine_tune_at != 1.0):
        # Seen in practice: a random backbone with frozen BatchNorm emits near-zero
        # features, so the head cannot learn and the model stays at chance.
        log.warning("[finetune] model.weights is 'none' but part of the backbone or its BatchNorm stays frozen; "
                    "training from scratch needs train.fine_tune_at: 1.0, train.freeze_batchnorm: false and "
                    "train.batchnorm_momentum: 0.9 (as in configs/quickstart.yaml)")
    checkpoint = TrainingCheckpoint(ctx.path(layout.FINETUNE_CHECKPOINT), ctx.inputs, "finetune",
                                    setup.describe(t.batch_size))
    if setup.multi_worker:
        # Every worker resumes from the chief's checkpoint, or none does: they train in lockstep.
        setup.share_folder(ctx.root, layout.FINETUNE_CHECKPOINT)
    saved = checkpoint.load()
    started = time.time()
    steps = int(np.ceil(n_train / batch))
    unfrozen = 0
    with precision.policy(setup.precision_policy), setup.strategy.scope():
        model = build_model(cfg, len(class_names))
        # What the training really ran with, read from the model (history.json).
        ran_with = {**setup.describe(t.batch_size), "policy": keras.mixed_precision.global_policy().name,
                    "backbone_compute_dtype": models.backbone_layers(model)[0].compute_dtype,
                    "last_layer_dtype": model.layers[-1].compute_dtype, "output_dtype": model.output.dtype.name}
        with interrupt.deferred() as stop:
            training = Training(model, train_ds, val_ds, checkpoint, saved, stop, t.patience)
            phases = (("head", t.head_lr, t.head_epochs), ("fine_tune", t.fine_tune_lr, t.fine_tune_epochs))
            try:
                # A resumed run takes the same steps as an uninterrupted one (trainable flags,
                # a new optimizer per phase) but does not train a phase that ended before the
                # checkpoint's: the checkpoint holds the weights it led to.
                models.freeze_backbone(model)
                for phase, lr, epochs in phases:
                    if phase == "fine_tune":
                        unfrozen = models.set_trainable(model, t.fine_tune_at, t.freeze_batchnorm)
                        if not unfrozen and epochs:
                            log.info("[finetune] fine_tune_at unfreezes no layer: phase 2 skipped")
                    if epochs <= 0 or (phase == "fine_tune" and not unfrozen):
                        continue
                    # Trainable flags take effect on compile.
                    compile_model(model, setup.lr(lr), epochs, steps, t, jit_compile=setup.jit_compile)
                    if saved is not None and saved["phase"] == phase:
                        training.restore(saved)
                        training.fit(phase, epochs, resume=saved)
                    elif saved is None or PHASES.index(saved["phase"]) < PHASES.index(phase):
                        training.fit(phase, epochs, resume=None)
                if training.announce is not None:
                    log.info("[finetune] resuming from checkpoint: %s; every epoch is done", training.saved)
                stop.check()  # a signal after the last batch still stops the run before anything is published
            except Interrupted as exc:
                raise training.interrupted(exc.signum) from None
        best = training.best
        if best.weights is not None:
            model.set_weights(best.weights)
            log.info("[finetune] restored best weights: val_accuracy %.4f at %s", best.best, best.best_epoch)
    _save(model, setup, ctx, {
        "head": training.history["head"], "fine_tune": training.history["fine_tune"], "unfrozen_layers": unfrozen,
        "best_val_accuracy": None if best.weights is None else float(best.best),
        "best_epoch": best.best_epoch, "seconds": round(time.time() - started, 1), "training": ran_with,
        "epoch_seconds": training.epoch_seconds,
    })
    # Only now: a run killed before this point resumes from the checkpoint instead of starting over.
    checkpoint.discard()


def _adopt(cfg: Config, ctx) -> None:
    """``model.path``: the user's classifier, rebuilt flat (``pipeline.adopt``), in place of fine-tuning."""
    started = time.time()
    class_names = read_labels(ctx.root)
    x_train, _ = load_split(ctx.path(layout.split("train")), mmap=True)
    sample = np.asarray(x_train[np.random.default_rng(cfg.data.seed).permutation(len(x_train))[:32]])
    out = ctx.path(layout.MODEL)
    with atomic_path(out) as tmp:
        record = adopt.adopt(cfg, class_names, sample, tmp)
    ctx.record_output(out)
    x_val, y_val = load_split(ctx.path(layout.split("val")))
    probs = models.predict_probs(load_classifier(out), x_val.astype(np.float32))
    val_accuracy = float(np.mean(probs.argmax(1) == y_val)) if len(y_val) else None
    log.info("[finetune] adopted %s without training (%s); validation top-1 %s", cfg.model.path,
             "unchanged: a classifier this pipeline built" if record["adopted_unchanged"] else
             f"rebuilt flat, {record['inlined_models']} nested model(s) inlined"
             + (", softmax appended to its logits" if record.get("appended_softmax") else ""),
             "n/a" if val_accuracy is None else f"{val_accuracy:.4f}")
    write_json(ctx.path(layout.HISTORY), {"adopted": record, "val_accuracy": val_accuracy,
                                          "seconds": round(time.time() - started, 1)})
    ctx.record_output(ctx.path(layout.HISTORY))


def _save(model, setup, ctx, history: dict) -> None:
    """The fine-tuned model, float32 and every layer trainable, and its training history."""
    # Saved with every layer trainable: later stages load it with compile=False
    # and choose their own trainable flags and optimizers (pruning, QAT).
    for layer in model.layers:
        layer.trainable = True
    if setup.mixed_precision:
        model = precision.float32_copy(model)  # see pipeline.precision: no float16 or bfloat16 reaches the exporters
    digest = weights_digest(model)
    log.info("[finetune] trained weights sha256 %s", digest)
    if setup.multi_worker:
        setup.check_same(digest, "trained weights")
    out = ctx.path(layout.MODEL)
    with atomic_path(out) as tmp:
        model.save(tmp)  # tmp keeps the .keras suffix that Keras picks the format by
    ctx.record_output(out)
    write_json(ctx.path(layout.HISTORY), history)
    ctx.record_output(ctx.path(layout.HISTORY))


def weights_digest(model) -> str:
    """sha256 over every weight's bytes, in order: equal on two workers only if they hold the same model."""
    digest = hashlib.sha256()
    for weight in model.get_weights():
        digest.update(np.ascontiguousarray(weight).tobytes())
    return digest.hexdigest()
