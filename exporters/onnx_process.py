"""tf2onnx run in a fresh Python process, so that the ONNX graph depends on the model alone.

tf2onnx's graph optimizers walk Python sets and dicts of tensor names and nodes, so
which Conv+BatchNormalization pairs they fuse depends on string hashes (randomized per
process by ``PYTHONHASHSEED``) and on the names tf2onnx makes from its process-wide
counter (``tf2onnx.utils.INTERNAL_NAME``). Measured on a MobileNetV2 0.35 trained on
digits: converting one loaded model with the counter started at 5003 instead of 1 gave
140 nodes instead of 142, and under two of eight hash seeds a second conversion in the
same process gave 140 or 141; on the tests' tiny model, the counter at 7 under hash
seed 1 gave 140. A process that starts fresh, with a fixed hash seed, makes the same names in
the same order for the same model: ``convert`` runs tf2onnx there. Even so, with TensorFlow's
default thread pools the graph still varied with the host's load (tests' tiny model, five
conversions at a time on 2 cores: 1 of 40 had 141 nodes instead of 142, a depthwise kernel's
Reshape folded). With one intra-op and one inter-op thread, 100 of 100 gave the same bytes on a quiet host; on a
loaded one, 1 of 11 still left out one Reshape that gives back its input's shape, and
``exporters.onnx.drop_noop_reshapes`` removes every such Reshape after the conversion.

Usage (internal): ``python -m exporters.onnx_process MODEL.keras OUT.onnx IMAGE_SIZE OPSET``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

CONVERSION_TIMEOUT_S = 1800  # only against a hung converter: flowers' MobileNetV2 1.0 takes seconds


def convert(model, path: Path, image_size: int, opset: int) -> None:
    """Write tf2onnx's ONNX conversion of the Keras ``model`` to ``path``, in a child process."""
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".tf2onnx-") as tmp:
        saved = Path(tmp) / "model.keras"
        model.save(saved)
        env = {**os.environ, "PYTHONHASHSEED": "0", "CUDA_VISIBLE_DEVICES": ""}
        env.pop("TF_CONFIG", None)  # the child is no worker of a cluster
        child = subprocess.run(
            # Absolute paths: the child starts in the package's folder, the build folder may be relative to ours.
            [sys.executable, "-m", "exporters.onnx_process", str(saved.resolve()), str(Path(path).resolve()),
             str(image_size), str(opset)],
            capture_output=True, text=True, env=env, timeout=CONVERSION_TIMEOUT_S,
            cwd=Path(__file__).resolve().parents[1])
    if child.returncode != 0:
        lines = [line for line in child.stderr.strip().splitlines() if line.strip()]
        raise RuntimeError(f"tf2onnx failed (exit {child.returncode}): {lines[-1] if lines else 'no message'}")


def _main(argv: list[str]) -> None:
    import logging

    from core.keras_compat import tf  # first: it decides which Keras TensorFlow loads

    # One thread each: TensorFlow's thread pools made the graph depend on scheduling (module doc).
    tf.config.threading.set_inter_op_parallelism_threads(1)
    tf.config.threading.set_intra_op_parallelism_threads(1)
    from core.contract import INPUT_NAME
    from core.loader import load_classifier
    import tf2onnx
    from tf2onnx import verbose_logging

    model_path, out, image_size, opset = argv[0], Path(argv[1]), int(argv[2]), int(argv[3])
    # tf2onnx logs every graph rewrite at INFO; keep the run log about our stages.
    verbose_logging.set_level(logging.WARNING)
    model = load_classifier(model_path)
    # A dynamic batch dimension lets servers batch while phones feed one image.
    spec = (tf.TensorSpec((None, image_size, image_size, 3), tf.float32, name=INPUT_NAME),)
    proto, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=opset)
    out.write_bytes(proto.SerializeToString())


if __name__ == "__main__":
    _main(sys.argv[1:])
