"""A run directory at a URI (`--output-dir s3://bucket/runs/x`): written in a local staging directory with the usual
atomic files, and mirrored to the store: each completed epoch's checkpoint, TensorBoard files and history by an
uploader thread while the next epoch trains, the rest of the run (model, plots, metrics, spilled features) when it
ends, however it ends.

The store's copy is the run: `--resume` downloads its configuration and last checkpoint on any machine. Every file
is one object, whole or absent; the checkpoint pointer (checkpoints/latest.json) is uploaded after the directory it
names, so the store always names a complete checkpoint, and metrics.json, which only a finished run has, goes last.
An epoch is handed to the uploader as a snapshot (hard links to its checkpoint, copies of the files that later
epochs rewrite); when epochs end faster than they upload, the uploader takes the newest one and the store's
pointer skips the ones between (a process killed then resumes a few epochs earlier, from the store's last).
"""
import contextlib
import dataclasses
import hashlib
import json
import os
import shlex
import shutil
import tempfile
import threading
from pathlib import Path

import tensorflow as tf

from tl_core import storage
from tl_core.run_dir import (CHECKPOINT_DIR, CONFIG_FILE, HISTORY_JSON, HISTORY_PARQUET, METRICS_FILE, MLFLOW_RUN_FILE,
                             RUN_FILES, SKIPPED_FILES, TENSORBOARD_DIR, TEMPORARY, RunDirectoryError, claim_output,
                             holds_files)
from tl_core.training.recorder import LocalCheckpoints

POINTER = f"{CHECKPOINT_DIR}/{LocalCheckpoints.POINTER}"
# What --resume downloads, with the checkpoint the pointer names (TensorBoard's files: a resumed run appends to them;
# the MLflow run's id: a resumed run continues it).
RESUMED_FROM = (CONFIG_FILE, SKIPPED_FILES, HISTORY_JSON, HISTORY_PARQUET, TENSORBOARD_DIR, MLFLOW_RUN_FILE)
PER_EPOCH = (CHECKPOINT_DIR, HISTORY_JSON, HISTORY_PARQUET, TENSORBOARD_DIR, MLFLOW_RUN_FILE)  # uploaded after every epoch


class Mirror:
    """The store's copy (location) of a run being written in a local directory."""

    def __init__(self, location: str, local: Path):
        self.location, self.local = location, Path(local)
        self.described = False  # the configuration and skip list are in the store
        self.holds_epoch = False  # a completed epoch's checkpoint is in the store (--resume continues from it)

    def remote(self, name: str) -> str:
        return storage.join(self.location, *name.split("/"))

    def pull(self, names=RESUMED_FROM + (POINTER,)) -> None:
        """What --resume needs: the configuration, the skip list, the history, the
        TensorBoard files and the last completed epoch's checkpoint (names: a part of it, RAY_CHIEF_RESUMES)."""
        for name in names:
            if storage.exists(self.remote(name)):
                (self.local / name).parent.mkdir(parents=True, exist_ok=True)
                storage.download(self.remote(name), self.local / name)
        if (self.local / POINTER).exists():
            name = storage.plain_relative(json.loads((self.local / POINTER).read_text())["directory"], self.remote(POINTER))
            epoch_dir = f"{CHECKPOINT_DIR}/{name}"
            storage.download(self.remote(epoch_dir), self.local / epoch_dir)
            self.holds_epoch = True

    def clear(self) -> None:
        """--overwrite: nothing of the old run survives in the store next to the new one."""
        for name in (*RUN_FILES, CONFIG_FILE):
            storage.delete(self.remote(name))

    def snapshot(self) -> Path | None:
        """The last completed epoch as it is now, in a temporary directory of the run (its name matches TEMPORARY):
        hard links to its checkpoint (never changed once written), copies of the pointer, history and TensorBoard
        files (rewritten or appended to by the epochs after). None before the first epoch. (A Ray Train chief
        has no checkpoint here: Ray Train uploads its own.)"""
        pointer = self.local / POINTER
        if not (self.local / HISTORY_JSON).exists():
            return None
        snapshot = Path(tempfile.mkdtemp(prefix=".upload.", dir=self.local))
        if pointer.exists():
            name = json.loads(pointer.read_text())["directory"]
            shutil.copytree(self.local / CHECKPOINT_DIR / name, snapshot / CHECKPOINT_DIR / name, copy_function=os.link)
            shutil.copy(pointer, snapshot / POINTER)
        for file in (HISTORY_JSON, HISTORY_PARQUET, MLFLOW_RUN_FILE):
            if (self.local / file).exists():
                shutil.copy(self.local / file, snapshot / file)
        if (self.local / TENSORBOARD_DIR).is_dir():
            shutil.copytree(self.local / TENSORBOARD_DIR, snapshot / TENSORBOARD_DIR,
                            ignore=lambda folder, names: [name for name in names if TEMPORARY.match(name)])
        return snapshot

    def push_epoch(self, root: Path | None = None) -> None:
        """The epoch in root (a snapshot; default the run itself): its checkpoint and TensorBoard files, then the
        pointer to the checkpoint, then the history; older epochs go. (TensorBoard's files may so hold an epoch past
        the checkpoint, never one short of it: a resumed run's log handles the first, tracking/tensorboard.py.)"""
        root = Path(root or self.local)
        if not (root / HISTORY_JSON).exists():
            return
        if not self.described:  # with the first epoch: a store holding a checkpoint holds its configuration
            self.push_description()
        pointer = root / POINTER
        name = json.loads(pointer.read_text())["directory"] if pointer.exists() else None
        if name:
            storage.upload(root / CHECKPOINT_DIR / name, self.remote(f"{CHECKPOINT_DIR}/{name}"))
        self._push_files(root / TENSORBOARD_DIR, root)
        if name:
            storage.upload(pointer, self.remote(POINTER))
            self.holds_epoch = True
        for file in (HISTORY_JSON, HISTORY_PARQUET, MLFLOW_RUN_FILE):
            if (root / file).exists():
                storage.upload(root / file, self.remote(file))
        for stale in storage.list_dirs(self.remote(CHECKPOINT_DIR)) if name else ():
            if stale != name:
                storage.delete(self.remote(f"{CHECKPOINT_DIR}/{stale}"))

    def push_all(self) -> None:
        """Every complete file of the run (temporaries left out), the configuration naming the store, metrics last."""
        self.push_epoch()
        entries = sorted(self.local.iterdir(), key=lambda entry: entry.name == METRICS_FILE)
        for entry in entries:
            if TEMPORARY.match(entry.name) or entry.name in PER_EPOCH:
                continue
            if entry.name in (CONFIG_FILE, SKIPPED_FILES):
                self.push_description()
            elif entry.is_dir():
                self._push_files(entry)
            else:
                storage.upload(entry, self.remote(entry.name))

    def push_description(self) -> None:
        """config.json (which names the store as the run's directory: the run's location, not its staging) and
        skipped_files.json."""
        for name in (SKIPPED_FILES, CONFIG_FILE):
            if (self.local / name).exists():
                storage.upload(self.local / name, self.remote(name))
        self.described = True

    def _push_files(self, directory: Path, root: Path | None = None) -> None:
        """Every file under a directory of the run (or of a snapshot of it: root), one by one: temporaries left out."""
        for path in sorted(directory.rglob("*")) if directory.is_dir() else []:
            if path.is_file() and not any(TEMPORARY.match(part) for part in path.relative_to(directory).parts):
                storage.upload(path, self.remote(path.relative_to(root or self.local).as_posix()))


class Uploader(threading.Thread):
    """Uploads the newest epoch snapshot handed to it, one at a time, while training goes on. A failure (the store
    gone for longer than its retries, a registry's lock lost) is raised in the training thread at the next epoch's
    end, and at the end."""

    WAIT_SECONDS = 600  # at the end, for the epoch being uploaded and the one waiting (each request has its timeouts)

    def __init__(self, mirror: Mirror):
        super().__init__(daemon=True, name="run-upload")
        self.mirror, self.pending, self.error = mirror, None, None
        self.changed, self.finishing = threading.Condition(), False
        storage.calls_store(self)  # the process's exit waits for it before S3 is shut down

    def submit(self, snapshot: Path | None) -> None:
        self.raise_failure()
        with self.changed:
            if self.pending is not None:  # not begun: the newer epoch replaces it
                shutil.rmtree(self.pending, ignore_errors=True)
            self.pending = snapshot
            self.changed.notify()

    def run(self) -> None:
        while True:
            with self.changed:
                while self.pending is None and not self.finishing:
                    self.changed.wait()
                snapshot, self.pending = self.pending, None
            if snapshot is None:
                return
            try:
                if self.error is None:
                    self.mirror.push_epoch(snapshot)
            except Exception as error:  # the store gone (StorageError), or the registry's lock lost (its fence)
                self.error = error
            finally:
                shutil.rmtree(snapshot, ignore_errors=True)

    def raise_failure(self) -> None:
        if self.error is not None:
            raise self.error

    def finish(self, wait_seconds: float = WAIT_SECONDS) -> None:
        """Wait for the snapshot being uploaded and the one waiting, for at most wait_seconds; raise what failed."""
        with self.changed:
            self.finishing = True
            self.changed.notify()
        self.join(wait_seconds)
        if self.is_alive():
            raise storage.StorageError(f"the store {storage.display(self.mirror.location)} did not take the last "
                                       f"epoch's files within {wait_seconds:.0f}s")
        self.raise_failure()


class EpochUpload(tf.keras.callbacks.Callback):
    """After EpochRecorder has checkpointed an epoch: a snapshot of it goes to the uploader."""

    def __init__(self, uploader: Uploader):
        super().__init__()
        self.uploader = uploader

    def on_epoch_end(self, epoch, logs=None):
        self.uploader.submit(self.uploader.mirror.snapshot())


@dataclasses.dataclass
class StagedRun:
    """A run being written: where it is (location: the --output-dir given, a path or a URI; the configuration keeps
    it), where its files are written now (local: location itself, or a local staging directory for a URI) and the
    extra Keras callbacks that upload its epochs."""
    location: str
    local: Path
    callbacks: list
    mirror: Mirror | None = None

    def describe(self) -> None:
        """The configuration and skip list in the store now (before Ray Train workers start)."""
        if self.mirror is not None:
            self.mirror.push_description()


class StoreLost(storage.StorageError):
    """The store failed while a run was written to it (longer than pyarrow's retries). resumable: an epoch is in the
    store, and --resume continues from the last one there once the store is back. kept: the local copy of a run that
    finished training but not its upload (finish_upload completes it)."""

    def __init__(self, message: str, resumable: bool, kept: Path | None = None, location: str | None = None):
        if kept is not None:
            # JSON strings are Python literals: double quotes, so that the shell's single quotes need no escapes
            command = (f"from tl_core.training.run_store import finish_upload; "
                       f"finish_upload({json.dumps(str(kept))}, {json.dumps(location)})")
            message += (f"\nThe finished run is kept in {kept}; once the store is back, finish its upload with:\n"
                        f"  python -c {shlex.quote(command)}")
        super().__init__(message)
        self.resumable, self.kept = resumable, kept


def finish_upload(local, location: str) -> None:
    """Upload a finished run that the store failed to take at its end (StoreLost.kept) to its location, as the run's
    end would have (metrics.json last), then remove the local copy."""
    local = Path(local)
    if not (local / METRICS_FILE).is_file():
        raise RunDirectoryError(f"{local} holds no finished run ({METRICS_FILE} missing): nothing to upload")
    Mirror(location, local).push_all()
    shutil.rmtree(local)
    print(f"Uploaded the run to {location}")


@contextlib.contextmanager
def uploading(mirror: Mirror, *, per_epoch: bool, final: bool = True):
    """[EpochUpload] (or [] without per_epoch) while the run trains; at its end, however it ends, the last epoch and
    (with final) every other file of the staging directory in the store, and the directory removed. When the store
    fails: a run that finished training keeps its directory (StoreLost says how to finish the upload: nothing
    finished is deleted); any other run's directory goes, and --resume continues from the store's last epoch, to the
    same weights."""
    uploader = Uploader(mirror) if per_epoch else None
    if uploader:
        uploader.start()
    kept = None
    try:
        yield [EpochUpload(uploader)] if uploader else []
    finally:
        try:
            if uploader:
                uploader.finish()
            if final:
                mirror.push_all()
        except storage.StorageError as error:
            kept = mirror.local if final and (mirror.local / METRICS_FILE).is_file() else None  # written last: finished
            raise StoreLost(str(error), resumable=mirror.holds_epoch, kept=kept, location=mirror.location) from None
        finally:
            if kept is None:
                shutil.rmtree(mirror.local, ignore_errors=True)


@contextlib.contextmanager
def staged(location: str, *, resume: bool, overwrite: bool, trains_here: bool = True, log=print):
    """The StagedRun of a run's location: for a local output directory, that directory and no callbacks; for a URI, a
    local staging directory, and the epoch upload. The store's copy is refused,
    resumed or cleared here as prepare_run_dir does for a local directory. Without trains_here (a run on Ray Train,
    whose workers upload their own files: in_ray_worker), only the description goes to the store from here."""
    if not storage.is_uri(location):
        yield StagedRun(location, Path(location), [])
        return
    mirror = Mirror(location, Path(tempfile.mkdtemp(prefix="tl-run-")))
    try:
        claimed = claim_output(location, resume=resume, overwrite=overwrite, continues="that run", replaces="replace it")
        if claimed == "resume" and holds_files(location):
            mirror.pull()
        elif claimed == "overwrite":
            mirror.clear()
    except BaseException:
        shutil.rmtree(mirror.local, ignore_errors=True)
        raise
    log(f"Run directory {location}, staged in {mirror.local}", flush=True)
    with uploading(mirror, per_epoch=trains_here, final=trains_here) as callbacks:
        yield StagedRun(location, mirror.local, callbacks, mirror)


# What a Ray Train chief continues of a resumed run (its checkpoint comes from Ray Train).
RAY_CHIEF_RESUMES = (HISTORY_JSON, HISTORY_PARQUET, TENSORBOARD_DIR, MLFLOW_RUN_FILE)


@contextlib.contextmanager
def in_ray_worker(location: str, rank: int):
    """(the directory its files are written in, extra callbacks) of Ray Train worker `rank` of the run at location: for
    a run at a URI, the worker writes into its own
    staging directory (no file system is shared) and uploads its files: the chief its history and TensorBoard files
    after every epoch (Ray Train has uploaded the epoch's checkpoint by then), every worker the rest at the end.

    A stopped run's workers are killed by Ray, with no chance to clean up: the staging directory is named after the
    run and the rank (in the node's temporary directory), so the next worker of that run there removes what was left
    (and a finished worker removes its own)."""
    if not storage.is_uri(location):
        yield Path(location), []
        return
    run = hashlib.sha256(location.encode()).hexdigest()[:12]
    local = Path(tempfile.gettempdir()) / f"tl-worker-{run}-{rank}"
    shutil.rmtree(local, ignore_errors=True)  # an earlier, killed worker's
    local.mkdir(parents=True)
    mirror = Mirror(location, local)
    mirror.described = True  # by the driver, before the workers started
    if rank == 0:
        mirror.pull(RAY_CHIEF_RESUMES)
    with uploading(mirror, per_epoch=rank == 0) as callbacks:
        yield mirror.local, callbacks
