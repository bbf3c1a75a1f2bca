"""Files and names from outside: a .keras file runs no code when loaded; odd class names stop the export cleanly."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.config import load_config
from core.errors import DataError
from tests.conftest import write_config


def test_a_keras_file_with_python_code_is_refused_and_the_code_does_not_run(tmp_path):
    """safe_mode: a Lambda layer's Python bytecode in a .keras file is not deserialized, so it cannot run."""
    from core.keras_compat import keras
    from core.loader import load_classifier as load_model

    marker = tmp_path / "code-ran"

    def payload(x, marker=str(marker)):
        open(marker, "w").close()  # what a malicious file would do instead
        return x

    inputs = keras.Input((4,))
    keras.Model(inputs, keras.layers.Lambda(payload)(inputs)).save(tmp_path / "m.keras")
    marker.unlink()
    with pytest.raises(ValueError, match="safe_mode"):
        load_model(tmp_path / "m.keras")
    assert not marker.exists()
    # The file is as dangerous as claimed: loaded without safe mode, its code runs.
    keras.models.load_model(tmp_path / "m.keras", compile=False, safe_mode=False)
    assert marker.exists()


@pytest.fixture(scope="module")
def export_inputs(tmp_path_factory):
    from pipeline import models

    cfg = load_config(write_config(tmp_path_factory.mktemp("labels") / "c.yaml"))
    return cfg, models.preprocessing_contract(cfg.model, cfg.data.image_size)


@pytest.mark.parametrize("bad, problem", [
    ("two\nlines", "contains a line break"),
    ("carriage\rreturn", "contains a line break"),
    ("para\u2029graph", "contains a line break"),
    ("", "is blank"),
    (" padded", "starts or ends with whitespace"),
])
def test_class_name_no_labels_file_can_carry_is_a_data_error(export_inputs, bad, problem):
    from pipeline.stages.export import model_info

    cfg, contract = export_inputs
    with pytest.raises(DataError) as err:
        model_info(cfg, ["cat", bad, "x" * 300], contract)
    text = str(err.value)
    assert text.splitlines() == [text] and problem in text and "rename that class folder" in text
    assert err.value.exit_code == 2


@pytest.mark.parametrize("odd", ["a/b", "../up", "x" * 1000, "tab\tinside", "émoji 🌷", "<b>&amp;</b>", "C:\\dir"])
def test_odd_but_single_line_class_names_round_trip_through_labels(export_inputs, odd):
    from pipeline.stages.export import model_info

    cfg, contract = export_inputs
    info = model_info(cfg, ["cat", odd], contract)
    assert info.labels_text().splitlines() == ["cat", odd]


@settings(max_examples=100, deadline=None)
@given(names=st.lists(st.text(max_size=40), min_size=1, max_size=4))
def test_any_class_names_round_trip_or_stop_with_one_sentence(export_inputs, names):
    from pipeline.stages.export import model_info

    cfg, contract = export_inputs
    try:
        info = model_info(cfg, names, contract)
    except DataError as exc:
        assert str(exc).splitlines() == [str(exc)]
        return
    assert info.labels_text().splitlines() == names
