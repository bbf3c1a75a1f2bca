"""The Keras reference model, published as ``.keras`` beside the mobile files."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

from exporters.converter import Converter, ExportContext
from core.io import atomic_path

# A fixed time for every zip entry: the earliest a zip can store, as reproducible builds use.
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


def make_reproducible(path: Path) -> None:
    """Rewrite a ``.keras`` zip so the same model always gives the same bytes.

    Keras stamps the save time twice: ``date_saved`` in ``metadata.json`` and the
    modification time of the ``model.weights.h5`` entry. Both are dropped (the
    loader reads neither); every entry keeps its name, order, compression and contents.
    """
    path = Path(path)
    with zipfile.ZipFile(path) as source:
        entries = [(info, source.read(info)) for info in source.infolist()]
    with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w") as out:
        for info, data in entries:
            if info.filename == "metadata.json":
                meta = json.loads(data)
                meta.pop("date_saved", None)
                data = json.dumps(meta).encode("utf-8")
            fixed = zipfile.ZipInfo(info.filename, date_time=_ZIP_EPOCH)
            fixed.compress_type = info.compress_type
            fixed.external_attr = 0o644 << 16
            fixed.create_system = 3
            out.writestr(fixed, data)


class KerasConverter(Converter):
    format = "keras"

    def export(self, model, path: Path, ctx: ExportContext) -> None:
        model.save(path)
        make_reproducible(path)


CONVERTERS = (KerasConverter,)
