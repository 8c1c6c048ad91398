"""The training job as the command line runs it: check the data, prepare the run directory, train.

One function for `python -m jobs.train` and `python -m jobs.retrain`, locally or on Ray Train.
"""
import dataclasses
import json
from pathlib import Path

from tl_core import progress, ray_session, storage
from tl_core.config import TrainConfig
from tl_core.data.checks import format_bad_files, write_skipped
from tl_core.data.sources import DatasetCheck, Sources, check_dataset, describe_check, enforce_policy
from tl_core.model.assets import cache_dir
from tl_core.model.backbones import check_backbone_options
from tl_core.run_dir import (CHECKPOINT_DIR, CONFIG_FILE, HISTORY_JSON, METRICS_FILE, RAY_DIR, SKIPPED_FILES, RunDirectoryError,
                             check_apart, default_output_dir, prepare_run_dir)
from tl_core.training.distribute import driver_without_gpus
from tl_core.training.recorder import LocalCheckpoints
from tl_core.training.run_store import POINTER, staged
from tl_core.training.train import check_backbone, train, write_fed_batch


def check_data(config: TrainConfig, log=print) -> tuple[DatasetCheck, list]:
    """The dataset and the files a run would skip; DatasetError if bad files stop the run."""
    checked = check_dataset(config.data, cache_dir(config.cache_dir), batch_size=config.batch_size,
                            workers=config.num_workers)
    log(describe_check(checked), flush=True)
    return checked, enforce_policy(checked, config.bad_files)


@dataclasses.dataclass
class Checked:
    """What a run's pre-flight check found: the dataset's check, the files the run skips and, for a run in this process,
    the backbone's SavedModel it loaded (the run takes it: one read, not two)."""

    dataset: DatasetCheck
    skipped: list
    backbone: object = None

    @property
    def sources(self) -> Sources:
        """What the run trains on: the checked sources without the files it skips."""
        return self.dataset.sources(self.skipped)


def check(config: TrainConfig, log=print) -> Checked:
    """check_data, and the backbone at the image size: BackboneError if it does not load or build."""
    check_backbone_options(config.backbone, fine_tune_epochs=config.fine_tune_epochs,
                           fine_tune_layers=config.fine_tune_layers, bf16=config.bf16,
                           adapt_batchnorm=config.adapt_batchnorm)
    checked, skipped = check_data(config, log)
    if config.uses_ray:
        driver_without_gpus()
    loaded = check_backbone(config, len(checked.train.class_names))
    return Checked(checked, skipped, None if config.uses_ray else loaded)  # Ray's workers load their own


def show_batch(config: TrainConfig, path: Path, log=print) -> None:
    """Check the data, then draw the first training batch exactly as the model would receive it into path
    (train.write_fed_batch); no run directory, no training."""
    checked, skipped = check_data(config, log)
    train_images = checked.sources(skipped).train
    write_fed_batch(config, train_images.shard(0, config.num_workers, seed=config.seed), path)


def checkpoint_location(config: TrainConfig) -> str:
    if config.uses_ray:
        return f"{storage.join(config.output_dir, RAY_DIR)} (Ray Train's checkpoints)"
    return storage.join(config.output_dir, CHECKPOINT_DIR)


def has_checkpoint(config: TrainConfig) -> bool:
    """Whether the run directory (a path or a URI) holds a completed epoch's checkpoint that --resume continues from
    (Ray Train's, in a Ray run: its ray/ directory exists from the start, checkpoints appear in it after each epoch;
    a local run at a URI: the pointer its mirror uploads after the checkpoint, training/run_store.py)."""
    try:
        if config.uses_ray:
            ray_dir = storage.join(config.output_dir, RAY_DIR)
            return storage.is_dir(ray_dir) and any(name.startswith("checkpoint_") for name in storage.list_dirs(ray_dir))
        if storage.is_uri(config.output_dir):
            return storage.exists(storage.join(config.output_dir, POINTER))
    except storage.StorageError:  # the store is unreachable: its error has said what to do
        return False
    return LocalCheckpoints(Path(config.output_dir)).latest() is not None


def check_resume_point(config: TrainConfig, log=print) -> None:
    """A resumed run (at config.output_dir, a path or a URI) continues from a checkpoint of its last completed epoch,
    or says why it cannot."""
    run_dir, history = config.output_dir, storage.join(config.output_dir, HISTORY_JSON)
    completed = len(json.loads(storage.read_bytes(history))) if storage.exists(history) else 0
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


def run(config: TrainConfig, *, overwrite: bool = False, resume: bool = False, checked: Checked | None = None,
        features=None, trackers=None, log=print) -> dict:
    """Check, then train into config.output_dir (a path or a URI; default runs/<UTC timestamp>); the final metrics.

    The data is listed and checked once, here (or by the caller: checked=check(config)), and the
    checked sources are what training uses. Locally, or on Ray Train when config.uses_ray. features: the
    backbone's features of those sources, computed already (jobs.tune), for a local run; Ray workers compute
    their own. trackers: what records the run (tl_core/tracking; default: TensorBoard's files), checked first."""
    config = dataclasses.replace(config, output_dir=config.output_dir or default_output_dir())
    check_apart(config.output_dir, config.data_dir)  # before anything is written
    for tracker in trackers or ():
        tracker.check()  # a tracking server that does not answer: refused before anything is written
    if config.uses_ray:
        ray_session.check()  # before anything is written: ray.init() would wait without end where no Ray answers
    checked = checked or check(config, log)  # before the run directory exists: a failed check leaves nothing
    with staged(config.output_dir, resume=resume, overwrite=overwrite, trains_here=not config.uses_ray, log=log) as run:
        config = prepare_run_dir(config, run.local, overwrite=overwrite, resume=resume)
        if resume:
            check_resume_point(config, log)
        if checked.skipped:
            write_skipped(run.local, checked.skipped)
            log(f"Skipping {len(checked.skipped)} bad file(s), listed in {run.local / SKIPPED_FILES}:\n"
                f"{format_bad_files(checked.skipped)}")
        if progress.is_quiet():
            log(f"Run directory {config.output_dir}; configuration in {run.local / CONFIG_FILE}", flush=True)
        else:
            log(f"Run directory {config.output_dir}\nConfiguration:\n{config.describe()}", flush=True)
        if config.uses_ray:
            from tl_core.training.ray_train import train_on_ray  # Ray Train takes seconds to import: a local run never does

            run.describe()  # the workers write into the run's location (or their own staging, for a URI)
            train_on_ray(absolute_paths(config), sources=checked.sources.absolute(), trackers=trackers)
            return json.loads(storage.read_bytes(storage.join(config.output_dir, METRICS_FILE)))
        return train(config, run_dir=run.local, sources=checked.sources, features=features, callbacks=run.callbacks,
                     trackers=trackers, backbone=checked.backbone)
