"""What every trial of a search reads: the backbone's features of the training and validation images, computed
once, and the tuning split carved from the training images.

The feature pass runs as Ray tasks (`workers` of them, each on its own contiguous part of both splits; with
GPUs when asked), so on a cluster the driver never runs the backbone. Each task writes its part as Parquet
under <search>/features/ (a shared path, or a URI: the task uploads its parts), which an interrupted search reads
back instead of computing again.
"""
import dataclasses
import json

import numpy as np
import ray

from tl_core import interrupts, storage, worker_env
from tl_core.config import TrainConfig
from tl_core.data.feature_sets import InMemoryFeatures, PrecomputedFeatures, cache_features, read_features
from tl_core.data.features import features_of
from tl_core.model.classifier import class_prior

SPLITS = ("train", "validation")
DONE = "done.json"  # written last: the feature pass completed
KFOLD_BELOW = 1000  # training images under which trials are scored by k-fold cross-validation


def _features_of_parts(config: dict, parts: list) -> list[int]:
    """Ray task: the backbone's features of each (source, description, path) part, written to its path; the row counts."""
    interrupts.drop_exit_signals_in_callbacks()
    computed = features_of(TrainConfig.from_dict(config).backbone_pass,
                           [(source, description) for source, description, _ in parts])
    rows = []
    for (_, _, path), (features, labels) in zip(parts, computed):
        with storage.written_locally(storage.parent(path)) as folder:
            cache_features([(features, labels)], len(labels), features.shape[1], budget_bytes=0,
                           path=folder / storage.name(path))
        rows.append(len(labels))
    return rows


def compute_features(config: TrainConfig, sources, directory, *, workers: int, gpus: float) -> PrecomputedFeatures:
    """The features of sources.train and sources.validation, computed once by `workers` Ray tasks, each on its own
    part of both splits (read back from directory, a path or a URI, when an earlier pass completed)."""
    directory = storage.absolute(directory)  # Ray tasks have other working directories
    if not storage.exists(storage.join(directory, DONE)):
        task = ray.remote(_features_of_parts).options(num_cpus=config.cpus_per_worker, num_gpus=gpus,
                                                      runtime_env={"env_vars": worker_env()})
        pending = []
        for index in range(workers):
            parts = []
            for split in SPLITS:
                source = getattr(sources, split).part(index, workers)
                description = f"{split.capitalize()} features" + (f", part {index + 1}/{workers}" if workers > 1 else "")
                if len(source):
                    parts.append((source, description, storage.join(directory, split, f"part-{index:05d}.parquet")))
            pending.append(task.remote(config.to_dict(), parts))
        rows = ray.get(pending)
        storage.replace_bytes(storage.join(directory, DONE), json.dumps(
            {"rows": rows, "backbone": config.backbone, "image_size": config.image_size}, indent=2).encode())
    train, validation = (_concatenate([path for path in storage.files_in(storage.join(directory, split), ".parquet")
                                       if storage.name(path).startswith("part-")]) for split in SPLITS)
    for split, read in (("train", train), ("validation", validation)):
        if not np.array_equal(read.labels, getattr(sources, split).labels):
            raise ValueError(f"the features in {storage.display(storage.join(directory, split))} are not of this "
                             f"data's {split} images: "
                             "start the search again with --overwrite")
    return PrecomputedFeatures(train, validation.features)


def _concatenate(paths: list) -> InMemoryFeatures:
    read = [read_features(path) for path in paths]
    return InMemoryFeatures(np.concatenate([part.features for part in read]), np.concatenate([part.labels for part in read]))


def default_folds(train_images: int, fraction: float) -> int:
    """k-fold (k = 1 / fraction) below KFOLD_BELOW training images, where a holdout would be too few images to
    tell trials apart; a holdout above."""
    return max(2, round(1 / fraction)) if train_images < KFOLD_BELOW else 1


@dataclasses.dataclass
class Fold:
    """What one head of a trial fits on and is scored on (numpy arrays; read-only views of Ray's object store)."""

    fit_features: np.ndarray
    fit_labels: np.ndarray
    tune_features: np.ndarray
    tune_labels: np.ndarray


@dataclasses.dataclass
class TuningData:
    folds: list
    class_names: list
    prior: np.ndarray  # the class frequencies of all the training images (what a run's --class-balance uses)

    @classmethod
    def split(cls, train: InMemoryFeatures, fold_of_row: np.ndarray, class_names: list) -> "TuningData":
        count = int(fold_of_row.max()) + 1
        folds = [Fold(train.features[fold_of_row != k], train.labels[fold_of_row != k],
                      train.features[fold_of_row == k], train.labels[fold_of_row == k]) for k in range(count)]
        return cls(folds, list(class_names), class_prior(train.labels, len(class_names)))
