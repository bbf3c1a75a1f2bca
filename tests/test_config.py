"""Config loading: typed sections, one-sentence errors naming key and file, --set overrides."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pipeline.config import check_paths, load_config, parse_override
from core.errors import ConfigError
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
    ("model.backbone=vgg17", "model.backbone"),
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


def test_a_bad_set_override_blames_set_not_the_file(tmp_path):
    with pytest.raises(ConfigError) as typo:
        load_config(REPO / "configs/quickstart.yaml", ["train.fine_tune_epoch=3"])
    assert str(typo.value).startswith("--set train.fine_tune_epoch=3: unknown key 'train.fine_tune_epoch' "
                                      "(did you mean 'fine_tune_epochs'?)")
    assert "quickstart.yaml" not in str(typo.value)
    with pytest.raises(ConfigError, match=r"^--set train.head_epochs=-1: train.head_epochs: .*greater than"):
        load_config(REPO / "configs/quickstart.yaml", ["data.seed=3", "train.head_epochs=-1"])
    own = tmp_path / "quickstart.yaml"
    own.write_text((REPO / "configs/quickstart.yaml").read_text() + "colour: blue\n")
    with pytest.raises(ConfigError, match=r"quickstart.yaml: unknown key 'colour'"):  # the file's own key: the file
        load_config(own, ["train.head_epochs=1"])


def test_cli_missing_data_path_exits_2(tmp_path):
    path = write_config(tmp_path / "c.yaml", data={"source": "folder", "path": str(tmp_path / "nowhere")})
    line = _one_sentence_exit_2(run_cli("run", "--config", str(path)))
    assert "data.path" in line and "nowhere" in line


def test_cli_missing_config_file_exits_2(tmp_path):
    line = _one_sentence_exit_2(run_cli("run", "--config", str(tmp_path / "absent.yaml")))
    assert "does not exist" in line


def test_cli_missing_weights_file_exits_2_before_any_stage(tmp_path):
    path = write_config(tmp_path / "c.yaml", model={"backbone": "mobilenet_v2", "weights": str(tmp_path / "w.h5")})
    line = _one_sentence_exit_2(run_cli("run", "--config", str(path)))
    assert "model.weights" in line and "w.h5" in line
    assert not (tmp_path / "build").exists()


def _set_key(path: Path, dotted: str, value) -> Path:
    doc = yaml.safe_load(path.read_text())
    *sections, key = dotted.split(".")
    node = doc
    for section in sections:
        node = node.setdefault(section, {})
    node[key] = value
    path.write_text(yaml.safe_dump(doc))
    return path


# (dotted key, value; or a function of the config text and tmp_path), then what the sentence must say:
# the key, and the remedy or the allowed values.
CLI_CASES = [
    pytest.param("train.head_epoch", 1, ["unknown key 'train.head_epoch'", "did you mean 'head_epochs'"],
                 id="unknown-key"),
    pytest.param("train.batch_size", "lots", ["train.batch_size", "should be a valid integer", "'lots'"],
                 id="wrong-type"),
    pytest.param("optimize.prune.target_sparsity", 1.5, ["optimize.prune.target_sparsity", "should be less than 1"],
                 id="sparsity-1.5"),
    pytest.param("train.head_epochs", -1, ["train.head_epochs", "greater than or equal to 0"], id="negative-epochs"),
    pytest.param("train.head_lr", float("inf"), ["train.head_lr", "finite number"], id="infinite-lr"),
    pytest.param("data.seed", True, ["data.seed", "true/false", "write a number"], id="boolean-for-a-number"),
    pytest.param("model.backbone", "mobilenetv2", ["model.backbone", "did you mean 'mobilenet_v2'", "resnet50"],
                 id="unknown-backbone"),
    pytest.param("export.formats", ["keras", "tflite-fp23"], ["export.formats", "did you mean 'tflite-fp32'",
                                                              "onnx-int8"], id="unknown-format"),
    pytest.param("name", "../escape", ["name", "letters, digits", "e.g. my_model"], id="name-escapes-build-dir"),
    pytest.param("build_dir", "", ["build_dir", "not empty"], id="empty-build-dir"),
    pytest.param("export.description", "two\nlines", ["export.description", "one line"], id="two-line-description"),
    pytest.param(None, lambda text, tmp: text + "name: again\n", ["'name' appears twice", "keep one"],
                 id="duplicate-key"),
    pytest.param(None, lambda text, tmp: text + "train: [unclosed\n", ["not valid YAML at line", "fix it"],
                 id="yaml-syntax"),
    pytest.param(None, lambda text, tmp: "- a list\n- not a mapping\n", ["must be a YAML mapping", "name, data"],
                 id="not-a-mapping"),
    pytest.param(None, lambda text, tmp: text.replace("name: tiny", f"name: !!python/object/apply:os.system "
                                                      f"['touch {tmp}/PWNED']"),
                 ["!!python/object/apply:os.system", "not allowed"], id="python-tag"),
]


@pytest.mark.parametrize("key, value, expected", CLI_CASES)
def test_cli_config_error_is_one_sentence_exit_2(tmp_path, key, value, expected):
    path = write_config(tmp_path / "c.yaml")
    if key is None:
        path.write_text(value(path.read_text(), tmp_path))
    else:
        _set_key(path, key, value)
    proc = run_cli("run", "--config", str(path))
    line = _one_sentence_exit_2(proc)
    assert proc.stderr.splitlines() == [line], "the sentence is all a config error prints"
    assert str(path) in line, line
    for text in expected:
        assert text in line, line
    assert not (tmp_path / "build").exists() and not (tmp_path / "PWNED").exists()


def test_cli_malformed_set_is_one_sentence_exit_2(tmp_path):
    line = _one_sentence_exit_2(run_cli("run", "--config", str(write_config(tmp_path / "c.yaml")),
                                        "--set", "train.head_epochs"))
    assert "'train.head_epochs'" in line and "section.key=value" in line


@pytest.mark.parametrize("name", ["../escape", "..", ".", "", " ", "/abs/path", "a/b", "a\\b", ".hidden", "-rf",
                                  "a\nb", "caf\u00e9", "x" * 101])
def test_names_that_could_leave_the_build_folder_are_refused(tmp_path, name):
    with pytest.raises(ConfigError, match=r"name: must be 1-100 ASCII letters.*e\.g\. my_model") as err:
        load_config(write_config(tmp_path / "c.yaml"), [f"name={yaml.safe_dump(name).splitlines()[0]}"])
    assert str(err.value).splitlines() == [str(err.value)]


@pytest.mark.parametrize("name", ["my_model", "v1.2-beta", "A", "x" * 100])
def test_plain_names_make_one_folder_under_build_dir(tmp_path, name):
    cfg = load_config(write_config(tmp_path / "c.yaml", name=name))
    assert cfg.build_root == Path(cfg.build_dir) / name and cfg.build_root.parent == tmp_path / "build"


@pytest.mark.parametrize("build_dir", ["", "   ", "a\x00b", "bu\nild"])
def test_unusable_build_dir_is_refused(tmp_path, build_dir):
    with pytest.raises(ConfigError, match="build_dir: must be a folder path"):
        load_config(write_config(tmp_path / "c.yaml", build_dir=build_dir))


@pytest.mark.parametrize("where", ["build", "build/sub"])
def test_build_dir_under_a_file_is_a_config_error(tmp_path, where):
    (tmp_path / "build").write_text("a file where the build folder should be")
    path = write_config(tmp_path / "c.yaml", build_dir=str(tmp_path / where))
    with pytest.raises(ConfigError, match=r"build_dir: .*build' is a file") as err:
        check_paths(load_config(path), str(path))
    assert str(path) in str(err.value)


def test_yaml_merge_keys_still_work(tmp_path):
    """The duplicate-key check leaves YAML merges alone: a key beside `<<` overrides the merged one."""
    path = write_config(tmp_path / "c.yaml")
    path.write_text(path.read_text().replace("train:\n", "train:\n  <<: {head_epochs: 7, patience: 5}\n", 1))
    cfg = load_config(path)
    assert (cfg.train.head_epochs, cfg.train.patience) == (1, 5)


@pytest.mark.parametrize("raw", ["!!int", "2001-02-30", "0000-00-00", "!!int ;", "[" * 600])
def test_set_values_yaml_cannot_build_stay_strings(tmp_path, raw):
    """Found by test_config_fuzz.py: PyYAML raised IndexError, ValueError or RecursionError on these."""
    assert load_config(write_config(tmp_path / "c.yaml"), [f"data.path={raw}"]).data.path == raw


@pytest.mark.parametrize("text, problem", [
    ("name: tiny\nname: again\n", "'name' appears twice"),
    ("name: 2001-02-30\n", "ValueError: day is out of range for month"),
    ("name: !!int\n", "IndexError"),
    ("name: " + "[" * 600 + "]" * 600 + "\n", "it nests too deeply"),
    ('"\\r": 1\nname: tiny\n', "unknown key '\\r'"),
])
def test_yaml_the_parser_chokes_on_is_one_config_error(tmp_path, text, problem):
    """Found by test_config_fuzz.py (all but the duplicate): each leaked a raw exception or a two-line message."""
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert problem in str(err.value) and str(err.value).splitlines() == [str(err.value)]


@pytest.mark.parametrize("text, problem", [
    ("phone: !!python/object/apply:os.system [true]\n", "the tag '!!python/object/apply:os.system' is not allowed"),
    ("phone: 2001-02-30\n", "day is out of range"),
    (b"\xff\xfe not UTF-8", "cannot be read (UnicodeDecodeError)"),
    (None, "cannot be read (IsADirectoryError)"),
])
def test_targets_file_is_read_like_the_config(tmp_path, text, problem):
    """benchmark.targets_file goes through the same safe, one-sentence YAML reading as the config."""
    from benchmarks.targets import load_targets

    path = tmp_path / "targets.yaml"
    if text is None:
        path.mkdir()
    else:
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(ConfigError) as err:
        load_targets(path, ["phone"])
    assert problem in str(err.value) and str(path) in str(err.value)
    assert str(err.value).splitlines() == [str(err.value)]


def test_paths_too_long_for_the_file_system_are_config_errors(tmp_path):
    """Path.is_dir raises OSError (not False) for a name over 255 bytes: it must not escape as a traceback."""
    long = "x" * 300
    folder = write_config(tmp_path / "a.yaml", data={"source": "folder", "path": str(tmp_path / long)})
    with pytest.raises(ConfigError, match="data.path .* is not a folder"):
        check_paths(load_config(folder), str(folder))
    build = write_config(tmp_path / "b.yaml", build_dir=str(tmp_path / long))
    with pytest.raises(ConfigError, match=r"build_dir: .* cannot be used \(File name too long\)"):
        check_paths(load_config(build), str(build))
