"""What every training phase shares (fine-tuning, pruning, QAT): optimizer, schedule, loss, metric."""

from __future__ import annotations

import sys

from core.keras_compat import keras, tf


def seed_everything(seed: int) -> None:
    """Same seed, same machine, same model: Python, NumPy and TensorFlow seeded, TensorFlow's ops deterministic.

    Seeding alone is not enough on a CPU: two quickstart runs with the same seed reached test
    top-1 0.9037 and 0.9259 (parallel reductions and the parallel, randomly augmenting input
    pipeline finish in a different order each run). Op determinism makes TensorFlow pick
    deterministic kernels and run tf.data's parallel maps in order; it is process-wide.
    """
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def learning_rate(lr: float, epochs: int, steps_per_epoch: int, t):
    """``lr``, cosine-decayed to zero over the phase's steps when train.lr_schedule is "cosine"."""
    if t.lr_schedule == "cosine" and epochs > 0:
        return keras.optimizers.schedules.CosineDecay(lr, decay_steps=max(1, epochs * steps_per_epoch))
    return lr


def compile_model(model, lr: float, epochs: int, steps_per_epoch: int, t, jit_compile: bool = False) -> None:
    lr = learning_rate(lr, epochs, steps_per_epoch, t)
    if t.label_smoothing:
        # Sparse labels with smoothing: Keras 2's sparse loss has no label_smoothing argument.
        n = model.output_shape[-1]
        smoothing = t.label_smoothing

        def loss(y_true, y_pred):
            y = tf.one_hot(tf.cast(tf.reshape(y_true, [-1]), tf.int32), n)
            return keras.losses.categorical_crossentropy(y, y_pred, label_smoothing=smoothing)
    else:
        loss = "sparse_categorical_crossentropy"
    # Under a mixed_float16 policy Keras wraps Adam in a LossScaleOptimizer itself.
    model.compile(optimizer=keras.optimizers.Adam(lr), loss=loss, jit_compile=jit_compile,
                  metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")])


def fit_verbosity() -> int:
    """Keras's progress bar on a terminal, nothing from Keras elsewhere.

    Keras prints its epoch lines to stdout, and the pipeline logs to stderr: in a
    build log the two streams interleave out of order (an epoch's line after the
    "checkpoint saved" line of the same epoch). Off a terminal, each epoch is one
    line of ours instead (``epoch_summary``), logged in order with the rest.
    """
    return 1 if sys.stdout.isatty() else 0


def epoch_summary(logs: dict, seconds: float) -> str:
    """One epoch's figures as the log line says them: "loss 0.612, accuracy 0.803, val_loss …, 37.5 s"."""
    figures = [f"{key} {float(value):.4f}" for key, value in (logs or {}).items() if key != "lr"]
    return ", ".join(figures + [f"{seconds:.1f} s"])
