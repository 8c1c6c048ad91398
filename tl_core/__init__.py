"""Transfer learning core: model, input pipeline, training loop and metrics.

TF Hub's KerasLayer only works with tf-keras (Keras 2). TensorFlow binds `tf.keras` when it is
first imported, so the switch must be set before any module of this package imports it.
"""
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# Set in every Ray worker before TensorFlow is imported there (Ray's runtime_env): hub.KerasLayer
# needs tf-keras, and a TensorFlow process would otherwise take all of a GPU's memory. Ray Train
# sends a worker's print() both to its stdout and through a logger to the same console, which shows
# every line twice in `ray job logs`: its print patch is turned off.
WORKER_ENV = {"TF_USE_LEGACY_KERAS": "1", "TF_FORCE_GPU_ALLOW_GROWTH": "true", "TF_CPP_MIN_LOG_LEVEL": "2",
              "RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}


def worker_env() -> dict:
    """WORKER_ENV and where the object store is (tl_core/storage.py: never a credential), for a Ray worker."""
    from tl_core.storage import store_settings  # here: the package's own import loads nothing before the switch above

    return {**WORKER_ENV, **store_settings()}
