"""The training job as the command line runs it: check the data, prepare the run directory, train.

One function for `python -m jobs.train` and `python -m jobs.retrain`, locally or on Ray Train.
"""
import dataclasses
import json
from pathlib import Path

from tl_core.assets import cache_dir
from tl_core.backbones import check_backbone_options
from tl_core.config import TrainConfig
from tl_core.splits import DatasetCheck, check_dataset, describe_check, enforce_policy, format_bad_files, write_skipped
from tl_core.train import METRICS_FILE, prepare_run_dir, train


def check(config: TrainConfig, log=print) -> tuple[DatasetCheck, list]:
    """The dataset and the files a run would skip; DatasetError if bad files stop it."""
    check_backbone_options(config.backbone, fine_tune_epochs=config.fine_tune_epochs,
                           fine_tune_layers=config.fine_tune_layers, bf16=config.bf16)
    checked = check_dataset(config, cache_dir(config.cache_dir))
    log(describe_check(checked), flush=True)
    return checked, enforce_policy(checked, config.bad_files)


def absolute_paths(config: TrainConfig) -> TrainConfig:
    """Ray workers do not share the driver's working directory: give them absolute paths."""
    absolute = {name: str(Path(getattr(config, name)).resolve())
                for name in ("data_dir", "output_dir", "cache_dir") if getattr(config, name)}
    return dataclasses.replace(config, **absolute)


def run(config: TrainConfig, *, ray: bool = False, overwrite: bool = False, resume: bool = False,
        log=print) -> dict:
    """Check, then train into config.output_dir (which the caller has chosen); the final metrics."""
    _, skipped = check(config, log)  # before the run directory exists: a failed check leaves nothing
    config = prepare_run_dir(config, overwrite=overwrite, resume=resume)
    if skipped:
        write_skipped(Path(config.output_dir), skipped)
        log(f"Skipping {len(skipped)} bad file(s), listed in {Path(config.output_dir) / 'skipped_files.json'}:\n"
            f"{format_bad_files(skipped)}")
    log(f"Run directory {config.output_dir}\nConfiguration:\n{config.describe()}", flush=True)
    if ray or config.num_workers > 1:
        from tl_core.ray_train import train_on_ray

        train_on_ray(absolute_paths(config))
        return json.loads((Path(config.output_dir) / METRICS_FILE).read_text())
    return train(config)
