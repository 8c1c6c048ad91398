"""What the training data is: a manifest of its files (path, size, content hash) and one fingerprint.

A file's hash is reused from the previous manifest when its path, size and modification time are
unchanged, so fingerprinting a large, mostly unchanged dataset reads only the new files.
"""
import hashlib
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from tl_core import artifacts
from tl_core.data.images import list_files
from tl_core.progress import track

SCHEMA = pa.schema([("path", pa.string()), ("size", pa.int64()), ("mtime_ns", pa.int64()), ("sha256", pa.string())])


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def build_manifest(data_dir: Path, previous: pa.Table | None = None) -> pa.Table:
    """Every file under data_dir (relative paths, sorted), with size, mtime and SHA-256."""
    known = {}
    if previous is not None:
        known = {(row["path"], row["size"], row["mtime_ns"]): row["sha256"] for row in previous.to_pylist()}
    rows = []
    paths = list_files(str(data_dir), problems=[], ignored=[])
    for path in track(paths, len(paths), f"Fingerprinting {data_dir}", unit="files"):
        status = os.stat(path)
        relative = os.path.relpath(path, data_dir).encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        key = (relative, status.st_size, status.st_mtime_ns)
        rows.append({"path": relative, "size": status.st_size, "mtime_ns": status.st_mtime_ns,
                     "sha256": known.get(key) or file_sha256(path)})
    return pa.Table.from_pylist(rows, schema=SCHEMA)


def fingerprint(manifest: pa.Table) -> str:
    """SHA-256 over (path, content hash) of every file: moving or editing any file changes it, touching does not."""
    digest = hashlib.sha256()
    for path, sha in zip(manifest.column("path").to_pylist(), manifest.column("sha256").to_pylist()):
        digest.update(f"{path}\0{sha}\n".encode())
    return digest.hexdigest()


def write_manifest(manifest: pa.Table, path: Path) -> None:
    with artifacts.atomic_path(path) as tmp:
        pq.write_table(manifest, tmp)


def read_manifest(path: Path) -> pa.Table | None:
    return pq.read_table(path, schema=SCHEMA) if Path(path).exists() else None
