"""Backbone weights: every way a weights file or ``imagenet`` can fail is one sentence and exit 2.

The layout checks run on small .h5 files laid out as tf_keras writes them (no
TensorFlow); the checks that need a real backbone use the MobileNetV2 1.0
ImageNet file from ../shared and skip without it.
"""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np
import pytest

from pipeline import weights
from core.errors import WeightsError
from tests.conftest import MOBILENET_WEIGHTS, needs_shared, run_cli, write_config

DEAD_PROXY = "http://127.0.0.1:9"  # a download through it fails at once, network or not


def _keras_h5(path: Path, layers: dict[str, list[tuple[int, ...]]], group: str | None = None) -> Path:
    """An .h5 laid out as tf_keras's save_weights writes it: layer_names, and weight_names per layer."""
    with h5py.File(path, "w") as f:
        root = f if group is None else f.create_group(group)
        root.attrs["layer_names"] = [name.encode() for name in layers]
        for name, shapes in layers.items():
            layer = root.create_group(name)
            names = [f"{name}/w{i}:0" for i in range(len(shapes))]
            layer.attrs["weight_names"] = [n.encode() for n in names]
            for weight, shape in zip(names, shapes):
                layer.create_dataset(weight, data=np.ones(shape, np.float32))
    return path


LAYOUT = {"input_1": [], "Conv1": [(3, 3, 3, 16)], "bn_Conv1": [(16,)] * 4, "out_relu": []}


def _layers(layout: dict) -> list[weights.LayerWeights]:
    return [weights.LayerWeights(name, tuple(shapes)) for name, shapes in layout.items() if shapes]


def _one_sentence(err: pytest.ExceptionInfo) -> str:
    text = str(err.value)
    assert text.splitlines() == [text] and text.endswith("."), text
    return text


@pytest.mark.parametrize("group", [None, "model_weights"])
def test_read_layers_gives_names_and_shapes_in_file_order(tmp_path, group):
    """A weights file, or a whole model saved as .h5 (weights under model_weights), as Keras reads it."""
    path = _keras_h5(tmp_path / "w.h5", LAYOUT, group)
    assert weights.read_layers(path) == _layers(LAYOUT)


def _truncated(tmp_path: Path) -> Path:
    whole = _keras_h5(tmp_path / "whole.h5", {"Conv1": [(64, 64, 3, 32)]}).read_bytes()
    path = tmp_path / "w.h5"
    path.write_bytes(whole[: len(whole) // 2])
    return path


def _random_bytes(tmp_path: Path) -> Path:
    path = tmp_path / "w.h5"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    return path


def _empty(tmp_path: Path) -> Path:
    (tmp_path / "w.h5").write_bytes(b"")
    return tmp_path / "w.h5"


def _hdf5_without_layers(tmp_path: Path) -> Path:
    with h5py.File(tmp_path / "w.h5", "w") as f:
        f.create_dataset("data", data=np.zeros(3))
    return tmp_path / "w.h5"


def _not_named_h5(tmp_path: Path) -> Path:
    return _keras_h5(tmp_path / "w.weights", LAYOUT)


UNREADABLE = [
    pytest.param(_truncated, "it is truncated", id="truncated"),
    pytest.param(_random_bytes, "it is not an HDF5 file", id="random-bytes"),
    pytest.param(_empty, "it is not an HDF5 file", id="empty"),
    pytest.param(_hdf5_without_layers, "without Keras layer weights", id="hdf5-not-keras"),
    pytest.param(_not_named_h5, "is not named *.h5", id="other-suffix"),
    pytest.param(lambda tmp: tmp / "absent.h5", "does not exist", id="missing"),
]


@pytest.mark.parametrize("make, problem", UNREADABLE)
def test_unreadable_weights_file_is_one_sentence(tmp_path, make, problem):
    path = make(tmp_path)
    with pytest.raises(WeightsError) as err:
        weights.read_layers(path, "c.yaml")
    text = _one_sentence(err)
    # However deep the tmp folder (pytest-xdist nests it a level deeper), the path's tail is in the sentence.
    head = "c.yaml: model.weights file '"
    assert text.startswith(head) and problem in text
    shown = text[len(head):text.index("'", len(head))]
    assert shown == str(path) or (shown.startswith("…/") and str(path).endswith(shown[1:])), shown
    assert shown.endswith(f"/{path.parent.name}/{path.name}")


FILE = _layers(LAYOUT)


@pytest.mark.parametrize("saved, alpha, expected", [
    pytest.param(_layers({"conv1_conv": [(7, 7, 3, 64)], "conv1_bn": [(64,)] * 4}), None,
                 "holds weights for another network than mobilenet_v2 (its first layers: 'conv1_conv', 'conv1_bn'); "
                 "point model.weights at a no-top mobilenet_v2 .h5 file, or set model.backbone", id="other-network"),
    pytest.param(FILE + _layers({"Logits": [(16, 1000), (1000,)]}), 0.35,
                 "holds mobilenet_v2 weights with a classifier on top (layer 'Logits'); use the no-top file",
                 id="with-top"),
    pytest.param(_layers({"Conv1": [(3, 3, 3, 32)], "bn_Conv1": [(32,)] * 4}), 0.35,
                 "holds mobilenet_v2 weights of another width than alpha 0.35 (layer 'Conv1' holds (3, 3, 3, 32) in "
                 "the file but the model needs (3, 3, 3, 16)); set model.alpha", id="other-width"),
    pytest.param(FILE[:1], None, "does not fit mobilenet_v2 (1 layers with weights in the file, 2 in the model)",
                 id="fewer-layers"),
])
def test_weights_that_do_not_fit_name_the_mismatch(saved, alpha, expected):
    with pytest.raises(WeightsError) as err:
        weights.check_fits(saved, FILE, "w.h5", "mobilenet_v2", alpha)
    assert expected in _one_sentence(err)


def test_weights_that_fit_pass():
    weights.check_fits(FILE, FILE, "w.h5", "mobilenet_v2", 0.35)


@pytest.mark.parametrize("make, problem", UNREADABLE[:2])
def test_cli_unreadable_weights_file_exits_2_before_any_stage(tmp_path, make, problem):
    path = write_config(tmp_path / "c.yaml", model={"backbone": "mobilenet_v2", "alpha": 0.35,
                                                    "weights": str(make(tmp_path))})
    proc = run_cli("run", "--config", str(path))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert len(proc.stderr.splitlines()) == 1 and proc.stderr.startswith(f"error: {path}: model.weights file ")
    assert problem in proc.stderr and "download or copy the no-top .h5 file again" in proc.stderr
    assert not (tmp_path / "build").exists()


# ---------------------------------------------------------------------------------------------
# With TensorFlow: a real backbone.


@pytest.fixture(scope="module")
def shared_build_dir(tmp_path_factory) -> Path:
    """One build folder for the in-process runs below, so the digits data stage runs once."""
    return tmp_path_factory.mktemp("weights_build")


@needs_shared
@pytest.mark.parametrize("model, expected", [
    pytest.param({"backbone": "mobilenet_v2", "alpha": 0.35}, ["of another width than alpha 0.35",
                                                               "(3, 3, 3, 32) in the file", "set model.alpha"],
                 id="wrong-alpha"),
    pytest.param({"backbone": "resnet50"}, ["another network than resnet50", "'Conv1'", "set model.backbone"],
                 id="wrong-backbone"),
])
def test_run_with_weights_for_another_model_exits_2(shared_build_dir, capsys, model, expected):
    from pipeline.__main__ import main

    path = write_config(shared_build_dir / f"{model['backbone']}.yaml", build_dir=str(shared_build_dir / "build"),
                        model={**model, "weights": str(MOBILENET_WEIGHTS)})
    assert main(["run", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert f"model.weights file '{MOBILENET_WEIGHTS}'" in lines[0] and all(text in lines[0] for text in expected)
    assert not (shared_build_dir / "build/tiny/finetune/model.keras").exists()


def _keras_home(tmp_path: Path, monkeypatch=None) -> Path:
    """An empty Keras cache: tf_keras keeps it in ~/.keras (Keras 3 reads KERAS_HOME)."""
    home = tmp_path / "home"
    (home / ".keras/models").mkdir(parents=True)
    if monkeypatch:
        monkeypatch.setenv("HOME", str(home))
        monkeypatch.setenv("KERAS_HOME", str(home / ".keras"))
    return home


def test_cli_imagenet_offline_says_how_to_get_the_file(tmp_path):
    home = _keras_home(tmp_path)
    path = write_config(tmp_path / "c.yaml", model={"backbone": "mobilenet_v2", "alpha": 0.35, "weights": "imagenet"})
    env = {"HOME": str(home), "KERAS_HOME": str(home / ".keras"), "HTTPS_PROXY": DEAD_PROXY, "https_proxy": DEAD_PROXY,
           "HTTP_PROXY": DEAD_PROXY, "http_proxy": DEAD_PROXY}
    proc = run_cli("run", "--config", str(path), env_extra=env)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, proc.stderr
    assert "model.weights is 'imagenet' but the weights cannot be downloaded" in lines[0]
    assert "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5" in lines[0]
    assert "~/.keras/models/" in lines[0] and "the path of a local copy of it" in lines[0]


def _cached_name(alpha: float) -> str:
    return f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{alpha}_224_no_top.h5"


def test_imagenet_with_a_corrupt_cached_file_says_delete_it(tmp_path, monkeypatch):
    from pipeline.config import ModelConfig
    from pipeline.models import build_classifier

    home = _keras_home(tmp_path, monkeypatch)
    (home / ".keras/models" / _cached_name(0.35)).write_bytes(b"cut short")
    with pytest.raises(WeightsError) as err:
        build_classifier(ModelConfig(alpha=0.35, weights="imagenet"), 3, 32)
    assert "in the Keras cache ~/.keras/models/ cannot be loaded" in _one_sentence(err)
    assert "delete it so it is downloaded again" in str(err.value)


@needs_shared
@pytest.mark.parametrize("source", ["path", "imagenet-from-cache"])
def test_matching_weights_are_loaded(tmp_path, monkeypatch, source):
    """The file's own numbers end up in the model, from a path or from the Keras cache with no network."""
    from pipeline.config import ModelConfig
    from pipeline.models import build_classifier

    home = _keras_home(tmp_path, monkeypatch)
    if source == "path":
        setting = str(MOBILENET_WEIGHTS)
    else:
        os.symlink(MOBILENET_WEIGHTS, home / ".keras/models" / _cached_name(1.0))
        setting = "imagenet"
    model = build_classifier(ModelConfig(alpha=1.0, weights=setting), 3, 32)
    with h5py.File(MOBILENET_WEIGHTS, "r") as f:
        kernel = f["Conv1/Conv1/kernel:0"][()]
        last = f["Conv_1_bn/Conv_1_bn/moving_variance:0"][()]
    np.testing.assert_array_equal(model.get_layer("Conv1").get_weights()[0], kernel)
    np.testing.assert_array_equal(model.get_layer("Conv_1_bn").get_weights()[3], last)
