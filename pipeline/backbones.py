"""The backbone registry: one row per keras.applications network the pipeline fine-tunes.

A row says how to build the network without its top, what normalization its
pretrained weights expect (it goes into the ``preprocess`` layer, inside the
model), which widths and input sizes it takes, the name of Keras's no-top
weights file (what an offline user has to fetch), and what tfmot can do with
it. It knows no dataset. The config reads these rows to refuse a bad
combination before any stage runs; ``pipeline.models`` builds from them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

# keras.applications preprocessing modes, as a normalization of RGB [0, 255] pixels:
# y = (x[..., channel_order] - mean) / std.
_TF = dict(mean=(127.5, 127.5, 127.5), std=(127.5, 127.5, 127.5), channel_order="RGB")  # "tf": [-1, 1]
_CAFFE = dict(mean=(103.939, 116.779, 123.68), std=(1.0, 1.0, 1.0), channel_order="BGR")  # "caffe"
# "torch": x / 255, then ImageNet's mean and standard deviation per channel.
_TORCH = dict(mean=(123.675, 116.28, 103.53), std=(58.395, 57.12, 57.375), channel_order="RGB")


@dataclass(frozen=True)
class Backbone:
    name: str
    family: str
    application: str  # the keras.applications constructor
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    channel_order: str  # "RGB" or "BGR"
    # Keras's no-top ImageNet weights file; {alpha} and {size} are filled from the config.
    weights_file: str
    alphas: tuple[float, ...] = ()  # width multipliers with ImageNet weights; () = no width setting
    min_size: int = 32  # the smallest input keras.applications accepts for it
    kwargs: dict = field(default_factory=dict)  # extra constructor arguments
    # The constructor puts normalization layers of its own at the bottom (EfficientNet):
    # they are folded into the ``preprocess`` layer (pipeline.models), since tfmot refuses them.
    folds_own_normalization: bool = False

    @property
    def uses_alpha(self) -> bool:
        return bool(self.alphas)

    def weights_file_for(self, alpha: float, size: int) -> str:
        return self.weights_file.format(alpha=_alpha_text(self, alpha), size=_nearest_weights_size(self, size))


def _alpha_text(bb: Backbone, alpha: float) -> str:
    if bb.name == "mobilenet":  # mobilenet_1_0_224_tf_no_top.h5
        return {1.0: "1_0", 0.75: "7_5", 0.5: "5_0", 0.25: "2_5"}.get(alpha, str(alpha))
    return str(float(alpha))  # MobileNetV2/V3: weights_..._1.0_...


def _nearest_weights_size(bb: Backbone, size: int) -> int:
    # MobileNet V1/V2 ship weights per input size (Keras picks 224 for other sizes).
    sizes = (128, 160, 192, 224) if bb.name == "mobilenet" else (96, 128, 160, 192, 224)
    return size if size in sizes else 224


BACKBONES: dict[str, Backbone] = {}


def register_backbone(backbone: Backbone) -> None:
    if backbone.name in BACKBONES:
        raise RuntimeError(f"backbone {backbone.name!r} registered twice")
    BACKBONES[backbone.name] = backbone


for _row in (
    Backbone("mobilenet_v2", "mobilenet", "MobileNetV2", **_TF, alphas=(0.35, 0.5, 0.75, 1.0, 1.3, 1.4),
             weights_file="mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{alpha}_{size}_no_top.h5"),
    Backbone("mobilenet", "mobilenet", "MobileNet", **_TF, alphas=(0.25, 0.5, 0.75, 1.0),
             weights_file="mobilenet_{alpha}_{size}_tf_no_top.h5"),
    # include_preprocessing=False: the [-1, 1] scaling lives in the preprocess layer instead.
    Backbone("mobilenet_v3_small", "mobilenet", "MobileNetV3Small", **_TF, alphas=(0.75, 1.0),
             weights_file="weights_mobilenet_v3_small_224_{alpha}_float_no_top_v2.h5",
             kwargs={"include_preprocessing": False}),
    Backbone("mobilenet_v3_large", "mobilenet", "MobileNetV3Large", **_TF, alphas=(0.75, 1.0),
             weights_file="weights_mobilenet_v3_large_224_{alpha}_float_no_top_v2.h5",
             kwargs={"include_preprocessing": False}),
    Backbone("resnet50", "resnet", "ResNet50", **_CAFFE,
             weights_file="resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"),
    Backbone("resnet50_v2", "resnet", "ResNet50V2", **_TF,
             weights_file="resnet50v2_weights_tf_dim_ordering_tf_kernels_notop.h5"),
    Backbone("vgg16", "vgg", "VGG16", **_CAFFE, weights_file="vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"),
    Backbone("vgg19", "vgg", "VGG19", **_CAFFE, weights_file="vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5"),
    Backbone("inception_v3", "inception", "InceptionV3", **_TF, min_size=75,
             weights_file="inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5"),
    Backbone("xception", "inception", "Xception", **_TF, min_size=71,
             weights_file="xception_weights_tf_dim_ordering_tf_kernels_notop.h5"),
    # EfficientNet B0 builds Rescaling(1/255) and Normalization layers into itself; "torch" is
    # what they compute with ImageNet weights (pipeline.models folds theirs into ours).
    Backbone("efficientnet_b0", "efficientnet", "EfficientNetB0", **_TORCH, weights_file="efficientnetb0_notop.h5",
             folds_own_normalization=True),
    Backbone("efficientnet_v2_b0", "efficientnet", "EfficientNetV2B0", **_TORCH,
             weights_file="efficientnetv2-b0_notop.h5", kwargs={"include_preprocessing": False}),
):
    register_backbone(_row)


def check_backbone(name: str, alpha: float, image_size: Optional[int]) -> Optional[str]:
    """Why this backbone cannot be built with this width and input size (what to set instead), or None."""
    bb = BACKBONES[name]
    if bb.alphas and alpha not in bb.alphas:
        return (f"model.alpha {alpha:g} is not a width {name} comes in; use one of "
                f"{', '.join(f'{a:g}' for a in bb.alphas)}")
    if not bb.alphas and alpha != 1.0:
        return f"model.alpha is {alpha:g} but {name} has no width multiplier; remove model.alpha (or set it to 1.0)"
    if image_size is not None and image_size < bb.min_size:
        return (f"data.image_size {image_size} is smaller than the {bb.min_size} px {name} takes; set "
                f"data.image_size to {bb.min_size} or more, or choose another model.backbone")
    return None
