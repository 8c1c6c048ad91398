"""The training job: one function, `train(config)`, used by every entry point.

Recipe: frozen backbone + Dense head, Adam, sparse categorical cross-entropy on logits. The
validation set is never augmented and the backbone is frozen, so validation features are computed
once and each epoch's validation runs the head alone.
"""
import dataclasses
import datetime
import json
import shutil
import time
from pathlib import Path

import numpy as np
import tensorflow as tf
import tensorflow_hub as hub
import tf_keras

from tl_core import artifacts, assets
from tl_core.backbones import resolve_backbone
from tl_core.config import TrainConfig
from tl_core.data import ImageFolder, list_image_folder, make_dataset
from tl_core.export import export_classifier
from tl_core.metrics import classification_metrics
from tl_core.model import build_classifier, compile_classifier, head_on_features
from tl_core.sample_data import prepare_cats_vs_dogs

# Files of a run directory.
CONFIG_FILE = "config.json"
CLASS_NAMES_FILE = "class_names.json"
HISTORY_JSON = "history.json"
HISTORY_PARQUET = "history.parquet"
METRICS_FILE = "metrics.json"
HISTORY_PLOT = "history.png"
CONFUSION_PLOT = "confusion_matrix.png"
MODEL_DIR = "model"
CHECKPOINT_DIR = "checkpoints"


class RunDirectoryError(ValueError):
    pass


def default_output_dir() -> str:
    return str(Path("runs") / datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S"))


def prepare_run_dir(config: TrainConfig, *, overwrite: bool = False, resume: bool = False) -> TrainConfig:
    """Resolve the output directory; refuse to mix a new run into an existing one."""
    config = dataclasses.replace(config, output_dir=config.output_dir or default_output_dir())
    run_dir = Path(config.output_dir)
    saved = run_dir / CONFIG_FILE
    if resume:
        if not saved.exists():
            raise RunDirectoryError(f"--resume: {run_dir} holds no run to resume (no {CONFIG_FILE})")
        previous = TrainConfig.from_json(saved)
        if dataclasses.replace(previous, epochs=config.epochs) != config:
            raise RunDirectoryError(
                f"--resume: the configuration differs from the one saved in {saved}; "
                "resume with the same arguments (only --epochs may change)"
            )
    elif run_dir.exists() and any(run_dir.iterdir()):
        if not overwrite:
            raise RunDirectoryError(
                f"{run_dir} already holds files; pass --resume to continue that run, "
                "--overwrite to replace it, or choose another --output-dir"
            )
        for name in (CHECKPOINT_DIR, HISTORY_JSON, HISTORY_PARQUET, METRICS_FILE):
            path = run_dir / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    run_dir.mkdir(parents=True, exist_ok=True)
    artifacts.write_json(saved, config.to_dict())
    return config


def load_folders(config: TrainConfig, cache: Path) -> tuple[ImageFolder, ImageFolder, Path]:
    data_dir = Path(config.data_dir) if config.data_dir else prepare_cats_vs_dogs(cache)
    train_folder = list_image_folder(data_dir / "train")
    validation_folder = list_image_folder(data_dir / "validation", train_folder.class_names)
    return train_folder, validation_folder, data_dir


def backbone_features(model: tf.keras.Model, dataset: tf.data.Dataset) -> np.ndarray:
    """Run the frozen backbone once over a dataset of (images, labels) batches."""
    backbone = model.get_layer("backbone")
    extract = tf.function(lambda images: backbone(images, training=False))
    return np.concatenate([extract(images).numpy() for images, _ in dataset])


def format_epoch(row: dict, epochs: int) -> str:
    return (f"epoch {row['epoch']:>3}/{epochs}  loss {row['loss']:.4f}  accuracy {row['accuracy']:.4f}  "
            f"val_loss {row['val_loss']:.4f}  val_accuracy {row['val_accuracy']:.4f}  "
            f"{row['seconds']:.1f}s  {row['images_per_second']:.0f} img/s")


def _versions() -> dict:
    return {"tensorflow": tf.__version__, "tf_keras": tf_keras.__version__, "tensorflow_hub": hub.__version__}


def train(config: TrainConfig, *, resume: bool = False) -> dict:
    """Train the head on config's data, write every artifact into config.output_dir, return the metrics."""
    started = time.perf_counter()
    run_dir = Path(config.output_dir)
    cache = assets.cache_dir(config.cache_dir)
    tf.keras.utils.set_random_seed(config.seed)
    train_folder, validation_folder, data_dir = load_folders(config, cache)
    class_names = train_folder.class_names
    handle = resolve_backbone(config.backbone, cache)
    print(f"Training on {len(train_folder)} images, validating on {len(validation_folder)}, "
          f"classes {class_names}, backbone {handle}", flush=True)

    model = build_classifier(handle, len(class_names), config.image_size)
    compile_classifier(model, config.learning_rate)
    checkpoint = tf.train.Checkpoint(model=model, optimizer=model.optimizer)
    manager = tf.train.CheckpointManager(checkpoint, run_dir / CHECKPOINT_DIR, max_to_keep=1)
    history = []
    if resume and manager.latest_checkpoint:
        checkpoint.restore(manager.latest_checkpoint).assert_existing_objects_matched()
        history = json.loads((run_dir / HISTORY_JSON).read_text())
        print(f"Resumed from {manager.latest_checkpoint} after epoch {len(history)}", flush=True)

    validation = make_dataset(validation_folder, config.image_size, config.batch_size)
    validation_features = backbone_features(model, validation)
    head = head_on_features(model)

    for epoch in range(len(history), config.epochs):
        epoch_start = time.perf_counter()
        dataset = make_dataset(train_folder, config.image_size, config.batch_size, shuffle=True,
                               augment_images=config.augment, seed=config.seed, epoch=epoch)
        fit = model.fit(dataset, verbose=0).history
        seconds = time.perf_counter() - epoch_start
        val_loss, val_accuracy = head.evaluate(
            validation_features, validation_folder.labels, batch_size=config.batch_size, verbose=0)
        row = {"epoch": epoch + 1, "loss": fit["loss"][0], "accuracy": fit["accuracy"][0],
               "val_loss": val_loss, "val_accuracy": val_accuracy, "seconds": seconds,
               "images_per_second": len(train_folder) / seconds}
        history.append(row)
        print(format_epoch(row, config.epochs), flush=True)
        # Checkpoint first, then the history that points past it: a crash between the two only
        # repeats an epoch on --resume, it never skips one.
        manager.save(checkpoint_number=epoch + 1)
        artifacts.write_json(run_dir / HISTORY_JSON, history)
        artifacts.write_parquet(run_dir / HISTORY_PARQUET, history)

    logits = head.predict(validation_features, batch_size=config.batch_size, verbose=0)
    metrics = classification_metrics(validation_folder.labels, logits, class_names)
    metrics["run"] = {
        "backbone_handle": handle, "data_dir": str(data_dir), "train_images": len(train_folder),
        "validation_images": len(validation_folder), "wall_seconds": time.perf_counter() - started,
        "versions": _versions(),
    }
    export_classifier(model, class_names, config.image_size, run_dir / MODEL_DIR)
    artifacts.write_json(run_dir / CLASS_NAMES_FILE, class_names)
    artifacts.plot_history(history, run_dir / HISTORY_PLOT)
    artifacts.plot_confusion_matrix(metrics["confusion_matrix"], class_names, run_dir / CONFUSION_PLOT)
    artifacts.write_json(run_dir / METRICS_FILE, metrics)
    return metrics
