"""Datasets: folder scanning, decoding to RGB, the digits source, deterministic stratified splits."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from pipeline import data
from core.errors import DataError
from tests.conftest import CLASS_COLOURS


def test_scan_folder_classes_in_sorted_order_and_every_extension(image_folder):
    listing = data.scan_folder(image_folder)
    assert listing.class_names == tuple(sorted(CLASS_COLOURS))
    assert len(listing.files) == 36 and np.bincount(listing.labels).tolist() == [12, 12, 12]
    suffixes = {f.rsplit(".", 1)[1] for f in listing.files}
    assert suffixes == {"png", "JPG", "jpeg", "bmp", "gif"}
    assert not any(f.endswith(".txt") for f in listing.files)


@pytest.mark.parametrize("index", range(6))
def test_every_mode_decodes_to_rgb_at_the_requested_size(image_folder, index):
    listing = data.scan_folder(image_folder)
    path = image_folder / listing.files[index]
    pixels = data.load_image(path, 24)
    assert pixels.shape == (24, 24, 3) and pixels.dtype == np.uint8
    # The "apple" class is red-dominated whatever the file mode (grayscale aside).
    if Image.open(path).mode != "L":
        assert pixels[..., 0].mean() > pixels[..., 2].mean() + 50


def test_non_square_photos_are_center_cropped_not_stretched(tmp_path):
    img = np.zeros((20, 60, 3), np.uint8)
    img[:, 20:40] = 255  # a white square in the middle of a wide black photo
    Image.fromarray(img).save(tmp_path / "wide.png")
    assert data.load_image(tmp_path / "wide.png", 10).min() > 200


def test_corrupt_image_is_a_data_error_naming_the_file(tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff not really a jpeg")
    with pytest.raises(DataError, match="broken.jpg"):
        data.load_image(bad, 32)


def test_single_class_and_empty_class_are_refused(tmp_path):
    (tmp_path / "only").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "only" / "a.png")
    with pytest.raises(DataError, match="at least two"):
        data.scan_folder(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty has no images"):
        data.scan_folder(tmp_path)


def test_digits_are_real_and_upscaled():
    names, images, labels = data.load_digits_dataset(32)
    assert names == tuple(str(i) for i in range(10))
    assert images.shape == (1797, 32, 32, 3) and images.dtype == np.uint8
    assert np.bincount(labels).min() > 170 and images.max() == 255


def test_split_is_deterministic_stratified_and_disjoint():
    labels = np.repeat(np.arange(4), [40, 60, 30, 70])
    a = data.stratified_split(labels, 0.15, 0.2, seed=3)
    b = data.stratified_split(labels, 0.15, 0.2, seed=3)
    c = data.stratified_split(labels, 0.15, 0.2, seed=4)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["test"], c["test"])
    assert sorted(np.concatenate(list(a.values())).tolist()) == list(range(200))
    for name, frac in (("test", 0.2), ("val", 0.15)):
        counts = np.bincount(labels[a[name]], minlength=4)
        assert np.allclose(counts, np.bincount(labels) * frac, atol=1.5)


def test_limit_per_class_caps_each_class():
    labels = np.repeat(np.arange(3), [5, 50, 9])
    keep = data.limit_per_class(labels, 8, seed=0)
    assert np.bincount(labels[keep]).tolist() == [5, 8, 8]


def test_augmentation_only_touches_the_training_split():
    images = np.random.default_rng(0).integers(0, 256, (8, 16, 16, 3), dtype=np.uint8)
    labels = np.arange(8)
    evaluation = data.make_dataset(images, labels, 4, training=False, augment=("brightness", "horizontal_flip"))
    got = np.concatenate([x.numpy() for x, _ in evaluation])
    assert np.array_equal(got, images.astype(np.float32))
    training = data.make_dataset(images, labels, 8, training=True, augment=("brightness", "contrast", "crop"), seed=1)
    x, y = next(iter(training))
    order = np.argsort(y.numpy())
    assert x.shape == (8, 16, 16, 3) and not np.array_equal(x.numpy()[order], images.astype(np.float32))
    assert float(x.numpy().min()) >= 0 and float(x.numpy().max()) <= 255
