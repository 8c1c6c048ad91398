"""Any exported model (a run's model/ SavedModel) on any labelled split: metrics and its worst mistakes.

Only the SavedModel is needed: it carries its class names and image size.
"""
import heapq
from pathlib import Path

import numpy as np
import tensorflow as tf

from tl_core.data.images import DatasetError, make_dataset, to_unit_range
from tl_core.metrics import classification_metrics
from tl_core.run_dir import MODEL_DIR


class ExportedModel:
    """A SavedModel written by tl_core.serving.export, from its directory or the run directory holding it."""

    def __init__(self, path: str | Path):
        path = Path(path)
        self.path = path / MODEL_DIR if (path / MODEL_DIR / "saved_model.pb").exists() else path
        if not (self.path / "saved_model.pb").exists():
            raise DatasetError(f"{path} is neither a run directory nor a SavedModel (no saved_model.pb)")
        loaded = tf.saved_model.load(str(self.path))
        self.serve = loaded.signatures["serving_default"]
        self.class_names = [name.decode() for name in loaded.class_names.numpy()]
        self.image_size = int(loaded.image_size.numpy())

    def labels_of(self, source) -> np.ndarray:
        """The source's labels as this model's class indices (the data may hold a subset of its classes)."""
        unknown = sorted(set(source.class_names) - set(self.class_names))
        if unknown:
            raise DatasetError(f"the data has classes {unknown} that the model does not know "
                               f"(it predicts {self.class_names})")
        index = np.array([self.class_names.index(name) for name in source.class_names])
        return index[source.labels]


def evaluate(model: ExportedModel, source, *, batch_size: int = 64, worst: int = 0):
    """(metrics, mistakes): metrics over the whole source; the `worst` most confidently wrong images as
    (confidence, position in the source, true index, predicted index, image), most confident first."""
    labels = model.labels_of(source)
    logits, mistakes, position = [], [], 0
    for images, _ in make_dataset(source, model.image_size, batch_size):
        images = to_unit_range(images)
        batch = model.serve(images=images)
        logits.append(batch["logits"].numpy())
        probabilities = batch["probabilities"].numpy()
        for row, predicted in enumerate(probabilities.argmax(axis=1)):
            truth = labels[position + row]
            if worst and predicted != truth:
                item = (float(probabilities[row, predicted]), position + row, int(truth), int(predicted))
                if len(mistakes) < worst:
                    heapq.heappush(mistakes, (*item, images[row].numpy()))
                elif item[0] > mistakes[0][0]:
                    heapq.heapreplace(mistakes, (*item, images[row].numpy()))
        position += len(probabilities)
    metrics = classification_metrics(labels, np.concatenate(logits), model.class_names)
    return metrics, sorted(mistakes, key=lambda mistake: -mistake[0])


def evaluate_run(run_dir: Path, source) -> dict:
    """Metrics of run_dir/model on a source."""
    return evaluate(ExportedModel(run_dir), source)[0]
