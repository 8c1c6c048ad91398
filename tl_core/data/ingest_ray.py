"""jobs.ingest --ray: the local ingest's check and shards, the work spread over a Ray cluster's CPUs with Ray Data.

The driver lists the folders (as the local ingest does). Ray Data then runs the per-file work in parallel tasks:
- the check: chunks of files, each checked by checks.find_bad_files (the same checks, the same reasons);
- the shards: one task per part-NNNNN.parquet, each writing its rows with parquet.write_parquet_shards, so the
  files are those the local ingest writes (same rows, row groups, schema and metadata).
Every node reads the image folders and writes the output directory: on a cluster, shared storage or a bucket.
"""
import logging
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import ray

from tl_core import interrupts, progress, ray_session, storage
from tl_core.data.checks import BadFile, find_bad_files
from tl_core.data.images import ImageFolder
from tl_core.data.parquet import write_parquet_shards
from tl_core.progress import track

# Files per check task: each task builds its tf.data pipelines (about 0.3 s), so a task must hold enough files to
# hide that, and there must be enough tasks to share out among the cluster's CPUs.
CHECK_CHUNK = 5000
# The tasks take no runtime_env: a per-dataset runtime_env made Ray start new worker processes (and import
# TensorFlow in each) for every Ray Data execution, 10 s each time here. tl_core's __init__ sets the TensorFlow
# environment before TensorFlow is imported, and Ray hides the GPUs from tasks that ask for none.


def _connect() -> None:
    ray_session.connect()
    # The driver shows this project's progress lines (tl_core.progress); Ray Data's own bars and its INFO
    # records about each dataset's execution would repeat them in another form.
    ray.data.DataContext.get_current().enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)


def _chunks(count: int, size: int) -> list[np.ndarray]:
    """Rows 0..count-1 in consecutive chunks of `size` (the last one shorter)."""
    return [np.arange(start, min(start + size, count)) for start in range(0, count, size)]


def _blocks(folder: ImageFolder, parts: list[np.ndarray]) -> list[pa.Table]:
    """One Ray Data block per part: the files' paths (as bytes: names need not be UTF-8), labels and part index."""
    return [pa.table({"path": pa.array([os.fsencode(folder.paths[i]) for i in rows], pa.binary()),
                      "label": pa.array(folder.labels[rows], pa.int32()),
                      "part": pa.array(np.full(len(rows), index, np.int64))})
            for index, rows in enumerate(parts) if len(rows)]


def _folder_of(batch: pa.Table, class_names: list[str]) -> ImageFolder:
    return ImageFolder([os.fsdecode(path) for path in batch.column("path").to_pylist()],
                       batch.column("label").to_numpy().astype(np.int32), class_names)


def _check_task(batch: pa.Table, *, min_side: int, max_pixels: int) -> pa.Table:
    """In a Ray task: the bad files of a chunk, as one row (files checked, their paths, their reasons)."""
    interrupts.drop_exit_signals_in_callbacks()
    progress.set_quiet(True)  # the driver shows the progress
    bad = find_bad_files(_folder_of(batch, [""]), min_side=min_side, max_pixels=max_pixels)
    return pa.table({"files": [len(batch)], "paths": [[os.fsencode(item.path) for item in bad]],
                     "reasons": [[item.reason for item in bad]]},
                    schema=pa.schema([("files", pa.int64()), ("paths", pa.list_(pa.binary())), ("reasons", pa.list_(pa.string()))]))


def find_bad_files_on_ray(folder: ImageFolder, *, min_side: int, max_pixels: int, description: str = "Checking",
                          chunk: int = CHECK_CHUNK) -> list[BadFile]:
    """checks.find_bad_files, run by Ray Data tasks on chunks of `chunk` files across the cluster."""
    _connect()
    bad = [BadFile(path, reason) for path, reason in folder.problems]
    parts = _chunks(len(folder), chunk)
    if parts:
        results = ray.data.from_arrow(_blocks(folder, parts)).map_batches(
            _check_task, fn_kwargs={"min_side": min_side, "max_pixels": max_pixels}, batch_size=None,
            batch_format="pyarrow")
        for row in track(results.iter_rows(), len(folder), f"{description} on Ray", size=lambda row: row["files"],
                         unit="files"):
            bad += [BadFile(os.fsdecode(path), reason) for path, reason in zip(row["paths"], row["reasons"])]
    return sorted(bad, key=lambda item: item.path)


def _write_task(batch: pa.Table, *, class_names: list[str], output_dir: str, rows_per_file: int,
                image_size: int | None, checked: dict | None) -> pa.Table:
    """In a Ray task: write the part files of the rows in batch (whole parts), each as the local ingest writes it."""
    interrupts.drop_exit_signals_in_callbacks()
    progress.set_quiet(True)
    folder, part = _folder_of(batch, class_names), batch.column("part").to_numpy()
    written, rows = [], []
    for index in np.unique(part):
        selected = folder.select(np.flatnonzero(part == index))
        written += [str(path) for path in write_parquet_shards(selected, output_dir, rows_per_file=rows_per_file,
                                                               image_size=image_size, checked=checked, first_part=index)]
        rows.append(len(selected))
    return pa.table({"file": written, "rows": pa.array(rows, pa.int64())})


def write_parquet_shards_on_ray(folder: ImageFolder, output_dir, *, rows_per_file: int = 5000,
                                image_size: int | None = None, checked: dict | None = None) -> list:
    """parquet.write_parquet_shards across the cluster: part k (rows k*rows_per_file ...) written by its own task
    into output_dir (a path every node reaches, or a URI: each task uploads its own parts)."""
    _connect()
    destination = storage.absolute(output_dir)
    parts = _chunks(len(folder), rows_per_file)
    results = ray.data.from_arrow(_blocks(folder, parts)).map_batches(
        _write_task, batch_size=None, batch_format="pyarrow",
        fn_kwargs={"class_names": folder.class_names, "output_dir": destination,
                   "rows_per_file": rows_per_file, "image_size": image_size, "checked": checked})
    shown = storage.display(output_dir)
    written = {row["file"]: row["rows"] for row in track(results.iter_rows(), len(folder), f"Writing {shown} on Ray",
                                                          size=lambda row: row["rows"])}
    expected = {storage.join(destination, f"part-{index:05d}.parquet"): len(rows) for index, rows in enumerate(parts)}
    if written != expected:  # a part cut over two tasks, or one lost: never hand such a dataset to training
        raise RuntimeError(f"the Ray ingest of {shown} wrote {sorted(written.items())}, expected "
                           f"{sorted(expected.items())}: delete the directory and ingest again")
    return sorted(written) if storage.is_uri(output_dir) else sorted(Path(path) for path in written)
