"""Training throughput: images/s of the input pipeline alone and of fine-tuning, and the step time spent waiting for data.

The model and the training dataset are the finetune stage's own
(``finetune.build_model``, ``finetune.datasets``); the data stage runs first when
the decoded splits are missing or stale. Two measurements, each on a fresh
dataset, per epoch:

1. the input pipeline alone: every batch pulled as fast as it comes;
2. training (``model.fit``, no validation): images/s, and how much of each
   step's time went into waiting for the batch.

Keras fetches each batch inside its compiled train function, so the gap a
callback sees between one batch's end and the next one's start never contains
the wait for data. Here the train function fetches the batch in Python, timed,
then runs the rest of Keras's step compiled; a callback adds the waits up
against the time from one batch's end to the next one's end (the step time).

    python -m pipeline.train_throughput --config configs/flowers.yaml [--epochs 3] [--steps 40]
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import sys
import time

import numpy as np

from core import layout
from core.keras_compat import keras

# What the timed train function adds to each step's logs.
WAIT_KEY, IMAGES_KEY = "data_wait_s", "batch_images"


def timed_train_function(model, element_spec):
    """A ``make_train_function`` for ``model`` whose logs carry the seconds the step waited for its batch.

    Keras's own single-step train function (``steps_per_execution`` 1) fetches
    the batch inside its ``tf.function``, where nothing can time it:
    ``tf.timestamp`` refuses to run under op determinism, which training
    enables. Here the batch is fetched in Python, timed, and handed to the
    compiled rest of Keras's step: ``train_step`` under the model's distribution
    strategy, with XLA when the model was compiled with it.
    """
    from core.keras_compat import tf

    def make_train_function(force=False):
        if model.train_function is not None and not force:
            return model.train_function

        def run_step(data):
            outputs = model.train_step(data)
            # tf_keras counts steps in this private counter (callbacks and checkpoints read it).
            model._train_counter.assign_add(1)
            return outputs

        step = tf.function(run_step, jit_compile=True, reduce_retracing=True) if model.jit_compile else run_step

        def distributed_step(data):
            strategy = model.distribute_strategy
            outputs = strategy.run(step, args=(data,))
            return tf.nest.map_structure(lambda v: strategy.experimental_local_results(v)[0], outputs)

        compiled = {}

        def train_function(iterator):
            if "step" not in compiled:
                # The iterator's own spec (batch dimension None; split over the replicas under a
                # strategy): one trace, as Keras's function has, although an epoch's last batch is shorter.
                spec = getattr(iterator, "element_spec", None) or element_spec
                compiled["step"] = tf.function(distributed_step, input_signature=[spec])
            started = time.perf_counter()
            data = next(iterator)  # blocks until the input pipeline has the batch ready
            waited = time.perf_counter() - started
            outputs = compiled["step"](data)
            # Under a strategy the batch comes split over the replicas: its images are the parts' sum.
            labels = model.distribute_strategy.experimental_local_results(data[1])
            return {**outputs, WAIT_KEY: waited, IMAGES_KEY: sum(int(part.shape[0]) for part in labels)}

        model.train_function = train_function
        return train_function

    return make_train_function


class StepTimes(keras.callbacks.Callback):
    """Per epoch: step time (one batch's end to the next's) and the part of it spent waiting for data."""

    def __init__(self):
        super().__init__()
        self.epochs: list[dict] = []

    def on_epoch_begin(self, epoch, logs=None):
        self.last = time.perf_counter()
        self.current = {"steps": 0, "images": 0, "seconds": 0.0, "wait": 0.0}

    def on_train_batch_end(self, batch, logs=None):
        now = time.perf_counter()
        self.current["steps"] += 1
        self.current["seconds"] += now - self.last
        self.current["wait"] += logs[WAIT_KEY]
        self.current["images"] += int(logs[IMAGES_KEY])
        self.last = now

    def on_epoch_end(self, epoch, logs=None):
        self.epochs.append(self.current)


def _row(epoch: int, images: int, seconds: float) -> dict:
    return {"epoch": epoch, "images": images, "seconds": round(seconds, 4),
            "images_per_s": round(images / seconds, 2) if seconds > 0 else None}


def _batches(dataset, steps: int | None):
    """(dataset to iterate, steps per epoch): the whole split per epoch, or ``steps`` batches of a continuing one."""
    return (dataset, None) if steps is None else (dataset.repeat(), steps)


def pipeline_epochs(dataset, epochs: int, steps: int | None) -> list[dict]:
    """Images/s of the input pipeline alone, per epoch."""
    source, per_epoch = _batches(dataset, steps)
    iterator = iter(source)
    rows = []
    for epoch in range(1, epochs + 1):
        images, count, started = 0, 0, time.perf_counter()
        while per_epoch is None or count < per_epoch:
            try:
                _, labels = next(iterator)
            except StopIteration:
                iterator = iter(source)  # a new epoch reshuffles, as fit's next iterator does
                break
            images += int(labels.shape[0])
            count += 1
        rows.append(_row(epoch, images, time.perf_counter() - started))
    return rows


def training_epochs(model, dataset, epochs: int, steps: int | None) -> list[dict]:
    """Images/s of training, and the fraction of step time spent waiting for data, per epoch."""
    source, per_epoch = _batches(dataset, steps)
    timer = StepTimes()
    model.make_train_function = timed_train_function(model, source.element_spec)
    model.fit(source, epochs=epochs, steps_per_epoch=per_epoch, callbacks=[timer], verbose=0)
    rows = []
    for epoch, times in enumerate(timer.epochs, start=1):
        row = _row(epoch, times["images"], times["seconds"])
        row["steps"] = times["steps"]
        row["data_wait_s"] = round(times["wait"], 4)
        row["data_wait_fraction"] = round(times["wait"] / times["seconds"], 5) if times["seconds"] > 0 else None
        rows.append(row)
    return rows


def _rate(rows: list[dict]) -> float | None:
    """Images/s over the epochs after the first (the first compiles and fills the cache), or the only one."""
    steady = rows[1:] or rows
    seconds = sum(r["seconds"] for r in steady)
    return sum(r["images"] for r in steady) / seconds if seconds > 0 else None


def _device() -> str:
    from core.keras_compat import tf

    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        name = tf.config.experimental.get_device_details(gpus[0]).get("device_name", "GPU")
        return f"GPU ({name})" + (f" x{len(gpus)}" if len(gpus) > 1 else "")
    return f"CPU ({os.cpu_count()} cores, {platform.processor() or platform.machine()})"


def measure(cfg, config_source: str, epochs: int, steps: int | None, phase: str, overrides=()) -> dict:
    from core.errors import ConfigError
    from core.keras_compat import tf
    from core.layout import read_labels
    from core.splits import load_split
    from pipeline import data, distribution, models, precision, runner
    from pipeline.stages import finetune
    from pipeline.training import compile_model, seed_everything

    if distribution.wants_multi_worker(t := cfg.train):
        raise ConfigError("bench-train measures one machine, but train.distribute makes this process one worker of "
                          "several (TF_CONFIG); unset TF_CONFIG or set train.distribute to none or mirrored.")
    runner.run(cfg, config_source, through="data")
    seed_everything(cfg.data.seed)
    # The fine-tuning's own setup: strategy, global batch, learning-rate scaling, mixed precision, XLA.
    setup = distribution.training_setup(t)
    root, batch = cfg.build_root, setup.global_batch(t.batch_size)
    train_ds, _, n_train, _ = finetune.datasets(cfg, root, batch)
    split_steps = int(np.ceil(n_train / batch))
    pipeline = pipeline_epochs(train_ds, epochs, steps)
    del train_ds  # its disk cache, if any, goes with it

    train_ds, _, _, _ = finetune.datasets(cfg, root, batch)  # fresh: nothing cached by the first measurement
    with precision.policy(setup.precision_policy), setup.strategy.scope():
        model = finetune.build_model(cfg, len(read_labels(root)))
        models.freeze_backbone(model)
        unfrozen = models.set_trainable(model, t.fine_tune_at, t.freeze_batchnorm) if phase == "fine_tune" else 0
        lr = t.fine_tune_lr if phase == "fine_tune" else t.head_lr
        compile_model(model, setup.lr(lr), epochs, steps or split_steps, t, jit_compile=setup.jit_compile)
        training = training_epochs(model, train_ds, epochs, steps)

    x_train, _ = load_split(root / layout.split("train"), mmap=True)
    pipeline_rate, training_rate = _rate(pipeline), _rate(training)
    steady = training[1:] or training
    return {
        "config": config_source, "overrides": list(overrides), "name": cfg.name, "date": time.strftime("%Y-%m-%d"), "device": _device(),
        "tensorflow": tf.__version__,
        "phase": phase, "trainable_weights": len(model.trainable_weights), "unfrozen_layers": unfrozen,
        "backbone": cfg.model.backbone, "alpha": cfg.model.alpha, "image_size": cfg.data.image_size,
        "batch_size": batch, "training_setup": setup.describe(t.batch_size), "train_images": n_train, "steps_per_epoch": steps or split_steps,
        "augment": list(cfg.data.augment), "cache": cfg.data.cache,
        "cache_used": data.resolve_cache(cfg.data.cache, int(x_train.nbytes)),
        "epochs": epochs, "pipeline": pipeline, "training": training,
        "steady_state": {
            "epochs": [r["epoch"] for r in steady],
            "pipeline_images_per_s": None if pipeline_rate is None else round(pipeline_rate, 2),
            "training_images_per_s": None if training_rate is None else round(training_rate, 2),
            "pipeline_to_training": (round(pipeline_rate / training_rate, 2)
                                     if pipeline_rate and training_rate else None),
            "data_wait_fraction": round(sum(r["data_wait_s"] for r in steady) / sum(r["seconds"] for r in steady), 5),
        },
    }


def table(result: dict) -> str:
    setup = result["training_setup"]
    lines = [f"train throughput: {result['name']}, {result['phase']} phase, batch {result['batch_size']} "
             f"({setup['replicas']} replica(s)), {result['steps_per_epoch']} steps/epoch, cache {result['cache_used']}, "
             f"mixed precision {setup.get('precision_policy', 'on') if setup['mixed_precision'] else 'off'}, XLA {'on' if setup['jit_compile'] else 'off'}, "
             f"{result['device']}",
             f"{'epoch':>5}  {'pipeline img/s':>14}  {'training img/s':>14}  {'waiting for data':>16}"]
    for p, t in zip(result["pipeline"], result["training"]):
        lines.append(f"{p['epoch']:>5}  {p['images_per_s']:>14.1f}  {t['images_per_s']:>14.1f}  "
                     f"{100 * t['data_wait_fraction']:>15.2f}%")
    s = result["steady_state"]
    first, last = s["epochs"][0], s["epochs"][-1]
    which = f"epoch {first}" if first == last else f"epochs {first}-{last}"
    lines.append(f"{which}: the pipeline alone is {s['pipeline_to_training']}x as fast as training; "
                 f"{100 * s['data_wait_fraction']:.2f}% of step time waits for data")
    return "\n".join(lines)


def main(argv=None) -> int:
    from pipeline.config import load_config
    from core.errors import PipelineError
    from core.io import write_json

    parser = argparse.ArgumentParser(prog="python -m pipeline.train_throughput", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/quickstart.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--epochs", type=int, default=3, help="epochs of each measurement (default 3)")
    parser.add_argument("--steps", type=int, default=None,
                        help="batches per epoch (default: the whole training split)")
    parser.add_argument("--phase", choices=("head", "fine_tune"), default="fine_tune",
                        help="train the head on a frozen backbone, or fine-tune as phase 2 does (default)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S", stream=sys.stderr)
    if args.epochs < 1 or (args.steps is not None and args.steps < 1):
        parser.error("--epochs and --steps must be at least 1")
    try:
        cfg = load_config(args.config, args.overrides)
        result = measure(cfg, args.config, args.epochs, args.steps, args.phase, args.overrides)
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    out = cfg.build_root / layout.TRAIN_THROUGHPUT
    write_json(out, result)
    print(table(result))
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
