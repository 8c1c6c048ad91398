"""Where the job runs: which tf.distribute strategy, which worker this process is, its data shard.

- several Ray workers (TF_CONFIG lists more than one): MultiWorkerMirroredStrategy, which also
  mirrors over each worker's local GPUs;
- one process with several GPUs: MirroredStrategy over them;
- otherwise (one CPU or one GPU): the default strategy.
"""
import dataclasses
import json
import os

import tensorflow as tf

MULTI_WORKER, MIRRORED, DEFAULT = "multi_worker", "mirrored", "default"


def strategy_kind(tf_config: str | None, num_gpus: int) -> str:
    if tf_config:
        cluster = json.loads(tf_config).get("cluster", {})
        if sum(len(addresses) for addresses in cluster.values()) > 1:
            return MULTI_WORKER
    if num_gpus > 1:
        return MIRRORED
    return DEFAULT


def make_strategy() -> tf.distribute.Strategy:
    """Call first in a training process: collective ops must be configured before any other TF op."""
    for gpu in tf.config.list_physical_devices("GPU"):
        tf.config.experimental.set_memory_growth(gpu, True)
    kind = strategy_kind(os.environ.get("TF_CONFIG"), len(tf.config.list_physical_devices("GPU")))
    if kind == MULTI_WORKER:
        return tf.distribute.MultiWorkerMirroredStrategy()
    if kind == MIRRORED:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def driver_without_gpus() -> None:
    """A Ray run's driver only checks the data and the backbone: leave the GPUs to the workers (a
    TensorFlow process takes all of a GPU's memory by default). Call before any other TF op."""
    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:  # devices already initialised in this process
        pass


@dataclasses.dataclass(frozen=True)
class Worker:
    """This process's place among the data-parallel workers."""

    rank: int = 0
    world_size: int = 1

    @property
    def is_chief(self) -> bool:
        return self.rank == 0
