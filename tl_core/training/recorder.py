"""What happens at the end of every epoch, as one Keras callback: validate, record, log, checkpoint.

The validation set is never augmented and, in the head phase, the backbone is frozen: its features
are computed once and each epoch's validation runs the head alone (on every worker: no collectives).
Fine-tuning changes the backbone, so its validation runs the whole model. With several workers, each
runs the backbone (or the whole model) on its own part of the validation images only, and the parts
are all-gathered: every worker holds every image's features or logits, in the source's order.
"""
import functools
import json
import shutil
import time
from pathlib import Path

import numpy as np
import tensorflow as tf

from tl_core import artifacts, storage
from tl_core.config import HEAD
from tl_core.data.features import backbone_features
from tl_core.data.images import make_dataset, to_unit_range
from tl_core.metrics import classification_metrics
from tl_core.run_dir import CHECKPOINT_DIR, HISTORY_JSON, HISTORY_PARQUET, TEMPORARY
from tl_core.training.distribute import Worker


def head_logits(model: tf.keras.Model, features: np.ndarray) -> np.ndarray:
    """The head on precomputed features, in inference mode; run eagerly on each worker alone (no collectives)."""
    return model.get_layer("head")(features, training=False).numpy()


def replica_predictor(model: tf.keras.Model):
    """images -> numpy outputs of the model in inference mode, called in a replica context of the strategy it was
    built under. A TF Hub SavedModel that fit() has trained under a Mirrored or MultiWorkerMirrored strategy fails
    when called in that strategy's cross-replica context, where Keras runs callbacks (tensorflow/hub#649). Each local
    replica computes the whole batch (a Ray worker with one device has one); the first one's result is taken."""
    strategy = model.distribute_strategy
    run = tf.function(lambda images: strategy.run(lambda x: model(x, training=False), args=(images,)),
                      reduce_retracing=True)
    return lambda images: strategy.experimental_local_results(run(images))[0].numpy()


def part_count(strategy: tf.distribute.Strategy, source) -> int:
    """How many parts the replicas compute source in: one each, or a single part that every replica computes
    when there are fewer images than replicas."""
    count = strategy.num_replicas_in_sync
    return count if len(source) >= count else 1


def gather_parts(strategy: tf.distribute.Strategy, source, rows_of) -> np.ndarray:
    """rows_of(part) -> numpy rows of that part of source, run by each replica on its own part
    (source.part(replica, replicas)); all the parts, all-gathered, on every worker, in the source's order."""
    count = part_count(strategy, source)
    if count == 1:
        return rows_of(source)
    sizes = [len(rows) for rows in np.array_split(np.arange(len(source)), count)]  # the sizes of source.part(i, count)
    longest = max(sizes)

    local = []  # the replicas of this worker, asked first: the model must run outside the replica context
    strategy.experimental_distribute_values_from_function(lambda context: local.append(
        context.replica_id_in_sync_group) or tf.constant(0))
    rows = {}
    for replica in local:
        part = rows_of(source.part(replica, count))
        rows[replica] = np.concatenate([part, np.zeros((longest - len(part), *part.shape[1:]), part.dtype)])
    # Equal shapes on every replica; the padding is cut off after the gather.
    value = strategy.experimental_distribute_values_from_function(
        lambda context: tf.constant(rows[context.replica_id_in_sync_group]))
    gathered = strategy.gather(value, axis=0).numpy()
    return np.concatenate([gathered[i * longest:i * longest + size] for i, size in enumerate(sizes)])


class Validation:
    """The validation images and the classifier's logits on them, in either phase."""

    def __init__(self, classifier: tf.keras.Model, source, image_size: int, batch_size: int, frozen_backbone: bool,
                 features: np.ndarray | None = None, strategy: tf.distribute.Strategy | None = None):
        """frozen_backbone: the backbone will not change (the head phase, BatchNorm layers not adapting).
        features: the backbone's features of the source, when they were computed already (jobs.tune).
        strategy: the workers' (MultiWorkerMirroredStrategy): each replica computes its part; default: one process."""
        self.classifier, self.source, self.image_size, self.batch_size = classifier, source, image_size, batch_size
        self.strategy = strategy or tf.distribute.get_strategy()
        self.dataset = make_dataset(source, image_size, batch_size)
        self.images_per_worker = len(source.part(0, part_count(self.strategy, source)))  # the most any replica computes
        if not frozen_backbone:
            self.features = None  # the whole model runs each time (fine-tuning, adapting BatchNorm)
        elif features is not None:
            self.features = features
        else:
            self.features = gather_parts(self.strategy, source, lambda part: backbone_features(
                classifier, part, image_size, batch_size, "Validation features")[0])

    def logits(self, phase: str) -> np.ndarray:
        if phase == HEAD and self.features is not None:  # the backbone is unchanged: its features were computed once
            return head_logits(self.classifier, self.features)
        return gather_parts(self.strategy, self.source, lambda part: np.concatenate([
            self.predict(to_unit_range(images)) for images, _ in make_dataset(part, self.image_size, self.batch_size)]))

    @functools.cached_property
    def predict(self):
        """The whole classifier, traced once: first used when the backbone can change (which layers train does not
        change its outputs in inference mode)."""
        return replica_predictor(self.classifier)

    def metrics(self, phase: str) -> dict:
        return classification_metrics(self.source.labels, self.logits(phase), self.source.class_names)


class LocalCheckpoints:
    """The last completed epoch (model, optimizer, history): run_dir/checkpoints/epoch-NNNNN, named by
    checkpoints/latest.json. An epoch's directory is complete before the pointer names it (one rename), and the one
    before is removed only after: whenever the process is stopped (Ctrl-C, SIGTERM, SIGKILL), the pointer names a
    complete checkpoint. (Replacing one directory in place would need two steps, and a stop between them lost the
    checkpoint: seen.)"""

    POINTER = "latest.json"

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / CHECKPOINT_DIR

    def latest(self) -> Path | None:
        pointer = self.path / self.POINTER
        if pointer.exists():  # read back from a store on --resume: its directory must stay below the checkpoints
            return self.path / storage.plain_relative(json.loads(pointer.read_text())["directory"], pointer)
        return self.path if (self.path / HISTORY_JSON).exists() else None  # saved before the pointer existed

    def save(self, write, metrics: dict, worker: Worker) -> None:
        name = f"epoch-{metrics['epoch']:05d}"
        with artifacts.atomic_directory(self.path / name) as tmp:
            write(tmp)
        artifacts.write_json(self.path / self.POINTER, {"directory": name, "epoch": metrics["epoch"]})
        for entry in self.path.iterdir():  # the epoch before, and the files of the layout before the pointer
            if entry.name not in (name, self.POINTER) and not TEMPORARY.match(entry.name):
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()


def format_epoch(row: dict, epochs: int) -> str:
    return (f"epoch {row['epoch']:>3}/{epochs}  loss {row['loss']:.4f}  accuracy {row['accuracy']:.4f}  "
            f"val_loss {row['val_loss']:.4f}  val_accuracy {row['val_accuracy']:.4f}  "
            f"{row['seconds']:.1f}s  {row['images_per_second']:.0f} img/s")


class EpochRecorder(tf.keras.callbacks.Callback):
    """After each epoch: validation metrics, a history row, the log line, the checkpoint (every worker
    writes it: MultiWorkerMirroredStrategy's save is collective) and, on the chief, the history files
    and the trackers' rows (`trackers`, tl_core/tracking; after the checkpoint, so a resumed run never logs an epoch twice)."""

    def __init__(self, *, history: list, validation: Validation, state: tf.train.Checkpoint, checkpoints,
                 worker: Worker, run_dir: Path, images_per_epoch: int, total_epochs: int, log, trackers=None):
        super().__init__()
        self.history, self.validation, self.state, self.checkpoints = history, validation, state, checkpoints
        self.worker, self.run_dir, self.images_per_epoch, self.total_epochs, self.log = (
            worker, Path(run_dir), images_per_epoch, total_epochs, log)
        self.trackers = trackers
        self.phase = HEAD

    def on_epoch_begin(self, epoch, logs=None):
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        seconds = time.perf_counter() - self.started
        validation = self.validation.metrics(self.phase)
        row = {"epoch": epoch + 1, "phase": self.phase, "loss": logs["loss"], "accuracy": logs["accuracy"],
               "val_loss": validation["loss"], "val_accuracy": validation["accuracy"],
               "val_balanced_accuracy": validation["balanced_accuracy"], "val_macro_f1": validation["macro_f1"],
               "learning_rate": float(tf.keras.backend.get_value(self.model.optimizer.learning_rate)), "seconds": seconds,
               "images_per_second": self.images_per_epoch / seconds, "finished_at": time.time()}
        self.history.append(row)
        if logs is not None:  # the callbacks after this one (train(callbacks=...): EarlyStopping, a tracker) see them
            logs.update(val_loss=row["val_loss"], val_accuracy=row["val_accuracy"])
        self.log(format_epoch(row, self.total_epochs), flush=True)
        self.checkpoints.save(self.write_checkpoint, row, self.worker)
        if self.worker.is_chief:
            artifacts.write_json(self.run_dir / HISTORY_JSON, self.history)
            artifacts.write_parquet(self.run_dir / HISTORY_PARQUET, self.history)
        if self.trackers:
            self.trackers.log_epochs(self.history)

    def write_checkpoint(self, directory: Path) -> None:
        self.state.write(str(directory / "state"))
        (directory / HISTORY_JSON).write_text(json.dumps(self.history))
