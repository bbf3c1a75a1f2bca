"""finetune stage: feature extraction with a frozen backbone, then fine-tuning its top layers.

Phase 1 trains the new head on a frozen backbone (BatchNorm in inference
mode). Phase 2 unfreezes the top ``train.fine_tune_at`` backbone layers
(BatchNorm stays frozen unless ``train.freeze_batchnorm`` is false) and trains
at the lower ``train.fine_tune_lr``. Each phase stops early on validation
accuracy; the weights with the best validation accuracy over both phases are
the ones saved.
"""

from __future__ import annotations

import logging
import sys
import time

import numpy as np

from pipeline import data, models
from pipeline.config import Config
from pipeline.io import atomic_path, write_json
from pipeline.keras_compat import keras, tf
from pipeline.stages import Stage
from pipeline.stages.data import read_labels
from pipeline.training import compile_model, seed_everything

log = logging.getLogger("pipeline")

STAGE = Stage(
    name="finetune",
    deps=("data/train.npz", "data/val.npz", "data/labels.txt"),
    # data too: augmentation and the shuffle seed live there.
    params=("data", "model", "train"),
    code=("pipeline.stages.finetune", "pipeline.training", "pipeline.models", "pipeline.data"),
)


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


def _fit(model, phase: str, epochs: int, train_ds, val_ds, best: BestWeights, patience: int) -> dict:
    if epochs <= 0:
        return {}
    best.phase = phase
    stop = keras.callbacks.EarlyStopping(monitor="val_accuracy", patience=patience, mode="max")
    # A progress bar on a terminal; one line per epoch in CI logs.
    verbose = 1 if sys.stdout.isatty() else 2
    log.info("[finetune] %s: %d epoch(s), %d trainable weight tensors", phase, epochs, len(model.trainable_weights))
    history = model.fit(train_ds, validation_data=val_ds, epochs=epochs, callbacks=[best, stop], verbose=verbose)
    return {k: [float(v) for v in vals] for k, vals in history.history.items()}


def run(cfg: Config, ctx) -> None:
    seed_everything(cfg.data.seed)
    class_names = read_labels(ctx.root)
    x_train, y_train = data.load_split(ctx.path("data/train.npz"))
    x_val, y_val = data.load_split(ctx.path("data/val.npz"))
    t = cfg.train
    train_ds = data.make_dataset(x_train, y_train, t.batch_size, training=True, augment=cfg.data.augment, seed=cfg.data.seed)
    val_ds = data.make_dataset(x_val, y_val, t.batch_size, training=False)

    model = models.build_classifier(cfg.model, len(class_names), cfg.data.image_size)
    if t.batchnorm_momentum is not None:
        models.set_batchnorm_momentum(model, t.batchnorm_momentum)
    devices = [d.device_type for d in tf.config.list_logical_devices()]
    log.info("[finetune] %s alpha=%s weights=%s on %s; %d train / %d val images",
             cfg.model.backbone, cfg.model.alpha, cfg.model.weights, "GPU" if "GPU" in devices else "CPU",
             len(y_train), len(y_val))

    if cfg.model.weights == "none" and (t.freeze_batchnorm or t.fine_tune_at != 1.0):
        # Seen in practice: a random backbone with frozen BatchNorm emits near-zero
        # features, so the head cannot learn and the model stays at chance.
        log.warning("[finetune] model.weights is 'none' but part of the backbone or its BatchNorm stays frozen; "
                    "training from scratch needs train.fine_tune_at: 1.0, train.freeze_batchnorm: false and "
                    "train.batchnorm_momentum: 0.9 (as in configs/quickstart.yaml)")
    best = BestWeights()
    started = time.time()
    models.freeze_backbone(model)
    steps = int(np.ceil(len(y_train) / t.batch_size))
    compile_model(model, t.head_lr, t.head_epochs, steps, t)
    head = _fit(model, "head", t.head_epochs, train_ds, val_ds, best, t.patience)

    unfrozen = models.set_trainable(model, t.fine_tune_at, t.freeze_batchnorm)
    fine = {}
    if unfrozen and t.fine_tune_epochs:
        compile_model(model, t.fine_tune_lr, t.fine_tune_epochs, steps, t)  # trainable flags take effect on compile
        fine = _fit(model, "fine_tune", t.fine_tune_epochs, train_ds, val_ds, best, t.patience)
    elif t.fine_tune_epochs:
        log.info("[finetune] fine_tune_at unfreezes no layer: phase 2 skipped")

    if best.weights is not None:
        model.set_weights(best.weights)
        log.info("[finetune] restored best weights: val_accuracy %.4f at %s", best.best, best.best_epoch)
    # Saved with every layer trainable: later stages load it with compile=False
    # and choose their own trainable flags and optimizers (pruning, QAT).
    for layer in model.layers:
        layer.trainable = True

    out = ctx.path("finetune/model.keras")
    with atomic_path(out) as tmp:
        model.save(tmp)  # tmp keeps the .keras suffix that Keras picks the format by
    ctx.record_output(out)
    history = ctx.path("finetune/history.json")
    write_json(history, {
        "head": head, "fine_tune": fine, "unfrozen_layers": unfrozen,
        "best_val_accuracy": None if best.weights is None else float(best.best),
        "best_epoch": best.best_epoch, "seconds": round(time.time() - started, 1),
    })
    ctx.record_output(history)


def load_model(path) -> keras.Model:
    # safe_mode: a .keras file cannot run arbitrary code (Lambda layers) when loaded.
    return keras.models.load_model(path, compile=False, safe_mode=True)
