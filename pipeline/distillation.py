"""Knowledge distillation from the fine-tuned model (the teacher) while pruning and in QAT.

Kept out of ``pipeline.training`` on purpose: that module is part of the
finetune stage's stamp, and distillation only concerns the optimize stage.
"""

from __future__ import annotations

from core.keras_compat import keras, tf
from pipeline.training import learning_rate


def with_teacher(student, teacher):
    """One model whose output is the student's probabilities followed by the frozen teacher's.

    Knowledge distillation through plain ``fit``: the loss of
    :func:`compile_distillation` splits the two halves. The student stays the
    same object (nested), so pruning and QAT wrappers inside it train as usual
    and tfmot's pruning callback still finds them.
    """
    teacher.trainable = False
    # Both are "<backbone>_classifier"; a model's layer names must be unique.
    teacher = keras.Model(teacher.inputs, teacher.outputs, name="teacher")
    inputs = keras.Input(student.input_shape[1:], name="image")
    outputs = keras.layers.Concatenate(name="student_teacher", dtype="float32")(
        [student(inputs), teacher(inputs, training=False)])
    return keras.Model(inputs, outputs, name="distillation")


def compile_distillation(model, lr: float, epochs: int, steps_per_epoch: int, t, num_classes: int,
                         weight: float) -> None:
    """Loss: (1 - weight) x cross-entropy with the labels + weight x KL(teacher || student)."""
    lr = learning_rate(lr, epochs, steps_per_epoch, t)
    n, smoothing = num_classes, t.label_smoothing

    def loss(y_true, y_pred):
        student, teacher = y_pred[:, :n], y_pred[:, n:]
        y = tf.one_hot(tf.cast(tf.reshape(y_true, [-1]), tf.int32), n)
        hard = keras.losses.categorical_crossentropy(y, student, label_smoothing=smoothing)
        return (1.0 - weight) * hard + weight * keras.losses.kl_divergence(teacher, student)

    def accuracy(y_true, y_pred):
        return keras.metrics.sparse_categorical_accuracy(y_true, y_pred[:, :n])

    model.compile(optimizer=keras.optimizers.Adam(lr), loss=loss, metrics=[accuracy])
