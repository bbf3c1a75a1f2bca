"""The trained models a build holds, where each lies in the build folder, and how each is loaded again.

``finetune`` is the fine-tuned float model; the optimize stage writes the others,
and only those that ``export.formats`` reads (a format's ``source`` in the registry).
"""

from __future__ import annotations

from pathlib import Path

from core import layout
from core.loader import load_classifier
from exporters import registry

# What each optimized model leaves in build/<name>/optimize/.
OUTPUTS = {
    "qat": (layout.QAT_WEIGHTS,),
    "pruned-qat": (layout.PRUNED_MODEL, layout.PRUNED_QAT_WEIGHTS),
}


def needed_models(cfg) -> list[str]:
    """The optimized models ``export.formats`` reads, sorted."""
    return sorted(registry.sources(cfg.export.formats) - {"finetune"})


def outputs_for(cfg) -> tuple[str, ...]:
    return tuple(rel for model in needed_models(cfg) for rel in OUTPUTS[model])


def load_trained(root: Path, source: str):
    """The trained model a format with ``source`` converts (see OUTPUTS)."""
    from pipeline import compression  # tfmot: only for the optimized models

    root = Path(root)
    if source == "finetune":
        return load_classifier(root / layout.MODEL)
    if source == "qat":
        return compression.load_quantize_aware(load_classifier(root / layout.MODEL), root / layout.QAT_WEIGHTS)
    if source == "pruned-qat":
        return compression.load_quantize_aware(load_classifier(root / layout.PRUNED_MODEL),
                                               root / layout.PRUNED_QAT_WEIGHTS, preserve_sparsity=True)
    raise ValueError(f"unknown model source {source!r}; sources are {', '.join(registry.SOURCES)}")
