"""jobs.tune: a Ray Tune search over the head, on backbone features computed once, then one final run.

  1. check the data (as every run does) and compute the backbone's features of the training and validation
     images once (features.py: Ray tasks, Parquet under <search>/features/);
  2. carve the tuning split from the training images (a seeded, stratified holdout, or k-fold for small sets):
     trials never see the validation images;
  3. run the trials (trial.py) on Ray Tune, ASHA stopping poor ones early; the trials' features are put in
     Ray's object store once;
  4. write trials.parquet, trials.png and best_config.json (the base configuration with the best trial's
     settings: what `jobs.train --config` and `jobs.retrain --config` take);
  5. train the best configuration once on all training images into <search>/final (a normal run directory,
     reusing the features of step 1) and report its validation accuracy: the validation set's only use.

An interrupted search continues with --resume: the features are read back, Ray Tune restores its trials
(finished ones are kept, unfinished ones start again) and the final run resumes from its checkpoint.
"""
import dataclasses
import json
import logging
import os
import signal
import time
from pathlib import Path

from ray import tune
from ray.tune import Callback
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search import BasicVariantGenerator

from tl_core import artifacts, interrupts, progress, ray_session, storage
from tl_core.config import TrainConfig, option
from tl_core.data.images import tuning_folds
from tl_core.metrics import SCORES
from tl_core.tracking import Trackers
from tl_core.training import job
from tl_core.run_dir import CONFIG_FILE, METRICS_FILE, MLFLOW_RUN_FILE, RunDirectoryError, claim_output, remove_temporaries
from tl_core.tuning import features as tuning_features
from tl_core.tuning.report import FAILED, STOPPED, best_trial, plot_trials, trial_number, trial_rows
from tl_core.tuning.space import DEFAULT_SPACE, SEARCHABLE, check_space, max_epochs, read_space, to_tune
from tl_core.tuning.trial import TUNING_ACCURACY, TUNING_LOSS, TUNING_METRICS, TUNING_SCORE, run_trial

# Files of a search directory.
SEARCH_FILE = "tune.json"  # the base configuration, these settings and the search space: what --resume continues
FEATURES_DIR = "features"
TUNING_SPLIT_FILE = "tuning_split.parquet"  # each training image's fold
RAY_TUNE_DIR = "search"  # Ray Tune's experiment (trial results, its state for restoring)
TRIALS_FILE = "trials.parquet"
TRIALS_PLOT = "trials.png"
BEST_CONFIG = "best_config.json"
FINAL_RUN = "final"
SUMMARY_FILE = "summary.json"
SEARCH_FILES = (SEARCH_FILE, FEATURES_DIR, TUNING_SPLIT_FILE, RAY_TUNE_DIR, TRIALS_FILE, TRIALS_PLOT, BEST_CONFIG, FINAL_RUN,
                SUMMARY_FILE, MLFLOW_RUN_FILE)


@dataclasses.dataclass
class TuneSettings:
    trials: int = option(32, "trials to run (each samples the search space once)")
    max_concurrent: int = option(0, "trials at once (0: as many as the cluster's CPUs allow, --cpus-per-trial each)")
    search_space: str | None = option(None, "JSON or YAML file replacing the default search space (see docs/tuning.md: "
                                      "keys are head settings, values distributions such as {\"loguniform\": [1e-4, 1e-2]})")
    tuning_split: float = option(0.2, "fraction of each class of the training images that scores the trials "
                                 "(k-fold: 1/k of them per fold)")
    folds: int = option(0, f"score each trial by k-fold cross-validation over the training images (1: one holdout; "
                        f"0: k-fold with k = 1/--tuning-split below {tuning_features.KFOLD_BELOW} training images, else one "
                        "holdout)")
    grace_period: int = option(10, "epochs every trial runs before the early-stopping scheduler (ASHA) may stop it")
    cpus_per_trial: int = option(1, "CPUs Ray reserves for each trial (its TensorFlow threads)")
    gpus_per_trial: float = option(0.0, "GPUs (or a fraction) for each trial: a head on features is small, CPUs suffice")
    score: str = option("accuracy", "what the trials are ranked by on the tuning images: 'accuracy', "
                        "'balanced_accuracy' (the mean of the classes' recall: for imbalanced classes) or 'macro_f1'; "
                        "ties broken by the tuning loss")

    def __post_init__(self):
        for name in ("trials", "grace_period", "cpus_per_trial"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name in ("max_concurrent", "folds"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise ValueError(f"{name} must be a non-negative integer, got {getattr(self, name)!r}")
        if not 0 < self.tuning_split < 1:
            raise ValueError(f"tuning_split must be between 0 and 1, got {self.tuning_split!r}")
        if self.score not in SCORES:
            raise ValueError(f"score must be one of {', '.join(SCORES)}, got {self.score!r}")
        if not self.gpus_per_trial >= 0:
            raise ValueError(f"gpus_per_trial must be zero or positive, got {self.gpus_per_trial!r}")


def check_searchable(config: TrainConfig) -> None:
    """Trials train heads on features of the images as they are: a configuration that changes them every step
    cannot be searched this way."""
    if not config.uses_feature_cache or config.uses_feature_bank:
        raise ValueError("jobs.tune trains every trial's head on backbone features computed once, of the images as they "
                         "are: it cannot search with --augment, --no-cache-features or --adapt-batchnorm")


def prepare_search_dir(location, *, overwrite: bool, resume: bool) -> None:
    """Refuse to mix a new search into an existing one at location, a path or a URI (with overwrite: remove the old
    one's files)."""
    if resume:
        if not storage.exists(storage.join(location, SEARCH_FILE)):
            raise RunDirectoryError(f"--resume: {storage.display(location)} holds no search to continue (no {SEARCH_FILE})")
    elif claim_output(location, overwrite=overwrite, continues="that search", replaces="replace it") == "overwrite":
        for name in SEARCH_FILES:
            storage.delete(storage.join(location, name))
    if not resume and not storage.is_uri(location) and Path(location).exists():
        remove_temporaries(Path(location))  # what a search stopped before its first file left


def saved_search(directory: Path) -> tuple[TrainConfig, TuneSettings, dict]:
    saved = json.loads((directory / SEARCH_FILE).read_text())
    return TrainConfig.from_dict(saved["config"]), TuneSettings(**saved["settings"]), saved["space"]


def trial_log(total: int, searched: list):
    """A Ray Tune callback printing a line per finished trial, on the driver (pickled with the Tuner: no closures)."""
    class TrialLines(Callback):
        def __init__(self):
            self.finished = 0

        def on_trial_complete(self, iteration, trials, trial, **info):
            self.finished += 1
            result, config = trial.last_result or {}, trial.config
            ran, planned = result.get("epochs_run", 0), config.get("epochs")
            how = f"stopped at epoch {ran}" if planned and ran < planned else f"{ran} epochs"
            settings = "  ".join(f"{key} {config[key]:.3g}" if isinstance(config[key], float) else f"{key} {config[key]}"
                                 for key in searched if key in config)
            print(f"[{self.finished:>3}/{total}] trial {trial_number(trial.trial_id)} ({how}): tuning accuracy "
                  f"{result.get(TUNING_ACCURACY, float('nan')):.4f}  loss {result.get(TUNING_LOSS, float('nan')):.4f}  "
                  f"{settings}", flush=True)

        def on_trial_error(self, iteration, trials, trial, **info):
            self.finished += 1
            print(f"[{self.finished:>3}/{total}] trial {trial_number(trial.trial_id)} failed: see {trial.path}", flush=True)

    return TrialLines()


def make_tuner(config: TrainConfig, settings: TuneSettings, space: dict, data, location, *, resume: bool):
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # with verbose=0, no tables of Ray Tune's own: our lines only
    logging.getLogger("ray.tune").setLevel(logging.WARNING)

    trainable = tune.with_resources(
        tune.with_parameters(run_trial, data=data, base=dataclasses.asdict(config), threads=settings.cpus_per_trial,
                             score=settings.score),
        {"cpu": settings.cpus_per_trial, "gpu": settings.gpus_per_trial})
    path, filesystem = storage.ray_storage(storage.absolute(location))  # Ray Tune's experiment in the search
    experiment = f"{path}/{RAY_TUNE_DIR}"
    lines = trial_log(settings.trials, [key for key in SEARCHABLE if key in space])
    if resume and tune.Tuner.can_restore(experiment, storage_filesystem=filesystem):
        return tune.Tuner.restore(experiment, trainable, resume_unfinished=True, param_space=to_tune(space),
                                  storage_filesystem=filesystem)
    horizon = max_epochs(space, config)
    scheduler = ASHAScheduler(time_attr="training_iteration", max_t=horizon, grace_period=min(settings.grace_period, horizon),
                              reduction_factor=3)
    return tune.Tuner(
        trainable, param_space=to_tune(space),
        tune_config=tune.TuneConfig(metric=TUNING_SCORE, mode="max", num_samples=settings.trials, scheduler=scheduler,
                                    # The generator's own limit: TuneConfig's max_concurrent_trials is ignored beside it.
                                    search_alg=BasicVariantGenerator(random_state=config.seed,
                                                                     max_concurrent=settings.max_concurrent),
                                    reuse_actors=True),
        run_config=tune.RunConfig(storage_path=path, storage_filesystem=filesystem, name=RAY_TUNE_DIR, verbose=0,
                                  callbacks=[lines]))


def fit_gracefully(tuner):
    """(tuner.fit()'s results, whether it was interrupted). Ctrl-C or SIGTERM becomes Ray Tune's own stop signal
    (SIGUSR1): it saves the search's state and fit() returns; a second one stops at once."""
    interrupted = []

    def stop(signum, frame):
        if interrupted:
            interrupts.stop(signum, frame)
        interrupted.append(signum)
        interrupts.requested.set()
        # Ray Tune's lines about stopping (its own resume advice, Tuner.restore, and trials without results) would
        # stand beside the command's: "Interrupted." and `jobs.tune --resume`.
        logging.getLogger("ray.tune").setLevel(logging.ERROR)
        signal.raise_signal(signal.SIGUSR1)

    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"  # this handler instead of Ray Tune's, so that we know
    previous = {number: signal.signal(number, stop) for number in (signal.SIGINT, signal.SIGTERM)}
    try:
        return tuner.fit(), bool(interrupted)
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def write_tuning_split(path: Path, source, fold_of_row) -> None:
    rows = [{"path": image, "label": int(label), "fold": int(fold)}
            for image, label, fold in zip(source.names(), source.labels, fold_of_row)]
    artifacts.write_parquet(path, rows)


def search(config: TrainConfig, settings: TuneSettings, *, resume: bool = False, overwrite: bool = False,
           tracking=None, log=print) -> dict:
    """Run (or continue) a search into config.output_dir (a path or a URI); the summary (also in summary.json).
    tracking: the search in MLflow (tracking/mlflow_search.MlflowSearch: a parent run, trials and the final run its
    children); None: no MLflow."""
    started, location = time.perf_counter(), config.output_dir
    ray_session.check()  # before anything is written: ray.init() would wait without end where no Ray answers
    if tracking:
        tracking.check()
    prepare_search_dir(location, overwrite=overwrite, resume=resume)
    # The search's own small files are staged (with resume, those it reads back first) and published as it goes; the
    # features, Ray Tune's experiment and the final run are written to location directly.
    with storage.staging(location, pull=(SEARCH_FILE, TUNING_SPLIT_FILE) if resume else (), prefix="tl-search-") as (
            directory, publish):
        try:
            summary = _search(config, settings, location, directory, publish, started=started, resume=resume,
                              tracking=tracking, log=log)
        except BaseException as error:
            if tracking:
                tracking.safely("the search's status", tracking.close, Trackers.status_of(error))
            raise
        if tracking:
            tracking.safely("the search's results", tracking.close, "FINISHED", directory, summary)
        return summary


def _search(config: TrainConfig, settings: TuneSettings, location, directory: Path, publish, *, started: float,
            resume: bool, tracking, log) -> dict:
    """search()'s work: the search's own files in directory (published to location), the rest at location."""
    if resume:
        config, settings, space = saved_search(directory)
        log(f"Continuing the search in {storage.display(location)} ({SEARCH_FILE})", flush=True)
    else:
        check_searchable(config)
        space = check_space(read_space(settings.search_space) if settings.search_space else DEFAULT_SPACE, config)
    checked = job.check(config, log)
    sources = checked.sources
    if not resume:  # from here on, --resume continues the search
        artifacts.write_json(directory / SEARCH_FILE, {"config": config.to_dict(), "settings": dataclasses.asdict(settings),
                                                       "space": space})
        publish()
    if tracking:  # the parent run, created or (its id in the search's files) continued
        tracking.safely("the search's run", tracking.open, directory, config, dataclasses.asdict(settings), space)
        publish()
    if not progress.is_quiet():
        log(f"Search directory {storage.display(location)}\nBase configuration:\n{config.describe()}\n"
            f"Search space: {json.dumps(space)}", flush=True)

    checked_at = time.perf_counter()
    ray_session.connect()
    gpus = config.gpus_per_worker if config.use_gpu else 0
    ray_session.require([{"CPU": config.cpus_per_worker, "GPU": gpus}], "the search's backbone features")
    ray_session.require([{"CPU": settings.cpus_per_trial, "GPU": settings.gpus_per_trial}], "a trial")
    features = tuning_features.compute_features(config, sources, storage.join(location, FEATURES_DIR), workers=config.num_workers,
                                                gpus=gpus)
    features_at = time.perf_counter()
    log(f"Backbone features of {len(sources.train)} training and {len(sources.validation)} validation images "
        f"(Ray started): {features_at - checked_at:.1f}s", flush=True)

    folds = settings.folds or tuning_features.default_folds(len(sources.train), settings.tuning_split)
    fold_of_row = tuning_folds(features.train.labels, folds, settings.tuning_split, config.seed)
    write_tuning_split(directory / TUNING_SPLIT_FILE, sources.train, fold_of_row)
    publish()
    data = tuning_features.TuningData.split(features.train, fold_of_row, sources.train.class_names)
    scoring = (f"{folds}-fold cross-validation over the {len(sources.train)} training images" if folds > 1 else
               f"a tuning split of {int((fold_of_row == 0).sum())} of the {len(sources.train)} training images")
    log(f"Running {settings.trials} trials, scored by {scoring}; the validation images are kept for the final run",
        flush=True)

    results, interrupted = fit_gracefully(make_tuner(config, settings, space, data, location, resume=resume))
    if interrupted:
        raise KeyboardInterrupt  # Ray Tune saved its state: --resume continues
    searched_at = time.perf_counter()
    rows = trial_rows(results, dataclasses.asdict(config))
    artifacts.write_parquet(directory / TRIALS_FILE, rows)
    if tracking:
        tracking.safely("the trials", tracking.log_trials, rows, [key for key in SEARCHABLE if key in space])
    best = best_trial(rows)
    plot_trials(rows, best, directory / TRIALS_PLOT)
    best_config = dataclasses.replace(config, output_dir=None, **{key: best[key] for key in SEARCHABLE})
    artifacts.write_json(directory / BEST_CONFIG, best_config.to_dict())
    publish()
    stopped = sum(row["status"] == STOPPED for row in rows)
    settings_text = ", ".join(f"{key} {best[key]}" for key in SEARCHABLE if key in space)
    log(f"Best of {len(rows)} trials ({stopped} stopped early) by {settings.score}: trial {best['trial']}, tuning "
        f"{settings.score.replace('_', ' ')} {best[TUNING_METRICS[settings.score]]:.4f} ({settings_text}); "
        f"written to {storage.join(location, BEST_CONFIG)}", flush=True)

    metrics = final_run(dataclasses.replace(best_config, output_dir=storage.join(location, FINAL_RUN)), checked,
                        features, log, trackers=tracking.final_run_trackers() if tracking else None)
    finished = time.perf_counter()
    summary = {"trials": len(rows), "stopped_early": stopped, "failed": sum(row["status"] == FAILED for row in rows),
               "folds": folds, "score": settings.score, "best_trial": best["trial"],
               **{f"best_{TUNING_METRICS[name]}": best[TUNING_METRICS[name]] for name in SCORES},
               "best_settings": {key: best[key] for key in SEARCHABLE},
               **{f"final_validation_{name}": metrics[name] for name in (*SCORES, "loss")},
               "seconds": {"check": checked_at - started, "features": features_at - checked_at,
                           "trials": searched_at - features_at, "final_run": finished - searched_at,
                           "total": finished - started}}
    artifacts.write_json(directory / SUMMARY_FILE, summary)
    publish()
    return summary


def final_run(config: TrainConfig, checked, features, log, trackers=None) -> dict:
    """The best configuration trained once on all training images, reusing the search's features (locally); a
    final run that was interrupted resumes from its checkpoint. trackers: what records it (job.run's)."""
    run_dir = config.output_dir  # a path or a URI
    if storage.exists(storage.join(run_dir, METRICS_FILE)):
        return json.loads(storage.read_bytes(storage.join(run_dir, METRICS_FILE)))
    resume = storage.exists(storage.join(run_dir, CONFIG_FILE))
    log(f"Training the best configuration on all training images into {storage.display(run_dir)}", flush=True)
    return job.run(config, resume=resume, checked=checked, features=None if config.uses_ray else features,
                   trackers=trackers, log=log)
