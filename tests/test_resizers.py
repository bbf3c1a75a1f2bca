"""The app's resize: resizers that differ give other pixels, and every file is measured on each of them."""

from __future__ import annotations

import io
import json
from pathlib import Path

import jsonschema
import numpy as np
import pytest
from PIL import Image

from benchmarks import report_resizers, resizers
from benchmarks.candidates import candidates
from core import photos
from core.errors import ConfigError
from pipeline import data, runner
from pipeline.config import load_config
from tests.conftest import CLASS_COLOURS, REPO, _photo, write_config

SCHEMA = json.loads((REPO / "benchmarks/results.schema.json").read_text())
SIZE = 32
MEASURED = ("pillow-bilinear", "opencv-linear", "tf-bilinear-antialias", "pillow-bilinear-squash")


def _detailed_photo(width: int, height: int, seed: int = 0) -> Image.Image:
    """A photo with detail finer than the model's input: noise over stripes one pixel wide."""
    rng = np.random.default_rng(seed)
    stripes = np.where((np.arange(width) % 2) == 0, 230, 25)[None, :, None]
    pixels = np.clip(stripes + rng.normal(0, 20, (height, width, 3)), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels)


def test_the_contract_resizer_is_the_data_stage_resize():
    photo = _detailed_photo(90, 61)
    buffer = io.BytesIO()
    photo.save(buffer, "PNG")
    stage_pixels, _ = data.decode_image(buffer.getvalue(), SIZE, 10**8)
    assert np.array_equal(photos.resize(photo, SIZE), stage_pixels)
    assert np.array_equal(photos.resize(photo, SIZE, photos.CONTRACT_RESIZER), stage_pixels)


# Each pair reduces the same photo in ways that differ in kind: antialiased or not, area or point sampling,
# the centred square or the whole frame.
REALLY_DIFFERENT = [("pillow-bilinear", "opencv-linear"), ("opencv-linear", "opencv-area"),
                    ("tf-bilinear", "tf-bilinear-antialias"), ("pillow-bilinear", "pillow-nearest"),
                    ("pillow-bilinear", "pillow-bilinear-squash"), ("opencv-area", "opencv-area-squash")]


@pytest.mark.parametrize("first,second", REALLY_DIFFERENT)
def test_resizers_that_really_differ_give_different_pixels(first, second):
    photo = _detailed_photo(90, 61)
    a, b = photos.resize(photo, SIZE, first), photos.resize(photo, SIZE, second)
    assert a.shape == b.shape == (SIZE, SIZE, 3) and a.dtype == b.dtype == np.uint8
    # Not a rounding difference: on stripes finer than the output, aliasing moves whole regions.
    assert np.abs(a.astype(int) - b.astype(int)).mean() > 2, (first, second)


def test_a_square_photo_at_the_input_size_comes_out_of_every_resizer_unchanged():
    # Why a build of 128 px photos at image_size 128 cannot show a resize effect: every resizer is the identity.
    photo = _detailed_photo(SIZE, SIZE)
    for name in photos.RESIZER_NAMES:
        assert np.array_equal(photos.resize(photo, SIZE, name), np.asarray(photo)), name


def test_an_unknown_resizer_is_refused_naming_the_key(tmp_path):
    path = write_config(tmp_path / "c.yaml", benchmark={"targets": [], "resizers": ["opencv-cubic"]})
    with pytest.raises(ConfigError, match="benchmark.resizers"):
        load_config(path)
    path = write_config(tmp_path / "c.yaml", benchmark={"targets": [], "resizers": ["opencv-area", "opencv-area"]})
    with pytest.raises(ConfigError, match="twice"):
        load_config(path)


def test_the_digits_have_no_photos_to_resize(tiny_build):
    cfg, _ = tiny_build
    export = json.loads((cfg.build_root / "export/results.json").read_text())
    section = resizers.measure(cfg.build_root, candidates(cfg.build_root, export, []), MEASURED, progress=False)
    assert section["applies"] is False and "digits" in section["reason"]
    assert "Not measured: " in "\n".join(report_resizers.markdown({"benchmark": {"resizers": section}}))


@pytest.fixture(scope="module")
def photo_build(tmp_path_factory):
    """A tiny build of a folder of non-square photos (48x36, detail finer than 32 px), trained with resize_jitter."""
    tmp = tmp_path_factory.mktemp("resize")
    rng = np.random.default_rng(3)
    for name, colour in CLASS_COLOURS.items():
        (tmp / "photos" / name).mkdir(parents=True)
        for i in range(10):
            pixels = _photo(rng, colour, 48)[:36]
            pixels[:, ::2] //= 2  # columns one pixel wide: resizers that do not antialias alias them
            Image.fromarray(pixels).save(tmp / "photos" / name / f"{i}.png")
    path = write_config(
        tmp / "photos.yaml", name="photos",
        data={"source": "folder", "path": str(tmp / "photos"), "image_size": SIZE, "seed": 1, "val_fraction": 0.25,
              "test_fraction": 0.3, "augment": ["horizontal_flip", "resize_jitter"]},
        train={"batch_size": 8, "head_epochs": 1, "head_lr": 0.01, "fine_tune_epochs": 1, "fine_tune_lr": 0.001,
               "fine_tune_at": 10, "lr_schedule": "constant"},
        export={"formats": ["keras", "tflite-fp32", "onnx-fp32"], "latency_runs": 0},
    )
    cfg = load_config(path)
    assert runner.run(cfg, str(path)) == ["data", "finetune", "export"]
    export = json.loads((cfg.build_root / "export/results.json").read_text())
    section = resizers.measure(cfg.build_root, candidates(cfg.build_root, export, []), MEASURED, progress=False)
    return cfg, export, section


def test_every_file_is_measured_on_every_resizer(photo_build):
    cfg, export, section = photo_build
    assert section["applies"] is True
    files = {"tflite-fp32", "onnx-fp32", "keras"}
    assert {(r["artifact"], r["resizer"]) for r in section["rows"]} == {(f, n) for f in files for n in MEASURED}
    assert len(section["rows"]) == len(files) * len(MEASURED)
    images = export["dataset"]["test_images"]
    assert section["photos"] == {**section["photos"], "images": images, "input_size": SIZE, "at_input_size": 0,
                                 "square": 0}
    assert all(r["images"] == images for r in section["rows"])
    # The contract's resizer gives back the data stage's pixels, so each file's figures are the export stage's.
    assert section["reproduces_data_stage"] is True
    accuracy = {a["format"]: a["accuracy"]["top1"] for a in export["artifacts"]}
    for row in section["rows"]:
        if row["resizer"] == photos.CONTRACT_RESIZER:
            assert row["changed"] == 0 and row["delta_pp"] == 0.0
            assert row["top1"] == pytest.approx(accuracy[row["artifact"]], abs=1e-6)
        if row["artifact"] == "keras" and row["resizer"] == photos.CONTRACT_RESIZER:
            assert row["agreement_with_keras"] == 1.0
        # Δ and agreement are counted on the same images: they cannot disagree.
        assert abs(row["delta_pp"]) <= 100 * row["changed"] / row["images"] + 1e-9
    differing = {r["name"]: r["photos_differing"] for r in section["resizers"]}
    assert differing[photos.CONTRACT_RESIZER] == 0
    assert all(differing[n] == images for n in MEASURED if n != photos.CONTRACT_RESIZER)
    schema = {"$defs": SCHEMA["$defs"], **SCHEMA["properties"]["benchmark"]["properties"]["resizers"]}
    jsonschema.validate(section, schema)


def test_a_resizer_that_gives_the_contracts_pixels_is_not_run_again(photo_build, monkeypatch):
    from exporters import runtimes

    cfg, export, section = photo_build
    calls = []
    real = runtimes.load_predictor

    def counting(path, runtime, threads):
        predict = real(path, runtime, threads)
        return lambda images: calls.append(Path(path).name) or predict(images)

    monkeypatch.setattr(runtimes, "load_predictor", counting)
    names = (photos.CONTRACT_RESIZER, "opencv-linear")
    again = resizers.measure(cfg.build_root, candidates(cfg.build_root, export, []), names, progress=False)
    # Each file runs on the contract's pixels and on opencv-linear's; the contract resizer's pixels are those.
    assert len(calls) == 2 * 3 and len(set(calls)) == 3
    before = {(r["artifact"], r["resizer"]): r for r in section["rows"]}
    for row in again["rows"]:
        assert row == before[(row["artifact"], row["resizer"])]


def test_the_report_has_a_row_per_file_and_resizer(photo_build):
    _, _, section = photo_build
    results = {"benchmark": {"resizers": section}}
    lines = report_resizers.markdown(results)
    header = next(i for i, line in enumerate(lines) if line.startswith("| file | resizer |"))
    rows = [line for line in lines[header + 2:] if line.startswith("| ")]
    assert len(rows) == len(section["rows"])
    assert {tuple(c.strip() for c in line.split("|")[1:3]) for line in rows} == {
        (r["file"], r["resizer"]) for r in section["rows"]}
    page = "\n".join(report_resizers.html(results))
    table = page[page.index("<table class='resizer-rows'>"):]
    assert table.count("<tr>") == len(section["rows"]) + 1  # and the header


def test_a_missing_photo_is_named_not_measured(photo_build, tmp_path):
    import shutil

    cfg, export, _ = photo_build
    root = tmp_path / "build"
    shutil.copytree(cfg.build_root, root)
    split = json.loads((root / "data/split.json").read_text())
    moved = tmp_path / "photos"
    shutil.copytree(split["path"], moved)
    split["path"] = str(moved)
    (root / "data/split.json").write_text(json.dumps(split))
    gone = split["files"]["test"][0]
    (moved / gone).unlink()
    section = resizers.measure(root, candidates(root, export, []), MEASURED, progress=False)
    assert section["applies"] is False and gone in section["reason"]


def test_resize_jitter_mixes_resizers_per_image_and_follows_the_seed():
    rng = np.random.default_rng(0)
    images = np.clip(rng.normal(128, 60, (40, SIZE, SIZE, 3)), 0, 255).astype(np.uint8)
    images[:, :, ::2] //= 2
    labels = np.zeros(40, np.int64)

    def one_pass(seed):
        ds = data.make_dataset(images, labels, 40, training=True, augment=("resize_jitter",), seed=seed, cache="none")
        return next(iter(ds))[0].numpy()

    first, again, other = one_pass(5), one_pass(5), one_pass(6)
    assert np.array_equal(first, again) and not np.array_equal(first, other)
    assert first.min() >= 0 and first.max() <= 255 and np.array_equal(first, np.round(first))
    # The batch is shuffled: match each output to its input by the closest image.
    originals = images.astype(np.float32)
    change = [np.abs(originals - out).mean(axis=(1, 2, 3)).min() for out in first]
    unchanged = sum(c == 0 for c in change)
    assert 0 < unchanged < len(images)  # some left as they are, most through another resizer
