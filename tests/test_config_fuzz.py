"""Generated configs, files and ``--set`` overrides against the loader.

Whatever the input, ``load_config`` returns a ``Config`` whose outputs stay
under its build folder, or raises ``ConfigError`` with one line of text; the
run-time checks (``check_paths``) raise only the project's own errors.
Nothing else (KeyError, TypeError, a YAML or Unicode error, RecursionError)
may escape: the CLI would print it as a traceback.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from pipeline.config import Config, check_paths, load_config
from core.errors import ConfigError, PipelineError, show

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _dotted_keys(model: type[BaseModel] = Config, prefix: tuple[str, ...] = ()):
    for name, field in model.model_fields.items():
        yield prefix + (name,)
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            yield from _dotted_keys(field.annotation, prefix + (name,))


REAL_KEYS = sorted(_dotted_keys())
KEY_WORDS = sorted({word for key in REAL_KEYS for word in key})
# Values the validators treat specially, so generated documents reach them.
NOTABLE = ["digits", "folder", "mobilenet_v2", "resnet50", "imagenet", "none", "keras", "tflite-fp32", "tflite-int8",
           "onnx-fp32", "phone-big", "cosine", "warn", "uint8", "crop", 0.35, 1.0, 1.5, 0.5, 0, -1, 2**63, "", ".",
           "..", "../up", "/abs", "a/b", "a\nb", "a\x00b", "\u2028", "\ud800", "~", "~/builds", " "]
# Text that trips YAML parsers and constructors in ways a plain syntax error does not.
YAML_TRAPS = ["2001-02-30", "!!python/object/apply:os.system [true]", "!!binary ~~~", "!!int 3.5", "!!float abc",
              "!!timestamp 2020-99-99", "&a [*a]", "*undefined", "[[[[[[", "{a: ", "? [a, b]\n: 1", "1e99999",
              ".nan", "-.inf", "0x1F", "0o17", "!!set {a, b}", "!!omap [a: 1]", "%YAML 1.1\n---\nname: x", "---\n---",
              "\t", "'\\x'", '"\\ud800"', '"\\x00"', "[" * 200 + "]" * 200, "a: &x {b: *x}"]

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=20), st.sampled_from(NOTABLE),
)
ODD_KEYS = ["", " ", "\r", "\n", "a\u2028b", "\ud800", "<<", "~", "0"]
keys = st.one_of(st.sampled_from(KEY_WORDS), st.sampled_from(ODD_KEYS), st.text(max_size=12), st.integers(-3, 3),
                 st.none(), st.booleans())
values = st.recursive(
    scalars, lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(keys, inner, max_size=4)),
    max_leaves=12,
)
key_paths = st.one_of(st.sampled_from(REAL_KEYS), st.lists(
    st.one_of(st.sampled_from(KEY_WORDS), st.sampled_from(ODD_KEYS), st.text(max_size=8)), min_size=1, max_size=4,
).map(tuple))
DELETE = object()


def _base(build_dir: Path) -> dict:
    """A valid config; mutations start from it so the generated documents reach the deeper validators."""
    return {
        "name": "fuzz",
        "build_dir": str(build_dir),
        "data": {"source": "digits", "image_size": 32, "augment": ["brightness"]},
        "model": {"backbone": "mobilenet_v2", "alpha": 0.35, "weights": "none"},
        "train": {"head_epochs": 1, "fine_tune_at": 1.0},
        "export": {"formats": ["keras", "tflite-fp32"], "budgets": {"tflite-fp32": 0.5}},
        "benchmark": {"targets": []},
    }


def _mutate(doc: dict, path: tuple, value) -> None:
    node = doc
    for key in path[:-1]:
        child = node.get(key)
        if not isinstance(child, dict):
            child = node[key] = {}
        node = child
    if value is DELETE:
        node.pop(path[-1], None)
    else:
        node[path[-1]] = value


def _yaml_text(doc, flow: bool, unicode: bool) -> bytes:
    # surrogatepass: a lone surrogate in the document becomes bytes the loader must refuse politely.
    return yaml.safe_dump(doc, default_flow_style=flow, allow_unicode=unicode).encode("utf-8", "surrogatepass")


overrides = st.lists(
    st.one_of(
        st.builds(lambda path, raw: f"{'.'.join(map(str, path))}={raw}", key_paths,
                  st.one_of(st.text(max_size=20), st.sampled_from(YAML_TRAPS),
                            values.map(lambda v: yaml.safe_dump(v, default_flow_style=True).strip()))),
        st.text(max_size=30),
    ),
    max_size=3,
)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def _loads_or_one_config_error(path: Path, sets: list[str]) -> Config | None:
    try:
        cfg = load_config(path, sets)
    except ConfigError as exc:
        _assert_one_line(str(exc))
        return None
    assert isinstance(cfg, Config)
    # Outputs go to <build_dir>/<name>/: the name is one plain path component.
    assert cfg.build_root.parent == Path(cfg.build_dir) and cfg.build_root.name == cfg.name
    assert cfg.name not in ("", ".", "..") and "/" not in cfg.name and "\\" not in cfg.name
    cfg.config_hash()  # every loaded config is JSON: the export stage hashes it
    try:
        check_paths(cfg, str(path))
    except PipelineError as exc:
        assert exc.exit_code == 2
        _assert_one_line(str(exc))
    return cfg


def _assert_one_line(message: str) -> None:
    assert message.strip() and message.splitlines() == [message], repr(message)
    message.encode("utf-8")  # the CLI prints it: a lone surrogate would fail there


@FUZZ
@given(mutations=st.lists(st.tuples(key_paths, st.one_of(values, st.just(DELETE))), max_size=4),
       sets=overrides, flow=st.booleans(), unicode=st.booleans())
def test_mutated_configs_load_or_raise_one_config_error(workdir, mutations, sets, flow, unicode):
    doc = _base(workdir / "build")
    for path, value in mutations:
        _mutate(doc, path, value)
    path = workdir / "mutated.yaml"
    path.write_bytes(_yaml_text(doc, flow, unicode))
    _loads_or_one_config_error(path, sets)


@FUZZ
@given(content=st.one_of(
    st.binary(max_size=200),
    st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.lists(st.one_of(st.sampled_from(YAML_TRAPS), st.text(max_size=20),
                       st.builds(lambda k, v: f"{k}: {v}", st.sampled_from(KEY_WORDS), st.sampled_from(YAML_TRAPS))),
             max_size=6).map(lambda lines: "\n".join(lines).encode("utf-8", "surrogatepass")),
    values.map(lambda v: _yaml_text(v, False, True)),
), sets=overrides)
def test_arbitrary_files_load_or_raise_one_config_error(workdir, content, sets):
    path = workdir / "arbitrary.yaml"
    path.write_bytes(content)
    _loads_or_one_config_error(path, sets)


def test_the_base_document_is_valid(workdir):
    """The mutations start from a config that loads, so they test what they change."""
    path = workdir / "base.yaml"
    path.write_bytes(_yaml_text(_base(workdir / "build"), False, True))
    assert _loads_or_one_config_error(path, []) is not None


def test_a_long_path_keeps_its_tail_and_other_long_values_their_head():
    deep = "/tmp/pytest-of-root/pytest-12/popen-gw1/test_something_long0/build/tiny/export/staging/tiny_int8.tflite"
    shown = show(deep)
    assert len(shown) <= 80 and shown.startswith("'…/") and shown.endswith("/export/staging/tiny_int8.tflite'")
    assert show(Path(deep)) == shown
    assert show("/short/path.h5") == "'/short/path.h5'"
    assert show("x" * 100) == "'" + "x" * 76 + "..."
