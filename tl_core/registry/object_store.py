"""A model registry in object storage (`--registry s3://bucket/registry`): the layout of registry/store.py, with the
guarantees of a file system made from what S3 offers.

  champion.json   {"run_id", "model"}: the champion, a small pointer object replaced with one PUT, so a reader sees
                  the old champion or the new one, never a mix (there are no symbolic links)
  .lock           the one retrain or rollback running: created only if absent (PUT If-None-Match: *), holding its
                  owner, host and a lease that the holder renews while it works (PUT If-Match on the version it
                  wrote). A second retrain is refused while the lease runs; a holder that died stops renewing, and
                  after its lease the next retrain takes the lock over (PUT If-Match on the dead holder's version:
                  of two retrains taking over at once, one wins)
  ledger.parquet, pending.json, manifests/, models/<run id>/   as on disk; each file one object, replaced whole
"""
import contextlib
import json
import os
import socket
import tempfile
import threading
import time
from pathlib import Path

from tl_core import storage
from tl_core.registry.store import Registry, RegistryBusy, utc_now
from tl_core.run_dir import MODEL_DIR

CHAMPION_FILE = "champion.json"
LOCK_FILE = ".lock"


class ObjectRegistry(Registry):
    lease_seconds = 120.0  # how long a holder that stopped renewing keeps the lock

    def __init__(self, root: str):
        self._locations(storage.absolute(root))
        self.champion_file = storage.join(self.root, CHAMPION_FILE)
        self.lock_file = storage.join(self.root, LOCK_FILE)

    @contextlib.contextmanager
    def local_model(self, run_id: str):
        """run_id's exported model, downloaded into a temporary directory (TensorFlow loads only local files)."""
        with tempfile.TemporaryDirectory(prefix="tl-model-") as tmp:
            storage.download(storage.join(self.model_dir(run_id), MODEL_DIR), Path(tmp) / MODEL_DIR)
            yield Path(tmp)

    # The lock: a lease in one object.

    def _holder(self) -> bytes:
        return json.dumps({"owner": f"pid {os.getpid()} on {socket.gethostname()}", "since": utc_now(),
                           "expires": time.time() + self.lease_seconds}).encode()

    @contextlib.contextmanager
    def lock(self, log=print):
        token = storage.create_object(self.lock_file, self._holder())
        while token is None:
            found = storage.read_object(self.lock_file)
            if found is None:  # released between our two requests
                token = storage.create_object(self.lock_file, self._holder())
                continue
            held = json.loads(found[0])
            if held["expires"] > time.time():
                raise RegistryBusy(f"another retrain is using the registry {self.root} ({held['owner']} since "
                                   f"{held['since']}); this run stops here: try again when it has finished")
            token = storage.replace_object_if(self.lock_file, self._holder(), found[1])
            if token is None:
                raise RegistryBusy(f"another retrain took over the expired lock of the registry {self.root} first; "
                                   "this run stops here: try again when it has finished")
            log(f"Took over the registry's lock from {held['owner']} (since {held['since']}): its lease ran out "
                f"{time.time() - held['expires']:.0f} s ago without being renewed", flush=True)
        renewal = LeaseRenewal(self, token)
        renewal.start()
        try:
            yield self
        finally:
            renewal.stop()
            if renewal.token is not None:
                storage.delete_object_if(self.lock_file, renewal.token)

    # The champion: a pointer object.

    def champion(self) -> str | None:
        if not storage.exists(self.champion_file):
            return None
        return json.loads(storage.read_bytes(self.champion_file))["run_id"]

    def champion_model(self) -> str:
        champion = self.champion()
        return storage.join(self.model_dir(champion), MODEL_DIR) if champion else "-"

    def promote(self, run_id: str) -> None:
        """Point champion.json at models/<run_id> with one PUT."""
        self.check_promotable(run_id)
        pointer = {"run_id": run_id, "model": f"models/{run_id}/{MODEL_DIR}", "promoted_at": utc_now()}
        storage.replace_bytes(self.champion_file, (json.dumps(pointer, indent=2) + "\n").encode())


class LeaseRenewal(threading.Thread):
    """Renews the lock's lease every quarter lease while the registry is held. A renewal refused because the object
    changed means that another retrain took the lock over (this holder was too slow to renew): said once."""

    def __init__(self, registry: ObjectRegistry, token: str):
        super().__init__(daemon=True, name="registry-lease")
        self.registry, self.token, self.stopped = registry, token, threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.registry.lease_seconds / 4):
            try:
                token = storage.replace_object_if(self.registry.lock_file, self.registry._holder(), self.token)
            except storage.StorageError:
                continue  # the store is unreachable for a moment: the lease has three more chances
            if token is None:
                print(f"warning: the registry {self.registry.root} lock was taken over by another retrain",
                      flush=True)
                self.token = None
                return
            self.token = token

    def stop(self) -> None:
        self.stopped.set()
        self.join()

