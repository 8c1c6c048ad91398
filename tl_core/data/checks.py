"""Checks of single images and Parquet rows: every file that cannot be used, and why, before training.

A file is an image when TensorFlow decodes it; extensions are not trusted. Besides files that do
not decode, images smaller than a minimum side and images above a pixel budget are reported. The
budget is checked from the file header before anything is decoded, so a decompression bomb never
reaches the decoder. The files a run skips are recorded in its skipped_files.json.
"""
import concurrent.futures
import dataclasses
import io
import json
import os
import re
import struct
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)
import pyarrow.parquet as pq
import tensorflow as tf

from tl_core import artifacts, storage
from tl_core.config import MAX_IMAGE_MEGAPIXELS, MIN_IMAGE_SIDE
from tl_core.data.images import DatasetError, ImageFolder, display_path
from tl_core.data.parquet import ParquetImages
from tl_core.progress import track
from tl_core.run_dir import SKIPPED_FILES



@dataclasses.dataclass(frozen=True)
class BadFile:
    path: str
    reason: str
    row: int | None = None  # the row, when path is a Parquet file

    def __str__(self):
        where = display_path(self.path) + (f" row {self.row}" if self.row is not None else "")
        return f"{where}: {self.reason}"


def format_bad_files(bad: list[BadFile], limit: int = 50) -> str:
    lines = [f"  {item}" for item in bad[:limit]]
    if len(bad) > limit:
        lines.append(f"  ... and {len(bad) - limit} more")
    return "\n".join(lines)


def write_skipped(run_dir: Path, skipped: list[BadFile]) -> None:
    artifacts.write_json(run_dir / SKIPPED_FILES, [dataclasses.asdict(item) for item in skipped])


def read_skipped(run_dir: Path) -> set[str]:
    path = Path(run_dir) / SKIPPED_FILES
    return {item["path"] for item in json.loads(path.read_text())} if path.exists() else set()


# Image headers: (width, height) without decoding.

def header_dimensions(head: bytes) -> tuple[int, int] | None:
    """(width, height) from the first 26 bytes of a PNG, GIF or BMP; None for other formats."""
    if head.startswith(b"\x89PNG\r\n\x1a\n") and len(head) >= 24:
        return struct.unpack(">II", head[16:24])
    if head[:6] in (b"GIF87a", b"GIF89a") and len(head) >= 10:
        return struct.unpack("<HH", head[6:10])
    if head.startswith(b"BM") and len(head) >= 26:
        if struct.unpack("<I", head[14:18])[0] == 12:  # OS/2 BITMAPCOREHEADER: 16-bit sizes
            return struct.unpack("<HH", head[18:22])
        width, height = struct.unpack("<ii", head[18:26])
        return abs(width), abs(height)  # negative height: rows stored top-down
    return None


def jpeg_dimensions(file) -> tuple[int, int] | None:
    """(width, height) from a JPEG's frame header, walking the segments before it."""
    if file.read(2) != b"\xff\xd8":
        return None
    while True:
        if file.read(1) != b"\xff":
            return None
        code = file.read(1)
        while code == b"\xff":  # fill bytes
            code = file.read(1)
        if not code:
            return None
        if code[0] == 0x01 or 0xD0 <= code[0] <= 0xD7:  # markers without a length
            continue
        length = file.read(2)
        if len(length) < 2:
            return None
        if 0xC0 <= code[0] <= 0xCF and code[0] not in (0xC4, 0xC8, 0xCC):  # SOFn
            frame = file.read(5)
            if len(frame) < 5:
                return None
            height, width = struct.unpack(">HH", frame[1:5])
            return width, height
        file.seek(struct.unpack(">H", length)[0] - 2, os.SEEK_CUR)


def image_dimensions(file) -> tuple[int, int] | None:
    head = file.read(26)
    if head.startswith(b"\xff\xd8"):
        file.seek(0)
        return jpeg_dimensions(file)
    return header_dimensions(head)


DEFAULT_LIMITS = dict(min_side=MIN_IMAGE_SIDE, max_pixels=int(MAX_IMAGE_MEGAPIXELS * 1e6))  # DataSettings.limits's defaults


def checked_at_ingest(source: ParquetImages, *, min_side: int, max_pixels: int) -> bool:
    """Every row of these shards passed checks at least this strict before jobs.ingest wrote it."""
    checked = source.checked
    return checked is not None and checked["min_side"] >= min_side and checked["max_pixels"] <= max_pixels


def too_large(size, max_pixels: int, remedy: str = "downscale it, or raise --max-image-megapixels") -> str | None:
    if size is None or size[0] * size[1] <= max_pixels:
        return None
    return f"{size[0]}x{size[1]} pixels is above the limit of {max_pixels / 1e6:g} megapixels: {remedy}"


def _too_small(height: int, width: int, min_side: int) -> str | None:
    if min(height, width) >= min_side:
        return None
    return f"{width}x{height} pixels is below the minimum side of {min_side}: remove it, or lower --min-image-side"


def _problem_before_decoding(path: str, max_pixels: int) -> str | None:
    try:
        with storage.open_input(path) as file:
            return too_large(image_dimensions(file), max_pixels)
    except OSError as error:
        return f"cannot read: {error.strerror}"


def _decoded_sizes(names_and_bytes: tf.data.Dataset, total: int, description: str) -> dict[bytes, tuple[int, int]]:
    """name -> (height, width) of every item that decodes, in one parallel pass; failures are dropped."""
    def decode(name, encoded):
        shape = tf.shape(tf.io.decode_image(encoded, channels=3, expand_animations=False))
        return name, shape[0], shape[1]

    # Batched after the decode: Python sees a few arrays per thousand files, not a tuple per file (that alone
    # cost 0.5 ms per file, more than reading and decoding a small image).
    decoded = names_and_bytes.map(decode, num_parallel_calls=tf.data.AUTOTUNE).ignore_errors().batch(1024)
    sizes = {}
    for names, heights, widths in track(decoded.as_numpy_iterator(), total, description, size=lambda batch: len(batch[0])):
        sizes.update(zip(names.tolist(), zip(heights.tolist(), widths.tolist())))
    return sizes


def decode_error(encoded) -> str:
    """TensorFlow's reason for not decoding some bytes."""
    if len(encoded) == 0:
        return "empty file (0 bytes)"
    try:
        tf.io.decode_image(encoded, channels=3, expand_animations=False)
    except tf.errors.OpError as error:
        # "{{function_node ...}} Unknown image file format. ... [Op:DecodeImage] name:" -> the middle
        return re.sub(r"^\{\{.*?\}\}\s*|\s*\[Op:.*$", "", error.message.strip().splitlines()[0])
    return "failed to decode in the parallel pass"


HEADER_CHUNK = 256  # files per header-reading task: one future per file cost more than reading its header


def find_bad_files(folder: ImageFolder, *, min_side: int, max_pixels: int, description: str = "Checking") -> list[BadFile]:
    """Every file of a folder that cannot be read, does not decode, or is too small or too large."""
    bad = [BadFile(path, reason) for path, reason in folder.problems]
    chunks = [folder.paths[start:start + HEADER_CHUNK] for start in range(0, len(folder.paths), HEADER_CHUNK)]
    with concurrent.futures.ThreadPoolExecutor(16) as pool:  # file headers: I/O bound on network storage
        problems = pool.map(lambda chunk: [_problem_before_decoding(path, max_pixels) for path in chunk], chunks)
        early = [reason for chunk in track(problems, len(folder.paths), f"{description}: headers", size=len, unit="files")
                 for reason in chunk]
    bad += [BadFile(path, reason) for path, reason in zip(folder.paths, early) if reason]
    candidates = [path for path, reason in zip(folder.paths, early) if not reason]
    names = tf.data.Dataset.from_tensor_slices(tf.constant([os.fsencode(path) for path in candidates], tf.string))
    read_file = storage.tf_read_file(candidates[0] if candidates else "")
    sizes = _decoded_sizes(names.map(lambda name: (name, read_file(name)), num_parallel_calls=tf.data.AUTOTUNE),
                           len(candidates), f"{description}: decoding")
    for path in candidates:
        size = sizes.get(os.fsencode(path))
        if size is None:
            try:
                reason = decode_error(storage.read_bytes(path))
            except OSError as error:
                reason = f"cannot read: {error.strerror}"
        else:
            reason = _too_small(*size, min_side)
        if reason:
            bad.append(BadFile(path, reason))
    return sorted(bad, key=lambda item: item.path)


def find_bad_rows(source: ParquetImages, *, min_side: int, max_pixels: int, description: str = "Checking") -> list[BadFile]:
    """Every row of Parquet shards whose image does not decode or is too small or too large."""
    if source.image_size is not None:
        return find_bad_pixel_rows(source)
    oversized = {}  # (segment, offset) -> reason

    def rows():  # named "segment:offset", so that a failed row can be read again for its reason
        for segment in range(len(source.segments)):
            images, _labels = next(source.iter_segments([segment]))
            for offset, image in enumerate(images):
                reason = too_large(image_dimensions(io.BytesIO(image)), max_pixels)
                if reason:
                    oversized[segment, offset] = reason
                else:
                    yield f"{segment}:{offset}", image

    sizes = _decoded_sizes(tf.data.Dataset.from_generator(
        rows, output_signature=(tf.TensorSpec([], tf.string), tf.TensorSpec([], tf.string))), len(source),
        f"{description}: decoding")
    bad = []
    for segment, (file, group, begin, end) in enumerate(source.segments):
        first_row = sum(stop - start for f, g, start, stop in source.segments if f == file and g < group) + begin
        for offset in range(end - begin):
            size = sizes.get(f"{segment}:{offset}".encode())
            if (segment, offset) in oversized:
                reason = oversized[segment, offset]
            elif size is None:
                reason = decode_error(next(source.iter_segments([segment]))[0][offset])
            else:
                reason = _too_small(*size, min_side)
            if reason:
                bad.append(BadFile(source.files[file], reason, first_row + offset))
    return bad


def find_bad_pixel_rows(source: ParquetImages) -> list[BadFile]:
    """Rows of pre-sized Parquet (raw pixels, decoded and checked at ingest) that hold the wrong number of bytes."""
    expected = source.image_size * source.image_size * 3
    bad = []
    for path in source.files:
        reader, first_row = pq.ParquetFile(storage.parquet_source(path)), 0
        for group in range(reader.num_row_groups):  # one row group in memory at a time
            column = reader.read_row_group(group, columns=["image"]).column("image")
            lengths = pa.compute.binary_length(column).to_numpy(zero_copy_only=False)
            for row in np.flatnonzero(lengths != expected):
                bad.append(BadFile(path, f"holds {lengths[row]} bytes, not the {expected} of "
                                         f"{source.image_size}x{source.image_size} RGB pixels: re-ingest",
                                   first_row + int(row)))
            first_row += len(lengths)
    return bad


def without_bad_files(source):
    """(source without its bad files, the bad files): for jobs that report bad input instead of stopping."""
    if isinstance(source, ImageFolder):
        bad = find_bad_files(source, **DEFAULT_LIMITS)
        return (source.without({item.path for item in bad}) if bad else source), bad
    bad = [] if checked_at_ingest(source, **DEFAULT_LIMITS) else find_bad_rows(source, **DEFAULT_LIMITS)
    if bad:
        raise DatasetError(f"{len(bad)} Parquet row(s) cannot be used:\n{format_bad_files(bad)}")
    return source, bad
