"""The trained classifier as a self-contained SavedModel with a serving signature.

Loading needs only TensorFlow: `tf.saved_model.load(path).signatures["serving_default"]`.
"""
from pathlib import Path

import tensorflow as tf

from tl_core.artifacts import atomic_directory


class ServingModule(tf.Module):
    def __init__(self, model: tf.keras.Model, class_names: list[str], image_size: int):
        super().__init__()
        self.model = model
        self.class_names = tf.Variable(class_names, trainable=False, name="class_names")
        self.image_size = tf.Variable(image_size, trainable=False, name="image_size")
        self.serve = tf.function(
            self._serve,
            input_signature=[tf.TensorSpec([None, image_size, image_size, 3], tf.float32, name="images")],
        )

    def _serve(self, images):
        """images: float RGB in [0, 1], resized to the model's size."""
        logits = self.model(images, training=False)
        class_ids = tf.argmax(logits, axis=-1, output_type=tf.int32)
        return {
            "logits": logits,
            "probabilities": tf.nn.softmax(logits),
            "class_ids": class_ids,
            "class_names": tf.gather(self.class_names, class_ids),
        }


def export_classifier(model: tf.keras.Model, class_names: list[str], image_size: int, path) -> Path:
    """Save atomically: the directory appears under its final name only when complete."""
    module = ServingModule(model, class_names, image_size)
    with atomic_directory(path) as tmp:
        tf.saved_model.save(module, str(tmp), signatures={"serving_default": module.serve})
    return Path(path)
