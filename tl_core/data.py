"""Input pipeline: class folders or Parquet shards -> tf.data batches of float RGB images in [0, 1].

Decode and resize run in a parallel map over files; augmentation runs on whole batches after
batching; everything is prefetched. Randomness (shuffle order, augmentation) is derived from
(seed, epoch), so epoch k of a run is the same whether or not the run was interrupted before it.
"""
import dataclasses
import os
import re
from pathlib import Path

import numpy as np
import tensorflow as tf

from tl_core import augment

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
AUTOTUNE = tf.data.AUTOTUNE


class DatasetError(ValueError):
    """A problem with the user's image folders, with the path and what to do about it."""


@dataclasses.dataclass
class ImageFolder:
    paths: list[str]
    labels: np.ndarray  # int32 class indices
    class_names: list[str]

    def __len__(self):
        return len(self.paths)

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
        rows.sort()
        return ImageFolder([self.paths[i] for i in rows], self.labels[rows], self.class_names)


def list_image_folder(directory: str | Path, class_names: list[str] | None = None) -> ImageFolder:
    """Images under directory/<class>/ (recursively), classes in sorted folder-name order.

    With class_names given (e.g. validation after train), the folders must be exactly those classes.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise DatasetError(f"{directory} is not a directory: expected one sub-folder of images per class")
    found = sorted(entry.name for entry in os.scandir(directory) if entry.is_dir() and not entry.name.startswith("."))
    if not found:
        raise DatasetError(f"{directory} has no class sub-folders: put each class's images in {directory}/<class name>/")
    if class_names is not None and found != list(class_names):
        raise DatasetError(
            f"{directory} has classes {found}, but training has {list(class_names)}: "
            "train and validation need the same class folders"
        )
    paths, labels = [], []
    for index, name in enumerate(found):
        files = sorted(
            os.path.join(root, file)
            for root, _dirs, files in os.walk(directory / name)
            for file in files
            if file.lower().endswith(IMAGE_EXTENSIONS) and not file.startswith(".")
        )
        if not files:
            raise DatasetError(
                f"class folder {directory / name} holds no images ({', '.join(IMAGE_EXTENSIONS)})"
            )
        paths += files
        labels += [index] * len(files)
    return ImageFolder(paths, np.asarray(labels, dtype=np.int32), found)


def decode_and_resize(encoded: tf.Tensor, image_size: int) -> tf.Tensor:
    """JPEG/PNG/BMP/GIF (first frame) bytes -> float32 RGB [image_size, image_size, 3] in [0, 1]."""
    image = tf.io.decode_image(encoded, channels=3, dtype=tf.float32, expand_animations=False)
    image = tf.image.resize(image, [image_size, image_size], method="bilinear")
    return tf.clip_by_value(image, 0.0, 1.0)


def find_undecodable(folder: ImageFolder) -> list[tuple[str, str]]:
    """Files of a folder TensorFlow cannot decode, each with the reason.

    One parallel decode pass over every file; only the files it had to drop are decoded again,
    one by one, for their error message.
    """
    def decodes(path):
        image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
        return path, tf.shape(image)[0]

    ds = tf.data.Dataset.from_tensor_slices(folder.paths).map(decodes, num_parallel_calls=AUTOTUNE)
    readable = {path.numpy().decode("utf-8", "surrogateescape") for path, _ in ds.ignore_errors()}
    problems = []
    for path in folder.paths:
        if path in readable:
            continue
        try:
            decode_and_resize(tf.io.read_file(path), 8)
            problems.append((path, "failed to decode in the parallel pass"))
        except tf.errors.OpError as error:
            # "{{function_node ...}} Unknown image file format. ... [Op:DecodeImage] name:" -> the middle
            reason = re.sub(r"^\{\{.*?\}\}\s*|\s*\[Op:.*$", "", error.message.strip().splitlines()[0])
            problems.append((path, reason))
    return problems


def epoch_seed(seed: int, epoch: int) -> int:
    """One integer per (run seed, epoch), for tf.data ops that take a scalar seed."""
    return seed * 100_003 + epoch


def list_split(directory: str | Path, class_names: list[str] | None = None):
    """A split directory as class folders (ImageFolder) or Parquet shards (ParquetImages)."""
    from tl_core import parquet_data

    if parquet_data.is_parquet_split(Path(directory)):
        return parquet_data.list_parquet_split(Path(directory), class_names)
    return list_image_folder(directory, class_names)


PARQUET_SHUFFLE_BUFFER = 2048  # rows; Parquet shards stream, so they shuffle within a window


def encoded_images(source, *, shuffle: bool, seed: int, epoch: int) -> tf.data.Dataset:
    """(encoded image bytes, label) pairs of a source, in this epoch's order."""
    if isinstance(source, ImageFolder):
        ds = tf.data.Dataset.from_tensor_slices((source.paths, source.labels))
        if shuffle:
            ds = ds.shuffle(len(source), seed=epoch_seed(seed, epoch), reshuffle_each_iteration=False)
        return ds.map(lambda path, label: (tf.io.read_file(path), label),
                      num_parallel_calls=AUTOTUNE, deterministic=True)
    order = np.arange(len(source.segments))
    if shuffle:
        order = np.random.default_rng(epoch_seed(seed, epoch)).permutation(order)
    # Python hands over whole row groups; tf.data splits them into images.
    ds = tf.data.Dataset.from_generator(
        lambda: source.iter_segments(order),
        output_signature=(tf.TensorSpec([None], tf.string), tf.TensorSpec([None], tf.int32))).unbatch()
    if shuffle:
        ds = ds.shuffle(PARQUET_SHUFFLE_BUFFER, seed=epoch_seed(seed, epoch), reshuffle_each_iteration=False)
    return ds


def make_dataset(source, image_size: int, batch_size: int, *, shuffle: bool = False,
                 augment_images: bool = False, seed: int = 0, epoch: int = 0) -> tf.data.Dataset:
    """Batches of (images, labels) from class folders or Parquet shards.

    Shuffle order and augmentation are drawn from (seed, epoch).
    """
    ds = encoded_images(source, shuffle=shuffle, seed=seed, epoch=epoch)
    ds = ds.map(lambda encoded, label: (decode_and_resize(encoded, image_size), label),
                num_parallel_calls=AUTOTUNE, deterministic=True)
    ds = ds.batch(batch_size)
    if augment_images:
        def augment_batch(step, batch):
            images, labels = batch
            return augment.random_transform(images, tf.stack([epoch_seed(seed, epoch), step])), labels

        ds = ds.enumerate().map(augment_batch, num_parallel_calls=AUTOTUNE, deterministic=True)
    return _unsharded(ds).prefetch(AUTOTUNE)


def make_feature_dataset(features: np.ndarray, labels: np.ndarray, batch_size: int, *,
                         seed: int, epoch: int) -> tf.data.Dataset:
    """Batches of (backbone features, labels) for training the head alone, shuffled per (seed, epoch)."""
    ds = tf.data.Dataset.from_tensor_slices((features, labels))
    ds = ds.shuffle(len(labels), seed=epoch_seed(seed, epoch), reshuffle_each_iteration=False)
    return _unsharded(ds.batch(batch_size)).prefetch(AUTOTUNE)


def _unsharded(ds: tf.data.Dataset) -> tf.data.Dataset:
    # Each worker is handed its own shard already; tf.distribute must not shard it again.
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return ds.with_options(options)
