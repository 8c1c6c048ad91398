"""Remembered verdicts of the folder check: a file listed with the same path, size and modification time (on object
storage: key, size and last-modified time) as at a check with the same limits is not read or decoded again; only new
or changed files are.

One Parquet file per (data directory, limits) in <cache>/checks/: path, size, mtime_ns, reason (null: usable).
"Cannot read" verdicts are not remembered (permissions change without touching the modification time). A
missing or unreadable verdict file only means that every file is checked again.
"""
import dataclasses
import hashlib
import itertools
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tl_core import artifacts, storage
from tl_core.data.checks import BadFile
from tl_core.data.images import ImageFolder

SCHEMA = pa.schema([("path", pa.string()), ("size", pa.int64()), ("mtime_ns", pa.int64()), ("reason", pa.string())])
CHECKS_DIR = "checks"


def verdicts_path(cache: Path, data_dir: Path, limits: dict) -> Path:
    key = json.dumps({"data_dir": storage.canonical(data_dir), **limits}, sort_keys=True)
    return Path(cache) / CHECKS_DIR / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.parquet"


def _text(path: str) -> str:
    """A path for the string column: names that are not valid UTF-8 (kept as surrogates by os) are stored escaped,
    so they never match when read back, and such files are checked again each time (correct, only slower)."""
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


@dataclasses.dataclass
class Verdicts:
    path: Path
    paths: list[str]  # what the last check saw, in the order it saw it
    stats: np.ndarray  # int64 [n, 2]: (size, mtime_ns) of each remembered file
    reasons: np.ndarray  # object [n]: None for a usable file, else why it cannot be used
    checked: list = dataclasses.field(default_factory=list)  # (paths, stats, reasons) of this check's folders
    decoded: int = 0  # files this check read and decoded
    remembered: int = 0  # files whose verdict was remembered
    row_of_path: dict | None = None  # built only when a folder's files are not where the last check saw them

    @classmethod
    def load(cls, cache: Path, data_dir: Path, limits: dict) -> "Verdicts":
        path = verdicts_path(cache, data_dir, limits)
        try:
            table = pq.read_table(path, schema=SCHEMA) if path.exists() else SCHEMA.empty_table()
        except (OSError, pa.ArrowException):
            table = SCHEMA.empty_table()
        paths = table.column("path").to_pylist()
        stats = np.stack([table.column("size").to_numpy(), table.column("mtime_ns").to_numpy()], axis=1)
        return cls(path, paths, stats, np.array(table.column("reason").to_pylist(), dtype=object))

    def check(self, folder: ImageFolder, find) -> list[BadFile]:
        """Every bad file of folder, sorted by path; find(folder) -> bad files runs on the new or changed files only."""
        if folder.stats is None:  # not listed from disk: nothing to compare with
            self.decoded += len(folder)
            return find(folder)
        rows = self.rows_of(folder.paths)
        same = rows >= 0
        same[same] = (self.stats[rows[same]] == folder.stats[same]).all(axis=1)
        reasons = np.full(len(folder), None)
        reasons[same] = self.reasons[rows[same]]
        changed = np.flatnonzero(~same)
        if len(changed):
            found = {item.path: item.reason for item in find(folder.select(changed))}
            reasons[changed] = [found.get(folder.paths[i]) for i in changed]
        self.decoded += len(changed)
        self.remembered += len(folder) - len(changed)
        self.checked.append((folder.paths, folder.stats, reasons))
        bad = [BadFile(path, reason) for path, reason in folder.problems]
        bad += [BadFile(path, reason) for path, reason in zip(folder.paths, reasons) if reason]
        return sorted(bad, key=lambda item: item.path)

    def rows_of(self, paths: list[str]) -> np.ndarray:
        """Each path's row in the remembered verdicts, -1 for none. An unchanged folder's files are found where the
        last check saved them (one list comparison, no hashing: the common case of a repeated check)."""
        start = sum(len(folder_paths) for folder_paths, _, _ in self.checked)
        if self.paths[start:start + len(paths)] == paths:
            return np.arange(start, start + len(paths))
        if self.row_of_path is None:
            self.row_of_path = dict(zip(self.paths, range(len(self.paths))))
        return np.fromiter(map(self.row_of_path.get, paths, itertools.repeat(-1)), np.int64, len(paths))

    def save(self) -> None:
        """Write this check's verdicts (files gone since are forgotten); a cache that cannot be written is skipped.
        "Cannot read" verdicts are left out: those files are read again next time."""
        if self.decoded == 0 and self.remembered == len(self.paths):  # every remembered file, each unchanged
            return
        paths = [path for folder_paths, _, _ in self.checked for path in folder_paths]
        stats = np.concatenate([stats for _, stats, _ in self.checked]) if self.checked else np.zeros((0, 2), np.int64)
        reasons = np.concatenate([reasons for _, _, reasons in self.checked]) if self.checked else np.array([], object)
        kept = np.array([not (reason or "").startswith("cannot read") for reason in reasons], dtype=bool)
        table = pa.table({"path": [_text(path) for path, keep in zip(paths, kept) if keep], "size": stats[kept, 0],
                          "mtime_ns": stats[kept, 1], "reason": reasons[kept].tolist()}, schema=SCHEMA)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with artifacts.atomic_path(self.path) as tmp:
                pq.write_table(table, tmp)
        except OSError:
            pass
