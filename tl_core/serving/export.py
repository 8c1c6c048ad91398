"""The trained classifier as deployable files: a self-contained SavedModel, and TFLite on request.

The SavedModel has two signatures and needs only TensorFlow to load (not this package, not TF Hub):
  serving_default: images, float RGB [None, size, size, 3] in [0, 1]
  serving_bytes:   image_bytes, [None] encoded JPEG/PNG/GIF/BMP strings, decoded and resized inside
both returning logits, probabilities, class_ids and class_names.
"""
import warnings
from pathlib import Path

import numpy as np
import tensorflow as tf

from tl_core.artifacts import atomic_directory, atomic_path
from tl_core.run_dir import LABELS_FILE, TFLITE_FLOAT, TFLITE_QUANTIZED
from tl_core.data.images import decode_and_resize, to_unit_range


class ServingModule(tf.Module):
    def __init__(self, model: tf.keras.Model, class_names: list[str], image_size: int):
        super().__init__()
        self.model = model
        self.class_names = tf.Variable(class_names, trainable=False, name="class_names")
        self.image_size = tf.Variable(image_size, trainable=False, name="image_size")
        self.static_size = image_size
        self.serve = tf.function(
            self._serve,
            input_signature=[tf.TensorSpec([None, image_size, image_size, 3], tf.float32, name="images")],
        )

        self.serve_bytes = tf.function(
            self._serve_bytes,
            # "_bytes": TensorFlow Serving's REST API then takes {"b64": ...} JSON values.
            input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")],
        )

    def _serve_bytes(self, image_bytes):
        """image_bytes: encoded images, any size; decoded and resized exactly as in training."""
        size = self.static_size
        images = tf.map_fn(lambda encoded: decode_and_resize(encoded, size), image_bytes,
                           fn_output_signature=tf.TensorSpec([size, size, 3], tf.uint8))
        return self._serve(to_unit_range(images))

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
        tf.saved_model.save(module, str(tmp),
                            signatures={"serving_default": module.serve, "serving_bytes": module.serve_bytes})
    return Path(path)


def export_tflite(model: tf.keras.Model, class_names: list[str], run_dir: Path) -> dict[str, Path]:
    """float32 and dynamic-range quantized (int8 weights) TFLite models of images -> logits, and labels.txt."""
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    written = {}
    for name, optimizations in ((TFLITE_FLOAT, []), (TFLITE_QUANTIZED, [tf.lite.Optimize.DEFAULT])):
        converter.optimizations = optimizations
        content = converter.convert()
        with atomic_path(Path(run_dir) / name) as tmp:
            tmp.write_bytes(content)
        written[name] = Path(run_dir) / name
    with atomic_path(Path(run_dir) / LABELS_FILE) as tmp:
        tmp.write_text("".join(f"{name}\n" for name in class_names))
    written[LABELS_FILE] = Path(run_dir) / LABELS_FILE
    return written


def tflite_logits(path: Path, batches) -> np.ndarray:
    """Run a TFLite model over (uint8 images, labels) batches: the logits, in order."""
    with warnings.catch_warnings():  # tf.lite.Interpreter's notice about the separate LiteRT package
        warnings.simplefilter("ignore")
        interpreter = tf.lite.Interpreter(model_path=str(path))
    input_index = interpreter.get_input_details()[0]["index"]
    logits = []
    for images, _ in batches:
        interpreter.resize_tensor_input(input_index, images.shape)
        interpreter.allocate_tensors()
        interpreter.set_tensor(input_index, to_unit_range(images).numpy())
        interpreter.invoke()
        logits.append(interpreter.get_tensor(interpreter.get_output_details()[0]["index"]).copy())
    return np.concatenate(logits)
