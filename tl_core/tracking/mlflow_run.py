"""A run in MLflow: the tracker (tl_core/tracking) used when a tracking URI is given (`--tracking-uri`, or MLflow's own
MLFLOW_TRACKING_URI).

Parameters: every field of the configuration. Tags: what the run trained on (data directory and fingerprint,
backbone, library versions; a Ray job's submission id). Metrics per epoch with step = the epoch: loss, accuracy,
val_loss, val_accuracy, learning_rate, images_per_second, sent at most every SEND_EVERY_SECONDS; at the end `final_*` metrics,
overall and per class. Artifacts: the run's files (history, plots, metrics.json, config.json, the fed batch) and the
model, an MLflow pyfunc model of the SavedModel (mlflow_model.py). Status: FINISHED, FAILED, or KILLED (Ctrl-C,
SIGTERM). The run's id is kept in the run directory (RUN_FILE): a resumed run continues the same MLflow run, and logs
each epoch once.

A tracker is never worth a lost run: MLflow is imported and asked only here, its requests are bounded (CLIENT_DEFAULTS),
and when the server stops answering mid-run, one warning is printed and training goes on; what could not be logged
waits, is sent when the run ends if the server is back, and is otherwise listed in the run directory (UNLOGGED_FILE).
"""
import importlib.metadata
import json
import os
import sys
import tempfile
import time
import urllib.parse
import warnings
from pathlib import Path

from tl_core import artifacts
from tl_core.metrics import SCORES
from tl_core.run_dir import (CLASS_NAMES_FILE, CONFIG_FILE, CONFUSION_PLOT, FED_BATCH_PLOT, HISTORY_JSON, HISTORY_PARQUET,
                             HISTORY_PLOT, METRICS_FILE, MLFLOW_RUN_FILE, MLFLOW_UNLOGGED_FILE, MODEL_DIR, SKIPPED_FILES)
from tl_core.tracking import FINISHED, Tracker

RUN_FILE = MLFLOW_RUN_FILE  # {tracking_uri, experiment_id, run_id}: the MLflow run a resumed run continues
UNLOGGED_FILE = MLFLOW_UNLOGGED_FILE  # what could not reach the server, when it was still gone at the end
DEFAULT_EXPERIMENT = "tl-job"
EPOCH_METRICS = ("loss", "accuracy", "val_loss", "val_accuracy", "val_balanced_accuracy", "val_macro_f1", "learning_rate",
                 "images_per_second")
RUN_FILES = (CONFIG_FILE, HISTORY_JSON, HISTORY_PARQUET, METRICS_FILE, CLASS_NAMES_FILE, SKIPPED_FILES, HISTORY_PLOT,
             CONFUSION_PLOT, FED_BATCH_PLOT)
MODEL_ARTIFACT = "model"  # runs:/<run id>/model
# Epoch rows are sent at once, then at most this often (the rest with the results): the default job's 60 head epochs
# take a few seconds in all, and one request each was a measurable part of the job (benchmarks/tracking.py).
SEND_EVERY_SECONDS = 2.0
METRICS_PER_REQUEST = 1000  # MLflow's limit for log_batch
# MLflow's own defaults retry a server that is gone for minutes (7 retries with backoff, 120 s per request): a run
# would stall at every epoch. Set only where the user has not set them; and the run's address is said once, by close().
CLIENT_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
               "MLFLOW_HTTP_REQUEST_TIMEOUT": "10", "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"}
ENVIRONMENT_VARIABLE = "MLFLOW_TRACKING_URI"


class TrackingError(ConnectionError):
    """The tracking server cannot be used: one line, with the URI and what to do (exit 2)."""


def tracking_uri(given: str | None) -> str | None:
    """--tracking-uri, else MLflow's convention, MLFLOW_TRACKING_URI; None: no MLflow."""
    return given or os.environ.get(ENVIRONMENT_VARIABLE) or None


def shown(text: str, uri: str | None = None) -> str:
    """text (default: the URI itself) with the credentials of uri (https://user:token@host) masked: what may be printed
    or written into a run's files, which go to the bucket and the tracking server."""
    uri = text if uri is None else uri
    parts = urllib.parse.urlsplit(uri)
    if parts.username is None and parts.password is None:
        return text
    return text.replace(parts.netloc.rsplit("@", 1)[0] + "@", "***@")


def first_line(error: BaseException, uri: str | None = None) -> str:
    """The error's first line, with the credentials of uri (if any) masked."""
    line = (str(error).strip().splitlines() or [type(error).__name__])[0][:300]
    return shown(line, uri) if uri else line


def client(uri: str):
    """An MlflowClient for the tracking server and its registry, its requests bounded (CLIENT_DEFAULTS)."""
    for name, value in CLIENT_DEFAULTS.items():
        os.environ.setdefault(name, value)
    from mlflow import MlflowClient  # optional (.[mlflow]): imported where used

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def check_server(uri: str, what: str = "--tracking-uri / MLFLOW_TRACKING_URI") -> None:
    """One request that any MLflow tracking store answers; TrackingError naming the URI if it does not."""
    try:
        client(uri).search_experiments(max_results=1)
    except ImportError:
        raise TrackingError(f"tracking runs in MLflow ({shown(uri)}) needs the MLflow client: pip install -e '.[mlflow]'; "
                            f"or unset {what} to train without it") from None
    except Exception as error:  # MLflow raises its own, requests', or sqlalchemy's errors
        raise TrackingError(f"MLflow at {shown(uri)} does not answer: {first_line(error, uri)}. Check {what} (a server such as "
                            "http://host:5000, or sqlite:///path/mlflow.db), or unset it to train without MLflow") from None


class MLflow(Tracker):
    def __init__(self, uri: str, experiment: str = DEFAULT_EXPERIMENT, tags: dict | None = None, log=print):
        self.uri, self.experiment, self.tags, self.log = uri, experiment, dict(tags or {}), log

    def check(self) -> None:
        check_server(self.uri)

    # -- the calls train() makes, on the chief --

    def open(self, run_dir, config, tags, completed_epochs):
        self.run_dir, self.client = Path(run_dir), client(self.uri)
        self.pending, self.offline, self.run_id = [], False, None
        self.unsent, self.sent_at = [], float("-inf")
        saved = self.saved_run()
        tags = {name: str(value) for name, value in {**tags, **self.tags}.items()}
        if saved:
            self.run_id, self.experiment_id = saved["run_id"], saved["experiment_id"]
            self.attempt("the run's status", lambda: self.client.update_run(self.run_id, status="RUNNING"))
            self.logged_epochs = self.attempt("the epochs logged", self.last_logged_epoch, default=completed_epochs)
            self.attempt("the parameters", lambda: self.log_params(config, resumed=True))
            self.attempt("the tags", lambda: self.log_tags(tags))
            self.log(f"MLflow: continuing run {self.run_id} at {shown(self.uri)}", flush=True)
        else:
            self.logged_epochs = 0
            self.attempt("the run", lambda: self.create_run(tags, config))

    def log_epochs(self, history):
        self.unsent += [row for row in history if row["epoch"] > self.logged_epochs]
        if self.unsent:
            self.logged_epochs = self.unsent[-1]["epoch"]
            if time.monotonic() - self.sent_at >= SEND_EVERY_SECONDS:
                self.send_epochs()

    def send_epochs(self) -> None:
        rows, self.unsent, self.sent_at = self.unsent, [], time.monotonic()
        if rows:
            first, last = rows[0]["epoch"], rows[-1]["epoch"]
            self.attempt(f"epoch {last}" if first == last else f"epochs {first}-{last}", lambda: self.log_metric_rows(rows))

    def log_results(self, metrics):
        self.send_epochs()
        self.attempt("the final metrics", lambda: self.log_metrics(final_metrics(metrics), step=self.logged_epochs))
        if (self.run_dir / MODEL_DIR).is_dir():
            self.attempt("the model", self.log_model)

    def close(self, status):
        self.send_epochs()
        self.attempt("the run's files", self.log_files)
        self.attempt(f"the run's status ({status})", lambda: self.client.set_terminated(self.run_id, status))
        if self.pending:
            self.retry_pending()
        if status == FINISHED and not self.pending:
            self.log(f"MLflow: {self.where()}", flush=True)

    def where(self) -> str:
        """The run's page in MLflow's UI, or its id and store."""
        if self.uri.startswith(("http://", "https://")):
            return f"{shown(self.uri).rstrip('/')}/#/experiments/{self.experiment_id}/runs/{self.run_id}"
        return f"run {self.run_id} of experiment {self.experiment!r} in {shown(self.uri)}"

    # -- MLflow requests --

    def create_run(self, tags: dict, config) -> None:
        experiment_id = experiment_named(self.client, self.experiment, self.uri)
        run = self.client.create_run(experiment_id, tags=tags, run_name=self.run_dir.name)
        self.experiment_id = experiment_id
        self.run_id = run.info.run_id
        artifacts.write_json(self.run_dir / RUN_FILE, {"tracking_uri": shown(self.uri), "experiment_id": experiment_id,
                                                       "run_id": self.run_id})
        self.log_params(config, resumed=False)

    def log_params(self, config, resumed: bool) -> None:
        """Every field of the configuration. A resumed run may train longer (--resume --epochs): MLflow keeps a
        parameter's first value, so a changed one is recorded as a tag, resumed.<name>."""
        from mlflow.entities import Param, RunTag  # optional (.[mlflow]): imported where used

        values = config_params(config)
        logged = self.client.get_run(self.run_id).data.params if resumed else {}
        params = [Param(name, value) for name, value in values.items() if name not in logged]
        changed = [RunTag(f"resumed.{name}", value) for name, value in values.items() if logged.get(name, value) != value]
        log_in_batches(self.client, self.run_id, params=params, tags=changed)

    def log_tags(self, tags: dict) -> None:
        from mlflow.entities import RunTag  # optional (.[mlflow]): imported where used

        self.client.log_batch(self.run_id, tags=[RunTag(name, value) for name, value in tags.items()])

    def last_logged_epoch(self) -> int:
        return max((metric.step for metric in self.client.get_metric_history(self.run_id, "val_accuracy")), default=0)

    def log_metric_rows(self, rows: list[dict]) -> None:
        from mlflow.entities import Metric  # optional (.[mlflow]): imported where used

        metrics = [Metric(name, float(row[name]), int(row["finished_at"] * 1000), row["epoch"])
                   for row in rows for name in EPOCH_METRICS if name in row]  # (a row of an older version lacks some)
        for first in range(0, len(metrics), METRICS_PER_REQUEST):
            self.client.log_batch(self.run_id, metrics=metrics[first:first + METRICS_PER_REQUEST])

    def log_metrics(self, values: dict, step: int) -> None:
        from mlflow.entities import Metric  # optional (.[mlflow]): imported where used

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(name, value, now, step) for name, value in values.items()])

    def log_model(self) -> None:
        with tempfile.TemporaryDirectory() as scratch:
            save_pyfunc_model(self.run_dir / MODEL_DIR, Path(scratch) / MODEL_ARTIFACT)
            self.client.log_artifacts(self.run_id, str(Path(scratch) / MODEL_ARTIFACT), MODEL_ARTIFACT)

    def log_files(self) -> None:
        for name in RUN_FILES:
            if (self.run_dir / name).is_file():
                self.client.log_artifact(self.run_id, str(self.run_dir / name))

    # -- a server that stops answering --

    def saved_run(self) -> dict | None:
        """The MLflow run this run directory began in, when it was tracked at this URI."""
        path = self.run_dir / RUN_FILE
        saved = json.loads(path.read_text()) if path.exists() else None
        return saved if saved and saved.get("tracking_uri") == shown(self.uri) else None

    def attempt(self, what: str, request, default=None):
        """Send a request now, or keep it for the end once the server has failed one."""
        if not self.offline:
            try:
                return request()
            except Exception as error:
                self.offline = True
                self.log(f"warning: MLflow at {shown(self.uri)} stopped answering ({first_line(error, self.uri)}); "
                         "training goes on, and what is not logged is sent when the run ends", file=sys.stderr, flush=True)
        self.pending.append((what, request))
        return default

    def retry_pending(self) -> None:
        """Send what waited, in order, once; list in UNLOGGED_FILE what still could not be sent."""
        waiting, self.pending = self.pending, []
        for number, (what, request) in enumerate(waiting):
            try:
                request()
            except Exception as error:
                self.pending = waiting[number:]
                unlogged = [what for what, _ in self.pending]
                artifacts.write_json(self.run_dir / UNLOGGED_FILE, {
                    "tracking_uri": shown(self.uri), "run_id": self.run_id, "error": first_line(error, self.uri),
                    "not_logged": unlogged})
                self.log(f"warning: MLflow at {shown(self.uri)} is still gone: not logged ({', '.join(unlogged)}), listed in "
                         f"{self.run_dir / UNLOGGED_FILE}; the run's files are complete in {self.run_dir}",
                         file=sys.stderr, flush=True)
                return
        self.log(f"MLflow at {shown(self.uri)} answers again: everything waiting was logged", flush=True)


def config_params(config) -> dict[str, str]:
    """Every field of a configuration as an MLflow parameter (lists as JSON)."""
    return {name: json.dumps(value) if isinstance(value, (list, dict)) else str(value)
            for name, value in config.to_dict().items()}


def log_in_batches(mlflow, run_id: str, *, params=(), tags=()) -> None:
    """Parameters and tags, in requests of at most 100 of each (MLflow's limit)."""
    for first in range(0, max(len(params), len(tags)), 100):
        mlflow.log_batch(run_id, params=params[first:first + 100], tags=tags[first:first + 100])


def experiment_named(mlflow, name: str, uri: str) -> str:
    """The id of the experiment called name, created when missing."""
    experiment = mlflow.get_experiment_by_name(name)
    return experiment.experiment_id if experiment else mlflow.create_experiment(name, artifact_location=artifact_location(uri))


def artifact_location(uri: str) -> str | None:
    """Where a new experiment keeps its artifacts: beside the database file of an embedded store (MLflow's default,
    ./mlruns, is relative to the working directory of whichever process created it); the server's choice otherwise."""
    if uri.startswith("sqlite:///"):
        return str(Path(uri.removeprefix("sqlite:///")).absolute().parent / "mlruns")
    return None


def final_metrics(metrics: dict) -> dict:
    """final_accuracy, final_balanced_accuracy, final_macro_f1, final_loss and final_<precision|recall|f1>.<class>
    (MLflow's names allow letters, digits, _ - . / and spaces: other characters of a class name become _)."""
    values = {f"final_{name}": metrics[name] for name in (*SCORES, "loss")}
    for row in metrics["per_class"]:
        name = "".join(c if c.isalnum() or c in "_-. /" else "_" for c in row["class"])
        values.update({f"final_{score}.{name}": row[score] for score in ("precision", "recall", "f1")})
    return values


def save_pyfunc_model(saved_model: Path, path: Path) -> None:
    """The SavedModel as an MLflow pyfunc model at path (mlflow_model.py, a model from code). Its requirements are
    stated, not inferred: inferring them loads the model in a new process, which takes longer than the rest."""
    import mlflow.pyfunc  # optional (.[mlflow]): imported where used
    from mlflow.models import ModelSignature  # optional (.[mlflow]): imported where used
    from mlflow.types import ColSpec, Schema  # optional (.[mlflow]): imported where used

    requirements = [f"{name}=={importlib.metadata.version(name)}" for name in ("mlflow-skinny", "tensorflow", "pandas")]
    with warnings.catch_warnings():  # advice for models whose signature is inferred: this one's is stated
        warnings.filterwarnings("ignore", category=UserWarning)
        mlflow.pyfunc.save_model(str(path), python_model=str(Path(__file__).with_name("mlflow_model.py")),
                                 artifacts={"saved_model": str(saved_model)}, pip_requirements=requirements,
                                 signature=ModelSignature(inputs=Schema([ColSpec("binary", "image")])))
