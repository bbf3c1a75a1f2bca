"""The Keras reference model, published as ``.keras`` beside the mobile files."""

from __future__ import annotations

from pathlib import Path

from exporters.registry import ExportContext, Exporter, register


@register("keras")
class KerasExporter(Exporter):
    suffix = ".keras"
    runtime = "keras"
    description = "Keras reference model (tf_keras .keras file)"

    def export(self, model, path: Path, ctx: ExportContext) -> None:
        model.save(path)
