"""A model registry on a file system: every trained model, an append-only ledger, and the champion.

Layout of a registry directory:
  models/<run id>/      each retrain's run directory (model/, metrics.json, config.json, ...)
  manifests/<run id>.parquet   the training data's manifest at that run
  ledger.parquet        one row per retrain, skip or rollback; rows are only ever added
  champion -> models/<run id>   the model serving reads (`<registry>/champion/model`)
  pending.json          the retrain in progress (its run id and data fingerprint), for recovery
  .lock                 held (flock) by the one retrain or rollback running

The champion link is replaced with one rename, so a reader sees the old champion or the new one,
never a mix; the ledger is rewritten under a temporary name and renamed, so it is always whole.
"""
import contextlib
import datetime
import errno
import fcntl
import json
import os
import socket
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from tl_core import storage
from tl_core.run_dir import MODEL_DIR

LEDGER_SCHEMA = pa.schema([
    ("run_id", pa.string()),
    ("started_at", pa.string()),
    ("finished_at", pa.string()),
    ("action", pa.string()),  # promoted, rejected, skipped, rollback
    ("reason", pa.string()),
    ("data_fingerprint", pa.string()),
    ("train_images", pa.int64()),
    ("validation_images", pa.int64()),
    ("challenger_accuracy", pa.float64()),
    ("challenger_loss", pa.float64()),
    ("champion_before", pa.string()),
    ("champion_accuracy", pa.float64()),
    ("champion_loss", pa.float64()),
    ("min_improvement", pa.float64()),
    # The promotion rule (registry/promotion.py); null in rows written before it.
    ("promote_metric", pa.string()),
    ("challenger_balanced_accuracy", pa.float64()),
    ("champion_balanced_accuracy", pa.float64()),
    ("challenger_macro_f1", pa.float64()),
    ("champion_macro_f1", pa.float64()),
    ("p_value", pa.float64()),  # McNemar's exact test, challenger better than champion
    ("worst_class", pa.string()),  # the gated class that lost the most recall, and how much
    ("worst_class_drop", pa.float64()),
    ("champion_after", pa.string()),
    ("config_json", pa.string()),
    # The data audit of the challenger's data (tl_core/audit); null in rows written before it. Exact copies:
    ("validation_images_in_train", pa.int64()),
    ("exact_duplicate_groups", pa.int64()),
    # from the run's own audit (its features), null when the run made none (e.g. on several Ray workers):
    ("validation_images_near_train", pa.int64()),
    ("label_issues", pa.int64()),
])
TRAINED = ("promoted", "rejected")


class RegistryError(ValueError):
    pass


class RegistryUnusable(RegistryError):
    """The registry cannot be used as it is (found before anything is written)."""


class RegistryBusy(RuntimeError):
    pass


def utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def new_run_id() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S-%f")


class Registry:
    """A registry on a local (or shared) file system: the champion a symbolic link, the lock flock's. A registry at a
    URI is an ObjectRegistry (registry/object_store.py): the same records, its own champion pointer and lock. Open
    either with tl_core.registry.registry_at (or existing_registry)."""

    taken_over = False  # the lock was taken over from a holder that may still be alive (never on disk: flock)

    def __init__(self, root: str | Path):
        self._locations(str(storage.local_path(root, "--registry")))
        self.champion_link = Path(self.root) / "champion"

    def _locations(self, root: str) -> None:
        self.root = root
        self.models = storage.join(root, "models")
        self.manifests = storage.join(root, "manifests")
        self.ledger = storage.join(root, "ledger.parquet")
        self.pending_file = storage.join(root, "pending.json")

    def model_dir(self, run_id: str) -> str:
        return storage.join(self.models, run_id)

    def manifest(self, run_id: str) -> str:
        return storage.join(self.manifests, f"{run_id}.parquet")

    @contextlib.contextmanager
    def local_model(self, run_id: str):
        """A local directory holding run_id's exported model (what ExportedModel loads): here, the run itself."""
        yield Path(self.model_dir(run_id))

    @contextlib.contextmanager
    def lock(self, log=print):
        """Exclusive for the whole retrain. The kernel drops the lock when its process dies, so a
        crashed run never leaves it stuck; a second run is refused at once with the holder's details."""
        root = Path(self.root)
        try:
            root.mkdir(parents=True, exist_ok=True)
            handle = open(root / ".lock", "a+")
        except OSError as error:
            raise RegistryUnusable(f"cannot use the registry {self.root}: {error.strerror}") from None
        with handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as error:
                if error.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                handle.seek(0)
                raise RegistryBusy(f"another retrain is using the registry {self.root} ({handle.read().strip()}); "
                                   "this run stops here: try again when it has finished") from None
            handle.truncate(0)
            handle.write(f"pid {os.getpid()} on {socket.gethostname()} since {utc_now()}\n")
            handle.flush()
            try:
                yield self
            finally:
                handle.truncate(0)
                fcntl.flock(handle, fcntl.LOCK_UN)

    # The ledger.

    def records(self) -> list[dict]:
        if not storage.exists(self.ledger):
            return []
        return pq.read_table(storage.parquet_source(self.ledger), schema=LEDGER_SCHEMA).to_pylist()

    def append(self, record: dict) -> None:
        """The ledger with one more row, replaced whole (one rename)."""
        storage.replace_bytes(self.ledger, ledger_bytes(self.records() + [record]))

    def last_trained(self) -> dict | None:
        trained = [record for record in self.records() if record["action"] in TRAINED]
        return trained[-1] if trained else None

    # The champion.

    def champion(self) -> str | None:
        """The champion's run id, or None before the first promotion. A `champion` that is not a link (a registry
        copied with `cp -r`, which copies what links point at) is refused in one line, before anything is written."""
        if self.champion_link.is_symlink():
            return os.readlink(self.champion_link).split("/")[-1]
        if not os.path.lexists(self.champion_link):
            return None
        last = next((record["champion_after"] for record in reversed(self.records()) if record["champion_after"]), None)
        raise RegistryUnusable(f"{self.champion_link} is a copy, not the symbolic link to models/<run id> that a "
                               f"registry keeps (was the registry copied with `cp -r`? copy one with `cp -a` or `rsync -a`, "
                               f"which keep links); to repair it: rm -r {self.champion_link} && ln -s "
                               f"models/{last or '<run id>'} {self.champion_link}")

    def champion_model(self) -> str:
        """Where serving loads the champion's model from."""
        return str(self.champion_link / MODEL_DIR)

    def check_promotable(self, run_id: str) -> None:
        if not storage.exists(storage.join(self.model_dir(run_id), MODEL_DIR, "saved_model.pb")):
            raise RegistryError(f"run {run_id} has no model in {self.model_dir(run_id)} (never finished, or pruned)")

    def promote(self, run_id: str) -> None:
        """Point `champion` at models/<run_id> with one atomic rename."""
        self.check_promotable(run_id)
        tmp = Path(self.root) / f".champion.{os.getpid()}.tmp"
        if tmp.is_symlink():
            tmp.unlink()
        os.symlink(f"models/{run_id}", tmp)
        os.replace(tmp, self.champion_link)

    # The retrain in progress.

    def pending(self) -> dict | None:
        return json.loads(storage.read_bytes(self.pending_file)) if storage.exists(self.pending_file) else None

    def set_pending(self, value: dict) -> None:
        storage.replace_bytes(self.pending_file, (json.dumps(value, indent=2) + "\n").encode())

    def clear_pending(self) -> None:
        storage.delete(self.pending_file)

    def model_runs(self) -> list[str]:
        return storage.list_dirs(self.models) if storage.is_dir(self.models) else []

    def prune(self, keep: int) -> list[str]:
        """Delete all but the `keep` newest model directories; the champion and a pending run are always kept."""
        protected = {self.champion(), (self.pending() or {}).get("run_id")}
        runs = self.model_runs()
        removed = [run for run in runs[:max(len(runs) - keep, 0)] if run not in protected]
        for run in removed:
            storage.delete(self.model_dir(run))
        return removed


def ledger_bytes(records: list[dict]) -> bytes:
    """The ledger's Parquet file holding records (a field a record lacks: null)."""
    rows = [{name: record.get(name) for name in LEDGER_SCHEMA.names} for record in records]
    buffer = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pylist(rows, schema=LEDGER_SCHEMA), buffer)
    return buffer.getvalue().to_pybytes()


def format_ledger(records: list[dict]) -> str:
    """The ledger as a fixed-width table, oldest first."""
    columns = [("run_id", 22), ("finished_at", 25), ("action", 9), ("challenger_accuracy", 10),
               ("champion_accuracy", 10), ("challenger_balanced_accuracy", 10), ("champion_balanced_accuracy", 10),
               ("p_value", 7), ("validation_images_in_train", 5), ("label_issues", 7), ("champion_after", 22), ("reason", 0)]
    # chall.bal / champ.bal: balanced accuracy; p: McNemar's p-value (registry/promotion.py); leak: validation images
    # also in train/; labels?: likely label errors (the data audit, docs/audit.md)
    titles = {"challenger_accuracy": "chall.acc", "champion_accuracy": "champ.acc",
              "challenger_balanced_accuracy": "chall.bal", "champion_balanced_accuracy": "champ.bal", "p_value": "p",
              "validation_images_in_train": "leak", "label_issues": "labels?"}

    def cell(record, name):
        value = record.get(name)
        return "-" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)

    lines = ["  ".join(titles.get(name, name).ljust(width) for name, width in columns).rstrip()]
    lines += ["  ".join(cell(record, name).ljust(width) for name, width in columns).rstrip() for record in records]
    return "\n".join(lines)
