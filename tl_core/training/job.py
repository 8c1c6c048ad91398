"""The training job as the command line runs it: check the data, prepare the run directory, train.

One function for `python -m jobs.train` and `python -m jobs.retrain`, locally or on Ray Train.
"""
import dataclasses
import json
from pathlib import Path

from tl_core import progress, storage
from tl_core.config import TrainConfig
from tl_core.data.checks import format_bad_files, write_skipped
from tl_core.data.sources import DatasetCheck, check_dataset, describe_check, enforce_policy
from tl_core.model.assets import cache_dir
from tl_core.model.backbones import check_backbone_options
from tl_core.run_dir import (CHECKPOINT_DIR, CONFIG_FILE, HISTORY_JSON, METRICS_FILE, RAY_DIR, SKIPPED_FILES, RunDirectoryError,
                             prepare_run_dir)
from tl_core.training.distribute import driver_without_gpus
from tl_core.training.recorder import LocalCheckpoints
from tl_core.training.run_store import POINTER, staged
from tl_core.training.train import check_backbone, train, write_fed_batch


def check_data(config: TrainConfig, log=print) -> tuple[DatasetCheck, list]:
    """The dataset and the files a run would skip; DatasetError if bad files stop the run."""
    checked = check_dataset(config, cache_dir(config.cache_dir))
    log(describe_check(checked), flush=True)
    return checked, enforce_policy(checked, config.bad_files)


def check(config: TrainConfig, log=print) -> tuple[DatasetCheck, list]:
    """check_data, and the backbone at the image size: BackboneError if it does not load or build."""
    check_backbone_options(config.backbone, fine_tune_epochs=config.fine_tune_epochs,
                           fine_tune_layers=config.fine_tune_layers, bf16=config.bf16,
                           adapt_batchnorm=config.adapt_batchnorm)
    checked, skipped = check_data(config, log)
    if config.uses_ray:
        driver_without_gpus()
    check_backbone(config, len(checked.train.class_names))
    return checked, skipped


def show_batch(config: TrainConfig, path: Path, log=print) -> None:
    """Check the data, then draw the first training batch exactly as the model would receive it into path
    (train.write_fed_batch); no run directory, no training."""
    checked, skipped = check_data(config, log)
    train_images = checked.sources(skipped).train
    write_fed_batch(config, train_images.shard(0, config.num_workers, seed=config.seed), path)


def checkpoint_location(config: TrainConfig) -> str:
    run_dir = Path(config.output_dir)
    return f"{run_dir / RAY_DIR} (Ray Train's checkpoints)" if config.uses_ray else str(run_dir / CHECKPOINT_DIR)


def has_checkpoint(config: TrainConfig) -> bool:
    """Whether the run directory holds a completed epoch's checkpoint that --resume continues from (Ray Train's, in a
    Ray run: its ray/ directory exists from the start, checkpoints appear in it after each epoch)."""
    if storage.is_uri(config.output_dir):  # a local run, mirrored to the store (training/run_store.py)
        try:
            return storage.exists(storage.join(config.output_dir, POINTER))
        except storage.StorageError:  # the store is unreachable: its error has said what to do
            return False
    run_dir = Path(config.output_dir)
    if config.uses_ray:
        return (run_dir / RAY_DIR).is_dir() and any(path.name.startswith("checkpoint_")
                                                    for path in (run_dir / RAY_DIR).iterdir())
    return LocalCheckpoints(run_dir).latest() is not None


def check_resume_point(config: TrainConfig, log=print) -> None:
    """A resumed run continues from a checkpoint of its last completed epoch, or says why it cannot."""
    run_dir = Path(config.output_dir)
    history = run_dir / HISTORY_JSON
    completed = len(json.loads(history.read_text())) if history.exists() else 0
    found, where = has_checkpoint(config), checkpoint_location(config)
    if completed and not found:
        raise RunDirectoryError(f"--resume: {run_dir} completed {completed} epoch(s) but {where} holds no checkpoint "
                                "to continue from; start again with --overwrite")
    if not completed:
        log(f"--resume: no epoch of {run_dir} was completed; training starts from the first", flush=True)


def absolute_paths(config: TrainConfig) -> TrainConfig:
    """Ray workers do not share the driver's working directory: give them absolute paths."""
    absolute = {name: storage.canonical(getattr(config, name))
                for name in ("data_dir", "output_dir", "cache_dir") if getattr(config, name)}
    return dataclasses.replace(config, **absolute)


def run(config: TrainConfig, *, overwrite: bool = False, resume: bool = False, checked=None, features=None,
        log=print) -> dict:
    """Check, then train into config.output_dir (which the caller has chosen); the final metrics.

    The data is listed and checked once, here (or by the caller: checked=check(config)), and the
    checked sources are what training uses. Locally, or on Ray Train when config.uses_ray. features: the
    backbone's features of those sources, computed already (jobs.tune), for a local run; Ray workers compute
    their own."""
    if config.uses_ray:
        from tl_core import ray_session

        ray_session.check()  # before anything is written: ray.init() would wait without end where no Ray answers
    if config.uses_ray and storage.is_uri(config.output_dir):
        raise RunDirectoryError(f"--output-dir {config.output_dir}: a run on Ray Train writes to a disk its nodes share "
                                "so far; give a shared path (object storage works for local runs and for the data)")
    checked, skipped = checked or check(config, log)  # before the run directory exists: a failed check leaves nothing
    with staged(config, resume=resume, overwrite=overwrite, log=log) as (config, uploads):
        config = prepare_run_dir(config, overwrite=overwrite, resume=resume)
        if resume:
            check_resume_point(config, log)
        if skipped:
            write_skipped(Path(config.output_dir), skipped)
            log(f"Skipping {len(skipped)} bad file(s), listed in {Path(config.output_dir) / SKIPPED_FILES}:\n"
                f"{format_bad_files(skipped)}")
        if progress.is_quiet():
            log(f"Run directory {config.output_dir}; configuration in {Path(config.output_dir) / CONFIG_FILE}", flush=True)
        else:
            log(f"Run directory {config.output_dir}\nConfiguration:\n{config.describe()}", flush=True)
        if config.uses_ray:
            from tl_core.training.ray_train import train_on_ray

            train_on_ray(absolute_paths(config), sources=checked.sources(skipped).absolute())
            return json.loads((Path(config.output_dir) / METRICS_FILE).read_text())
        return train(config, sources=checked.sources(skipped), features=features, callbacks=uploads)
