"""The images the benchmark workers run: one real test photo for timing, the test split for accuracy.

Workers read them from one ``.npz`` file. Files whose input size differs from
the build's (published reference models at 224 px, say) get the same photo
resized, so every file is timed on a real image at its own size.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Optional

import numpy as np
from PIL import Image

from exporters.registry import is_model_file, kind_of_file


def input_size(path: Path) -> Optional[int]:
    """Square input side read from a .tflite or .onnx file (NHWC); None for other files."""
    path = Path(path)
    runtime = kind_of_file(path).runtime if is_model_file(path) else None
    if runtime == "litert":
        from ai_edge_litert import schema_py_generated as schema

        model = schema.Model.GetRootAsModel(path.read_bytes(), 0)
        graph = model.Subgraphs(0)
        return int(graph.Tensors(int(graph.InputsAsNumpy()[0])).ShapeAsNumpy()[1])
    if runtime == "onnxruntime":
        import onnx

        dims = onnx.load(str(path), load_external_data=False).graph.input[0].type.tensor_type.shape.dim
        return int(dims[1].dim_value) or None
    return None


def resize(image: np.ndarray, side: int) -> np.ndarray:
    pil = Image.fromarray(np.clip(np.round(image), 0, 255).astype(np.uint8))
    return np.asarray(pil.resize((side, side), Image.BILINEAR), dtype=np.float32)


def _synthetic(side: int) -> np.ndarray:
    # Only for the ad-hoc CLI with no test split: a smooth colour gradient, fixed.
    ramp = np.linspace(0, 255, side, dtype=np.float32)
    return np.stack([np.add.outer(ramp, ramp) / 2, np.tile(ramp, (side, 1)), np.tile(ramp[:, None], (1, side))], -1)


def write_inputs(path: Path, images: Optional[np.ndarray], sizes: Iterable[Optional[int]] = ()) -> Path:
    """Write ``sample`` (first test image), ``sample_<S>`` for each other size, and ``images`` (uint8)."""
    sizes = sorted({s for s in sizes if s})
    if images is not None and len(images):
        sample = np.asarray(images[:1], dtype=np.float32)
    else:
        sample = _synthetic(sizes[0] if sizes else 224)[None]
        images = sample
    arrays = {"sample": sample, "images": np.clip(np.round(images), 0, 255).astype(np.uint8)}
    for side in sizes:
        if side != sample.shape[1]:
            arrays[f"sample_{side}"] = resize(sample[0], side)[None]
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)
    return path
