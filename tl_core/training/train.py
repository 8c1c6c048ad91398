"""The training job: one function, `train(config)`, used by every entry point.

Recipe: frozen backbone + new head (config.py: the default, and the seed's recipe), Adam, sparse
categorical cross-entropy on logits; the head trains on backbone features computed once (of the
images, or of augmented views: the feature bank) or, with per-epoch augmentation, on the images;
optionally fine-tuning the backbone's top after the head's epochs. train() reads top to bottom: the data,
the models (training/models.py), restore, one fit() per phase over the epochs' data, each epoch's (its order and
augmentations drawn from (seed, epoch)) made when it starts, with the EpochRecorder callback (training/recorder.py:
validation, history, checkpoint, log after every epoch), then the outputs.
"""
import dataclasses
import json
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import tensorflow as tf
import tensorflow_hub as hub
import tf_keras

from tl_core import artifacts, interrupts
from tl_core.audit import AuditSettings, audit, headline
from tl_core.config import FINE_TUNE, HEAD, TrainConfig
from tl_core.data import features as data_features
from tl_core.data.checks import read_skipped
from tl_core.data.images import chained_epochs, make_dataset
from tl_core.data.sources import Sources, load_splits
from tl_core.data.step import as_fed
from tl_core.metrics import classification_metrics
from tl_core.model import assets
from tl_core.model.backbones import check_backbone_options, resolve_backbone
from tl_core.model.classifier import build_classifier, class_prior, feature_dim, read_backbone
from tl_core.progress import labelled_batch_size, track
from tl_core.run_dir import (CLASS_NAMES_FILE, CONFUSION_PLOT, FEATURES_DIR, FED_BATCH_PLOT, HISTORY_JSON, HISTORY_PLOT,
                             METRICS_FILE, MODEL_DIR, SHARDS_DIR)
from tl_core.tracking import Tracker, Trackers, data_fingerprint
from tl_core.tracking.tensorboard import VALIDATION, TensorBoard
from tl_core.serving.export import export_classifier, export_tflite, tflite_logits
from tl_core.training.distribute import Worker, make_strategy
from tl_core.training.epoch_progress import EpochProgress
from tl_core.data.feature_sets import PrecomputedFeatures, cache_feature_bank, cache_features
from tl_core.training.models import Models, phase_of
from tl_core.training.recorder import EpochRecorder, LocalCheckpoints, Validation

def check_backbone(config: TrainConfig, num_classes: int):
    """Load the backbone and build the classifier at config.image_size: BackboneError if either fails. The loaded
    SavedModel, which the run that follows in this process may take (train's `backbone`)."""
    handle = resolve_backbone(config.backbone, assets.cache_dir(config.cache_dir))
    loaded = read_backbone(handle)
    build_classifier(handle, num_classes, config.image_size, loaded_backbone=loaded)
    return loaded


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


def _versions() -> dict:
    return {"tensorflow": tf.__version__, "tf_keras": tf_keras.__version__, "tensorflow_hub": hub.__version__}


@dataclasses.dataclass
class RunData:
    """What this worker trains and validates on."""

    sources: Sources  # the whole training and validation sets
    shard: object  # this worker's equal share of the training set

    @property
    def train(self):
        return self.sources.train

    @property
    def validation(self):
        return self.sources.validation

    @classmethod
    def load(cls, config: TrainConfig, worker: Worker, run_dir: Path, sources: Sources | None = None) -> "RunData":
        """The sources the caller checked (job.run), or, without them, listed here (the run's skip list applied)."""
        if sources is None:
            skipped = read_skipped(run_dir) if config.bad_files == "skip" else set()
            train, validation, data_dir = load_splits(config.data, assets.cache_dir(config.cache_dir), skip=skipped,
                                                      batch_size=config.batch_size, workers=config.num_workers)
            sources = Sources(train, validation, data_dir, len(skipped))
        shard = sources.train.shard(worker.rank, worker.world_size, seed=config.seed)
        if worker.world_size > 1:  # which images each worker trains on
            artifacts.write_json(run_dir / SHARDS_DIR / f"worker-{worker.rank}.json", shard.names())
        return cls(sources, shard)

    def describe(self, worker: Worker, batch_size: int, handle: str) -> str:
        return (f"Training on {len(self.shard)} x {worker.world_size} of {len(self.train)} images (global batch "
                f"{batch_size} x {worker.world_size}), validating on {len(self.validation)}, classes "
                f"{self.train.class_names}, backbone {handle}")

    def summary(self, worker: Worker) -> dict:
        return {"data_dir": str(self.sources.data_dir), "train_images": len(self.train),
                "train_images_per_worker": len(self.shard), "num_workers": worker.world_size,
                "validation_images": len(self.validation), "skipped_files": self.sources.skipped}


def restore(models: Models, checkpoints, config: TrainConfig, log) -> list:
    """The history of the last completed epoch's checkpoint, its state restored into the models; [] for a new run."""
    latest = checkpoints.latest()
    if latest is None:
        return []
    history = json.loads((latest / HISTORY_JSON).read_text())
    if len(history) < config.epochs + config.fine_tune_epochs:
        models.trainer(phase_of(config, len(history)))  # in fine-tuning, its optimizer's state is in the checkpoint
    models.read_state(str(latest / "state"))
    log(f"Resumed from {latest} after epoch {len(history)}", flush=True)
    return history


class SafePoint(tf.keras.callbacks.Callback):
    """After every training step: where a Ctrl-C or SIGTERM that came during it stops the run (tl_core/interrupts.py)."""

    def on_train_batch_end(self, batch, logs=None):
        interrupts.check()


@interrupts.at_safe_points()  # a stop raised inside TensorFlow's own code could be lost, or crash the process
def train(config: TrainConfig, *, run_dir: str | Path | None = None, sources: Sources | None = None,
          worker: Worker = Worker(), checkpoints=None, callbacks=(), strategy: tf.distribute.Strategy | None = None,
          features: PrecomputedFeatures | None = None, trackers: list[Tracker] | None = None,
          tags: dict | None = None, backbone=None) -> dict:
    """Train on config's data and write every artifact into run_dir; the final validation metrics.

    `run_dir`: the local directory the run's files are written in: config.output_dir (the default), or, for a run whose
    location is a URI, its staging directory (training/run_store.py; the configuration keeps the location).

    `sources`: the data as job.run checked it (listed here when not given). The same function runs
    in a single local process and on every Ray Train worker: `worker` says which shard of the
    training images this process trains on and whether it writes the artifacts; `checkpoints` keeps
    the last completed epoch (run_dir/checkpoints by default), and training continues from it when
    it holds one. `strategy` defaults to the one this process's devices and TF_CONFIG call for
    (distribute.make_strategy); `callbacks` are extra Keras callbacks for fit(). `features`: the backbone's
    features of these sources, computed already (jobs.tune; one worker): the backbone then does not run again.
    `trackers` record the run (tl_core/tracking; default: TensorBoard's files), opened on the chief with `tags` (what the
    caller knows of the run, e.g. a Ray job's submission id) and what train() knows (data, backbone, versions).
    `backbone`: the backbone's SavedModel as the pre-flight check loaded it (check_backbone), not read again.
    """
    strategy = strategy or make_strategy()  # before any other TF op
    check_backbone_options(config.backbone, fine_tune_epochs=config.fine_tune_epochs,
                           fine_tune_layers=config.fine_tune_layers, bf16=config.bf16,
                           adapt_batchnorm=config.adapt_batchnorm)
    tf.get_logger().setLevel("ERROR")
    tf.keras.utils.set_random_seed(config.seed)
    started, run_dir = time.perf_counter(), Path(run_dir or config.output_dir)
    log = print if worker.is_chief else (lambda *args, **kwargs: None)
    data = RunData.load(config, worker, run_dir, sources)
    handle = resolve_backbone(config.backbone, assets.cache_dir(config.cache_dir))
    log(data.describe(worker, config.batch_size, handle), flush=True)

    models = Models(config, handle, len(data.train.class_names), strategy, log,
                    steps_per_epoch=math.ceil(len(data.shard) / config.batch_size),
                    prior=class_prior(data.train.labels, len(data.train.class_names)),  # the whole set's, on every worker
                    loaded_backbone=backbone)
    checkpoints = checkpoints or LocalCheckpoints(run_dir)
    history = restore(models, checkpoints, config, log)
    trackers = open_trackers(config, run_dir, data, handle, trackers, tags, len(history)) if worker.is_chief else Trackers()
    with trackers.recording():  # each tracker is told how the run ended: finished, failed or killed
        validation, features, feature_seconds = backbone_passes(config, run_dir, models, data, worker, len(history), log,
                                                                features)
        images_per_epoch = len(data.shard) * worker.world_size
        recorder = EpochRecorder(history=history, validation=validation, state=models.state, checkpoints=checkpoints,
                                 worker=worker, run_dir=run_dir, images_per_epoch=images_per_epoch,
                                 total_epochs=config.epochs + config.fine_tune_epochs, log=log, trackers=trackers)
        progress = [EpochProgress(images_per_epoch=images_per_epoch, global_batch=config.batch_size * worker.world_size,
                                  epochs=config.epochs, fine_tune_epochs=config.fine_tune_epochs)] if worker.is_chief else []
        for phase, first, end in phase_spans(config, len(history)):  # the head's epochs, then fine-tuning's
            interrupts.check()
            recorder.phase = phase
            epoch_callbacks = [*progress, recorder, *callbacks, SafePoint()]
            if phase == HEAD and features is not None:
                models.on_features.fit(features, first, end, callbacks=epoch_callbacks)
            else:
                models.trainer(phase).fit(images_dataset(config, data.shard, first, end, models.steps_per_epoch),
                                          steps_per_epoch=models.steps_per_epoch, initial_epoch=first, epochs=end,
                                          verbose=0, callbacks=epoch_callbacks)
        interrupts.check()

        run = {"backbone_handle": handle, **data.summary(worker), "global_batch_size": config.batch_size * worker.world_size,
               "cached_features": config.uses_feature_cache, "features_on_disk": bool(features is not None and features.on_disk),
               "feature_seconds": feature_seconds, "validation_images_per_worker": validation.images_per_worker}
        audited = audit_run(config, run_dir, data, features, validation, worker, log) if worker.is_chief and config.audit else None
        metrics = write_outputs(config, run_dir, models.classifier, validation, history, run, worker, started, trackers,
                                audited)
        trackers.log_results(metrics)
        return metrics


def open_trackers(config: TrainConfig, run_dir: Path, data: "RunData", handle: str, trackers: list[Tracker] | None,
                  tags: dict | None, completed: int) -> Trackers:
    """The chief's trackers (default: TensorBoard's), opened, with the first batch as the model receives it."""
    opened = Trackers([TensorBoard()] if trackers is None else trackers)
    tags = {"data_dir": str(data.sources.data_dir), "data_fingerprint": data_fingerprint(data.train, data.validation),
            "backbone_handle": handle, **{f"version.{name}": version for name, version in _versions().items()},
            **(tags or {})}
    opened.open(run_dir, config, tags, completed)
    if not (run_dir / FED_BATCH_PLOT).exists():
        write_fed_batch(config, data.shard, run_dir / FED_BATCH_PLOT)
    opened.log_image("augmented_batch", run_dir / FED_BATCH_PLOT, step=0, split="train")
    return opened


def write_fed_batch(config: TrainConfig, shard, path: Path, limit: int = 32) -> None:
    """A picture of what the model is fed (fed_batch), each image with its caption."""
    images, captions, title = fed_batch(config, shard, limit)
    artifacts.plot_contact_sheet(images, captions, path, columns=8, title=title)


def fed_batch(config: TrainConfig, shard, limit: int) -> tuple[list, list[str], str]:
    """(images, captions, title): at most `limit` training images exactly as the model receives them, decoded,
    resized and augmented. The first batch of epoch 0; with the feature bank, what the bank holds: the first images
    in view 0 (as they are) beside view 1 (augmented as the seed's recipe does in epoch 1)."""
    def first(dataset, count):
        inputs, labels = next(iter(dataset))
        return as_fed(inputs).numpy()[:count], labels.numpy()[:count]

    size = f"{config.image_size}x{config.image_size}"
    if config.uses_feature_bank:
        (plain, labels), (augmented, _) = (first(bank_view_dataset(config, shard, view), limit // 2) for view in (0, 1))
        images = [image for pair in zip(plain, augmented) for image in pair]
        captions = [f"{shard.class_names[label]}, view {view}" for label in labels for view in (0, 1)]
        return images, captions, (f"The feature bank: the first {len(plain)} training images in view 0 (as they are) "
                                  f"and view 1 (augmented), of {config.feature_views} views, {size}")
    images, labels = first(epoch_dataset(config, shard, 0), limit)
    augmentation = "augmented as in training" if config.augment else "augmentation off"
    return list(images), [shard.class_names[label] for label in labels], (
        f"The first training batch as the model receives it: {len(images)} of {config.batch_size} images, {size}, "
        f"{augmentation}")


def bank_view_dataset(config: TrainConfig, shard, view: int) -> tf.data.Dataset:
    """The images of one view of the feature bank, in the source's order: view 0 as they are, view v > 0 augmented as
    the seed's recipe augments them in epoch v."""
    return make_dataset(shard, config.image_size, config.batch_size, augment_images=view > 0, seed=config.seed, epoch=view)


def backbone_passes(config: TrainConfig, run_dir: Path, models: Models, data: RunData, worker: Worker, completed: int, log,
                    precomputed: PrecomputedFeatures | None = None):
    """(validation, cached training features or None, seconds): what the frozen backbone computes once (or what
    was computed before the run, `precomputed`)."""
    started = time.perf_counter()
    if precomputed is not None and not (config.uses_feature_cache and not config.uses_feature_bank and worker.world_size == 1
                                        and np.array_equal(precomputed.train.labels, data.shard.labels)):
        raise ValueError("precomputed features are for one worker training on the features of the images as they are, "
                         "in the training source's order")
    validation = Validation(models.classifier, data.validation, config.image_size, config.batch_size,
                            frozen_backbone=phase_of(config, completed) == HEAD and not config.adapt_batchnorm,
                            features=precomputed.validation if precomputed else None,
                            strategy=models.strategy if worker.world_size > 1 else None)
    if completed >= config.epochs:
        features = None
    else:
        features = precomputed.train if precomputed else cached_training_features(config, models, data.shard, worker,
                                                                                  run_dir / FEATURES_DIR)
    seconds = time.perf_counter() - started
    if precomputed is not None:
        log(f"Backbone features of {len(data.validation)} validation and {len(data.shard)} training images: computed "
            "before this run", flush=True)
    elif validation.features is not None:
        shared = f" ({validation.images_per_worker} on each worker)" if worker.world_size > 1 else ""
        training = f" and {len(data.shard)} training" if features else ""
        views = f" ({config.feature_views} views of each training image)" if features and config.uses_feature_bank else ""
        log(f"Backbone features of {len(data.validation)} validation{shared}{training} images computed once{views}: "
            f"{seconds:.1f}s", flush=True)
    return validation, features, seconds


def phase_spans(config: TrainConfig, completed: int) -> list[tuple[str, int, int]]:
    """(phase, first epoch, end) of each phase still to train after `completed` epochs: one fit() each."""
    spans = [(HEAD, completed, config.epochs), (FINE_TUNE, max(completed, config.epochs), config.epochs + config.fine_tune_epochs)]
    return [(phase, first, end) for phase, first, end in spans if first < end]


def images_dataset(config: TrainConfig, shard, first: int, end: int, steps: int) -> tf.data.Dataset:
    """The image batches of epochs first .. end - 1, each epoch's in the order (and with the augmentations) drawn from
    (seed, epoch), in one dataset: one fit() trains them all. `steps`: batches per epoch, as fit() is told."""
    return chained_epochs(lambda epoch: epoch_dataset(config, shard, epoch), first, end, steps)


def epoch_dataset(config: TrainConfig, shard, epoch: int) -> tf.data.Dataset:
    """This epoch's training batches of the images, in the order (and with the augmentations) drawn from (seed, epoch)."""
    return make_dataset(shard, config.image_size, config.batch_size, shuffle=True, augment_images=config.augment,
                        seed=config.seed, epoch=epoch)


def cached_training_features(config: TrainConfig, models: Models, shard, worker: Worker, directory: Path):
    """The backbone's features of this worker's training images, computed once: of the images, or of
    config.feature_views augmented views of each (the feature bank; in directory when they spill to disk); None without
    the feature cache."""
    if not config.uses_feature_cache:
        return None
    budget = config.feature_cache_memory_mb * 2**20

    def batches(view: int, description: str):
        images = bank_view_dataset(config, shard, view)
        return data_features.backbone_feature_batches(models.classifier,
                                                      track(images, len(shard), description, size=labelled_batch_size))

    if config.uses_feature_bank:
        return cache_feature_bank(lambda view: batches(view, f"Training features, view {view + 1}/{config.feature_views}"),
                                  config.feature_views, len(shard), feature_dim(models.classifier), budget,
                                  directory / f"worker-{worker.rank}")
    return cache_features(batches(0, "Training features"), count=len(shard), dim=feature_dim(models.classifier),
                          budget_bytes=budget, path=directory / f"worker-{worker.rank}.parquet")


def audit_run(config: TrainConfig, run_dir: Path, data: RunData, features, validation: Validation, worker: Worker,
              log) -> dict | None:
    """The data audit (tl_core/audit) from this run's own backbone features, written into the run directory: its
    counts for metrics.json, or None where the run holds no features of every image as it is (a run on several
    workers, on images every epoch, with features on disk, or resumed after its head epochs: `python -m jobs.audit`
    audits such data). A failure of the audit is a warning: the trained model is kept."""
    plain = features.plain if features is not None else None  # in memory, of the images as they are
    if worker.world_size > 1 or plain is None or validation.features is None:
        log(f"Audit: not from this run (it holds no features of every image as it is): `python -m jobs.audit "
            f"--data-dir {data.sources.data_dir}` audits the data", flush=True)
        return None
    started = time.perf_counter()
    try:
        report = audit({"train": data.train, "validation": data.validation}, data.sources.data_dir, run_dir,
                       AuditSettings(), features={"train": plain, "validation": validation.features}, head=config.head_recipe,
                       log=log)
    except Exception as error:  # noqa: BLE001 (the audit is advice: the run's model must not be lost to it)
        log(f"warning: the data audit failed ({type(error).__name__}: {error}); the run is complete without it: "
            f"`python -m jobs.audit --data-dir {data.sources.data_dir}` audits the data", flush=True)
        return None
    counts = {"validation_images_in_train": report["validation_images_also_in_train"],
              "validation_images_near_train": report["validation_images_near_train"],
              "label_issues": sum(report["label_issues"].values()), "seconds": time.perf_counter() - started,
              "headline": headline(report, config.output_dir)}
    log(f"{counts['headline']} ({counts['seconds']:.1f}s)", flush=True)
    return counts


def write_outputs(config: TrainConfig, run_dir: Path, classifier, validation: Validation, history: list, run: dict,
                  worker: Worker, started: float, trackers: Trackers, audited: dict | None = None) -> dict:
    """The final metrics (with the data audit's counts), the exported model (and TFLite), plots and JSON files; the
    metrics."""
    class_names = validation.source.class_names
    final_logits = validation.logits(phase_of(config, len(history)))
    metrics = classification_metrics(validation.source.labels, final_logits, class_names)
    metrics["run"] = {**run, "wall_seconds": time.perf_counter() - started, "versions": _versions()}
    if audited is not None:
        metrics["audit"] = audited
    # Under MultiWorkerMirroredStrategy every worker must save (the save runs collectives); only
    # the chief's copy is kept.
    with tempfile.TemporaryDirectory() as scratch:
        model_dir = run_dir / MODEL_DIR if worker.is_chief else Path(scratch) / MODEL_DIR
        export_classifier(classifier, class_names, config.image_size, model_dir)
    if worker.is_chief and config.export_tflite:
        metrics["exports"] = write_tflite_exports(classifier, class_names, run_dir, validation.dataset,
                                                  validation.source.labels, final_logits)
    if worker.is_chief:
        artifacts.write_json(run_dir / CLASS_NAMES_FILE, class_names)
        artifacts.plot_history(history, run_dir / HISTORY_PLOT)
        artifacts.plot_confusion_matrix(metrics["confusion_matrix"], class_names, run_dir / CONFUSION_PLOT)
        trackers.log_image("confusion_matrix", run_dir / CONFUSION_PLOT, step=len(history), split=VALIDATION)
        artifacts.write_json(run_dir / METRICS_FILE, metrics)
    return metrics
