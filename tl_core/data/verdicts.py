"""Remembered verdicts of the folder check: a file listed with the same path, size and modification time as at a
check with the same limits is not read or decoded again; only new or changed files are.

One Parquet file per (data directory, limits) in <cache>/checks/: path, size, mtime_ns, reason (null: usable).
"Cannot read" verdicts are not remembered (permissions change without touching the modification time). A
missing or unreadable verdict file only means that every file is checked again.
"""
import dataclasses
import hashlib
import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from tl_core import artifacts
from tl_core.data.checks import BadFile
from tl_core.data.images import ImageFolder

SCHEMA = pa.schema([("path", pa.string()), ("size", pa.int64()), ("mtime_ns", pa.int64()), ("reason", pa.string())])
CHECKS_DIR = "checks"


def verdicts_path(cache: Path, data_dir: Path, limits: dict) -> Path:
    key = json.dumps({"data_dir": os.path.realpath(data_dir), **limits}, sort_keys=True)
    return Path(cache) / CHECKS_DIR / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.parquet"


UNKNOWN = object()  # no verdict remembered for a file


def _text(path: str) -> str:
    """A path for the string column: names that are not valid UTF-8 (kept as surrogates by os) are stored escaped,
    so they never match when read back, and such files are checked again each time (correct, only slower)."""
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


@dataclasses.dataclass
class Verdicts:
    path: Path
    known: dict  # (path, size, mtime_ns) -> reason, or None for a usable file
    seen: dict = dataclasses.field(default_factory=dict)  # the verdicts of this check's files, saved back
    decoded: int = 0  # files this check read and decoded
    remembered: int = 0  # files whose verdict was remembered

    @classmethod
    def load(cls, cache: Path, data_dir: Path, limits: dict) -> "Verdicts":
        path = verdicts_path(cache, data_dir, limits)
        try:
            table = pq.read_table(path, schema=SCHEMA) if path.exists() else None
        except (OSError, pa.ArrowException):
            table = None
        if table is None:
            return cls(path, {})
        keys = zip(table.column("path").to_pylist(), table.column("size").to_pylist(), table.column("mtime_ns").to_pylist())
        return cls(path, dict(zip(keys, table.column("reason").to_pylist())))

    def check(self, folder: ImageFolder, find) -> list[BadFile]:
        """Every bad file of folder, sorted by path; find(folder) -> bad files runs on the new or changed files only."""
        if folder.stats is None:  # not listed from disk: nothing to compare with
            self.decoded += len(folder)
            return find(folder)
        keys = list(zip(folder.paths, folder.stats[:, 0].tolist(), folder.stats[:, 1].tolist()))
        reasons = [self.known.get(key, UNKNOWN) for key in keys]
        unknown = [i for i, reason in enumerate(reasons) if reason is UNKNOWN]
        if unknown:
            found = {item.path: item.reason for item in find(folder.select(unknown))}
            for i in unknown:
                reasons[i] = found.get(folder.paths[i])
        self.decoded += len(unknown)
        self.remembered += len(keys) - len(unknown)
        self.seen.update(zip(keys, reasons))
        bad = [BadFile(path, reason) for path, reason in folder.problems]
        for key, reason in zip(keys, reasons):
            if reason:
                bad.append(BadFile(key[0], reason))
                if reason.startswith("cannot read"):
                    del self.seen[key]
        return sorted(bad, key=lambda item: item.path)

    def save(self) -> None:
        """Write this check's verdicts (files gone since are forgotten); a cache that cannot be written is skipped."""
        if self.seen == self.known:
            return
        paths, sizes, mtimes = zip(*self.seen) if self.seen else ((), (), ())
        table = pa.table({"path": [_text(path) for path in paths], "size": list(sizes), "mtime_ns": list(mtimes),
                          "reason": list(self.seen.values())}, schema=SCHEMA)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with artifacts.atomic_path(self.path) as tmp:
                pq.write_table(table, tmp)
        except OSError:
            pass
