"""The app's resize, measured: each file on the test photos resized the ways apps resize them.

Every exported file is validated on the data stage's pixels: the photo's centred
square resized by Pillow's bilinear filter (the contract's resizer, named in each
file's metadata). An app resizes with whatever its platform offers — OpenCV,
Android's bitmap scaling, a TensorFlow input pipeline — or squashes the whole
camera frame. For each resizer of ``benchmark.resizers`` (``core.photos``), every
published file and the Keras model run on the original test photos resized that
way, in the file's own runtime (``exporters.runtimes.load_predictor``), and the
section ``benchmark.resizers`` of ``bench/results.json`` gets, per file and resizer:
test top-1, its change against the same file on the contract's pixels (paired 95%
interval), and top-1 agreement with the Keras model fed the contract's pixels (what
the export stage validated against). Per resizer it also records how many photos'
pixels differ from the contract's at all: photos already at the model's input size
and square come out of every resizer unchanged.

It needs the photo files: a build of the bundled digits, or one whose photo folder
has gone, records why it was not measured instead.

    python -m benchmarks.resizers build/<name> [--resizers opencv-linear,tf-bilinear]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Iterable, Optional

import numpy as np

from core import layout, photos, stats
from core.splits import load_split

log = logging.getLogger("pipeline")

# The data stage already refused photos over data.max_image_pixels; the test photos passed it.
_NO_PIXEL_LIMIT = 2**62


class NotMeasured(Exception):
    """Why the resizers cannot be measured on this build: one sentence for results.json and the log."""


def test_photos(root: Path, limit: Optional[int] = None) -> tuple[Path, list[str], np.ndarray, np.ndarray]:
    """(photo folder, test files, the contract's pixels, labels) of the build under ``root``, as the data stage split them.

    Raises :class:`NotMeasured` when the build has no photo files to resize again.
    """
    index = root / layout.SPLIT_INDEX
    if not index.is_file():
        raise NotMeasured(f"{layout.SPLIT_INDEX} is missing (a build from before the data stage recorded its files); "
                          "run the data stage again")
    split = json.loads(index.read_text(encoding="utf-8"))
    if split.get("source") != "folder":
        raise NotMeasured(f"the {split.get('source')} dataset has no photo files, so the app's resize does not apply "
                          "(it is measured on builds of a photo folder, data.source: folder)")
    folder = Path(split["path"])
    if not folder.is_dir():
        raise NotMeasured(f"the photo folder {folder} (data.path, read from the folder the pipeline runs in) is "
                          "not there")
    pixels, labels = load_split(root / layout.split("test"))
    files = list(split["files"]["test"])
    if len(files) != len(labels):
        raise NotMeasured(f"{layout.SPLIT_INDEX} lists {len(files)} test files but the test split holds "
                          f"{len(labels)} images; run the data stage again")
    if limit:
        files, pixels, labels = files[:limit], pixels[:limit], labels[:limit]
    missing = [f for f in files if not (folder / f).is_file()]
    if missing:
        raise NotMeasured(f"{len(missing)} test photo(s) are gone from {folder} (e.g. {missing[0]}); run the data "
                          "stage again")
    return folder, files, np.asarray(pixels), np.asarray(labels, np.int64)


def decoded(folder: Path, files: list[str]) -> Iterable:
    """Each test photo decoded as the data stage decodes it (RGB, upright), before any resize."""
    for rel in files:
        try:
            photo, _ = photos.open_rgb((folder / rel).read_bytes(), _NO_PIXEL_LIMIT)
        except photos.BadImage as exc:
            raise NotMeasured(f"the test photo {folder / rel} no longer decodes ({exc.reason}); run the data stage "
                              "again") from None
        yield photo


def resized(folder: Path, files: list[str], size: int, name: str) -> np.ndarray:
    """uint8 ``(n, size, size, 3)``: every test photo through the resizer ``name``."""
    out = np.empty((len(files), size, size, 3), np.uint8)
    for i, photo in enumerate(decoded(folder, files)):
        out[i] = photos.resize(photo, size, name)
    return out


def photo_sizes(folder: Path, files: list[str], size: int) -> dict:
    """What the test photos are before the resize: how many are already the input size, square, and their sides."""
    from PIL import Image

    dims = []
    for rel in files:
        with Image.open(folder / rel) as img:
            width, height = img.size
            orientation = img.getexif().get(0x0112, 1)
        dims.append((height, width) if orientation in (5, 6, 7, 8) else (width, height))
    short = np.array([min(d) for d in dims]) if dims else np.zeros(0)
    return {"folder": str(folder), "images": len(files), "input_size": size,
            "at_input_size": sum(d == (size, size) for d in dims), "square": sum(d[0] == d[1] for d in dims),
            "short_side": ({"min": int(short.min()), "median": float(np.median(short)), "max": int(short.max())}
                           if len(short) else None)}


def _pixel_change(pixels: np.ndarray, contract: np.ndarray) -> dict:
    diff = np.abs(pixels.astype(np.int16) - contract.astype(np.int16))
    per_photo = diff.reshape(len(diff), -1).max(1) if len(diff) else np.zeros(0)
    return {"photos_differing": int(np.sum(per_photo > 0)),
            "mean_abs_pixel_change": round(float(diff.mean()), 4) if diff.size else 0.0,
            "max_abs_pixel_change": int(diff.max()) if diff.size else 0}


def _row(entry: dict, name: str, probs: np.ndarray, own: np.ndarray, keras: np.ndarray, labels: np.ndarray) -> dict:
    against_own = stats.paired(own, probs, labels)
    against_keras = stats.paired(keras, probs, labels)
    return {"artifact": entry["key"], "file": Path(entry["path"]).name, "runtime": entry["runtime"], "resizer": name,
            "images": int(len(labels)), "top1": round(float(np.mean(probs.argmax(1) == labels)), 6),
            "delta_pp": round(against_own.delta_pp, 4) + 0.0,
            "delta_interval_pp": [round(x, 4) + 0.0 for x in against_own.delta_interval_pp],
            "changed": int(len(labels) - against_own.agreed),
            "agreement_with_keras": round(against_keras.agreement, 6),
            "agreement_with_keras_interval": [round(x, 6) for x in against_keras.agreement_interval]}


def measure(root: Path, entries: list[dict], names: tuple[str, ...], limit: Optional[int] = None, threads: int = 1,
            progress: bool = True) -> dict:
    """The ``benchmark.resizers`` section of results.json for the build under ``root``.

    ``entries``: the bench's candidates (``benchmarks.candidates.candidates``); this build's files and
    the Keras model (key ``keras``) are run, reference files are not (their labels are not ours).
    """
    from tqdm import tqdm

    from exporters.runtimes import load_predictor

    if not names:
        return {"applies": False, "reason": "benchmark.resizers is empty"}
    started = time.time()
    try:
        folder, files, contract, labels = test_photos(Path(root), limit)
        size = int(contract.shape[1])
        runs = [e for e in entries if e["origin"] in ("build", "keras")]
        predictors = {e["key"]: load_predictor(e["path"], e["runtime"], threads) for e in runs}
        # The contract's pixels, as the export stage validated every file on them: the reference of every row.
        reference = {key: predict(contract.astype(np.float32)) for key, predict in predictors.items()}
        described, rows = [], []
        for name in tqdm(names, desc="[bench] resizers", leave=False, disable=None if progress else True):
            pixels = resized(folder, files, size, name)
            described.append({**photos.describe(name), **_pixel_change(pixels, contract)})
            # Bit-identical pixels give every file its answers on the contract's pixels: not run again.
            # Photos already at the input size (flowers at 128 px) make every resizer the identity; running
            # every file on 9 resizers' 648 photos took ~3 minutes of each flowers bench (measured at 96 px).
            same = described[-1]["photos_differing"] == 0
            for e in runs:
                probs = reference[e["key"]] if same else predictors[e["key"]](pixels.astype(np.float32))
                rows.append(_row(e, name, probs, reference[e["key"]], reference["keras"], labels))
            _log_resizer(described[-1], [r for r in rows if r["resizer"] == name])
    except NotMeasured as exc:
        log.warning("[bench] the app's resize is not measured: %s", exc)
        return {"applies": False, "reason": str(exc)}
    sizes = photo_sizes(folder, files, size)
    contract_name = photos.CONTRACT_RESIZER
    if sizes["at_input_size"] == len(files):
        log.warning("[bench] every test photo is already %dx%d, the model's input: every resizer returns the "
                    "contract's pixels, so the resizer table cannot show a resize effect on this build", size, size)
    return {"applies": True, "contract": photos.describe(contract_name), "photos": sizes,
            "reproduces_data_stage": next((d["photos_differing"] == 0 for d in described if d["name"] == contract_name),
                                          None),
            "resizers": described, "rows": rows, "seconds": round(time.time() - started, 1)}


def _log_resizer(described: dict, rows: list[dict]) -> None:
    keras = next(r for r in rows if r["artifact"] == "keras")
    files = [r for r in rows if r["artifact"] != "keras"]
    spread = (f"; files: top-1 {min(r['top1'] for r in files):.4f}..{max(r['top1'] for r in files):.4f}, agreement "
              f"with Keras {min(r['agreement_with_keras'] for r in files):.4f}.."
              f"{max(r['agreement_with_keras'] for r in files):.4f}") if files else ""
    log.info("[bench] resizer %-24s pixels differ in %d/%d photos (mean |Δ| %.2f); Keras top-1 %.4f (%+.2f pp)%s",
             described["name"], described["photos_differing"], keras["images"], described["mean_abs_pixel_change"],
             keras["top1"], keras["delta_pp"], spread)


def main(argv=None) -> int:
    from benchmarks.candidates import candidates
    from core.host import available_cpus

    parser = argparse.ArgumentParser(prog="python -m benchmarks.resizers", description=__doc__.split("\n\n")[0])
    parser.add_argument("build", type=Path, help="a build folder, build/<name>")
    parser.add_argument("--resizers", default=",".join(photos.DEFAULT_RESIZERS),
                        help=f"comma-separated, of: {', '.join(photos.RESIZER_NAMES)}")
    parser.add_argument("--images", type=int, default=None, help="the first N test images only")
    parser.add_argument("--out", type=Path, help="write the section as JSON here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    names = tuple(n for n in args.resizers.split(",") if n)
    for name in names:
        try:
            photos.split_name(name)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    export_results = json.loads((args.build / layout.EXPORT_RESULTS).read_text())
    section = measure(args.build, candidates(args.build, export_results, []), names, args.images, available_cpus())
    if args.out:
        args.out.write_text(json.dumps(section, indent=1))
    from benchmarks.report_resizers import markdown

    print("\n".join(markdown({"benchmark": {"resizers": section}})))
    return 0


if __name__ == "__main__":
    sys.exit(main())
