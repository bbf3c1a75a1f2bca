"""optimize stage: magnitude pruning and quantization-aware training of the fine-tuned model.

It makes only what ``export.formats`` asks for:

- ``qat``: quantization-aware fine-tuning of the fine-tuned model
  (``optimize.qat``), for ``tflite-qat-int8``;
- ``pruned-qat``: magnitude pruning to ``optimize.prune.target_sparsity``
  while fine-tuning (PolynomialDecay), wrappers stripped, then
  sparsity-preserving QAT, for ``tflite-pruned-int8``.

Every model starts from ``finetune/model.keras`` and trains on the same
training split and augmentation, under the same ``train.distribute`` strategy,
global batch and learning-rate scaling as the fine-tuning (tfmot's pruning
wrappers and quantizers train under MirroredStrategy and
MultiWorkerMirroredStrategy; the tests run both). They train in float32 and
without XLA whatever ``train.mixed_precision`` and ``train.jit_compile`` say:
tfmot's fake-quantization ops have no float16 kernels
(tensorflow/model-optimization#824) and ``quantize_apply`` fails under
``mixed_float16`` (tensorflow/model-optimization#367). Per-layer sparsity,
validation accuracy and timings go to ``optimize/report.json``; the export
stage copies them into ``export/results.json``.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from core import layout
from core.contract import PREPROCESS_LAYER
from core.keras_compat import keras
from core.errors import ConfigError, one_line, show
from core.io import atomic_path, write_json
from core.layout import read_labels
from core.loader import load_classifier
from core.splits import load_split
from pipeline import compression, distribution, interrupt
from pipeline.interrupt import Interrupted, StopRequest
from pipeline.config import Config
from pipeline.distillation import compile_distillation, with_teacher
from pipeline.resume import TrainingCheckpoint
from pipeline.stages import Stage
from pipeline.stages.finetune import datasets
from pipeline.trained import needed_models, outputs_for
from pipeline.training import compile_model, epoch_summary, fit_verbosity, seed_everything

log = logging.getLogger("pipeline")

STAGE = Stage(
    name="optimize",
    module=__name__,
    deps=(layout.MODEL, layout.split("train"), layout.split("val"), layout.LABELS),
    outs=(layout.OPTIMIZE_REPORT,),
    extra_outs=outputs_for,
    params=("data", "model", "train", "optimize"),
    derived_params=lambda cfg: {"export.formats (models to optimize)": needed_models(cfg)},
    not_needed=lambda cfg: None if needed_models(cfg) else "no format in export.formats reads a pruned or QAT model",
    collective=True,
)


class Progress:
    """The checkpoint of the optimize stage: which phases are done, and the phase in training at which epoch.

    Phases in order: ``prune``, ``pruned-qat``, ``qat``. After every epoch the model being
    trained and its optimizer are saved (``pipeline.resume``: written aside, then renamed), with
    the validation accuracies so far; a finished phase's output (``optimize/pruned.keras``, the QAT
    weights) is written before the state says it is done. Ctrl-C, SIGTERM or a kill in the middle
    of an epoch therefore loses that epoch only: the next run with the same inputs skips the
    finished phases and resumes the phase in training from its last saved epoch.
    """

    def __init__(self, checkpoint: TrainingCheckpoint):
        self.checkpoint = checkpoint
        self.state = checkpoint.load() or {"done": [], "val": {}, "phase": None, "epoch": 0}
        self.replayed = False

    def _replay(self, train_ds, start: int) -> None:
        """Before this process's first fit(): as many iterators over the training data as an uninterrupted
        run had made by then. Keras makes one when fit() starts and one per epoch, and each reshuffles and
        draws new augmentation seeds; skipped phases and epochs made none here (the SIGKILL test found a
        QAT resumed at epoch 2 training on epoch 1's order)."""
        if self.replayed:
            return
        self.replayed = True
        for _ in range(sum(1 + len(self.state["val"].get(p, [])) for p in self.state["done"]) + start):
            iter(train_ds)

    def done(self, phase: str) -> bool:
        return phase in self.state["done"]

    def val(self, phase: str) -> list[float]:
        return list(self.state["val"].get(phase, []))

    def fit(self, phase: str, title: str, trained, fit_model, epochs: int, train_ds, val_ds, callbacks=()) -> list[float]:
        """Train ``phase`` for ``epochs``, or what is left of it; its validation accuracies, all epochs."""
        trackables = {"model": trained, "optimizer": fit_model.optimizer}
        start = 0
        if self.state["phase"] == phase and self.state["epoch"]:
            start = int(self.state["epoch"])
            # Optimizer slots are made by the first step: build them, then the saved values fill them.
            self.checkpoint.restore(self.state, trackables)
            log.info("[optimize] resuming from checkpoint: %s, epoch %d of %d", phase, start + 1, epochs)
        else:
            self.state.update(phase=phase, epoch=0)
            self.state["val"][phase] = []
        log.info("[optimize] %s: %d epoch(s)", title, epochs)
        self._replay(train_ds, start)
        if start < epochs:
            # As fine-tuning does: a signal only sets a flag, which a callback reads between two batches.
            # A KeyboardInterrupt raised inside TensorFlow's native calls can be lost (seen once in CI:
            # a SIGINT during QAT's second epoch, and the run went on to publish).
            try:
                with interrupt.deferred() as stop:
                    fit_model.fit(train_ds, validation_data=val_ds, epochs=epochs, initial_epoch=start,
                                  verbose=fit_verbosity(),
                                  callbacks=[*callbacks, _SaveEachEpoch(self, phase, epochs, trackables, stop)])
                    stop.check()  # a signal after the last batch still stops before the phase's output is written
            except Interrupted as exc:
                raise self.interrupted(exc.signum, phase) from None
        return self.val(phase)

    def interrupted(self, signum: int, phase: str) -> Interrupted:
        epoch = self.state["epoch"] if self.state["phase"] == phase else 0
        if not epoch:
            return Interrupted(signum, f"optimize stopped in {phase} before its first epoch ended; finished phases "
                                       "are kept and the next run starts this one over.")
        return Interrupted(signum, f"optimize stopped; its checkpoint after {phase} epoch {epoch} is in "
                                   f"{self.checkpoint.directory}, and the next run resumes from it.")

    def saved_epoch(self, phase: str, epoch: int, val_accuracy, trackables) -> None:
        self.state["epoch"] = epoch
        if val_accuracy is not None:
            self.state["val"][phase].append(round(float(val_accuracy), 6))
        self.checkpoint.save(self.state, trackables, {})
        log.info("[optimize] checkpoint saved: %s, epoch %d", phase, epoch)

    def finish(self, phase: str) -> None:
        """After the phase's output is written: the next run skips it."""
        self.state["done"].append(phase)
        self.state.update(phase=None, epoch=0)
        self.checkpoint.save(self.state, {}, {})


class _SaveEachEpoch(keras.callbacks.Callback):
    def __init__(self, progress: Progress, phase: str, epochs: int, trackables: dict, stop: StopRequest):
        super().__init__()
        self.progress, self.phase, self.epochs, self.trackables, self.stop = progress, phase, epochs, trackables, stop

    def on_train_batch_begin(self, batch, logs=None):
        self.stop.check()  # before the batch: the checkpoint on disk is the last whole epoch's

    def on_epoch_begin(self, epoch, logs=None):
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        log.info("[optimize] %s epoch %d of %d: %s", self.phase, epoch + 1, self.epochs,
                 epoch_summary(logs, time.perf_counter() - self.started))
        self.progress.saved_epoch(self.phase, epoch + 1, (logs or {}).get("val_accuracy"), self.trackables)


def _trainable(model, teacher, cfg: Config, lr: float, epochs: int, steps: int):
    """What fit() trains: the model itself, or the model beside the frozen fine-tuned one (distillation)."""
    w = cfg.optimize.distill_weight
    if not w:
        compile_model(model, lr, epochs, steps, cfg.train)
        return model
    combined = with_teacher(model, teacher)
    compile_distillation(combined, lr, epochs, steps, cfg.train, model.output_shape[-1], w)
    return combined


def _tfmot(cfg: Config, what: str, wrap):
    """``wrap()``; a model given with model.path that tfmot cannot wrap is one sentence, not a traceback."""
    try:
        return wrap()
    except (ValueError, RuntimeError, TypeError) as exc:
        if cfg.model.path is None:  # our own classifier: tfmot refusing it is our bug
            raise
        raise ConfigError(f"model.path {show(cfg.model.path)}: tfmot cannot {what} this model "
                          f"({one_line(exc, 200)}); drop tflite-qat-int8 and tflite-pruned-int8 from export.formats "
                          "(the post-training formats work), or rebuild the model without that layer.") from None


def _prepare(model, cfg: Config) -> None:
    for layer in model.layers:
        layer.trainable = True
    if cfg.train.freeze_batchnorm:
        compression.freeze_batchnorm(model)


def _start_qat(model, cfg: Config, range_batch: np.ndarray) -> None:
    if cfg.train.freeze_batchnorm:
        compression.freeze_batchnorm(model)
    count = compression.initialize_ranges(model, range_batch)
    log.info("[optimize] %d activation ranges start from %d training images", count // 2, len(range_batch))


def _quantization_aware_training(base, preserve_sparsity: bool, weights_out: str, *, cfg, ctx, teacher, range_batch,
                                 steps, train_ds, val_ds, setup, progress: Progress):
    """QAT of ``base`` (sparsity-preserving for a pruned one); saves the weights; returns (model, val accuracies)."""
    o = cfg.optimize
    phase = "pruned-qat" if preserve_sparsity else "qat"
    out = ctx.path(weights_out)
    if progress.done(phase) and out.is_file():
        log.info("[optimize] %s: done by the run that was stopped, weights from %s", phase, out.name)
        model = compression.load_quantize_aware(base, out, preserve_sparsity=preserve_sparsity)
        ctx.record_output(out)
        return model, progress.val(phase)
    _prepare(base, cfg)
    model = _tfmot(cfg, "quantization-aware train", lambda: compression.quantize_aware(base, preserve_sparsity))
    _start_qat(model, cfg, range_batch)
    fit_model = _trainable(model, teacher, cfg, setup.lr(o.qat.lr), o.qat.epochs, steps)
    title = "sparsity-preserving quantization-aware training" if preserve_sparsity else "quantization-aware training"
    val = progress.fit(phase, title, model, fit_model, o.qat.epochs, train_ds, val_ds)
    with atomic_path(out) as tmp:
        compression.save_weights(model, tmp)
    ctx.record_output(out)
    progress.finish(phase)
    return model, val


def run(cfg: Config, ctx) -> None:
    seed_everything(cfg.data.seed)
    setup = distribution.training_setup(cfg.train)
    read_labels(ctx.root)
    t, o = cfg.train, cfg.optimize
    batch = setup.global_batch(t.batch_size)
    train_ds, val_ds, n_train, _ = datasets(cfg, ctx.root, batch)
    x_train, _ = load_split(ctx.path(layout.split("train")), mmap=True)
    steps = int(np.ceil(n_train / batch))
    log.info("[optimize] training on %s", setup.summary(t.batch_size))
    if setup.mixed_precision or setup.jit_compile:
        log.info("[optimize] pruning and QAT train in float32 without XLA (tfmot's fake-quantization ops have no "
                 "float16 or bfloat16 kernels)")
    report: dict = {"models": needed_models(cfg), "distill_weight": o.distill_weight,
                    "training": {**setup.describe(t.batch_size), "mixed_precision": False, "precision_policy": "float32",
                                 "jit_compile": False}}
    checkpoint = TrainingCheckpoint(ctx.path(layout.OPTIMIZE_CHECKPOINT), ctx.inputs, "optimize",
                                    setup={**setup.describe(t.batch_size), "models": list(needed_models(cfg))})
    if setup.multi_worker:
        # Every worker resumes from the chief's checkpoint, or none does: they train in lockstep.
        setup.share_folder(ctx.root, layout.OPTIMIZE_CHECKPOINT)
    with setup.strategy.scope():
        _optimize(cfg, ctx, setup, report, x_train, train_ds, val_ds, steps, Progress(checkpoint))
    path = ctx.path(layout.OPTIMIZE_REPORT)
    write_json(path, report)
    ctx.record_output(path)
    checkpoint.discard()  # only now: a run stopped before this resumes instead of starting over


def _optimize(cfg: Config, ctx, setup, report: dict, x_train, train_ds, val_ds, steps: int,
              progress: Progress) -> None:
    """Every model ``report["models"]`` names, trained and saved; their figures go into ``report``."""
    t, o = cfg.train, cfg.optimize
    # One training batch (seeded) that QAT's activation ranges start from.
    range_batch = x_train[np.random.default_rng(cfg.data.seed).permutation(len(x_train))[:t.batch_size]]
    started = time.time()
    # The fine-tuned model, frozen: the teacher when optimize.distill_weight > 0.
    teacher = load_classifier(ctx.path(layout.MODEL)) if o.distill_weight else None

    # Where tfmot's defaults do not reach (compression.qat_plan): said in the report and the log.
    plan = compression.qat_plan(teacher or load_classifier(ctx.path(layout.MODEL)))
    report["qat_layers"] = {how: sorted(name for name, h in plan.items() if h == how and name != PREPROCESS_LAYER)
                            for how in ("output", "float")}
    if any(report["qat_layers"].values()):
        log.info("[optimize] QAT: %d layer(s) fake-quantize their output only (Multiply, BatchNormalization after no "
                 "convolution), %d stay float until the converter calibrates them (TFOpLambda, Rescaling, "
                 "Normalization)", len(report["qat_layers"]["output"]), len(report["qat_layers"]["float"]))
    shared = dict(cfg=cfg, ctx=ctx, teacher=teacher, range_batch=range_batch, steps=steps, train_ds=train_ds,
                  val_ds=val_ds, setup=setup, progress=progress)

    if "pruned-qat" in report["models"]:
        phase_start = time.time()
        schedule = compression.pruning_schedule(o.prune.target_sparsity, steps * o.prune.epochs, o.prune.ramp_fraction)
        out = ctx.path(layout.PRUNED_MODEL)
        if progress.done("prune") and out.is_file():
            log.info("[optimize] prune: done by the run that was stopped, model from %s", out.name)
            pruned, prune_val = load_classifier(out), progress.val("prune")
        else:
            base = load_classifier(ctx.path(layout.MODEL))
            _prepare(base, cfg)
            pruning = _tfmot(cfg, "prune", lambda: compression.apply_pruning(base, schedule, o.prune.exclude))
            fit_model = _trainable(pruning, teacher, cfg, setup.lr(o.prune.lr), o.prune.epochs, steps)
            prune_val = progress.fit("prune", f"pruning to {o.prune.target_sparsity:.0%} sparsity", pruning, fit_model,
                                     o.prune.epochs, train_ds, val_ds, compression.pruning_callbacks())
            pruned = compression.strip_pruning(pruning)
            with atomic_path(out) as tmp:
                pruned.save(tmp)
            progress.finish("prune")
        ctx.record_output(out)
        sparsity = compression.overall_sparsity(pruned)
        log.info("[optimize] pruned: %.2f%% of prunable weights are zero (target %.0f%%)", 100 * sparsity,
                 100 * o.prune.target_sparsity)

        pqat, pqat_val = _quantization_aware_training(pruned, True, layout.PRUNED_QAT_WEIGHTS, **shared)
        report["pruning"] = {
            "target_sparsity": o.prune.target_sparsity, "epochs": o.prune.epochs, "excluded": list(o.prune.exclude),
            "schedule": {"end_step": int(schedule.end_step), "frequency": int(schedule.frequency),
                         "total_steps": steps * o.prune.epochs},
            "sparsity": sparsity, "sparsity_after_qat": compression.overall_sparsity(pqat),
            "layer_sparsity": compression.layer_sparsity(pruned),
            "val_accuracy": prune_val, "qat_val_accuracy": pqat_val,
            "seconds": round(time.time() - phase_start, 1),
        }

    if "qat" in report["models"]:
        phase_start = time.time()
        base = load_classifier(ctx.path(layout.MODEL))
        _, qat_val = _quantization_aware_training(base, False, layout.QAT_WEIGHTS, **shared)
        report["qat"] = {"epochs": o.qat.epochs, "val_accuracy": qat_val, "seconds": round(time.time() - phase_start, 1)}

    report["seconds"] = round(time.time() - started, 1)
