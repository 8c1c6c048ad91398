"""Any exported model (a run's model/ SavedModel) on any labelled split: metrics and its worst mistakes.

Only the SavedModel is needed: it carries its class names and image size.
"""
import heapq
from pathlib import Path

import numpy as np
import tensorflow as tf

from tl_core import artifacts, storage
from tl_core.data.checks import format_bad_files, without_bad_files
from tl_core.data.images import DatasetError, ImageFolder, display_path, make_dataset, to_unit_range
from tl_core.data.sources import data_directory, labelled_split
from tl_core.metrics import classification_metrics
from tl_core.progress import labelled_batch_size, track
from tl_core.model.assets import cache_dir as asset_cache
from tl_core.run_dir import CONFUSION_PLOT, METRICS_FILE, MODEL_DIR


class ExportedModel:
    """A SavedModel written by tl_core.serving.export, from its directory or the run directory holding it."""

    def __init__(self, path: str | Path):
        """path: a run directory or a SavedModel, on disk or at a URI (copied to a temporary directory to load:
        TensorFlow loads only local files; the loaded model needs them no more)."""
        in_run = storage.join(path, MODEL_DIR)
        chosen = in_run if storage.exists(storage.join(in_run, "saved_model.pb")) else str(path)
        if not storage.exists(storage.join(chosen, "saved_model.pb")):
            raise DatasetError(f"{storage.display(path)} is neither a run directory nor a SavedModel (no saved_model.pb)")
        self.path = chosen if storage.is_uri(chosen) else Path(chosen)  # where it was loaded from
        with storage.local_copy(chosen) as local:
            loaded = tf.saved_model.load(str(local))
        missing = [what for what, there in (("its serving_default signature", "serving_default" in loaded.signatures),
                                            ("class_names", hasattr(loaded, "class_names")),
                                            ("image_size", hasattr(loaded, "image_size"))) if not there]
        if missing:
            raise DatasetError(f"{storage.display(chosen)} is a SavedModel this project did not export (it has no "
                               f"{' and no '.join(missing)}): give a run directory or its model/ (`python -m jobs.train` "
                               "exports one)")
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
    """(metrics, mistakes, predictions): metrics over the whole source; the `worst` most confidently wrong images as
    (confidence, position in the source, true index, predicted index, image), most confident first; the predicted
    class index of every image, in the source's order (a paired test of two models needs them)."""
    labels = model.labels_of(source)
    logits, mistakes, position = [], [], 0
    batches = make_dataset(source, model.image_size, batch_size)
    for images, _ in track(batches, len(source), "Evaluating", size=labelled_batch_size):
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
    logits = np.concatenate(logits)
    metrics = classification_metrics(labels, logits, model.class_names)
    return metrics, sorted(mistakes, key=lambda mistake: -mistake[0]), logits.argmax(axis=1)


def evaluate_run(run_dir: Path, source) -> dict:
    """Metrics of run_dir/model on a source."""
    return evaluate(ExportedModel(run_dir), source)[0]


MISTAKES_PLOT = "most_confident_errors.png"


def evaluate_to_directory(model_path, data_dir, output: Path, *, split: str = "validation", batch_size: int = 64,
                          worst: int = 16, cache_dir=None, log=print) -> dict:
    """Evaluate an exported model on a labelled split and write metrics.json, the confusion matrix and the
    contact sheet of its most confident mistakes into output; files that cannot be used are left out and listed."""
    if batch_size <= 0 or worst < 0:
        raise ValueError("--batch-size must be positive and --worst not negative")
    model = ExportedModel(model_path)
    data_dir = data_directory(data_dir, asset_cache(cache_dir))
    source, bad = without_bad_files(labelled_split(data_dir, split))
    if bad:
        log(f"Leaving out {len(bad)} file(s) that cannot be used:\n{format_bad_files(bad)}")
    log(f"Evaluating {model.path} on {len(source)} images of {display_path(str(data_dir))} ...", flush=True)
    metrics, mistakes, _ = evaluate(model, source, batch_size=batch_size, worst=worst)

    def name(position):
        return Path(source.paths[position]).name if isinstance(source, ImageFolder) else f"row {position}"

    table = [{"image": name(position), "true": model.class_names[truth], "predicted": model.class_names[predicted],
              "confidence": confidence} for confidence, position, truth, predicted, _ in mistakes]
    metrics.update(model=str(model.path), data_dir=str(data_dir), left_out=[str(item) for item in bad],
                   most_confident_errors=table)
    artifacts.write_json(output / METRICS_FILE, metrics)
    artifacts.plot_confusion_matrix(metrics["confusion_matrix"], model.class_names, output / CONFUSION_PLOT,
                                    title="Confusion matrix")
    artifacts.plot_contact_sheet(
        [mistake[4] for mistake in mistakes],
        [f"{row['image']}\ntrue {row['true']}, predicted {row['predicted']} ({row['confidence']:.2f})" for row in table],
        output / MISTAKES_PLOT, title="Most confidently wrong")
    return metrics


def format_report(metrics: dict) -> str:
    """Accuracy, balanced accuracy, macro-F1, loss and the per-class table, for a terminal."""
    lines = [f"accuracy {metrics['accuracy']:.4f}  balanced accuracy {metrics['balanced_accuracy']:.4f}  "
             f"macro-F1 {metrics['macro_f1']:.4f}  loss {metrics['loss']:.4f}  images {metrics['num_examples']}",
             f"{'class':<20} {'precision':>9} {'recall':>9} {'f1':>9} {'support':>9}"]
    lines += [f"{row['class']:<20} {row['precision']:>9.4f} {row['recall']:>9.4f} {row['f1']:>9.4f} {row['support']:>9}"
              for row in metrics["per_class"]]
    return "\n".join(lines)
