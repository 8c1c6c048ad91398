"""The classifier: a frozen TF Hub feature extractor and a new Dense head producing logits."""
import re

import tensorflow as tf
import tensorflow_hub as hub

keras = tf.keras


class BackboneError(ValueError):
    pass


def load_backbone(handle: str, image_size: int) -> hub.KerasLayer:
    try:
        return hub.KerasLayer(handle, input_shape=(image_size, image_size, 3), trainable=False, name="backbone")
    except Exception as error:  # hub raises many types (OSError, ValueError, URLError, ...)
        raise BackboneError(
            f"could not load backbone {handle!r}: {type(error).__name__}: {str(error)[:300]}\n"
            "TF Hub and Kaggle handles need internet access. Offline, use the built-in "
            "'--backbone mobilenet_v2' or the path of a local SavedModel directory."
        ) from None


def build_classifier(handle: str, num_classes: int, image_size: int) -> keras.Sequential:
    """hub.KerasLayer(handle, trainable=False) followed by Dense(num_classes) logits."""
    backbone = load_backbone(handle, image_size)
    try:  # Keras calls the backbone here, on the input shape
        model = keras.Sequential([backbone, keras.layers.Dense(num_classes, name="head")])
        model.build((None, image_size, image_size, 3))
    except (ValueError, TypeError, tf.errors.OpError) as error:  # e.g. a SavedModel traced for one size only
        detail = re.search(r"Can not cast (.*?)`", str(error))
        raise BackboneError(
            f"backbone {handle!r} does not accept {image_size}x{image_size} RGB images"
            f"{f' (cannot cast {detail.group(1)})' if detail else ''}; use --image-size with the size "
            "the backbone was made for (224 for most ImageNet models)"
        ) from None
    return model


def compile_classifier(model: keras.Model, learning_rate: float, jit_compile: bool = False) -> None:
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        jit_compile=jit_compile,
    )


def head_model(model: keras.Sequential) -> keras.Sequential:
    """The classifier's own Dense head (shared weights) as a model on precomputed backbone features."""
    head = model.get_layer("head")
    return keras.Sequential([keras.Input((head.kernel.shape[0],)), head], name="head_on_features")
