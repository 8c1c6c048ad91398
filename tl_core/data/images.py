"""Input pipeline: class folders or Parquet shards -> tf.data batches of uint8 RGB images.

The host does as little per image as it can: read, decode and resize (or, for Parquet written by
`jobs.ingest --image-size`, only read the stored pixels), in a parallel map, then batch and
prefetch. Batches stay uint8 (a quarter of float32's bytes cross to the accelerator); the training
step scales them to [0, 1] and warps them (augmentation) on the device. With augmentation the
pipeline adds each image's 8-number transform, drawn for the whole epoch at once. Randomness
(shuffle order, augmentation) is derived from (seed, epoch), so epoch k of a run is the same whether
or not the run was interrupted before it.
"""
import concurrent.futures
import dataclasses
import os
from pathlib import Path

import numpy as np
import tensorflow as tf

from tl_core import storage
from tl_core.data import augment
from tl_core.progress import track

AUTOTUNE = tf.data.AUTOTUNE
# Files operating systems leave in folders; never images, so they are passed over (and counted).
OS_METADATA_FILES = frozenset({".DS_Store", "Thumbs.db", "desktop.ini", "Icon\r"})


class DatasetError(ValueError):
    """A problem with the user's image folders, with the path and what to do about it."""


display_path = storage.display  # a path or URI that prints on any terminal


@dataclasses.dataclass
class ImageFolder:
    paths: list[str]
    labels: np.ndarray  # int32 class indices
    class_names: list[str]
    # Found while listing: (path, reason) for symbolic link loops, broken links, unreadable folders.
    problems: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    ignored: list[str] = dataclasses.field(default_factory=list)  # OS metadata files, hidden folders
    # (size, mtime_ns) of each file as listed (int64 [n, 2]): what the check's remembered verdicts are keyed by.
    stats: np.ndarray | None = None
    image_size = None  # files are decoded and resized to any size

    def __len__(self):
        return len(self.paths)

    def names(self) -> list[str]:
        return list(self.paths)

    def content_digests(self, description: str, known: dict | None = None) -> list[str]:
        """SHA-256 of each file's bytes, read in threads (on object storage each is a request away)."""
        known = known or {}
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            return list(track(pool.map(lambda path: known.get(path) or storage.sha256(path), self.paths), len(self),
                              description, unit="files"))

    def identity(self) -> bytes:
        listed = "\0".join(self.paths).encode()
        return listed if self.stats is None else listed + self.stats.astype("int64").tobytes()

    def absolute(self) -> "ImageFolder":
        return dataclasses.replace(self, paths=[storage.absolute(path) for path in self.paths])

    def select(self, rows) -> "ImageFolder":
        rows = np.asarray(rows, dtype=np.int64)
        return ImageFolder([self.paths[i] for i in rows], self.labels[rows], self.class_names,
                           stats=None if self.stats is None else self.stats[rows])

    def shard(self, index: int, count: int, seed: int) -> "ImageFolder":
        """Worker `index` of `count`: a disjoint, seeded random part, the same size on every worker.

        Equal sizes mean every worker runs the same number of steps (MultiWorkerMirroredStrategy
        hangs otherwise); the len % count images left over are not used in this run.
        """
        if count == 1:
            return self
        per_worker = len(self) // count
        if per_worker == 0:
            raise DatasetError(f"{len(self)} training images cannot be split over {count} workers")
        rows = np.random.default_rng(seed).permutation(len(self))[index * per_worker:(index + 1) * per_worker]
        return self.select(np.sort(rows))

    def part(self, index: int, count: int) -> "ImageFolder":
        """Part `index` of `count` in reading order, every image in exactly one part."""
        return self.select(np.array_split(np.arange(len(self)), count)[index])

    def without(self, paths) -> "ImageFolder":
        """The folder minus the given files (the bad files a run skips)."""
        paths = set(paths)
        kept = self.select([i for i, path in enumerate(self.paths) if path not in paths])
        for label, name in enumerate(self.class_names):
            if not np.any(kept.labels == label):
                raise DatasetError(f"class {name!r} has no images left after skipping its bad files")
        return kept

    def split(self, fraction: float, seed: int) -> tuple["ImageFolder", "ImageFolder"]:
        """(train, validation): a seeded, stratified split, round(fraction * n) of each class to validation."""
        for label, name in enumerate(self.class_names):
            count = int(np.sum(self.labels == label))
            if count < 2:
                raise DatasetError(
                    f"class {name!r} has {count} image: a train/validation split needs at least 2 per class; "
                    "add images or give train/ and validation/ folders")
        is_validation = stratified_split(self.labels, fraction, seed)
        return self.select(np.flatnonzero(~is_validation)), self.select(np.flatnonzero(is_validation))


def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of validation rows: round(fraction * n) of each class (at least 1, at most n - 1)."""
    rng = np.random.default_rng(seed)
    is_validation = np.zeros(len(labels), dtype=bool)
    for label in np.unique(labels):
        rows = np.flatnonzero(labels == label)
        size = min(max(round(fraction * len(rows)), 1), len(rows) - 1)
        is_validation[rng.choice(rows, size=size, replace=False)] = True
    return is_validation


def tuning_folds(labels: np.ndarray, folds: int, fraction: float, seed: int) -> np.ndarray:
    """The fold of each training image whose tuning part it is in: stratified and seeded. folds == 1: a holdout
    of `fraction` of each class (fold 0; -1 for the rest, which every trial fits on); folds > 1: k-fold, every
    image in the tuning part of exactly one fold."""
    if folds == 1:
        return np.where(stratified_split(labels, fraction, seed), 0, -1)
    fold = np.empty(len(labels), dtype=np.int64)
    rng = np.random.default_rng(seed)
    for label in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == label))
        fold[rows] = (np.arange(len(rows)) + rng.integers(folds)) % folds  # class sizes need not divide evenly
    return fold


def is_os_metadata(name: str) -> bool:
    return name in OS_METADATA_FILES or name.startswith("._")


def list_files(directory: str) -> storage.Listing:
    """Regular files under directory (a path or URI), sorted, OS metadata files and hidden folders ignored."""
    return storage.walk(directory, is_os_metadata)


def list_image_folder(directory: str | Path, class_names: list[str] | None = None) -> ImageFolder:
    """Every file under directory/<class>/ (recursively), classes in sorted folder-name order.

    directory: a local path or a URI (tl_core/storage.py). Which files are images is decided by
    decoding them (checks.find_bad_files), not by extension. With class_names given (e.g. validation
    after train), the folders must be exactly those classes.
    """
    directory = str(directory)
    shown = display_path(directory)
    if not storage.is_dir(directory):
        raise DatasetError(f"{shown} is not a directory: expected one sub-folder of images per class")
    try:
        found = storage.list_dirs(directory)
    except storage.StorageError:
        raise
    except OSError as error:
        raise DatasetError(f"cannot list {shown}: {error.strerror}") from None
    if not found:
        raise DatasetError(f"{shown} has no class sub-folders: put each class's images in {shown}/<class name>/")
    if class_names is not None and found != list(class_names):
        raise DatasetError(
            f"{shown} has classes {found}, but training has {list(class_names)}: "
            "train and validation need the same class folders"
        )
    paths, labels, problems, ignored, stats = [], [], [], [], []
    for index, name in enumerate(found):
        listing = list_files(storage.join(directory, name))
        if not listing.paths:
            raise DatasetError(f"class folder {display_path(storage.join(directory, name))} holds no files: "
                               "add its images or remove the folder")
        paths += listing.paths
        labels += [index] * len(listing.paths)
        problems += listing.problems
        ignored += listing.ignored
        stats.append(listing.stats)
    return ImageFolder(paths, np.asarray(labels, dtype=np.int32), found, problems, ignored, np.concatenate(stats))


def decode_and_resize(encoded: tf.Tensor, image_size: int) -> tf.Tensor:
    """JPEG/PNG/BMP/GIF (first frame) bytes -> uint8 RGB [image_size, image_size, 3], bilinear, rounded."""
    image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
    image = tf.image.resize(image, [image_size, image_size], method="bilinear")
    return tf.saturate_cast(tf.round(image), tf.uint8)


def to_unit_range(images: tf.Tensor) -> tf.Tensor:
    """uint8 images -> float32 in [0, 1], what the backbone takes. Runs on the device, in the step."""
    return tf.cast(images, tf.float32) / 255.0


def epoch_seed(seed: int, epoch: int) -> int:
    """One integer per (run seed, epoch), for tf.data ops that take a scalar seed."""
    return seed * 100_003 + epoch


PARQUET_SHUFFLE_BUFFER = 2048  # rows; Parquet shards stream, so they shuffle within a window


def encoded_images(source, *, shuffle: bool, seed: int, epoch: int) -> tf.data.Dataset:
    """(encoded image bytes, label) pairs of a source, in this epoch's order."""
    if isinstance(source, ImageFolder):
        # Paths as bytes: names that are not valid UTF-8 reach the file system unchanged.
        ds = tf.data.Dataset.from_tensor_slices(([os.fsencode(path) for path in source.paths], source.labels))
        if shuffle:
            ds = ds.shuffle(len(source), seed=epoch_seed(seed, epoch), reshuffle_each_iteration=False)
        read_file = storage.tf_read_file(source.paths[0] if source.paths else "")
        return ds.map(lambda path, label: (read_file(path), label),
                      num_parallel_calls=AUTOTUNE, deterministic=True)
    return parquet_rows(source, source.iter_segments, tf.TensorSpec([None], tf.string),
                        shuffle=shuffle, seed=seed, epoch=epoch)


def parquet_rows(source, segments, spec: tf.TensorSpec, *, shuffle: bool, seed: int, epoch: int) -> tf.data.Dataset:
    """(row, label) pairs of Parquet shards: segments in a (seed, epoch) order, rows shuffled within a window."""
    order = np.arange(len(source.segments))
    if shuffle:
        order = np.random.default_rng(epoch_seed(seed, epoch)).permutation(order)
    # Python hands over whole row groups; tf.data splits them into rows.
    ds = tf.data.Dataset.from_generator(
        lambda: segments(order), output_signature=(spec, tf.TensorSpec([None], tf.int32))).unbatch()
    if shuffle:
        ds = ds.shuffle(PARQUET_SHUFFLE_BUFFER, seed=epoch_seed(seed, epoch), reshuffle_each_iteration=False)
    return ds


def host_images(source, image_size: int, *, shuffle: bool = False, seed: int = 0, epoch: int = 0) -> tf.data.Dataset:
    """(uint8 image [size, size, 3], label) pairs: all the per-image work the host does."""
    if getattr(source, "image_size", None) is not None:  # Parquet written by jobs.ingest --image-size
        check_stored_size(source, image_size)  # then the rows are the pixels: nothing to decode or resize
        pixels = tf.TensorSpec([None, image_size, image_size, 3], tf.uint8)
        return parquet_rows(source, source.iter_pixel_segments, pixels, shuffle=shuffle, seed=seed, epoch=epoch)
    ds = encoded_images(source, shuffle=shuffle, seed=seed, epoch=epoch)
    return ds.map(lambda encoded, label: (decode_and_resize(encoded, image_size), label),
                  num_parallel_calls=AUTOTUNE, deterministic=True)


def check_stored_size(source, image_size: int) -> None:
    """Parquet rows stored at one size cannot train at another: a one-line error with the fix."""
    stored = getattr(source, "image_size", None)
    if stored is not None and stored != image_size:
        raise DatasetError(
            f"{display_path(storage.parent(source.files[0]))} holds images stored at {stored}x{stored}, but "
            f"--image-size is {image_size}: train with --image-size {stored}, or re-ingest the image folders "
            f"with `python -m jobs.ingest --data-dir <folders> --output <new dir> --image-size {image_size}`")


def make_dataset(source, image_size: int, batch_size: int, *, shuffle: bool = False,
                 augment_images: bool = False, seed: int = 0, epoch: int = 0) -> tf.data.Dataset:
    """Batches of (uint8 images, labels) from class folders or Parquet shards.

    With augment_images, batches of ({"images": uint8 images, "transforms": [B, 8]}, labels): the
    training step warps the images (augment.apply_transforms) on its device. The epoch's transforms
    are drawn at once, one per image in reading order, so the host pays for them once per epoch, not
    per batch. Shuffle order and augmentation are drawn from (seed, epoch).
    """
    ds = host_images(source, image_size, shuffle=shuffle, seed=seed, epoch=epoch).batch(batch_size)
    if augment_images:
        transforms = augment.random_transforms(len(source), tf.constant([epoch_seed(seed, epoch), 0], tf.int64),
                                               image_size, image_size)
        # Zipped batch by batch (both sides batch the same counts): no per-image work on the host.
        ds = tf.data.Dataset.zip(ds, tf.data.Dataset.from_tensor_slices(transforms).batch(batch_size))
        ds = ds.map(lambda batch, transforms: ({"images": batch[0], "transforms": transforms}, batch[1]))
    return unsharded(ds).prefetch(AUTOTUNE)


def shuffled_order(count: int, *, seed: int, epoch: int) -> np.ndarray:
    """The order in which tf.data's shuffle, seeded from (seed, epoch), yields `count` elements: every epoch's order of
    the features (the one drawn before one fit() trained all epochs: the same weights)."""
    indices = tf.data.Dataset.range(count).shuffle(count, seed=epoch_seed(seed, epoch), reshuffle_each_iteration=False)
    return next(iter(indices.batch(count))).numpy()


def make_feature_dataset(features: np.ndarray, labels: np.ndarray, batch_size: int, *,
                         seed: int, epoch: int) -> tf.data.Dataset:
    """Batches of (backbone features, labels) for training the head alone, shuffled per (seed, epoch)."""
    order = shuffled_order(len(labels), seed=seed, epoch=epoch)
    return unsharded(tf.data.Dataset.from_tensor_slices((features[order], labels[order])).batch(batch_size)).prefetch(AUTOTUNE)


def make_feature_epochs(features: np.ndarray, labels: np.ndarray, batch_size: int, rows, first: int,
                        end: int) -> tf.data.Dataset:
    """The batches of epochs first .. end - 1 of (features, labels) rows, one dataset for one fit(): rows(epoch) is the
    epoch's order of rows, drawn when the epoch starts; each epoch's batches are its own (the last may be smaller). The
    features are held once, as one tensor."""
    orders = tf.data.Dataset.from_generator(lambda: (rows(epoch) for epoch in range(first, end)),
                                            output_signature=tf.TensorSpec([None], tf.int64))
    features, labels = tf.constant(features), tf.constant(labels)
    batches = orders.flat_map(lambda order: tf.data.Dataset.from_tensor_slices(order).batch(batch_size))
    return unsharded(batches.map(lambda batch: (tf.gather(features, batch), tf.gather(labels, batch)))).prefetch(AUTOTUNE)


def chained_epochs(epoch_dataset, first: int, end: int, steps: int) -> tf.data.Dataset:
    """The batches of epochs first .. end - 1, one dataset for one fit(): epoch_dataset(epoch) made when the epoch before
    it is done (one epoch's data held at a time) and each of its batches passed on through Python: for epochs far longer
    than that costs (images, features streamed from disk). `steps`: the batches each epoch must have, as fit() is told."""
    def batches():
        for epoch in range(first, end):
            count = 0
            for count, batch in enumerate(epoch_dataset(epoch), 1):
                yield batch
            if count != steps:  # fit() would end the run early, without a word, on an epoch that ran short
                raise RuntimeError(f"epoch {epoch + 1} gave {count} batches, not {steps}")

    spec = epoch_dataset(first).element_spec
    return unsharded(tf.data.Dataset.from_generator(batches, output_signature=spec)).prefetch(1)


def unsharded(ds: tf.data.Dataset) -> tf.data.Dataset:
    # Each worker is handed its own shard already; tf.distribute must not shard it again.
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return ds.with_options(options)
