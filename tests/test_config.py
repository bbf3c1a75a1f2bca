"""Config loading: typed sections, one-sentence errors naming key and file, --set overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.config import load_config, parse_override
from pipeline.errors import ConfigError
from tests.conftest import REPO, run_cli, write_config


@pytest.mark.parametrize("name", ["quickstart", "flowers", "example"])
def test_shipped_configs_load(name):
    cfg = load_config(REPO / "configs" / f"{name}.yaml")
    assert cfg.name == {"example": "my_model"}.get(name, name)
    assert "tflite-fp32" in cfg.export.formats and "onnx-fp32" in cfg.export.formats


def test_quickstart_is_offline_digits():
    cfg = load_config(REPO / "configs/quickstart.yaml")
    assert (cfg.data.source, cfg.model.weights, cfg.model.alpha) == ("digits", "none", 0.35)


def test_unknown_key_names_key_file_and_suggestion(tmp_path):
    path = write_config(tmp_path / "c.yaml")
    text = path.read_text().replace("head_epochs:", "head_epoch:")
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    msg = str(err.value)
    assert "train.head_epoch" in msg and str(path) in msg and "did you mean 'head_epochs'" in msg


def test_wrong_type_names_key(tmp_path):
    path = write_config(tmp_path / "c.yaml")
    with pytest.raises(ConfigError, match=r"train\.batch_size"):
        load_config(path, ["train.batch_size=lots"])


@pytest.mark.parametrize("override, key", [
    ("train.head_epochs=-1", "train.head_epochs"),
    ("data.val_fraction=0.7", "data.val_fraction"),
    ("model.alpha=0.6", "model.alpha"),
    ("model.backbone=vgg16", "model.backbone"),
    ("train.fine_tune_at=1.5", "train.fine_tune_at"),
    ("name=../escape", "name"),
    ("optimize.prune.target_sparsity=1.5", "optimize.prune.target_sparsity"),
    ("optimize.prune.epochs=0", "optimize.prune.epochs"),
    ("optimize.qat.epochs=-2", "optimize.qat.epochs"),
    ("optimize.distill_weight=2", "optimize.distill_weight"),
])
def test_out_of_range_values_are_rejected(tmp_path, override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(write_config(tmp_path / "c.yaml"), [override])


def test_unknown_format_lists_valid_ones(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(write_config(tmp_path / "c.yaml"), ["export.formats=[tflite-fp23]"])
    assert "did you mean 'tflite-fp32'" in str(err.value) and "onnx-fp32" in str(err.value)


def test_set_overrides_are_typed(tmp_path):
    cfg = load_config(write_config(tmp_path / "c.yaml"), ["train.head_epochs=3", "train.fine_tune_at=0.5", "data.augment=[crop]"])
    assert cfg.train.head_epochs == 3 and cfg.train.fine_tune_at == 0.5 and cfg.data.augment == ("crop",)


@pytest.mark.parametrize("bad", ["nodot", "=3", "train.=3", "train..x=1"])
def test_malformed_set_is_a_config_error(bad):
    with pytest.raises(ConfigError, match="section.key=value"):
        parse_override(bad)


def test_folder_source_needs_a_path(tmp_path):
    with pytest.raises(ConfigError, match="data.path is required"):
        load_config(write_config(tmp_path / "c.yaml"), ["data.source=folder"])


def test_section_hash_changes_only_with_its_section(tmp_path):
    path = write_config(tmp_path / "c.yaml")
    a, b = load_config(path), load_config(path, ["train.head_epochs=4"])
    assert a.section_hash("data") == b.section_hash("data")
    assert a.section_hash("train") != b.section_hash("train")


def _one_sentence_exit_2(proc):
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    return errors[0]


def test_cli_unknown_key_exits_2(tmp_path):
    path = write_config(tmp_path / "c.yaml")
    path.write_text(path.read_text() + "colour: blue\n")
    line = _one_sentence_exit_2(run_cli("run", "--config", str(path)))
    assert "unknown key 'colour'" in line and str(path) in line


def test_cli_missing_data_path_exits_2(tmp_path):
    path = write_config(tmp_path / "c.yaml", data={"source": "folder", "path": str(tmp_path / "nowhere")})
    line = _one_sentence_exit_2(run_cli("run", "--config", str(path)))
    assert "data.path" in line and "nowhere" in line


def test_cli_missing_config_file_exits_2(tmp_path):
    line = _one_sentence_exit_2(run_cli("run", "--config", str(tmp_path / "absent.yaml")))
    assert "does not exist" in line


def test_cli_imagenet_offline_says_how_to_use_a_local_file(tmp_path):
    keras_cache = Path.home() / ".keras/models"
    if any(keras_cache.glob("mobilenet_v2_weights_*")):
        pytest.skip("ImageNet weights are in the Keras cache, so nothing is downloaded")
    path = write_config(tmp_path / "c.yaml", model={"backbone": "mobilenet_v2", "alpha": 0.35, "weights": "imagenet"})
    # A dead proxy makes the download fail the same way on a machine with a network.
    dead = "http://127.0.0.1:9"
    proc = run_cli("run", "--config", str(path), env_extra={"HTTPS_PROXY": dead, "HTTP_PROXY": dead, "https_proxy": dead})
    line = _one_sentence_exit_2(proc)
    assert "imagenet" in line and "model.weights" in line and ".h5" in line


def test_cli_missing_weights_file_exits_2_before_any_stage(tmp_path):
    path = write_config(tmp_path / "c.yaml", model={"backbone": "mobilenet_v2", "weights": str(tmp_path / "w.h5")})
    line = _one_sentence_exit_2(run_cli("run", "--config", str(path)))
    assert "model.weights" in line and "w.h5" in line
    assert not (tmp_path / "build").exists()
