"""A run's model as an MLflow model: the SavedModel's `serving_bytes` signature behind mlflow.pyfunc.

Saved as MLflow's "model from code" (mlflow_run.py: python_model=this file): MLflow copies this file into the model
and runs it to load, so loading needs mlflow, tensorflow and pandas, not this package. Input: encoded images (JPEG,
PNG, GIF, BMP bytes; any size: decoded and resized inside the SavedModel exactly as in training) in a DataFrame's
`image` column, the model's signature (served over REST: a binary column, base64 in JSON). Output: one row per image, the
class name and id, its probability and every class's.
"""
import mlflow
import numpy as np
import pandas as pd


def encoded_images(model_input) -> list[bytes]:
    if isinstance(model_input, pd.DataFrame):
        model_input = model_input.iloc[:, 0]
    if isinstance(model_input, (bytes, bytearray)):
        model_input = [model_input]
    images = [bytes(image) for image in model_input]
    if not images:
        raise ValueError("no images: pass encoded image bytes (JPEG, PNG, GIF or BMP), a list of them, or a DataFrame "
                         "whose first column holds them")
    return images


class ImageBytesClassifier(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        import tensorflow as tf  # when MLflow loads the model: loading this file (the model's code) stays light

        self.tf = tf
        self.serve = tf.saved_model.load(context.artifacts["saved_model"]).signatures["serving_bytes"]

    def predict(self, context, model_input, params=None):
        outputs = self.serve(image_bytes=self.tf.constant(encoded_images(model_input)))
        probabilities = outputs["probabilities"].numpy()
        return pd.DataFrame({
            "class_name": [name.decode() for name in outputs["class_names"].numpy()],
            "class_id": outputs["class_ids"].numpy(),
            "probability": probabilities.max(axis=1).astype(np.float64),
            "probabilities": list(probabilities.astype(np.float64)),
        })


mlflow.models.set_model(ImageBytesClassifier())
