"""The same training function on Ray Train workers: TensorflowTrainer + MultiWorkerMirroredStrategy.

Each worker runs tl_core.training.train.train unchanged, on its own equal shard of the training images.
Every epoch ends with a checkpoint reported through ray.train.report; when a worker dies, Ray
restarts the worker group (up to config.max_failures times) and training continues from the last
reported epoch. The chief (rank 0) writes the run's artifacts into config.output_dir, the same
layout as a local run, with Ray's own checkpoints under <output_dir>/ray. For an output directory at a URI, Ray
Train writes its checkpoints there through the storage seam's file system, and each worker stages its own files
(training/run_store.py): the workers share no file system.
"""
import logging
import tempfile
from pathlib import Path

import ray
import ray.train
from ray.train import Checkpoint, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
from ray.train.tensorflow import TensorflowTrainer

from tl_core import interrupts, progress, ray_session, storage, worker_env
from tl_core.config import TrainConfig
from tl_core.training.distribute import Worker
from tl_core.training.run_store import in_ray_worker
from tl_core.training.train import train
from tl_core.run_dir import RAY_DIR


class RayCheckpoints:
    """Epoch checkpoints reported to Ray Train; restored from ray.train.get_checkpoint() on restart."""

    def __init__(self):
        self._restored = None

    def latest(self) -> Path | None:
        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            return None
        self._restored = tempfile.TemporaryDirectory()
        return Path(checkpoint.to_directory(self._restored.name))

    def save(self, write, metrics: dict, worker: Worker) -> None:
        # Every worker writes (MWMS needs them all), each into its own directory; only the chief's
        # copy is reported, and report() is a barrier that all of them call once per epoch.
        with tempfile.TemporaryDirectory() as directory:
            write(Path(directory))
            checkpoint = Checkpoint.from_directory(directory) if worker.is_chief else None
            ray.train.report(metrics, checkpoint=checkpoint)


def train_loop_per_worker(loop_config: dict) -> None:
    interrupts.drop_exit_signals_in_callbacks()
    context = ray.train.get_context()
    worker = Worker(context.get_world_rank(), context.get_world_size())
    # One line per event, from the chief: no progress from the other workers, and none of the INFO
    # records Ray Train sends to the root logger (e.g. "Reporting training result ...", once per
    # worker and epoch, with the whole metrics dict), which LoggingConfig does not cover.
    progress.set_quiet(loop_config.get("quiet", False) or not worker.is_chief)
    logging.getLogger().setLevel(logging.WARNING)
    callbacks = loop_config["callbacks"](worker) if loop_config.get("callbacks") else ()
    config = TrainConfig.from_dict(loop_config["config"])
    with in_ray_worker(config.output_dir, worker.rank) as (run_dir, uploads):
        train(config, run_dir=run_dir, sources=loop_config.get("sources"), worker=worker, checkpoints=RayCheckpoints(),
              callbacks=[*callbacks, *uploads], trackers=loop_config.get("trackers"))


def train_on_ray(config: TrainConfig, *, sources=None, callbacks=None, trackers=None):
    """Run the job on config.num_workers Ray Train workers; connects to a running cluster if there is one.

    sources: the checked data (data.sources.Sources, absolute paths), handed to every worker. callbacks: a picklable
    function of the worker (training.distribute.Worker) -> extra Keras callbacks for its fit(), as train() takes them.
    trackers: what records the run, as train() takes them (picklable: the chief opens them)."""
    ray_session.connect()
    storage_path, filesystem = storage.ray_storage(config.output_dir)
    resources = {"CPU": config.cpus_per_worker}
    if config.use_gpu:
        resources["GPU"] = config.gpus_per_worker
    ray_session.require([resources] * config.num_workers, f"training on {config.num_workers} Ray Train worker(s)")
    trainer = TensorflowTrainer(
        train_loop_per_worker,
        train_loop_config={"config": config.to_dict(), "sources": sources, "callbacks": callbacks, "trackers": trackers,
                           "quiet": progress.is_quiet()},
        scaling_config=ScalingConfig(num_workers=config.num_workers, use_gpu=config.use_gpu,
                                     resources_per_worker=resources),
        run_config=RunConfig(
            name=RAY_DIR, storage_path=storage_path, storage_filesystem=filesystem,
            failure_config=FailureConfig(max_failures=config.max_failures),
            logging_config=LoggingConfig(log_level="WARNING"),  # not Ray Train's per-epoch INFO records
            worker_runtime_env={"env_vars": worker_env()},
        ),
    )
    return trainer.fit()
