"""The repair search (pipeline.repair): cheapest first, chosen on the validation split, recorded and reused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from core import layout
from core.errors import BudgetError
from pipeline import repair, runner
from pipeline.config import load_config
from tests.conftest import copy_build


def _val(n=400, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, n)
    reference = np.eye(4, dtype=np.float32)[labels] * 0.9 + 0.025  # Keras right on every image
    return repair.Validation(images=np.zeros((n, 2, 2, 3), np.float32), labels=labels, reference=reference)


def _outputs_agreeing(val, agreement, seed=1):
    """Outputs that agree with Keras on a given fraction of ``val`` (the others move to the next class)."""
    n = len(val.labels)
    wrong = np.random.default_rng(seed).permutation(n)[:round(n * (1 - agreement))]
    top = val.labels.copy()
    top[wrong] = (top[wrong] + 1) % 4
    return np.eye(4, dtype=np.float32)[top]


def test_search_stops_at_the_first_candidate_that_settles_and_keeps_the_best_on_val():
    val = _val()
    quality = {1: 0.95, 2: 0.9995, 3: 1.0}  # on val: 2 layers settle, 3 would be better but is never tried
    tried = []

    def build(recipe):
        tried.append(len(recipe.float_layers))
        return Path(f"candidate{len(recipe.float_layers)}"), _outputs_agreeing(val, quality[len(recipe.float_layers)])

    base = repair.Recipe(200)
    candidates = repair.float_candidates(base, ["a", "b", "c", "d"], max_layers=3)
    assert [len(c.float_layers) for c in candidates] == [1, 2, 3]
    best, attempts = repair.search(candidates, build, val, budget_pp=1.0, min_agreement=0.99)
    assert tried == [1, 2] and best.recipe.float_layers == ("a", "b") and best.satisfied
    assert [a.val["images"] for a in attempts] == [400, 400]


def test_search_keeps_the_config_recipe_when_no_variant_beats_it_on_val():
    val = _val()
    base = repair.Recipe(200)
    figures, settled = repair.score(_outputs_agreeing(val, 0.97), val, 1.0, 0.99)
    first = repair.Attempt(base, figures, settled, 0.0, Path("base"))
    worse = lambda recipe: (Path("x"), _outputs_agreeing(val, 0.96, seed=2))  # noqa: E731
    candidates = repair.calibration_candidates(base, ("minmax", "percentile"), train_size=3000)
    assert [(c.calibration_images, c.calibration_method) for c in candidates] == [(200, "percentile"), (1000, "minmax")]
    best, attempts = repair.search(candidates, worse, val, 1.0, 0.99, first)
    assert best is first and len(attempts) == 3
    # With integer types to choose from (ONNX), they come before more images, the default type written "".
    typed = repair.calibration_candidates(base, ("minmax",), 3000, ("u8s8-7bit", "s8s8"))
    assert [(c.calibration_images, c.int8_types) for c in typed] == [(200, "s8s8"), (1000, ""), (1000, "s8s8")]
    mixed = repair.float_candidates(typed[0], ["a", "b"], max_layers=8)
    assert [(c.float_layers, c.int8_types) for c in mixed] == [(("a",), "s8s8"), (("a", "b"), "s8s8")]


def test_the_choice_follows_val_not_the_test_split():
    """Two candidates: A is better on val, B on test. The search sees only val and picks A."""
    val = _val(seed=3)
    on_val = {"A": 0.99, "B": 0.95}

    def build(recipe):
        name = recipe.calibration_method
        return Path(name), _outputs_agreeing(val, on_val[name])

    best, _ = repair.search([repair.Recipe(200, "B"), repair.Recipe(200, "A")], build, val, 1.0, 0.999)
    assert best.recipe.calibration_method == "A"


def test_a_calibrated_format_is_repaired_on_val_only_and_a_rebuild_reuses_the_recipe(tmp_path, tiny_build,
                                                                                        monkeypatch):
    """End to end on the tiny build: tflite-int8-mixed searches its float layers on the validation split
    (the spy sees every label the search scores: all of them the validation split's), records the
    recipe; the rebuild converts with it, searching nothing, and gives the same bytes."""
    from core.splits import load_split

    cfg, path = copy_build(tiny_build, tmp_path, export={"formats": ["keras", "tflite-int8-mixed"],
                                                         "latency_runs": 0})
    _, y_val = load_split(cfg.build_root / layout.split("val"))
    _, y_test = load_split(cfg.build_root / layout.split("test"))
    scored = []
    real_score = repair.score
    monkeypatch.setattr(repair, "score", lambda probs, val, *a: (scored.append(val.labels), real_score(probs, val, *a))[1])
    assert runner.run(cfg, str(path)) == ["export"]
    assert scored and all(np.array_equal(labels, y_val) for labels in scored)
    assert not any(len(labels) == len(y_test) and np.array_equal(labels, y_test) for labels in scored) \
        or np.array_equal(y_val, y_test)
    results = json.loads((cfg.build_root / layout.EXPORT_RESULTS).read_text())
    (entry,) = [a for a in results["artifacts"] if a["format"] == "tflite-int8-mixed"]
    assert entry["repair"]["chosen_on"] == "validation split" and not entry["repair"]["reused"]
    assert entry["recipe"]["float_layers"] and entry["verdict"] in ("within", "unproven", "over")
    assert all("val" in a and "test" not in a for a in entry["repair"]["attempts"])
    assert results["sensitivity"]["layers"][0]["rmse_per_scale"] >= results["sensitivity"]["layers"][-1]["rmse_per_scale"]
    assert all(0 < r["scale"] < 1e3 for r in results["sensitivity"]["layers"])  # each layer's smallest int8 step
    manifest = json.loads((cfg.build_root / layout.MANIFEST).read_text())
    (published,) = [a for a in manifest["artifacts"] if a["format"] == "tflite-int8-mixed"]
    assert published["recipe"]["float_layers"] == entry["recipe"]["float_layers"]
    assert published["recipe"]["weight_rounding"] == entry["recipe"]["weight_rounding"] == "adaptive"  # the default

    # The rebuild: export runs again (its stamp is gone), with the search and the ranking forbidden.
    (cfg.build_root / layout.stamp("export")).unlink()

    def no_search(*args, **kwargs):
        raise AssertionError("the recorded recipe should have been reused")

    monkeypatch.setattr(repair, "search", no_search)
    monkeypatch.setattr("exporters.sensitivity.layer_sensitivity", no_search)
    assert runner.run(cfg, str(path)) == ["export"]
    again = json.loads((cfg.build_root / layout.EXPORT_RESULTS).read_text())
    (rebuilt,) = [a for a in again["artifacts"] if a["format"] == "tflite-int8-mixed"]
    assert rebuilt["repair"]["reused"] and rebuilt["recipe"] == entry["recipe"]
    assert rebuilt["sha256"] == entry["sha256"]


def test_sixty_test_images_give_unproven_with_the_images_needed_not_over(tmp_path, tiny_build, caplog):
    """The user's 60-image test split: one image is 1.67 pp, so a 1-point budget cannot be decided.
    The run publishes the int8 file, warns with the number of test images that would settle it, exits 0."""
    import logging

    cfg, path = copy_build(tiny_build, tmp_path, export={"formats": ["keras", "tflite-int8"], "latency_runs": 0,
                                                         "repair": False, "fidelity_train_images": 0})
    test = cfg.build_root / layout.split("test")
    with np.load(test) as npz:
        images, labels = npz["images"][:60], npz["labels"][:60]
    with open(test, "wb") as fh:
        np.savez(fh, images=images, labels=labels)
    # As if the data stage had made that split (its stamp records the file), so only export runs.
    from core.io import sha256_file

    stamp = cfg.build_root / layout.stamp("data")
    recorded = json.loads(stamp.read_text())
    recorded["outs"][layout.split("test")] = sha256_file(test)
    stamp.write_text(json.dumps(recorded))
    with caplog.at_level(logging.WARNING, logger="pipeline"):
        assert runner.run(cfg, str(path)) == ["export"]
    results = json.loads((cfg.build_root / layout.EXPORT_RESULTS).read_text())
    (entry,) = [a for a in results["artifacts"] if a["format"] == "tflite-int8"]
    paired = entry["validation"]["paired"]
    assert paired["images"] == 60 and entry["verdict"] == "unproven" and entry["status"] == "passed"
    assert paired["images_to_settle"] > 60
    assert (cfg.build_root / "artifacts/tiny_int8.tflite").exists()
    warning = entry["warning"]
    assert "on 60 test images (one image is 1.67 pp)" in warning
    assert f"about {paired['images_to_settle']:,} test images in the same proportions would settle it" in warning
    assert any(warning in r.getMessage() for r in caplog.records)
    # export.on_unproven: fail turns the same file into a failure that names why.
    strict = load_config(path, ["export.on_unproven=fail"])
    with pytest.raises(BudgetError) as err:
        runner.run(strict, str(path))
    assert "neither within nor over the 1 pp budget on 60 test images" in str(err.value)
