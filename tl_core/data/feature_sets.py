"""Backbone features of the training images, computed once (the FeatureSet of model/head.py, which the head trains
on): in memory when they fit the budget, else a Parquet file on disk that each epoch streams one row group at a time
(memory bounded by the shuffle buffer), in an order drawn from (seed, epoch) like every other shuffle of the job.

The augmented feature bank holds K views of every image: view 0 the image as it is, view v > 0
augmented as epoch v of the seed's recipe would be; each head epoch draws one view per image from
(seed, epoch). Views spilled to disk are streamed one whole view per epoch instead (also drawn from
(seed, epoch)).

Every kind has: len() (images), epochs() (the head's batches), on_disk, and plain (the features of every image as it
is, in memory, or None: what the run's data audit reads).
"""
import dataclasses
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import tensorflow as tf

from tl_core import storage
from tl_core.artifacts import atomic_path
from tl_core.data.images import chained_epochs, epoch_seed, make_feature_dataset, make_feature_epochs, shuffled_order, unsharded

SHUFFLE_BUFFER = 8192  # rows of features held while streaming from disk
ROWS_PER_GROUP = 1024


@dataclasses.dataclass
class InMemoryFeatures:
    features: np.ndarray
    labels: np.ndarray
    on_disk = False

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def plain(self) -> np.ndarray:
        return self.features

    def dataset(self, batch_size: int, *, seed: int, epoch: int) -> tf.data.Dataset:
        return make_feature_dataset(self.features, self.labels, batch_size, seed=seed, epoch=epoch)

    def epochs(self, batch_size: int, *, seed: int, first: int, end: int, steps: int) -> tf.data.Dataset:
        """The batches of epochs first .. end - 1, each epoch's as dataset(epoch) gives them."""
        return make_feature_epochs(self.features, self.labels, batch_size,
                                   lambda epoch: shuffled_order(len(self.labels), seed=seed, epoch=epoch), first, end)


@dataclasses.dataclass
class PrecomputedFeatures:
    """The backbone's features computed before a run, by the same backbone at the same image size (jobs.tune's
    feature pass): of the training images in the training source's order, and of the validation images."""

    train: InMemoryFeatures
    validation: np.ndarray


@dataclasses.dataclass
class InMemoryBank:
    features: np.ndarray  # [views, images, dim]
    labels: np.ndarray
    on_disk = False

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def plain(self) -> np.ndarray:
        return self.features[0]  # view 0: the images as they are

    def epochs(self, batch_size: int, *, seed: int, first: int, end: int, steps: int) -> tf.data.Dataset:
        """The batches of epochs first .. end - 1: each epoch draws one view of each image from (seed, epoch), then
        shuffles the images as the features of the images are shuffled (rows of the views stacked: view v, image i is
        row v x images + i)."""
        count = len(self.labels)

        def rows(epoch: int) -> np.ndarray:
            views = np.random.default_rng(epoch_seed(seed, epoch)).integers(len(self.features), size=count)
            return (views * count + np.arange(count))[shuffled_order(count, seed=seed, epoch=epoch)]

        return make_feature_epochs(self.features.reshape(-1, self.features.shape[-1]), np.tile(self.labels, len(self.features)),
                                   batch_size, rows, first, end)


@dataclasses.dataclass
class SpilledBank:
    views: list  # FeatureFile per view
    on_disk, plain = True, None

    def __len__(self) -> int:
        return len(self.views[0])

    def dataset(self, batch_size: int, *, seed: int, epoch: int) -> tf.data.Dataset:
        view = np.random.default_rng(epoch_seed(seed, epoch)).integers(len(self.views))
        return self.views[view].dataset(batch_size, seed=seed, epoch=epoch)

    def epochs(self, batch_size: int, *, seed: int, first: int, end: int, steps: int) -> tf.data.Dataset:
        return chained_epochs(lambda epoch: self.dataset(batch_size, seed=seed, epoch=epoch), first, end, steps)


@dataclasses.dataclass
class FeatureFile:
    path: Path
    dim: int
    on_disk, plain = True, None

    def __len__(self) -> int:
        return pq.ParquetFile(self.path).metadata.num_rows

    def row_groups(self, order):
        reader = pq.ParquetFile(self.path)
        for group in order:
            table = reader.read_row_group(int(group))
            features = table.column("features").combine_chunks().values.to_numpy().reshape(-1, self.dim)
            yield features, table.column("label").to_numpy()

    def dataset(self, batch_size: int, *, seed: int, epoch: int) -> tf.data.Dataset:
        groups = pq.ParquetFile(self.path).num_row_groups
        order = np.random.default_rng(epoch_seed(seed, epoch)).permutation(groups)
        ds = tf.data.Dataset.from_generator(
            lambda: self.row_groups(order),
            output_signature=(tf.TensorSpec([None, self.dim], tf.float32), tf.TensorSpec([None], tf.int32)))
        ds = ds.unbatch().shuffle(SHUFFLE_BUFFER, seed=epoch_seed(seed, epoch), reshuffle_each_iteration=False)
        return unsharded(ds.batch(batch_size)).prefetch(tf.data.AUTOTUNE)

    def epochs(self, batch_size: int, *, seed: int, first: int, end: int, steps: int) -> tf.data.Dataset:
        return chained_epochs(lambda epoch: self.dataset(batch_size, seed=seed, epoch=epoch), first, end, steps)


def read_features(path) -> InMemoryFeatures:
    """A features file (cache_features' Parquet), a path or a URI, read whole into memory."""
    filesystem, located = storage.resolve(path)
    table = pq.read_table(located, filesystem=filesystem)
    dim = table.schema.field("features").type.list_size
    return InMemoryFeatures(table.column("features").combine_chunks().values.to_numpy().reshape(-1, dim),
                            table.column("label").to_numpy())


def cache_features(batches, count: int, dim: int, budget_bytes: int, path: Path):
    """Keep (features, labels) batches in memory if count x dim float32 fits budget_bytes, else write them to path."""
    if count * dim * 4 <= budget_bytes:
        features, labels = zip(*batches)
        return InMemoryFeatures(np.concatenate(features), np.concatenate(labels).astype(np.int32))
    schema = pa.schema([("features", pa.list_(pa.float32(), dim)), ("label", pa.int32())])
    with atomic_path(path) as tmp, pq.ParquetWriter(tmp, schema) as writer:
        pending_features, pending_labels, rows = [], [], 0
        for features, labels in batches:
            pending_features.append(features.astype(np.float32))
            pending_labels.append(labels.astype(np.int32))
            rows += len(labels)
            if rows >= ROWS_PER_GROUP:
                _write_group(writer, schema, pending_features, pending_labels, dim)
                pending_features, pending_labels, rows = [], [], 0
        if rows:
            _write_group(writer, schema, pending_features, pending_labels, dim)
    return FeatureFile(Path(path), dim)


def _write_group(writer, schema, features, labels, dim) -> None:
    flat = pa.array(np.concatenate(features).reshape(-1), pa.float32())
    writer.write_table(pa.table([pa.FixedSizeListArray.from_arrays(flat, dim), pa.array(np.concatenate(labels))],
                                schema=schema))


def cache_feature_bank(view_batches, views: int, count: int, dim: int, budget_bytes: int, directory: Path):
    """The bank of `views` views: view_batches(v) gives view v's (features, labels) batches. In memory if
    views x count x dim float32 fits budget_bytes, else one Parquet file per view under directory."""
    if views * count * dim * 4 <= budget_bytes:
        cached = [cache_features(view_batches(view), count, dim, budget_bytes, path=None) for view in range(views)]
        return InMemoryBank(np.stack([view.features for view in cached]), cached[0].labels)
    return SpilledBank([cache_features(view_batches(view), count, dim, 0, Path(directory) / f"view-{view}.parquet")
                        for view in range(views)])

