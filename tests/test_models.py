"""Backbones: flat classifiers, in-graph preprocessing, freezing rules, weights errors."""

from __future__ import annotations

import numpy as np
import pytest

from core import contract
from pipeline import models
from pipeline.config import ModelConfig
from core.errors import WeightsError
from core.keras_compat import keras
from tests.conftest import MOBILENET_WEIGHTS, needs_shared


@pytest.fixture(scope="module")
def tiny_mobilenet():
    return models.build_classifier(ModelConfig(backbone="mobilenet_v2", alpha=0.35, weights="none"), 3, 32)


@pytest.mark.parametrize("backbone", sorted(models.BACKBONES))
def test_classifier_is_flat_with_head_on_base_output(backbone):
    size = max(32, models.BACKBONES[backbone].min_size)
    model = models.build_classifier(ModelConfig(backbone=backbone, alpha=1.0, weights="none"), 4, size)
    # tfmot's quantize_model refuses nested models: no layer may itself be a Model.
    assert not any(isinstance(layer, keras.Model) for layer in model.layers)
    assert model.input_shape == (None, size, size, 3) and model.output_shape == (None, 4)
    assert [l.name for l in model.layers[:2]] == ["image", "preprocess"]
    assert [l.name for l in model.layers[-3:]] == ["head_pool", "head_dropout", "head_predictions"]
    assert len(models.backbone_layers(model)) >= 18  # VGG16 has 18 layers without its top, the others more


def test_mobilenet_preprocessing_maps_pixels_to_minus_one_one(tiny_mobilenet):
    layer = tiny_mobilenet.get_layer(contract.PREPROCESS_LAYER)
    out = layer(np.array([[[[0.0, 127.5, 255.0]]]], np.float32)).numpy()
    assert np.allclose(out, [-1.0, 0.0, 1.0])


def test_resnet_preprocessing_is_caffe_bgr():
    model = models.build_classifier(ModelConfig(backbone="resnet50", weights="none"), 2, 32)
    out = model.get_layer(contract.PREPROCESS_LAYER)(np.array([[[[10.0, 20.0, 30.0]]]], np.float32)).numpy()
    assert np.allclose(out, [30 - 103.939, 20 - 116.779, 10 - 123.68])


def test_fine_tune_at_counts_layers_or_fraction_and_keeps_batchnorm_frozen(tiny_mobilenet):
    layers = models.backbone_layers(tiny_mobilenet)
    assert models.set_trainable(tiny_mobilenet, 20, freeze_batchnorm=True) == 20
    top = layers[-20:]
    assert all(not l.trainable for l in layers[:-20])
    assert all(l.trainable != isinstance(l, keras.layers.BatchNormalization) for l in top)
    assert models.set_trainable(tiny_mobilenet, 0.5, freeze_batchnorm=False) == round(0.5 * len(layers))
    assert sum(l.trainable for l in layers) == round(0.5 * len(layers))
    models.freeze_backbone(tiny_mobilenet)
    assert not any(l.trainable for l in layers)


def test_missing_weights_file_is_a_weights_error(tmp_path):
    with pytest.raises(WeightsError, match="does not exist"):
        models.build_classifier(ModelConfig(weights=str(tmp_path / "nope.h5")), 2, 96)


def test_corrupt_weights_file_is_a_weights_error(tmp_path):
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"this is not HDF5")
    with pytest.raises(WeightsError, match="bad.h5"):
        models.build_classifier(ModelConfig(weights=str(bad)), 2, 96)


@needs_shared
def test_shared_imagenet_weights_load_and_wrong_alpha_is_refused():
    model = models.build_classifier(ModelConfig(alpha=1.0, weights=str(MOBILENET_WEIGHTS)), 2, 96)
    kernel = model.get_layer("Conv1").get_weights()[0]
    untrained = keras.applications.MobileNetV2(alpha=1.0, include_top=False, weights=None, input_shape=(96, 96, 3))
    assert not np.allclose(kernel, untrained.get_layer("Conv1").get_weights()[0])
    with pytest.raises(WeightsError, match="alpha 0.5"):
        models.build_classifier(ModelConfig(alpha=0.5, weights=str(MOBILENET_WEIGHTS)), 2, 96)
