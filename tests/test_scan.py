"""The data stage on messy real-world folders: what is skipped and why, what is converted, what is found twice."""

from __future__ import annotations

import hashlib
import io
import json

import numpy as np
import pytest
from PIL import Image

from pipeline import data
from pipeline.config import load_config
from core.errors import DataError
from tests.conftest import FLOWERS, SALTED_MAX_PIXELS, needs_shared, write_config

DATA_ONLY = {"formats": ["keras"], "latency_runs": 0}


def _scan(cfg) -> dict:
    return json.loads((cfg.build_root / "data/scan.json").read_text(encoding="utf-8"))


def _data_stage(tmp_path, folder, **data_keys):
    """Run only the data stage (its stage function, through the runner's context) on ``folder``."""
    from pipeline.runner import RunContext
    from pipeline.stages import data as data_stage

    keys = {"source": "folder", "path": str(folder), "image_size": 32, "seed": 3, **data_keys}
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = write_config(tmp_path / "scan.yaml", data=keys, export=DATA_ONLY)
    cfg = load_config(path)
    ctx = RunContext(cfg.build_root, str(path))
    data_stage.run(cfg, ctx)
    return cfg


def test_every_unusable_file_is_listed_with_its_reason_and_the_odd_ones_are_used(salted_folder, tmp_path):
    root, unusable = salted_folder
    cfg = _data_stage(tmp_path, root, max_image_pixels=SALTED_MAX_PIXELS)
    scan = _scan(cfg)
    skipped = {item["file"]: item["reason"] for item in scan["skipped"]}
    assert sorted(skipped) == sorted(unusable)  # exactly the salted files, nothing more
    for rel, word in unusable.items():
        assert word in skipped[rel], (rel, skipped[rel])
    split = json.loads((cfg.build_root / "data/split.json").read_text(encoding="utf-8"))
    used = {f for files in split["files"].values() for f in files}
    for oddity in ("apple/grey_16bit.png", "apple/cmyk.jpg", "leaf/rotated.jpg", "leaf/nested/deeper/deep.png",
                   "sky/UPPER.PNG", "sky/link_inside.png", "flor_ñandú/fotografía_0.png"):
        assert oddity in used
    assert split["classes"] == ["apple", "flor_ñandú", "leaf", "sky"]
    assert (cfg.build_root / "data/labels.txt").read_text(encoding="utf-8").splitlines() == split["classes"]
    assert scan["converted"] == {"16-bit": 1, "CMYK": 1, "L": 7, "P": 6, "RGBA": 6, "exif_rotated": 1}
    assert scan["images"] == len(used) == 36 + 6 + 6 + 1  # base, new usable files, the non-ASCII class
    # The apple photo copied into sky is label noise; the symlink inside sky is the same bytes twice.
    (cross,) = [g for g in scan["duplicates"] if g["cross_class"]]
    assert {f["file"] for f in cross["files"]} == {"apple/img_00.png", "sky/copy_of_an_apple.png"}
    assert {"sky/img_03.bmp", "sky/link_inside.png"} in [{f["file"] for f in g["files"]} for g in scan["duplicates"]]


def test_on_bad_image_fail_stops_at_the_first_bad_file_naming_it(salted_folder, tmp_path):
    root, _ = salted_folder
    with pytest.raises(DataError, match=r"apple/truncated\.jpg cannot be used \(truncated image.*data\.on_bad_image: skip"):
        _data_stage(tmp_path, root, max_image_pixels=SALTED_MAX_PIXELS, on_bad_image="fail")


def test_conversions_keep_the_picture(tmp_path):
    grey16 = np.array([[0, 32896, 65535, 65535]], np.uint16).repeat(4, axis=0)
    buf = io.BytesIO()
    Image.fromarray(grey16).save(buf, "PNG")
    pixels, how = data.decode_image(buf.getvalue(), 4, 10**8)
    assert how == ["16-bit", "L"] and pixels[0, :, 0].tolist() == [0, 128, 255, 255]  # scaled, not clipped to white
    # A portrait photo stored sideways: EXIF orientation 6 turns the 40x20 stored pixels into 20x40.
    stored = np.zeros((20, 40, 3), np.uint8)
    stored[:, :20] = 255  # the left half of the stored image is white: after turning, the top half
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    Image.fromarray(stored).save(buf, "JPEG", exif=exif, quality=95)
    pixels, how = data.decode_image(buf.getvalue(), 20, 10**8)
    assert how == ["exif_rotated"]
    column = pixels[:, 10, 0].astype(int)  # a centre crop of the 20x40 portrait: white above, black below
    assert column[:5].mean() > 200 and column[-5:].mean() < 50


def test_dataset_errors_each_stop_with_one_sentence(tmp_path):
    def folder(name, counts, bad=0):
        root = tmp_path / name
        for cls, n in counts.items():
            (root / cls).mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (8, 8), (i * 20 % 255, 90, 30)).save(root / cls / f"{i}.png")
            for i in range(bad if cls == "b" else 0):
                (root / cls / f"bad{i}.jpg").write_bytes(b"not a jpeg")
        return root

    odd = folder("odd_name", {"a": 3, "two\u2028lines": 3})
    with pytest.raises(DataError, match="cannot be a label .*line break.*rename the folder"):
        data.scan_folder(odd)
    (tmp_path / "none").mkdir()
    with pytest.raises(DataError, match="no class sub-folders"):
        data.scan_folder(tmp_path / "none")
    with pytest.raises(DataError, match="at least two"):
        data.scan_folder(folder("one", {"a": 5}))
    with pytest.raises(DataError, match="Class folder .*empty has no images"):
        data.scan_folder(folder("empty", {"a": 5, "empty": 0}))
    with pytest.raises(DataError, match=r"Class 'b' has no usable images; 3 of its files could not be used "
                                        r"\(e\.g\. b/bad0\.jpg: not an image"):
        _data_stage(tmp_path / "s1", folder("all_bad", {"a": 5, "b": 0}, bad=3))
    with pytest.raises(DataError, match=r"Class 'b' has 4 usable image\(s\), fewer than data\.min_images_per_class \(6\)"):
        _data_stage(tmp_path / "s2", folder("few", {"a": 8, "b": 4}), min_images_per_class=6)
    with pytest.raises(DataError, match=r"without test images; raise data\.test_fraction \(now 0\.05\)"):
        _data_stage(tmp_path / "s3", folder("tiny_test", {"a": 40, "b": 3}), test_fraction=0.05, val_fraction=0.3)


def test_symlink_loops_end_and_links_inside_are_followed(tmp_path):
    root = tmp_path / "loop"
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (8, 8)).save(root / cls / f"{i}.png")
    (root / "a" / "again").symlink_to(root / "a", target_is_directory=True)  # a folder inside itself
    (root / "b" / "from_a").symlink_to(root / "a", target_is_directory=True)
    listing = data.scan_folder(root)
    assert listing.files == ("a/0.png", "a/1.png", "a/2.png", "b/0.png", "b/1.png", "b/2.png",
                             "b/from_a/0.png", "b/from_a/1.png", "b/from_a/2.png")


@needs_shared
def test_the_four_flowers_copied_between_rose_and_tulip_are_cross_class_duplicates():
    listing = data.scan_folder(FLOWERS)
    digests = [hashlib.sha256((listing.root / f).read_bytes()).hexdigest() for f in listing.files]
    split = data.stratified_split(listing.labels, 0.15, 0.15, 1234)
    split_of = {int(i): name for name, idx in split.items() for i in idx}
    groups = data.duplicate_groups(list(listing.files), digests, listing.labels, listing.class_names, split_of)
    cross = [g for g in groups if g["cross_class"]]
    assert len(cross) == 4 and all(g["classes"] == ["rose", "tulip"] for g in cross)
    assert sorted(f["file"].split("/", 1)[1] for g in cross for f in g["files"] if f["class"] == "rose") == [
        "15922772266_1167a06620.jpg", "17104364030_ee31ee279b_n.jpg", "17291451621_0e39f08b9e_n.jpg",
        "17291930305_79deae6a90_n.jpg"]
    # Two more pairs inside sunflower/: not label noise, reported all the same.
    assert sum(not g["cross_class"] for g in groups) == 2
