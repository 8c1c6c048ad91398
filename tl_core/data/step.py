"""The training step's own preprocessing: what runs on the accelerator before the classifier.

The pipeline hands uint8 batches (and, when augmenting, each image's transform); the step scales
them to [0, 1] and warps them, so under Mirrored/MultiWorkerMirrored strategies every replica does
this per-pixel work for its own slice of the batch on its own device.
"""
import tensorflow as tf

from tl_core.data.augment import apply_transforms
from tl_core.data.images import to_unit_range

keras = tf.keras


class DevicePreprocessing(keras.layers.Layer):
    """uint8 batches -> float [0, 1], warped by each image's transform when given.

    Part of the training step, so under Mirrored/MultiWorkerMirrored strategies every replica scales
    and augments its own slice of the batch on its own device. Always float32 (also under --bf16).
    """

    def __init__(self, **kwargs):
        super().__init__(dtype="float32", **kwargs)

    def call(self, images, transforms=None):
        images = to_unit_range(images)
        return images if transforms is None else apply_transforms(images, transforms)


def training_model(classifier: keras.Model, image_size: int, augment: bool) -> keras.Model:
    """What fit() trains: the classifier behind on-device preprocessing, taking the pipeline's batches
    (uint8 images, plus per-image transforms when augmenting). Shares the classifier's weights; the
    exported classifier keeps its float [0, 1] input."""
    images = keras.Input((image_size, image_size, 3), dtype="uint8", name="images")
    if not augment:
        return keras.Model(images, classifier(DevicePreprocessing()(images)), name="trainer")
    transforms = keras.Input((8,), name="transforms")
    pixels = DevicePreprocessing()(images, transforms)
    return keras.Model({"images": images, "transforms": transforms}, classifier(pixels), name="trainer")


def as_fed(inputs) -> tf.Tensor:
    """A pipeline batch's images as the classifier receives them in training: in [0, 1], warped when augmenting."""
    if isinstance(inputs, dict):
        return DevicePreprocessing()(inputs["images"], inputs["transforms"])
    return DevicePreprocessing()(inputs)
