"""What the training data is: a manifest of its files (path, size, content hash) and one fingerprint.

A file's hash is reused from the previous manifest when its path, size and modification time are
unchanged, so fingerprinting a large, mostly unchanged dataset reads only the new files.
"""
import hashlib
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from tl_core import storage
from tl_core.data.images import list_files
from tl_core.progress import track

SCHEMA = pa.schema([("path", pa.string()), ("size", pa.int64()), ("mtime_ns", pa.int64()), ("sha256", pa.string())])


def build_manifest(data_dir: Path, previous: pa.Table | None = None) -> pa.Table:
    """Every file under data_dir (a path or URI; relative paths, sorted), with size, mtime (an object's
    last-modified time) and SHA-256."""
    known = {}
    if previous is not None:
        known = {(row["path"], row["size"], row["mtime_ns"]): row["sha256"] for row in previous.to_pylist()}
    rows = []
    listing = list_files(str(data_dir))
    for path, (size, mtime_ns) in track(zip(listing.paths, listing.stats.tolist()), len(listing.paths),
                                        f"Fingerprinting {storage.display(data_dir)}", unit="files"):
        relative = storage.relative(path, data_dir).encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        rows.append({"path": relative, "size": size, "mtime_ns": mtime_ns,
                     "sha256": known.get((relative, size, mtime_ns)) or storage.sha256(path)})
    return pa.Table.from_pylist(rows, schema=SCHEMA)


def fingerprint(manifest: pa.Table) -> str:
    """SHA-256 over (path, content hash) of every file: moving or editing any file changes it, touching does not."""
    digest = hashlib.sha256()
    for path, sha in zip(manifest.column("path").to_pylist(), manifest.column("sha256").to_pylist()):
        digest.update(f"{path}\0{sha}\n".encode())
    return digest.hexdigest()


def write_manifest(manifest: pa.Table, location) -> None:
    """The manifest as one Parquet file at a path or URI, written whole."""
    buffer = pa.BufferOutputStream()
    pq.write_table(manifest, buffer)
    storage.replace_bytes(location, buffer.getvalue().to_pybytes())


def read_manifest(location) -> pa.Table | None:
    return pq.read_table(storage.parquet_source(location), schema=SCHEMA) if storage.exists(location) else None
