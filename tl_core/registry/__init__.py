"""The registry part: data fingerprints, the model registry, scheduled champion/challenger retraining.

A registry is opened here, by where it is: on a file system (registry/store.py) or in object storage
(registry/object_store.py)."""
from tl_core import storage
from tl_core.registry.object_store import ObjectRegistry
from tl_core.registry.store import Registry, RegistryError


def registry_at(root) -> Registry:
    """The registry at a path or URI."""
    return ObjectRegistry(root) if storage.is_uri(root) else Registry(root)


def existing_registry(root) -> Registry:
    """The registry at a path or URI that a retrain made (it has a ledger); a RegistryError in one line otherwise:
    a command that reads a registry (list, rollback) never makes one at a mistyped path."""
    registry = registry_at(root)
    if not storage.exists(registry.ledger):
        raise RegistryError(f"no registry at {storage.display(registry.root)} (no {storage.name(registry.ledger)}): "
                            "check --registry; `python -m jobs.retrain --registry ...` makes one")
    return registry
