"""Batch inference: class probabilities for many images, written as Parquet; bad files become rows too.

One function, `predict_encoded`, turns a chunk of encoded images into output columns; it runs in
this process (`predict_to_parquet`, streaming chunk by chunk: memory is bounded by the chunk size)
and inside Ray Data's `map_batches` on a cluster (tl_core.serving.predict_ray).
"""
import concurrent.futures
import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import tensorflow as tf

from tl_core import storage
from tl_core.artifacts import atomic_path
from tl_core.data.images import decode_and_resize, display_path, list_files, to_unit_range
from tl_core.serving.evaluate import ExportedModel
from tl_core.data.parquet import IMAGE_SIZE_KEY, is_parquet_split
from tl_core.data.checks import DEFAULT_LIMITS, decode_error, image_dimensions, too_large
from tl_core.progress import Progress

def output_schema(class_names: list[str]) -> pa.Schema:
    return pa.schema([("path", pa.string()), ("predicted_class", pa.string()), ("confidence", pa.float32()),
                      *[(f"p_{name}", pa.float32()) for name in class_names], ("error", pa.string())])


def read_file(path: str) -> tuple[bytes | None, str | None]:
    try:
        return storage.read_bytes(path), None
    except OSError as error:
        return None, f"cannot read: {error.strerror}"


def predict_encoded(model: ExportedModel, names: list[str], encoded: list, errors: list, batch_size: int = 64) -> dict:
    """Output columns for one chunk: encoded[i] is an image's bytes, or None with errors[i] saying why."""
    errors = list(errors)
    for i, data in enumerate(encoded):
        if data is not None and errors[i] is None:
            # As in the training check: an image above the pixel budget is refused before decoding.
            errors[i] = too_large(image_dimensions(io.BytesIO(data)), DEFAULT_LIMITS["max_pixels"], "downscale it")
    usable = [i for i, data in enumerate(encoded) if data is not None and errors[i] is None]
    probabilities = np.full((len(names), len(model.class_names)), np.nan, np.float32)
    if usable:
        ds = tf.data.Dataset.from_tensor_slices((np.array(usable, np.int64), [encoded[i] for i in usable]))
        ds = ds.map(lambda index, data: (index, decode_and_resize(data, model.image_size)),
                    num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).ignore_errors()
        for indices, images in ds.batch(batch_size).prefetch(tf.data.AUTOTUNE):
            probabilities[indices.numpy()] = model.serve(images=to_unit_range(images))["probabilities"].numpy()
    decoded = ~np.isnan(probabilities[:, 0])
    for i in usable:
        if not decoded[i]:
            errors[i] = decode_error(encoded[i])
    best = np.where(decoded, np.nan_to_num(probabilities).argmax(axis=1), -1)
    columns = {"path": [display_path(name) for name in names],
               "predicted_class": [model.class_names[b] if b >= 0 else None for b in best],
               "confidence": [float(probabilities[i, b]) if b >= 0 else None for i, b in enumerate(best)]}
    for k, name in enumerate(model.class_names):
        columns[f"p_{name}"] = [float(p) if ok else None for p, ok in zip(probabilities[:, k], decoded)]
    columns["error"] = errors
    return columns


class ParquetFiles(list):
    """Parquet files (paths or URIs) whose image column is predicted; any other list of inputs holds image files."""


def list_inputs(source) -> list[str] | ParquetFiles:
    """Image paths of a folder (recursively) or a .txt list (one path per line); Parquet files of a dataset.
    source: a local path or a URI (tl_core/storage.py)."""
    source = str(source)
    if source.endswith(".parquet") and storage.is_file(source):
        return refuse_stored_pixels(ParquetFiles([source]))
    if is_parquet_split(source):
        return refuse_stored_pixels(ParquetFiles(storage.files_in(source, ".parquet")))
    if storage.is_dir(source):
        return list_files(source).paths
    if storage.is_file(source):
        lines = storage.read_bytes(source).decode("utf-8", "surrogateescape").splitlines()
        return [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    raise FileNotFoundError(f"{display_path(source)} does not exist: give a folder of images, a .txt list of paths, "
                            "or Parquet")


def refuse_stored_pixels(files: ParquetFiles) -> ParquetFiles:
    """Prediction takes encoded images; Parquet from `jobs.ingest --image-size` holds raw pixels instead."""
    for file in files:
        if IMAGE_SIZE_KEY in (pq.read_schema(storage.parquet_source(file)).metadata or {}):
            raise ValueError(f"{file} holds images stored as resized pixels (jobs.ingest --image-size), not image "
                             "files: predict on the source folders, or measure the model on it with jobs.evaluate")
    return files


def chunks(inputs, chunk_size: int):
    """(names, encoded, errors) chunks: files read in threads, or Parquet row groups as they are stored."""
    if isinstance(inputs, ParquetFiles):  # Parquet files with an "image" column
        for file in inputs:
            reader = pq.ParquetFile(storage.parquet_source(file))
            for group in range(reader.num_row_groups):
                table = reader.read_row_group(group)
                count = table.num_rows
                first = sum(reader.metadata.row_group(g).num_rows for g in range(group))
                names = (table.column("path").to_pylist() if "path" in table.column_names
                         else [f"{file} row {first + i}" for i in range(count)])
                yield names, table.column("image").to_pylist(), [None] * count
        return
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        for start in range(0, len(inputs), chunk_size):
            names = inputs[start:start + chunk_size]
            encoded, errors = zip(*pool.map(read_file, names))
            yield names, list(encoded), list(errors)


def predict_to_parquet(model: ExportedModel, inputs, output: Path, *, batch_size: int = 64,
                       chunk_size: int = 1024) -> dict:
    """Stream every input through the model into output/part-00000.parquet; counts of rows and errors."""
    schema = output_schema(model.class_names)
    rows = errors = 0
    path = Path(output) / "part-00000.parquet"
    parquet = isinstance(inputs, ParquetFiles)
    total = sum(pq.ParquetFile(storage.parquet_source(file)).metadata.num_rows for file in inputs) if parquet else len(inputs)
    with atomic_path(path) as tmp, pq.ParquetWriter(tmp, schema) as writer, Progress(total, "Predicting") as progress:
        for names, encoded, read_errors in chunks(inputs, chunk_size):
            columns = predict_encoded(model, names, encoded, read_errors, batch_size)
            writer.write_table(pa.table(columns, schema=schema))
            rows += len(names)
            errors += sum(error is not None for error in columns["error"])
            progress.update(rows, unusable=errors)
    return {"rows": rows, "errors": errors, "output": str(path)}


