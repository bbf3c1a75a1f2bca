"""Automatic repair of an int8 file that is not proven within its budget, chosen on the validation split.

The export stage converts each calibrated format with the config's recipe first.
When that file's verdict on the validation split is ``over`` its budget
(``core.stats``), or its agreement with Keras there is under
``export.repair_min_agreement``, the search converts the cheapest variants first,
stops at the first that is neither, and keeps the best one:

1. the calibration side, for every post-training format: the methods and integer
   types its quantizer offers (onnxruntime's Percentile besides MinMax), the other
   weight rounding (``exporters.rounding``: the format's default is adaptive, so
   nearest), then more calibration images (the first of the same seeded order, so
   200 are among the 1,000);
2. for the mixed formats (``tflite-int8-mixed``, ``onnx-int8-mixed``) only: the
   1, 2, 3... most sensitive layers kept in float, from the ranking of
   ``exporters.sensitivity``. A fully integer format never gets float layers.

Only validation images, their labels and the Keras model's outputs on them are
read: the test split decides the verdict afterwards and never the choice. The
chosen recipe is written to ``export/recipes.json`` with the key of everything
it was chosen from; a rebuild with the same key converts with it directly, so it
gives the same bytes without searching again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from core import stats
from core.io import write_json

log = logging.getLogger("pipeline")

# More calibration images tried, as multiples of export.calibration_samples (capped by the training split).
CALIBRATION_GROWTH = (5,)
FLOAT_LAYER_STEPS = (1, 2, 3, 5, 8, 13)


@dataclass(frozen=True)
class Recipe:
    """How one file is converted: what the repair search varies."""

    calibration_images: int
    calibration_method: str = "minmax"
    float_layers: tuple[str, ...] = ()
    int8_types: str = ""  # "": the format's default
    weight_rounding: str = "nearest"  # or "adaptive" (exporters.rounding)

    def as_dict(self) -> dict:
        return {**asdict(self), "float_layers": list(self.float_layers)}

    @classmethod
    def from_dict(cls, d: dict) -> "Recipe":
        return cls(int(d["calibration_images"]), str(d["calibration_method"]), tuple(d["float_layers"]),
                   str(d.get("int8_types", "")), str(d.get("weight_rounding", "nearest")))

    def describe(self) -> str:
        floats = f", {len(self.float_layers)} float layer(s) ({', '.join(self.float_layers)})" \
            if self.float_layers else ""
        types = f", {self.int8_types}" if self.int8_types else ""
        rounding = ", adaptive weight rounding" if self.weight_rounding == "adaptive" else ""
        return f"{self.calibration_method} on {self.calibration_images} calibration images{types}{rounding}{floats}"


@dataclass(frozen=True)
class Validation:
    """The validation split as the search sees it: images, labels and the Keras model's outputs."""

    images: np.ndarray
    labels: np.ndarray
    reference: np.ndarray


@dataclass
class Attempt:
    recipe: Recipe
    val: dict  # core.stats figures on the validation split, with the verdict against the budget
    satisfied: bool
    seconds: float
    file: Optional[Path] = field(default=None, repr=False)  # the converted candidate (kept for the winner)

    def as_dict(self) -> dict:
        return {"recipe": self.recipe.as_dict(), "val": self.val, "satisfied": self.satisfied,
                "seconds": round(self.seconds, 2)}


def score(probs: np.ndarray, val: Validation, budget_pp: float, min_agreement: float) -> tuple[dict, bool]:
    """A candidate's validation figures, and whether they settle the search: not over budget, agreement met.

    Not ``within``: on a validation split of a few hundred images the interval of a 1-point
    budget is decided by an image or two either way (measured on flowers, 648 images: 5 float
    layers were ``within`` at agreement 0.978 where 2 were ``unproven`` at 0.983), so requiring
    it bought more float layers, not a better file. Agreement carries the choice; ``over``
    still rules a candidate out.
    """
    table = stats.paired(val.reference, probs, val.labels)
    figures = table.as_dict(budget_pp)
    figures["kl_mean"] = stats.fidelity(val.reference, probs)["kl_mean"]
    return figures, figures["verdict"] != "over" and table.agreement >= min_agreement


def calibration_candidates(base: Recipe, methods: tuple[str, ...], train_size: int,
                           types: tuple[str, ...] = (), roundings: tuple[str, ...] = (),
                           unsupported: Optional[Callable[[str, str], Optional[str]]] = None) -> list[Recipe]:
    """Quantizer-side variants after ``base``, cheapest first: other methods and integer types on the same
    images, the other weight roundings, then more images with the first method (MinMax).

    ``unsupported(int8_types, weight_rounding)``: the converter's reason it cannot make that pair
    (``Converter.unsupported``); such a variant is tried with nearest rounding instead.

    Only MinMax gets more images: onnxruntime's histogram calibrators (Percentile) hold every
    activation of every calibration image in memory (measured on flowers' MobileNetV2 at 128 px:
    1,000 images went past 21 GB and the kernel killed the run), and took 3–4 min each.
    """
    counts = [base.calibration_images] + sorted({min(train_size, base.calibration_images * g)
                                                 for g in CALIBRATION_GROWTH} - {base.calibration_images})
    out = []
    for count in counts:
        for kind in types or ("",):
            for method in methods if count == base.calibration_images else methods[:1]:
                recipe = Recipe(count, method, base.float_layers, "" if kind == (types or ("",))[0] else kind,
                                base.weight_rounding)
                if recipe != base:
                    out.append(recipe)
        if count == base.calibration_images:
            out += [replace(base, weight_rounding=r) for r in roundings if r != base.weight_rounding]
    if unsupported is not None:
        out = [replace(r, weight_rounding="nearest") if unsupported(r.int8_types, r.weight_rounding) else r
               for r in out]
    return [r for r in dict.fromkeys(out) if r != base]


def float_candidates(base: Recipe, ranking: list[str], max_layers: int) -> list[Recipe]:
    """The fewest most sensitive layers first: 1, 2, 3, 5... of ``ranking``, up to ``max_layers``."""
    steps = sorted({min(k, max_layers, len(ranking)) for k in FLOAT_LAYER_STEPS} - {0})
    return [Recipe(base.calibration_images, base.calibration_method, tuple(ranking[:k]), base.int8_types,
                   base.weight_rounding) for k in steps]


def better(a: Attempt, b: Attempt) -> bool:
    """Whether ``a`` beats ``b``: settling first, then not over budget, then agreement on val, then the smaller drop."""
    key = lambda t: (t.satisfied, t.val["verdict"] != "over", t.val["agreement"], t.val["delta_pp"])  # noqa: E731
    return key(a) > key(b)


def search(candidates: list[Recipe], build: Callable[[Recipe], tuple[Path, np.ndarray]], val: Validation,
           budget_pp: float, min_agreement: float, first: Optional[Attempt] = None) -> tuple[Attempt, list[Attempt]]:
    """Try ``candidates`` in order (cheapest first) until one settles; return the best attempt and all of them.

    ``build(recipe)`` converts one candidate and returns its file and its outputs on ``val.images``.
    ``first``: an attempt already made (the config's own recipe), which wins ties as the cheapest.
    """
    attempts = [first] if first is not None else []
    best = first
    for recipe in candidates:
        if best is not None and best.satisfied:
            break
        started = time.time()
        try:
            path, probs = build(recipe)
        except Exception as exc:  # one variant the converter refuses does not end the search
            log.warning("[export] repair: %s could not be converted (%s)", recipe.describe(), exc)
            continue
        figures, satisfied = score(probs, val, budget_pp, min_agreement)
        attempt = Attempt(recipe, figures, satisfied, time.time() - started, path)
        attempts.append(attempt)
        log.info("[export] repair: %-60s val agreement %.4f, Δ top-1 %+.2f pp (%s)", recipe.describe(),
                 figures["agreement"], figures["delta_pp"], figures["verdict"])
        if best is None or better(attempt, best):
            best = attempt
    if best is None:
        raise ValueError("no repair candidate could be converted")
    return best, attempts


def recipe_key(**parts) -> str:
    """The digest of everything a recipe was chosen from (model bytes, calibration, budget, search settings)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def _read(path: Path) -> dict:
    """``recipes.json`` as a dict; a missing or unreadable file is an empty record (the search runs again)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def recorded(path: Path, fmt: str, key: str) -> Optional[dict]:
    """The record of ``fmt`` in ``recipes.json`` when it was chosen from the same inputs; else None."""
    entry = (_read(path).get("formats") or {}).get(fmt)
    return entry if isinstance(entry, dict) and entry.get("key") == key else None


def record(path: Path, fmt: str, key: str, chosen: Recipe, attempts: list[Attempt]) -> dict:
    """Add ``fmt``'s chosen recipe to ``recipes.json`` (other formats' records are kept)."""
    data = _read(path)
    entry = {"key": key, "recipe": chosen.as_dict(), "attempts": [a.as_dict() for a in attempts],
             "chosen_on": "validation split"}
    data.setdefault("formats", {})[fmt] = entry
    write_json(path, data)
    return entry


def recorded_sensitivity(path: Path, model_sha256: str) -> Optional[list]:
    """The per-layer ranking recorded for the model with these bytes; else None."""
    found = _read(path).get("sensitivity") or {}
    return found.get("layers") if found.get("model_sha256") == model_sha256 else None


def record_sensitivity(path: Path, model_sha256: str, layers: list) -> None:
    """Keep the fine-tuned model's per-layer ranking beside the recipes: a rebuild does not measure it again."""
    data = _read(path)
    data["sensitivity"] = {"model_sha256": model_sha256, "layers": layers}
    write_json(path, data)
