"""The training input pipeline: data.cache modes, order and augmentation from the seed, disk caches, throughput CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from core import splits
from pipeline import data
from pipeline.training import seed_everything
from tests.conftest import REPO, write_config

AUGMENT = ("horizontal_flip", "crop", "brightness", "contrast")


def _arrays(n: int = 24, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 12, 12, 3), dtype=np.uint8), np.arange(n, dtype=np.int64)


def _epochs(ds, count: int = 2) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each epoch's images and labels, concatenated batch after batch."""
    out = []
    for _ in range(count):
        batches = list(ds)
        out.append((np.concatenate([x.numpy() for x, _ in batches]), np.concatenate([y.numpy() for _, y in batches])))
    return out


@pytest.fixture
def stored_split(tmp_path):
    """A split written as the data stage writes it, and read back memory-mapped."""
    images, labels = _arrays(40)
    path = tmp_path / "train.npz"
    with open(path, "wb") as fh:
        np.savez(fh, images=images, labels=labels)
    mapped, mapped_labels = splits.load_split(path, mmap=True)
    return images, labels, mapped, mapped_labels


def test_mapped_split_reads_back_the_stored_images(stored_split):
    images, labels, mapped, mapped_labels = stored_split
    assert isinstance(mapped, np.memmap) and np.array_equal(mapped, images) and np.array_equal(mapped_labels, labels)


@pytest.mark.parametrize("source", ["memory", "mapped slice"])
def test_every_cache_gives_the_same_batches_from_the_seed(tmp_path, stored_split, source):
    images, labels, mapped, _ = stored_split
    # A slice that starts part-way into the file: the stream has to start at its first image.
    pixels = images[8:32] if source == "memory" else mapped[8:32]
    seed_everything(3)
    results = {}
    for cache in ("memory", "disk", "none", "auto"):
        for attempt in range(2):
            ds = data.make_dataset(pixels, labels[8:32], 8, training=True, augment=AUGMENT, seed=11, cache=cache,
                                   cache_dir=tmp_path / "cache")
            results[cache, attempt] = _epochs(ds)
            assert int(ds.cardinality()) == 3  # Keras plans its epochs (and a resume) by it
    reference = results["memory", 0]
    for key, epochs in results.items():
        for (x, y), (x_ref, y_ref) in zip(epochs, reference):
            assert np.array_equal(y, y_ref), f"{key}: another order"
            assert np.array_equal(x, x_ref), f"{key}: other augmentations"
    (x1, y1), (x2, y2) = reference
    assert sorted(y1.tolist()) == list(range(8, 32)) and sorted(y2.tolist()) == list(range(8, 32))
    assert not np.array_equal(y1, y2) and not np.array_equal(x1[np.argsort(y1)], x2[np.argsort(y2)])  # anew each epoch
    other_seed = _epochs(data.make_dataset(pixels, labels[8:32], 8, training=True, augment=AUGMENT, seed=12), 1)
    assert not np.array_equal(other_seed[0][1], y1)
    evaluation = _epochs(data.make_dataset(pixels, labels[8:32], 8, training=False, cache="disk",
                                           cache_dir=tmp_path / "cache"), 1)
    assert np.array_equal(evaluation[0][0], np.asarray(pixels, np.float32))  # in order, unaugmented


def test_auto_caches_a_split_in_memory_when_it_fits_and_on_disk_when_not(tmp_path, monkeypatch):
    images, labels = _arrays()
    cache_dir = tmp_path / "cache"

    def files_while_iterating():
        ds = data.make_dataset(images, labels, 8, training=True, seed=1, cache="auto", cache_dir=cache_dir)
        _epochs(ds, 1)
        return sorted(p.name for p in cache_dir.rglob("*") if p.is_file()) if cache_dir.exists() else []

    monkeypatch.setattr(data, "memory_budget", lambda: images.nbytes)
    assert data.resolve_cache("auto", images.nbytes) == "memory"
    assert files_while_iterating() == []
    monkeypatch.setattr(data, "memory_budget", lambda: images.nbytes - 1)
    assert data.resolve_cache("auto", images.nbytes) == "disk"
    assert any(name.endswith(".index") for name in files_while_iterating())
    assert data.resolve_cache("memory", 10**15) == "memory"


def test_a_split_larger_than_the_shuffle_window_is_still_read_whole_each_epoch(tmp_path, stored_split, monkeypatch):
    _, labels, mapped, _ = stored_split
    monkeypatch.setattr(data, "SHUFFLE_WINDOW_BYTES", 5 * mapped[0].nbytes)
    ds = data.make_dataset(mapped, labels, 8, training=True, seed=1, cache="disk", cache_dir=tmp_path / "cache")
    for _, y in _epochs(ds):
        assert sorted(y.tolist()) == list(range(40)) and y.tolist() != list(range(40))


KILLED_WRITER = """
import os, sys
import numpy as np
from pipeline import data
cache_dir = sys.argv[1]
# Enough batches that the prefetch cannot finish the second cache before the kill (24 images could, on a busy host).
zeros, labels = np.zeros((4000, 12, 12, 3), np.uint8), np.arange(4000)
finished = data.make_dataset(zeros, labels, 8, training=False, cache="disk", cache_dir=cache_dir)
list(finished)  # a complete cache of other images
writing = iter(data.make_dataset(zeros, labels, 8, training=False, cache="disk", cache_dir=cache_dir))
next(writing)
os._exit(9)  # killed while the second cache is half written: no clean-up runs
"""


def test_disk_cache_left_by_a_killed_run_is_not_trusted(tmp_path):
    cache_dir = tmp_path / "cache"
    killed = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(cache_dir)], cwd=REPO, capture_output=True,
                            text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert killed.returncode == 9, killed.stderr[-2000:]
    left = [p.name for p in cache_dir.rglob("*")]
    assert any(n.endswith(".lockfile") for n in left) and any(n.endswith(".index") for n in left), left

    images, labels = _arrays()
    ds = data.make_dataset(images, labels, 8, training=False, cache="disk", cache_dir=cache_dir)
    (x, y), = _epochs(ds, 1)
    assert np.array_equal(x, images.astype(np.float32)) and np.array_equal(y, labels)
    assert len(list(cache_dir.iterdir())) == 1  # the killed run's two folders are gone; this dataset's is in use
    assert not any(p.name.endswith(".lockfile") for p in cache_dir.rglob("*"))


def test_train_throughput_measures_pipeline_and_training(tmp_path):
    from pipeline import train_throughput

    config = write_config(tmp_path / "tiny.yaml")
    # Forced on, as a GPU's auto would: the benchmark trains with the fine-tuning's own setup.
    # (Not XLA too: compiling the step takes ~20 s on 2 cores; test_distribution covers it.)
    assert train_throughput.main(["--config", str(config), "--epochs", "1", "--steps", "2", "--set", "data.cache=disk",
                                  "--set", "train.mixed_precision=on", "--set", "train.jit_compile=off"]) == 0
    result = json.loads((tmp_path / "build/tiny/bench/train_throughput.json").read_text())
    assert result["cache_used"] == "disk" and result["phase"] == "fine_tune" and result["steps_per_epoch"] == 2
    setup = result["training_setup"]
    assert (setup["mixed_precision"], setup["jit_compile"], setup["replicas"]) == (True, False, 1)
    assert result["overrides"] == ["data.cache=disk", "train.mixed_precision=on", "train.jit_compile=off"]
    for kind in ("pipeline", "training"):
        (row,) = result[kind]
        assert row["epoch"] == 1 and row["images"] == 2 * 16 and row["images_per_s"] > 0
    (training,) = result["training"]
    assert training["steps"] == 2 and 0 <= training["data_wait_fraction"] < 1
    steady = result["steady_state"]
    assert steady["epochs"] == [1] and steady["pipeline_to_training"] > 0
    assert (tmp_path / "build/tiny/data/train.npz").exists()  # it ran the data stage itself ...
    assert not (tmp_path / "build/tiny/finetune").exists()  # ... and nothing after it


def test_train_throughput_names_a_missing_config_in_one_sentence(tmp_path, capsys):
    from pipeline import train_throughput

    assert train_throughput.main(["--config", str(tmp_path / "missing.yaml")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "missing.yaml" in err and len(err.splitlines()) == 1


def test_train_throughput_refuses_to_be_one_worker_of_several(tmp_path, monkeypatch, capsys):
    from pipeline import train_throughput

    config = write_config(tmp_path / "tiny.yaml", train={"distribute": "multi_worker"})
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:2"]},
                                                "task": {"type": "worker", "index": 0}}))
    assert train_throughput.main(["--config", str(config)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: bench-train measures one machine") and len(err.splitlines()) == 1
    assert not (tmp_path / "build").exists()


def test_switching_the_cache_retrains_but_does_not_decode_again(tmp_path):
    from pipeline.config import load_config
    from pipeline.stamps import stage_inputs
    from pipeline.runner import all_stages

    path = write_config(tmp_path / "tiny.yaml")
    memory, disk = (load_config(path, [f"data.cache={mode}"]) for mode in ("memory", "disk"))
    stages = {stage.name: stage for stage, _ in all_stages()}
    params = {name: [stage_inputs(stages[name], cfg, tmp_path)["params"] for cfg in (memory, disk)]
              for name in ("data", "finetune", "optimize")}
    assert params["data"][0] == params["data"][1]
    # A disk cache shuffles a split larger than the shuffle window within the window: another order.
    assert params["finetune"][0] != params["finetune"][1] and params["optimize"][0] != params["optimize"][1]
