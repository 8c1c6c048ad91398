"""The training job: one function, `train(config)`, used by every entry point.

Recipe: frozen backbone + Dense head, Adam, sparse categorical cross-entropy on logits. The
validation set is never augmented and the backbone is frozen, so validation features are computed
once and each epoch's validation runs the head alone (in numpy: the same on every worker).
"""
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import tensorflow as tf
import tensorflow_hub as hub
import tf_keras

from tl_core import artifacts
from tl_core.config import TrainConfig
from tl_core.data.checks import read_skipped
from tl_core.data.images import make_dataset, to_unit_range
from tl_core.data.sources import load_splits
from tl_core.metrics import classification_metrics
from tl_core.model import assets
from tl_core.model.backbones import check_backbone_options, keras_backbone, resolve_backbone
from tl_core.model.classifier import build_classifier, compile_classifier, head_model, unfreeze_top_layers
from tl_core.run_dir import (CHECKPOINT_DIR, CLASS_NAMES_FILE, CONFUSION_PLOT, FEATURES_DIR, HISTORY_JSON, HISTORY_PARQUET,
                             HISTORY_PLOT, METRICS_FILE, MODEL_DIR, SHARDS_DIR)
from tl_core.serving.export import export_classifier, export_tflite, tflite_logits
from tl_core.training.distribute import Worker, make_strategy
from tl_core.training.feature_cache import FeatureFile, cache_features
from tl_core.training.step import training_model

def check_backbone(config: TrainConfig, num_classes: int) -> None:
    """Load the backbone and build the classifier at config.image_size: BackboneError if either fails."""
    build_classifier(resolve_backbone(config.backbone, assets.cache_dir(config.cache_dir)), num_classes, config.image_size)


def backbone_feature_batches(model: tf.keras.Model, dataset: tf.data.Dataset):
    """(features, labels) numpy batches: the frozen backbone run once over (uint8 images, labels) batches."""
    backbone = model.get_layer("backbone")
    extract = tf.function(lambda images: tf.cast(backbone(to_unit_range(images), training=False), tf.float32))
    for images, labels in dataset:
        yield extract(images).numpy(), labels.numpy()


def backbone_features(model: tf.keras.Model, dataset: tf.data.Dataset) -> np.ndarray:
    return np.concatenate([features for features, _ in backbone_feature_batches(model, dataset)])


def head_logits(model: tf.keras.Model, features: np.ndarray) -> np.ndarray:
    """The Dense head on precomputed features, in numpy: identical on every worker, no collectives."""
    kernel, bias = model.get_layer("head").get_weights()
    return features @ kernel + bias


class LocalCheckpoints:
    """The last completed epoch (model, optimizer, history) in run_dir/checkpoints, replaced atomically."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / CHECKPOINT_DIR

    def latest(self) -> Path | None:
        return self.path if (self.path / HISTORY_JSON).exists() else None

    def save(self, write, metrics: dict, worker: Worker) -> None:
        with artifacts.atomic_directory(self.path) as tmp:
            write(tmp)


def write_tflite_exports(model, class_names, run_dir: Path, validation, labels: np.ndarray,
                         reference: np.ndarray) -> dict:
    """TFLite float32 and dynamic-range models next to the SavedModel: size and validation accuracy of each,
    against `reference`, the trained model's validation logits (what the SavedModel computes)."""
    saved_model_bytes = sum(path.stat().st_size for path in (run_dir / MODEL_DIR).rglob("*") if path.is_file())
    report = {"saved_model": {"bytes": saved_model_bytes, "accuracy": float((reference.argmax(1) == labels).mean())}}
    for name, path in export_tflite(model, class_names, run_dir).items():
        if path.suffix == ".tflite":
            logits = tflite_logits(path, validation)
            report[name] = {"bytes": path.stat().st_size, "accuracy": float((logits.argmax(1) == labels).mean()),
                            "max_abs_logit_difference": float(np.abs(logits - reference).max()),
                            "agreement_with_saved_model": float((logits.argmax(1) == reference.argmax(1)).mean())}
    return report


def format_epoch(row: dict, epochs: int) -> str:
    return (f"epoch {row['epoch']:>3}/{epochs}  loss {row['loss']:.4f}  accuracy {row['accuracy']:.4f}  "
            f"val_loss {row['val_loss']:.4f}  val_accuracy {row['val_accuracy']:.4f}  "
            f"{row['seconds']:.1f}s  {row['images_per_second']:.0f} img/s")


def _versions() -> dict:
    return {"tensorflow": tf.__version__, "tf_keras": tf_keras.__version__, "tensorflow_hub": hub.__version__}


def train(config: TrainConfig, *, worker: Worker = Worker(), checkpoints=None, callbacks=(),
          strategy: tf.distribute.Strategy | None = None) -> dict:
    """Train the head on config's data and write every artifact into config.output_dir.

    The same function runs in a single local process and on every Ray Train worker: `worker` says
    which shard of the training images this process trains on and whether it writes the artifacts;
    `checkpoints` keeps the last completed epoch (run_dir/checkpoints by default), and training
    continues from it when it holds one. `strategy` defaults to the one this process's devices and
    TF_CONFIG call for (distribute.make_strategy). Returns the final validation metrics.
    """
    strategy = strategy or make_strategy()  # before any other TF op
    check_backbone_options(config.backbone, fine_tune_epochs=config.fine_tune_epochs,
                           fine_tune_layers=config.fine_tune_layers, bf16=config.bf16)
    tf.get_logger().setLevel("ERROR")
    started = time.perf_counter()
    run_dir = Path(config.output_dir)
    checkpoints = checkpoints or LocalCheckpoints(run_dir)
    cache = assets.cache_dir(config.cache_dir)
    tf.keras.utils.set_random_seed(config.seed)
    skipped = read_skipped(run_dir) if config.bad_files == "skip" else set()
    train_source, validation_source, data_dir = load_splits(config, cache, skip=skipped)
    class_names = train_source.class_names
    shard = train_source.shard(worker.rank, worker.world_size, seed=config.seed)
    if worker.world_size > 1 and hasattr(shard, "paths"):  # which images each worker trains on
        artifacts.write_json(run_dir / SHARDS_DIR / f"worker-{worker.rank}.json", shard.paths)
    handle = resolve_backbone(config.backbone, cache)
    log = print if worker.is_chief else (lambda *args, **kwargs: None)
    log(f"Training on {len(shard)} x {worker.world_size} of {len(train_source)} images "
        f"(global batch {config.batch_size} x {worker.world_size}), validating on {len(validation_source)}, "
        f"classes {class_names}, backbone {handle}", flush=True)

    cached = config.uses_feature_cache
    total_epochs = config.epochs + config.fine_tune_epochs
    with strategy.scope():
        # Fine-tuning needs the backbone's layers and bf16 its Keras layers: the built-in one is then
        # built as a Keras model (the same weights as its SavedModel).
        visible = (keras_backbone(config.backbone, cache, bf16=config.bf16)
                   if config.fine_tune_epochs or config.bf16 else None)
        model = build_classifier(handle, len(class_names), config.image_size, keras_backbone=visible)
        # The pipeline's uint8 batches are scaled (and augmented) inside the step, on the device.
        on_images = training_model(model, config.image_size, config.augment)
        # With cached features only the head runs during training: fit the head on its own.
        trainer = head_model(model) if cached else on_images
        optimizer = tf_keras.optimizers.Adam(config.learning_rate)
        fine_tune_optimizer = tf_keras.optimizers.Adam(config.fine_tune_learning_rate)
        compile_classifier(trainer, config.learning_rate, config.jit_compile, optimizer=optimizer)
    state = tf.train.Checkpoint(model=model, optimizer=optimizer, fine_tune_optimizer=fine_tune_optimizer)

    def start_fine_tuning():
        with strategy.scope():
            unfrozen = unfreeze_top_layers(model, config.fine_tune_layers)
            compile_classifier(on_images, config.fine_tune_learning_rate, config.jit_compile,
                               optimizer=fine_tune_optimizer)
        log(f"Fine-tuning {len(unfrozen)} backbone layers ({unfrozen[0]} ... {unfrozen[-1]}) and the head at "
            f"learning rate {config.fine_tune_learning_rate:g}", flush=True)
        return on_images

    history = []
    latest = checkpoints.latest()
    if latest is not None:
        history = json.loads((latest / HISTORY_JSON).read_text())
        if config.epochs <= len(history) < total_epochs:
            trainer = start_fine_tuning()  # the fine-tuning optimizer's state is in the checkpoint
        state.read(str(latest / "state")).assert_existing_objects_matched()
        log(f"Resumed from {latest} after epoch {len(history)}", flush=True)

    phase = "head" if len(history) < config.epochs or not config.fine_tune_epochs else "fine_tune"
    feature_start = time.perf_counter()
    validation = make_dataset(validation_source, config.image_size, config.batch_size)
    # Fine-tuning changes the backbone: its validation runs the whole model instead.
    validation_features = backbone_features(model, validation) if phase == "head" else None
    train_features = None
    if cached and len(history) < config.epochs:
        train_features = cache_features(
            backbone_feature_batches(model, make_dataset(shard, config.image_size, config.batch_size)),
            count=len(shard), dim=model.get_layer("head").kernel.shape[0],
            budget_bytes=config.feature_cache_memory_mb * 2**20,
            path=run_dir / FEATURES_DIR / f"worker-{worker.rank}.parquet")
    feature_seconds = time.perf_counter() - feature_start
    if validation_features is not None:
        log(f"Backbone features of {len(validation_source)} validation"
            f"{f' and {len(shard)} training' if train_features else ''} images computed once: {feature_seconds:.1f}s",
            flush=True)

    def validation_logits(phase: str) -> np.ndarray:
        if phase == "head":  # the backbone is unchanged: its features were computed once
            return head_logits(model, validation_features)
        return np.concatenate([model(to_unit_range(images), training=False).numpy() for images, _ in validation])

    for epoch in range(len(history), total_epochs):
        epoch_start = time.perf_counter()
        if epoch == config.epochs and phase == "head":  # (a resumed run may have started it already)
            phase, trainer = "fine_tune", start_fine_tuning()
        if cached and phase == "head":
            dataset = train_features.dataset(config.batch_size, seed=config.seed, epoch=epoch)
        else:
            dataset = make_dataset(shard, config.image_size, config.batch_size, shuffle=True,
                                   augment_images=config.augment, seed=config.seed, epoch=epoch)
        fit = trainer.fit(dataset, initial_epoch=epoch, epochs=epoch + 1, verbose=0, callbacks=list(callbacks)).history
        seconds = time.perf_counter() - epoch_start
        validation_metrics = classification_metrics(validation_source.labels, validation_logits(phase), class_names)
        row = {"epoch": epoch + 1, "phase": phase, "loss": fit["loss"][0], "accuracy": fit["accuracy"][0],
               "val_loss": validation_metrics["loss"], "val_accuracy": validation_metrics["accuracy"],
               "seconds": seconds, "images_per_second": len(shard) * worker.world_size / seconds,
               "finished_at": time.time()}
        history.append(row)
        log(format_epoch(row, total_epochs), flush=True)

        def write_checkpoint(directory: Path):
            state.write(str(directory / "state"))
            (directory / HISTORY_JSON).write_text(json.dumps(history))

        checkpoints.save(write_checkpoint, row, worker)
        if worker.is_chief:
            artifacts.write_json(run_dir / HISTORY_JSON, history)
            artifacts.write_parquet(run_dir / HISTORY_PARQUET, history)

    final_logits = validation_logits(phase)
    metrics = classification_metrics(validation_source.labels, final_logits, class_names)
    metrics["run"] = {
        "backbone_handle": handle, "data_dir": str(data_dir), "train_images": len(train_source),
        "train_images_per_worker": len(shard), "num_workers": worker.world_size,
        "global_batch_size": config.batch_size * worker.world_size,
        "validation_images": len(validation_source), "skipped_files": len(skipped), "cached_features": cached,
        "features_on_disk": isinstance(train_features, FeatureFile),
        "feature_seconds": feature_seconds, "wall_seconds": time.perf_counter() - started,
        "versions": _versions(),
    }
    # Under MultiWorkerMirroredStrategy every worker must save (the save runs collectives); only
    # the chief's copy is kept.
    with tempfile.TemporaryDirectory() as scratch:
        model_dir = run_dir / MODEL_DIR if worker.is_chief else Path(scratch) / MODEL_DIR
        export_classifier(model, class_names, config.image_size, model_dir)
    if worker.is_chief and config.export_tflite:
        metrics["exports"] = write_tflite_exports(model, class_names, run_dir, validation, validation_source.labels,
                                                  final_logits)
    if worker.is_chief:
        artifacts.write_json(run_dir / CLASS_NAMES_FILE, class_names)
        artifacts.plot_history(history, run_dir / HISTORY_PLOT)
        artifacts.plot_confusion_matrix(metrics["confusion_matrix"], class_names, run_dir / CONFUSION_PLOT)
        artifacts.write_json(run_dir / METRICS_FILE, metrics)
    return metrics
