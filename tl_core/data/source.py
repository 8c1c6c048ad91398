"""What every image source gives, whatever holds its images: class folders (images.ImageFolder) or Parquet shards
(parquet.ParquetImages). Callers use these members and never ask which kind they hold; a new kind of source is one new
class with them."""
import typing

import numpy as np


class ImageSource(typing.Protocol):
    labels: np.ndarray  # int32 class indices, in the source's order
    class_names: list[str]
    image_size: int | None  # the stored pixels' size (Parquet written with --image-size), or None: decoded at any size
    ignored: typing.Sequence[str]  # files passed over while listing (OS metadata, hidden folders)

    def __len__(self) -> int: ...

    def select(self, rows) -> "ImageSource":
        """The given rows, in that order."""

    def shard(self, index: int, count: int, seed: int) -> "ImageSource":
        """Worker `index` of `count`: a disjoint, seeded part, the same size on every worker."""

    def part(self, index: int, count: int) -> "ImageSource":
        """Part `index` of `count` in reading order, every image in exactly one part."""

    def without(self, paths) -> "ImageSource":
        """The source minus the given bad files."""

    def absolute(self) -> "ImageSource":
        """The same images named by absolute paths (for Ray workers, which do not share this working directory)."""

    def names(self) -> list[str]:
        """Each image by where it is: a file by its path, a Parquet row by its source file, shard and row."""

    def content_digests(self, description: str, known: dict | None = None) -> list[str]:
        """SHA-256 of each image's stored bytes, in the source's order, with progress under `description`. known: path
        -> SHA-256 of files hashed already, not read again."""

    def identity(self) -> bytes:
        """What the source lists, without reading an image (data_fingerprint)."""
