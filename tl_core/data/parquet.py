"""Image datasets as Parquet shards: a few large files instead of millions of small ones.

Layout: <dir>/train/*.parquet and <dir>/validation/*.parquet, columns image, label (int32),
class_name, path (the source file); the class names, in label order, are stored in each file's
schema metadata. `image` holds the source file's encoded bytes, or, when written with an image size
N (`jobs.ingest --image-size N`), the image already decoded and resized to NxN as raw uint8 RGB
pixels (lossless), recorded as N in the schema metadata: training then only reads pixels, with no
decode and no resize on the host. Shards are LZ4-compressed (pre-sized photos read 40 % faster than
with zstd, for 13 % more bytes). Files are read one row group at a time, so memory stays bounded.
"""
import collections
import concurrent.futures
import dataclasses
import hashlib
import itertools
import json
import os
import threading
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import tensorflow as tf

from tl_core import storage
from tl_core.artifacts import atomic_path
from tl_core.data.images import AUTOTUNE, decode_and_resize, display_path
from tl_core.progress import Progress, track

SCHEMA = pa.schema([("image", pa.binary()), ("label", pa.int32()), ("class_name", pa.string()), ("path", pa.string())])
CLASS_NAMES_KEY = b"tl_core.class_names"
IMAGE_SIZE_KEY = b"tl_core.image_size"  # rows hold raw NxN RGB pixels (absent: encoded image files)
# Every row was decoded and passed the checks with these limits ({"min_side": .., "max_pixels": ..}) before it was
# written (jobs.ingest): training trusts it instead of decoding every row again (absent: rows from elsewhere).
CHECKED_KEY = b"tl_core.checked"


READ_AHEAD = 2  # row groups read ahead of the pipeline (each up to rows_per_group rows in memory)


class ParquetDatasetError(ValueError):
    pass


def image_column(folder, image_size: int | None):
    """Each file's `image` value, in folder order: its bytes, or its resized raw pixels."""
    if image_size is None:
        return (storage.read_bytes(path) for path in folder.paths)
    # Decoded and resized exactly as training decodes folders (data.decode_and_resize), in parallel.
    ds = tf.data.Dataset.from_tensor_slices([os.fsencode(path) for path in folder.paths])
    read_file = storage.tf_read_file(folder.paths[0] if folder.paths else "")
    ds = ds.map(lambda path: decode_and_resize(read_file(path), image_size),
                num_parallel_calls=AUTOTUNE, deterministic=True)
    return (pixels.tobytes() for pixels in ds.prefetch(AUTOTUNE).as_numpy_iterator())


def shard_schema(class_names: list[str], *, image_size: int | None = None, checked: dict | None = None) -> pa.Schema:
    """SCHEMA with the metadata of a dataset's shards: its class names, stored image size and check limits."""
    metadata = {CLASS_NAMES_KEY: json.dumps(class_names).encode()}
    if image_size is not None:
        metadata[IMAGE_SIZE_KEY] = str(image_size).encode()
    if checked is not None:
        metadata[CHECKED_KEY] = json.dumps(checked, sort_keys=True).encode()
    return SCHEMA.with_metadata(metadata)


def write_parquet_shards(folder, output_dir, *, rows_per_file: int = 5000, rows_per_group: int = 256,
                         image_size: int | None = None, checked: dict | None = None, first_part: int = 0) -> list:
    """Write an ImageFolder's files as Parquet shards part-<first_part>..., streaming: one row group in memory at a time;
    the files written. output_dir: a path, or a URI (the shards are written in a local staging directory, then
    uploaded, each whole; the files are then URIs).

    image_size: store each image decoded and resized to image_size x image_size (raw uint8 RGB).
    checked: the limits every file passed (checks.find_bad_files), recorded in the metadata."""
    with storage.written_locally(output_dir) as local:
        written = _write_shards(folder, local, storage.display(output_dir), rows_per_file, rows_per_group, image_size,
                                checked, first_part)
    return [storage.join(output_dir, path.name) for path in written] if storage.is_uri(output_dir) else written


def _write_shards(folder, output_dir: Path, shown: str, rows_per_file: int, rows_per_group: int, image_size: int | None,
                  checked: dict | None, first_part: int) -> list[Path]:
    schema = shard_schema(folder.class_names, image_size=image_size, checked=checked)
    output_dir.mkdir(parents=True, exist_ok=True)
    written = []
    images = image_column(folder, image_size)
    with Progress(len(folder), f"Writing {display_path(shown)}") as bar:
        for start in range(0, len(folder), rows_per_file):
            path = output_dir / f"part-{first_part + len(written):05d}.parquet"
            stop = min(start + rows_per_file, len(folder))
            with atomic_path(path) as tmp, pq.ParquetWriter(tmp, schema, compression="lz4") as writer:
                for group in range(start, stop, rows_per_group):
                    rows = range(group, min(group + rows_per_group, stop))
                    writer.write_table(pa.table({
                        "image": list(itertools.islice(images, len(rows))),
                        "label": pa.array([int(folder.labels[i]) for i in rows], pa.int32()),
                        "class_name": [folder.class_names[folder.labels[i]] for i in rows],
                        "path": [display_path(folder.paths[i]) for i in rows],
                    }, schema=schema))
                    bar.update(rows.stop)
            written.append(path)
    return written


@dataclasses.dataclass
class ParquetImages:
    """Rows of Parquet shards, as (file, row group, first row, end row) segments in reading order."""

    files: list[str]
    segments: list[tuple[int, int, int, int]]
    labels: np.ndarray
    class_names: list[str]
    image_size: int | None = None  # rows hold raw image_size x image_size pixels (jobs.ingest --image-size)
    checked: dict | None = None  # the limits every row passed before jobs.ingest wrote it (CHECKED_KEY)
    ignored = ()  # shards hold only images

    def __len__(self):
        return len(self.labels)

    def names(self) -> list[str]:
        """Each row by the source file jobs.ingest recorded, with the shard and row that hold it (the path column read
        alone)."""
        return [row_name(path, self.files[file], group, begin + row)
                for (file, group, begin, _), table in zip(self.segments, self._columns(["path"]))
                for row, path in enumerate(table.column("path").to_pylist())]

    def content_digests(self, description: str, known: dict | None = None) -> list[str]:
        """SHA-256 of each row's stored image bytes, row group by row group."""
        return [hashlib.sha256(image).hexdigest()
                for table in track(self._columns(["image"]), len(self.segments), description, unit="row groups")
                for image in table.column("image").to_pylist()]

    def identity(self) -> bytes:
        return repr((list(self.files), list(self.segments))).encode()

    def absolute(self) -> "ParquetImages":
        return dataclasses.replace(self, files=[storage.absolute(path) for path in self.files])

    def _columns(self, columns: list[str]):
        """The given columns of each segment, in order."""
        for file, group, begin, end in self.segments:
            yield pq.ParquetFile(storage.parquet_source(self.files[file])).read_row_group(
                group, columns=columns).slice(begin, end - begin)

    def shard(self, index: int, count: int, seed: int) -> "ParquetImages":
        """Worker `index` of `count`: equal, disjoint row counts, made of whole row groups where possible.

        Row groups are taken in a seeded random order and the resulting row sequence is cut into
        `count` equal parts, so each worker reads about 1/count of the data.
        """
        if count == 1:
            return self
        per_worker = len(self) // count
        if per_worker == 0:
            raise ParquetDatasetError(f"{len(self)} training images cannot be split over {count} workers")
        order = np.random.default_rng(seed).permutation(len(self.segments))
        return self._rows(order, index * per_worker, (index + 1) * per_worker)

    def part(self, index: int, count: int) -> "ParquetImages":
        """Part `index` of `count` in reading order: np.array_split's row counts (a segment may be cut), every row in
        exactly one part."""
        sizes = [len(rows) for rows in np.array_split(np.arange(len(self)), count)]
        first = sum(sizes[:index])
        return self._rows(range(len(self.segments)), first, first + sizes[index])

    def select(self, rows) -> "ParquetImages":
        """The given rows (positions in this source's row sequence), in that order."""
        picked = [self._rows(range(len(self.segments)), int(row), int(row) + 1) for row in rows]
        return dataclasses.replace(self, segments=[segment for one in picked for segment in one.segments],
                                   labels=np.concatenate([one.labels for one in picked]) if picked else self.labels[:0])

    def without(self, paths) -> "ParquetImages":
        """The same rows: the files a run skips are image files of a folder split, and Parquet rows are never skipped
        (sources.enforce_policy refuses bad rows)."""
        return self

    def _rows(self, segment_order, first: int, last: int) -> "ParquetImages":
        """Rows first..last-1 of the row sequence the segments make in segment_order (segments cut where needed)."""
        segments, labels, position = [], [], 0
        offsets = np.cumsum([0] + [end - begin for _, _, begin, end in self.segments])
        for i in segment_order:
            file, group, begin, end = self.segments[i]
            lo, hi = max(begin, begin + first - position), min(end, begin + last - position)
            if lo < hi:
                segments.append((file, group, lo, hi))
                labels.append(self.labels[offsets[i] + lo - begin:offsets[i] + hi - begin])
            position += end - begin
        return dataclasses.replace(self, segments=segments, labels=np.concatenate(labels) if labels else self.labels[:0])

    def _tables(self, segment_order):
        """(image column, labels) of each segment (part of a row group), in the given order: READ_AHEAD segments are
        read in threads while the pipeline takes the one before (on object storage a read is a request away)."""
        readers = threading.local()  # a ParquetFile per thread and file: one is not read from two threads

        def read(i):
            file, group, begin, end = self.segments[i]
            opened = readers.__dict__.setdefault("files", {})
            if file not in opened:
                opened[file] = pq.ParquetFile(storage.parquet_source(self.files[file]))
            table = opened[file].read_row_group(group, columns=["image", "label"]).slice(begin, end - begin)
            return table.column("image").combine_chunks(), table.column("label").to_numpy().astype(np.int32)

        with concurrent.futures.ThreadPoolExecutor(READ_AHEAD) as pool:
            reads = collections.deque()
            for i in segment_order:
                reads.append(pool.submit(read, i))
                if len(reads) > READ_AHEAD:
                    yield reads.popleft().result()
            while reads:
                yield reads.popleft().result()

    def iter_segments(self, segment_order):
        """(encoded images as an object array of bytes, labels), one segment at a time, in the given order."""
        for images, labels in self._tables(segment_order):
            yield np.array(images.to_pylist(), dtype=object), labels

    def iter_pixel_segments(self, segment_order):
        """(uint8 pixels [n, size, size, 3], labels) of pre-sized shards, one segment at a time: the
        column's values buffer viewed in place (no Python object per row), copied once into TensorFlow."""
        size = self.image_size
        for images, labels in self._tables(segment_order):
            offsets = np.frombuffer(images.buffers()[1], np.int32, len(images) + 1, offset=4 * images.offset)
            if np.any(np.diff(offsets) != size * size * 3):
                raise ParquetDatasetError(f"a row group of {self.files[0]}'s dataset holds rows that are not "
                                          f"{size}x{size} RGB pixels: check it with `python -m jobs.train --check`")
            values = np.frombuffer(images.buffers()[2], np.uint8)
            yield values[offsets[0]:offsets[-1]].reshape(-1, size, size, 3), labels


def row_name(path: str, file: str, group: int, row: int) -> str:
    """A Parquet row by the source file jobs.ingest recorded, with the shard and row that hold it."""
    return f"{path} ({storage.display(file)}, row group {group}, row {row})"


def is_parquet_split(directory) -> bool:
    """A directory (path or URI) that holds .parquet files."""
    return bool(storage.files_in(directory, ".parquet"))


def weakest_check(limits: list[dict | None]) -> dict | None:
    """What every row of shards checked with these limits is known to pass (None: some rows were never checked)."""
    if not limits or any(item is None for item in limits):
        return None
    return {"min_side": min(item["min_side"] for item in limits), "max_pixels": max(item["max_pixels"] for item in limits)}


def list_parquet_split(directory, class_names: list[str] | None = None) -> ParquetImages:
    """The shards of a split (a path or URI), from their metadata and label columns only (no image is read)."""
    files = storage.files_in(directory, ".parquet")
    if not files:
        raise ParquetDatasetError(f"{display_path(str(directory))} holds no .parquet files")
    segments, labels, found, sizes, checks = [], [], None, set(), []
    expected = [(field.name, field.type) for field in SCHEMA]
    for index, file in enumerate(files):
        reader = pq.ParquetFile(storage.parquet_source(file))
        metadata = reader.schema_arrow.metadata or {}
        if CLASS_NAMES_KEY not in metadata:
            raise ParquetDatasetError(f"{file} was not written by `python -m jobs.ingest` (no class names)")
        columns = [(field.name, field.type) for field in reader.schema_arrow]
        if columns != expected:
            raise ParquetDatasetError(f"{file} has columns {', '.join(f'{n} {t}' for n, t in columns)}; expected "
                                      f"{', '.join(f'{n} {t}' for n, t in expected)}: re-ingest it with `python -m jobs.ingest`")
        checks.append(json.loads(metadata[CHECKED_KEY]) if CHECKED_KEY in metadata else None)
        names = json.loads(metadata[CLASS_NAMES_KEY])
        if found is not None and names != found:
            raise ParquetDatasetError(f"{file} has classes {names}, other shards have {found}")
        found = names
        sizes.add(int(metadata[IMAGE_SIZE_KEY]) if IMAGE_SIZE_KEY in metadata else None)
        if len(sizes) > 1:
            raise ParquetDatasetError(f"{directory} mixes shards of different stored image sizes {sorted(map(str, sizes))}: "
                                      "re-ingest it into a new directory")
        for group in range(reader.num_row_groups):
            rows = reader.metadata.row_group(group).num_rows
            segments.append((index, group, 0, rows))
        labels.append(reader.read(columns=["label"]).column("label").to_numpy())
    if class_names is not None and found != list(class_names):
        raise ParquetDatasetError(f"{directory} has classes {found}, but training has {list(class_names)}")
    return ParquetImages(files, segments, np.concatenate(labels).astype(np.int32), found, sizes.pop(),
                         weakest_check(checks))
