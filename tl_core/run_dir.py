"""The run directory: every file name in it, the refusal to mix runs, resuming, and what a killed run left.

Every file is written through artifacts.atomic_path / atomic_directory (a temporary name, then a
rename), so a file under its final name is complete; remove_temporaries clears what a killed
process was writing.
"""
import dataclasses
import datetime
import json
import os
import re
import shutil
from pathlib import Path

from tl_core import artifacts, storage
from tl_core.config import FIRST_FIELDS, VERSION_KEY, TrainConfig

# Files of a run directory.
CONFIG_FILE = "config.json"
SKIPPED_FILES = "skipped_files.json"  # with --skip-bad-files: each file left out, with the reason
TFLITE_FLOAT = "model.tflite"  # with --export-tflite
TFLITE_QUANTIZED = "model_dynamic_range.tflite"
LABELS_FILE = "labels.txt"
CLASS_NAMES_FILE = "class_names.json"
HISTORY_JSON = "history.json"
HISTORY_PARQUET = "history.parquet"
METRICS_FILE = "metrics.json"
HISTORY_PLOT = "history.png"
CONFUSION_PLOT = "confusion_matrix.png"
MODEL_DIR = "model"
CHECKPOINT_DIR = "checkpoints"
SHARDS_DIR = "shards"
RAY_DIR = "ray"  # Ray Train's own checkpoints, in distributed runs
FEATURES_DIR = "features"  # cached training features that did not fit feature_cache_memory_mb
TENSORBOARD_DIR = "tensorboard"  # event files: `tensorboard --logdir <run or runs/>`
FED_BATCH_PLOT = "augmented_batch.png"  # the first training batch as the model receives it
MLFLOW_RUN_FILE = "mlflow_run.json"  # with MLflow: the MLflow run a resumed run continues (tracking/mlflow_run.py)
MLFLOW_UNLOGGED_FILE = "mlflow_unlogged.json"  # what could not reach the MLflow server, when it was gone at the end


# Everything a run writes besides its config (--overwrite removes exactly these).
RUN_FILES = (CHECKPOINT_DIR, HISTORY_JSON, HISTORY_PARQUET, METRICS_FILE, MODEL_DIR, HISTORY_PLOT, CONFUSION_PLOT,
             CLASS_NAMES_FILE, SHARDS_DIR, RAY_DIR, SKIPPED_FILES, FEATURES_DIR, TFLITE_FLOAT, TFLITE_QUANTIZED, LABELS_FILE,
             TENSORBOARD_DIR, FED_BATCH_PLOT, MLFLOW_RUN_FILE, MLFLOW_UNLOGGED_FILE)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


class RunDirectoryError(ValueError):
    pass


def default_output_dir(prefix: str = "") -> str:
    """runs/<prefix><UTC timestamp>, with a suffix when that directory exists (two runs in one second)."""
    stamp = Path("runs") / (prefix + datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S"))
    path, suffix = stamp, 1
    while path.exists():
        suffix += 1
        path = stamp.with_name(f"{stamp.name}-{suffix}")
    return str(path)


RESUME_MAY_CHANGE = ("epochs", "fine_tune_epochs", "head_cycle_ends")  # a resumed run may train longer (its cycles follow)
PATH_FIELDS = ("data_dir", "output_dir", "cache_dir")


def changed_settings(saved: TrainConfig, config: TrainConfig, ignore=RESUME_MAY_CHANGE) -> list[str]:
    """The settings of config that differ from a saved run's, as flags ("--batch-size 50 (the run has 100)")."""
    changed = []
    for field in dataclasses.fields(TrainConfig):
        ours, theirs = getattr(config, field.name), getattr(saved, field.name)
        if field.name in PATH_FIELDS and ours and theirs:  # "runs/X/" is "runs/X"
            same = storage.canonical(ours) == storage.canonical(theirs)
        else:
            same = ours == theirs
        if not same and field.name not in ignore:
            changed.append(f"--{field.name.replace('_', '-')} {ours} (the run has {theirs})")
    return changed


def resume_config(run_dir: str | Path, overrides: dict) -> TrainConfig:
    """The configuration saved in run_dir, with the overrides given for resuming it (checked by prepare_run_dir)."""
    saved = storage.join(run_dir, CONFIG_FILE)  # run_dir: a path or a URI (training/run_store.py)
    if not storage.exists(saved):
        raise RunDirectoryError(f"--resume: {run_dir} holds no run to resume (no {CONFIG_FILE})")
    values = json.loads(storage.read_bytes(saved))
    return dataclasses.replace(TrainConfig.from_dict(values), **{**overrides, "output_dir": str(run_dir)})


def prepare_run_dir(config: TrainConfig, run_dir: Path | None = None, *, overwrite: bool = False,
                    resume: bool = False) -> TrainConfig:
    """Resolve the output directory; refuse to mix a new run into an existing one; the run's configuration, saved in
    run_dir (default: config.output_dir, a local path; a run at a URI is staged first, training/run_store.py)."""
    config = dataclasses.replace(config, output_dir=config.output_dir or default_output_dir())
    run_dir = Path(run_dir) if run_dir is not None else storage.local_path(config.output_dir, "--output-dir")
    saved = run_dir / CONFIG_FILE
    if resume:
        if not saved.exists():
            raise RunDirectoryError(f"--resume: {run_dir} holds no run to resume (no {CONFIG_FILE})")
        previous = TrainConfig.from_json(saved)
        # The run is where its directory is now: a run directory copied or moved (a registry's recovery copies one)
        # resumes there, whatever location its config.json was written at.
        changed = changed_settings(previous, config, ignore=(*RESUME_MAY_CHANGE, "output_dir"))
        if changed:
            raise RunDirectoryError(
                f"--resume: {', '.join(changed)}: a run resumes with its saved configuration ({saved}); "
                f"only --epochs and --fine-tune-epochs may change. To train with other settings, start a new run")
        config = dataclasses.replace(previous.trained_longer(config.epochs), fine_tune_epochs=config.fine_tune_epochs,
                                     output_dir=config.output_dir)
    elif claim_output(run_dir, overwrite=overwrite, continues="that run", replaces="replace it") == "overwrite":
        if not is_run(run_dir):  # nothing in it is a run's to replace: a name a run writes is someone else's file
            clashing = [name for name in (CONFIG_FILE, *RUN_FILES) if (run_dir / name).exists()]
            if clashing:
                raise RunDirectoryError(f"--overwrite: {run_dir} is not a run's directory (no {CONFIG_FILE} of a run) and "
                                        f"holds {', '.join(clashing)}, which a run would replace: choose another --output-dir")
        for name in RUN_FILES:  # nothing of the old run survives next to the new one
            _remove(run_dir / name)
    remove_temporaries(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        artifacts.write_json(saved, config.to_dict())
    except OSError as error:  # read-only file system, permissions, disk full
        raise RunDirectoryError(f"cannot write the run directory {run_dir}: {error.strerror}; "
                                "choose another --output-dir, or fix its permissions or free space") from None
    return config


def is_run(location) -> bool:
    """A run's directory (a path or a URI): its config.json is a configuration this job wrote (of any version:
    config.py)."""
    saved = storage.join(location, CONFIG_FILE)
    try:
        values = json.loads(storage.read_bytes(saved)) if storage.exists(saved) else None
    except (OSError, ValueError):
        return False
    return isinstance(values, dict) and (VERSION_KEY in values or FIRST_FIELDS <= set(values))


def check_apart(output_dir, data_dir) -> None:
    """An output directory that is, holds or sits inside the data directory is refused in one line, before anything is
    written: outputs would land among the data, or --overwrite replace a part of it."""
    if not data_dir or not output_dir:
        return
    output, data = storage.canonical(output_dir), storage.canonical(data_dir)
    if output == data or output.startswith(data.rstrip("/") + "/") or data.startswith(output.rstrip("/") + "/"):
        relation = "is" if output == data else "sits inside" if output.startswith(data) else "holds"
        raise RunDirectoryError(f"--output-dir {storage.display(output)} {relation} the data directory "
                                f"{storage.display(data)}: outputs would land among the images, or replace some; choose "
                                "an --output-dir outside the data")


# The names artifacts.atomic_path and atomic_directory write under: "." + name + "." + 8 random characters.
TEMPORARY = re.compile(r"^\..+\.[a-z0-9_]{8}(\.tmp)?$")


def holds_files(location) -> bool:
    """Whether location (a directory, or a prefix at a URI) holds anything but the temporary files of a start that was
    stopped before it wrote its first file (those are removed by remove_temporaries)."""
    if storage.is_uri(location):
        return storage.is_dir(location) and any(not TEMPORARY.match(storage.name(path))
                                                for path in storage.walk(location).paths)
    directory = Path(location)
    return directory.is_dir() and any(not TEMPORARY.match(entry.name) for entry in directory.iterdir())


def claim_output(location, *, resume: bool = False, overwrite: bool = False, continues: str | None = None,
                 replaces: str | None = None, flag: str = "--output-dir") -> str:
    """How a command uses its output location (a path or a URI), decided the same way for every command: "resume"
    (continue what is there: the caller checks it is its own), "new" (nothing there but what a stopped start left) or
    "overwrite"; files there without resume or overwrite are refused in one line, before anything is written, naming
    what the command's flags do: continues (what --resume continues, e.g. "that run"; None: the command cannot resume)
    and replaces (what --overwrite does, e.g. "replace it"; None: the command cannot overwrite)."""
    if resume and continues:
        return "resume"
    if not holds_files(location):
        return "new"
    if overwrite and replaces:
        return "overwrite"
    options = [f"--resume to continue {continues}"] * bool(continues) + [f"--overwrite to {replaces}"] * bool(replaces)
    fix = f"pass {', '.join(options)}, or choose another {flag}" if options else f"choose another {flag}"
    raise RunDirectoryError(f"{storage.display(location)} already holds files; {fix}")


def check_results_dir(location, *, overwrite: bool, what: str, data_dir=None) -> None:
    """Where a command that is not a training run (jobs.evaluate, jobs.audit) writes its results, a path or a URI:
    never a training run's directory (its metrics.json and audit are the run's own, which retraining reads), never
    among the data, and an existing directory that holds files only with overwrite. A RunDirectoryError in one line,
    before anything is written."""
    check_apart(location, data_dir)
    if is_run(location):
        raise RunDirectoryError(f"{storage.display(location)} is a training run's directory: {what} would replace its "
                                f"own files (retraining reads its {METRICS_FILE}); give --output-dir a directory of its own")
    claim_output(location, overwrite=overwrite, replaces=f"write {what} into it")


def remove_temporaries(run_dir: Path) -> None:
    """What a killed process was writing when it died, anywhere in the run directory (Ray's own ray/ excepted)."""
    for folder, folders, files in os.walk(run_dir, topdown=True):
        if Path(folder) == run_dir and RAY_DIR in folders:
            folders.remove(RAY_DIR)
        for name in [name for name in folders if TEMPORARY.match(name)]:
            folders.remove(name)
            _remove(Path(folder) / name)
        for name in files:
            if TEMPORARY.match(name):
                _remove(Path(folder) / name)


