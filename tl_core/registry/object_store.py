"""A model registry in object storage (`--registry s3://bucket/registry`): the layout of registry/store.py, with the
guarantees of a file system made from what S3 offers.

  champion.json   {"run_id", "model"}: the champion, a small pointer object replaced with one PUT, so a reader sees
                  the old champion or the new one, never a mix (there are no symbolic links)
  .lock           the one retrain or rollback running: created only if absent (PUT If-None-Match: *), holding its
                  owner, host and lease, and rewritten by the holder every quarter lease while it works (PUT If-Match
                  on the version it wrote). A second retrain is refused while the lock changes; a holder that died
                  stops renewing, and once the object has stood unchanged for a whole lease, by the store's own clock
                  (its LastModified against the Date of the same answer: no two machines' clocks compared), the next
                  retrain takes the lock over (PUT If-Match on the dead holder's version: of two retrains taking over
                  at once, one wins). A lock object this project did not write is judged by its age the same way.
                  Fenced: before each of its writes below the registry (storage.fenced), the holder makes sure that
                  the lock is still the version it last wrote; a holder that lost it (paused, or cut off from the
                  store, for longer than its lease, and taken over meanwhile) writes nothing more and stops with
                  LockLost. The objects every retrain shares (ledger, pending.json, champion.json) are replaced only
                  if still the version this holder last saw (PUT If-Match), so no ledger row is lost to two writers
                  and a write begun before a pause fails once the new holder has written that object. A pending run
                  recovered after a takeover continues in a copy of its directory (registry/retrain.py): the old
                  holder may still make the one write it had begun, into its own directory only.
  ledger.parquet, pending.json, manifests/, models/<run id>/   as on disk; each file one object, replaced whole
"""
import contextlib
import json
import os
import socket
import tempfile
import threading
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from tl_core import interrupts, storage
from tl_core.registry.store import LEDGER_SCHEMA, Registry, RegistryBusy, ledger_bytes, utc_now
from tl_core.run_dir import MODEL_DIR

CHAMPION_FILE = "champion.json"
LOCK_FILE = ".lock"


class LockLost(RegistryBusy):
    """This retrain no longer holds the registry's lock: another took it over. Nothing more is written."""


class ObjectRegistry(Registry):
    lease_seconds = 120.0  # how long a holder that stopped renewing keeps the lock

    def __init__(self, root: str):
        self._locations(storage.absolute(root))
        self.champion_file = storage.join(self.root, CHAMPION_FILE)
        self.lock_file = storage.join(self.root, LOCK_FILE)
        self._seen: dict[str, str | None] = {}  # the version of each shared object this holder last read or wrote

    @contextlib.contextmanager
    def local_model(self, run_id: str):
        """run_id's exported model, downloaded into a temporary directory (TensorFlow loads only local files)."""
        with tempfile.TemporaryDirectory(prefix="tl-model-") as tmp:
            storage.download(storage.join(self.model_dir(run_id), MODEL_DIR), Path(tmp) / MODEL_DIR)
            yield Path(tmp)

    # The lock: a lease in one object.

    def _holder(self) -> bytes:
        return json.dumps({"owner": f"pid {os.getpid()} on {socket.gethostname()}", "since": utc_now(),
                           "lease_seconds": self.lease_seconds}).encode()

    @contextlib.contextmanager
    def lock(self, log=print):
        token = storage.create_object(self.lock_file, self._holder())
        while token is None:
            found = storage.read_object(self.lock_file)
            if found is None:  # released between our two requests
                token = storage.create_object(self.lock_file, self._holder())
                continue
            content, version, age = found
            held = _holder_of(content)
            lease = held.get("lease_seconds", self.lease_seconds)
            # Renewed by its holder every quarter lease; unchanged for a whole lease (by the store's clock, whose
            # timestamps have whole seconds), its holder is gone.
            if age <= lease + 1:
                raise RegistryBusy(f"another retrain is using the registry {self.root} ({held['owner']} since "
                                   f"{held['since']}); this run stops here: try again when it has finished")
            token = storage.replace_object_if(self.lock_file, self._holder(), version)
            if token is None:
                raise RegistryBusy(f"another retrain took over the expired lock of the registry {self.root} first; "
                                   "this run stops here: try again when it has finished")
            self.taken_over = True
            log(f"Took over the registry's lock from {held['owner']} (since {held['since']}): unchanged for {age:.0f} s "
                f"by the store's clock, longer than its lease of {lease:g} s", flush=True)
        self._renewal = renewal = LeaseRenewal(self, token)
        renewal.start()
        try:
            with storage.fenced(self.root, renewal.check_held):
                yield self
        finally:
            renewal.stop()
            if renewal.token is not None:
                storage.delete_object_if(self.lock_file, renewal.token)

    # The objects every retrain shares (ledger, pending record, champion pointer): read with their version, and
    # written only if still the version this holder last saw (a write of a holder paused between its fence check and
    # the write fails once another retrain has written the object).

    def _read_shared(self, location) -> bytes | None:
        found = storage.read_object(location)
        self._seen[location] = found and found[1]
        return found and found[0]

    def _write_shared(self, location, data: bytes | None) -> None:
        """Replace (data None: delete) a shared object, only if it is the version this holder last saw."""
        if location not in self._seen:
            self._read_shared(location)
        self._renewal.check_held()
        seen = self._seen[location]
        if data is None:
            done, token = seen is None or storage.delete_object_if(location, seen), None
        else:
            token = storage.create_object(location, data) if seen is None else storage.replace_object_if(location, data, seen)
            done = token is not None
        if not done:
            raise self._renewal.lose(f"{storage.display(location)} changed while this retrain held the lock")
        self._seen[location] = token

    def append(self, record: dict) -> None:
        content = self._read_shared(self.ledger)
        rows = [] if content is None else pq.read_table(pa.BufferReader(content), schema=LEDGER_SCHEMA).to_pylist()
        self._write_shared(self.ledger, ledger_bytes(rows + [record]))

    def pending(self) -> dict | None:
        content = self._read_shared(self.pending_file)
        return None if content is None else json.loads(content)

    def set_pending(self, value: dict) -> None:
        self._write_shared(self.pending_file, (json.dumps(value, indent=2) + "\n").encode())

    def clear_pending(self) -> None:
        self._write_shared(self.pending_file, None)

    # The champion: a pointer object.

    def champion(self) -> str | None:
        content = self._read_shared(self.champion_file)
        return None if content is None else json.loads(content)["run_id"]

    def champion_model(self) -> str:
        champion = self.champion()
        return storage.join(self.model_dir(champion), MODEL_DIR) if champion else "-"

    def promote(self, run_id: str) -> None:
        """Point champion.json at models/<run_id> with one PUT."""
        self.check_promotable(run_id)
        pointer = {"run_id": run_id, "model": f"models/{run_id}/{MODEL_DIR}", "promoted_at": utc_now()}
        self._write_shared(self.champion_file, (json.dumps(pointer, indent=2) + "\n").encode())


def _holder_of(content: bytes) -> dict:
    """Who holds the lock, as its object says; a lock object this project did not write (not JSON, keys missing) is
    described as such, and judged by its age alone like any other."""
    try:
        held = json.loads(content)
        if isinstance(held["owner"], str) and isinstance(held["since"], str):
            lease = held.get("lease_seconds")  # locks written before it was recorded: the contender's own
            return {"owner": held["owner"], "since": held["since"],
                    **({"lease_seconds": float(lease)} if isinstance(lease, (int, float)) else {})}
    except (ValueError, KeyError, TypeError, AttributeError):
        pass
    return {"owner": "a lock object this project did not write", "since": "an unknown time"}


class LeaseRenewal(threading.Thread):
    """Renews the lock's lease every quarter lease while the registry is held, and checks it before every write. A
    renewal or a check that finds the lock changed means that another retrain took it over (this holder was paused
    or cut off for longer than the lease): from then on every write below the registry raises LockLost, and the
    command is stopped at its next safe point with it (interrupts.stop_because)."""

    def __init__(self, registry: ObjectRegistry, token: str):
        super().__init__(daemon=True, name="registry-lease")
        self.registry, self.token, self.stopped = registry, token, threading.Event()
        self.guard = threading.Lock()  # a renewal and a check never cross: the check compares the token it sets
        self.lost: LockLost | None = None

    def run(self) -> None:
        while not self.stopped.wait(self.registry.lease_seconds / 4):
            with self.guard:
                if self.lost:
                    return
                try:
                    token = storage.replace_object_if(self.registry.lock_file, self.registry._holder(), self.token)
                except storage.StorageError:
                    continue  # the store is unreachable for a moment: the lease has three more chances
                if token is None:
                    interrupts.stop_because(self.lose("its renewal found the lock changed"))
                    return
                self.token = token

    def check_held(self) -> None:
        """Before a write below the registry: LockLost unless the lock is still the version this holder wrote."""
        with self.guard:
            if not self.lost and storage.object_token(self.registry.lock_file) != self.token:
                self.lose("the lock changed")
            if self.lost:
                raise self.lost

    def lose(self, how: str) -> LockLost:
        if not self.lost:
            self.token = None
            self.lost = LockLost(f"another retrain took over the lock of the registry {self.registry.root} ({how}: this "
                                 f"one was paused or cut off from the store for longer than its "
                                 f"{self.registry.lease_seconds:g} s lease); it stopped without writing to the registry "
                                 "again, and the other retrain carries on")
        return self.lost

    def stop(self) -> None:
        self.stopped.set()
        self.join()
