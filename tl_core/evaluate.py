"""Metrics of an exported model (a run's model/ SavedModel) on any labelled split."""
import json
from pathlib import Path

import numpy as np
import tensorflow as tf

from tl_core.config import TrainConfig
from tl_core.data import make_dataset
from tl_core.metrics import classification_metrics


def load_run(run_dir: Path) -> tuple[TrainConfig, list[str]]:
    """A run directory's configuration and class names."""
    run_dir = Path(run_dir)
    return TrainConfig.from_json(run_dir / "config.json"), json.loads((run_dir / "class_names.json").read_text())


def model_logits(model_dir: Path, source, image_size: int, batch_size: int) -> np.ndarray:
    """The exported serving signature's logits over a source (class folders or Parquet), in order."""
    serve = tf.saved_model.load(str(model_dir)).signatures["serving_default"]
    batches = make_dataset(source, image_size, batch_size)
    return np.concatenate([serve(images=images)["logits"].numpy() for images, _ in batches])


def evaluate_run(run_dir: Path, source) -> dict:
    """Metrics of run_dir/model on a source with the same classes (in the same order)."""
    config, class_names = load_run(run_dir)
    if class_names != source.class_names:
        raise ValueError(f"the model in {run_dir} predicts {class_names}, the data has {source.class_names}")
    logits = model_logits(Path(run_dir) / "model", source, config.image_size, config.batch_size)
    return classification_metrics(source.labels, logits, class_names)
