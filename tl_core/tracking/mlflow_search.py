"""A search (jobs.tune) in MLflow: one parent run, each trial a child run, the final run a child too.

The parent holds the base configuration and the search's settings as parameters, the search space as a tag, and at
the end the summary's figures and the search's files (trials.parquet, trials.png, best_config.json, summary.json).
The trials run in Ray Tune's processes; each becomes a child run when they have all ended: its settings as
parameters, its tuning accuracy per epoch (step = the epoch), its last scores, and how it ended (FINISHED; KILLED
when the scheduler stopped it early, tag `outcome`; FAILED, with the error as a tag). The final run is a normal
tracked run (mlflow_run.MLflow) whose parent is the search's. The parent's id is kept in the search directory
(RUN_FILE): `--resume` continues it.

As for a run, MLflow is never worth the search: a request that fails after the check is one warning (safely()), and
the search goes on without MLflow.
"""
import json
import sys
import time
from pathlib import Path

from tl_core import artifacts
from tl_core.tracking import FAILED, FINISHED, KILLED
from tl_core.tracking.tensorboard import TensorBoard
from tl_core.tracking.mlflow_run import (METRICS_PER_REQUEST, RUN_FILE, MLflow, check_server, client, config_params,
                                         experiment_named, first_line, log_in_batches, shown)

TRIAL_STATUS = {"completed": FINISHED, "stopped early": KILLED, "failed": FAILED}  # tuning/report.py's statuses
PARENT_TAG = "mlflow.parentRunId"  # MLflow's own: the UI nests a run under its parent


class MlflowSearch:
    def __init__(self, uri: str, experiment: str, tags: dict | None = None, log=print):
        self.uri, self.experiment, self.tags, self.log = uri, experiment, dict(tags or {}), log
        self.run_id, self.gone = None, False  # gone: a request failed, nothing more is sent

    def check(self) -> None:
        check_server(self.uri)

    def safely(self, what: str, request, *args, **kwargs) -> None:
        """A request of the search's; after a failure, one warning, and none of the search's requests are sent."""
        if self.gone:
            return
        try:
            request(*args, **kwargs)
        except Exception as error:
            self.gone = True
            self.log(f"warning: MLflow at {shown(self.uri)} did not take {what} ({first_line(error, self.uri)}); the "
                     "search goes on without MLflow", file=sys.stderr, flush=True)

    def open(self, directory: Path, config, settings: dict, space: dict) -> None:
        """The parent run: created, or (its id in directory/RUN_FILE, a search continued) continued."""
        self.client, path = client(self.uri), Path(directory) / RUN_FILE
        saved = json.loads(path.read_text()) if path.exists() else None
        if saved and saved.get("tracking_uri") == shown(self.uri):
            self.run_id, self.experiment_id = saved["run_id"], saved["experiment_id"]
            self.client.update_run(self.run_id, status="RUNNING")
            return
        self.experiment_id = experiment_named(self.client, self.experiment, self.uri)
        tags = {**{name: str(value) for name, value in self.tags.items()}, "search_space": json.dumps(space),
                "search_directory": str(config.output_dir)}
        self.run_id = self.client.create_run(self.experiment_id, tags=tags,
                                             run_name=f"search {Path(str(config.output_dir)).name}").info.run_id
        artifacts.write_json(path, {"tracking_uri": shown(self.uri), "experiment_id": self.experiment_id, "run_id": self.run_id})
        from mlflow.entities import Param  # optional (.[mlflow]): imported where used

        values = {**config_params(config), **{f"search.{name}": str(value) for name, value in settings.items()}}
        log_in_batches(self.client, self.run_id, params=[Param(name, value) for name, value in values.items()])

    def log_trials(self, rows: list[dict], searched: list[str]) -> None:
        """Each trial (tuning/report.trial_rows) as a child run, once: trials already logged (a search continued after
        its trials ended) are not logged again."""
        from mlflow.entities import Metric, Param  # optional (.[mlflow]): imported where used

        logged = {run.data.tags.get("trial") for run in self.client.search_runs(
            [self.experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{self.run_id}'")}
        for row in rows:
            if str(row["trial"]) in logged:
                continue
            tags = {PARENT_TAG: self.run_id, "trial": str(row["trial"]), "trial_id": row["trial_id"],
                    "outcome": row["status"], **({"error": row["error"]} if row["error"] else {})}
            run_id = self.client.create_run(self.experiment_id, tags=tags, run_name=f"trial {row['trial']}").info.run_id
            now = int(time.time() * 1000)
            metrics = [Metric("tuning_accuracy", value, now, epoch) for epoch, value in
                       enumerate(row["accuracy_per_epoch"], start=1)]
            metrics += [Metric(name, float(row[name]), now, row["epochs_run"]) for name in ("tuning_score", "tuning_loss")
                        if row[name] is not None]
            self.client.log_batch(run_id, params=[Param(name, str(row[name])) for name in searched])
            for first in range(0, len(metrics), METRICS_PER_REQUEST):
                self.client.log_batch(run_id, metrics=metrics[first:first + METRICS_PER_REQUEST])
            self.client.set_terminated(run_id, TRIAL_STATUS.get(row["status"], FAILED))

    def final_run_trackers(self) -> list:
        """The trackers of the search's final run: TensorBoard's files, and MLflow, a child of the search's run."""
        if self.run_id is None or self.gone:
            return [TensorBoard()]
        return [TensorBoard(), MLflow(self.uri, self.experiment, tags={**self.tags, PARENT_TAG: self.run_id}, log=self.log)]

    def close(self, status: str, directory: Path | None = None, summary: dict | None = None) -> None:
        if self.run_id is None or self.gone:
            return
        if summary:
            from mlflow.entities import Metric  # optional (.[mlflow]): imported where used

            now = int(time.time() * 1000)
            figures = {"best_tuning_accuracy": summary["best_tuning_accuracy"], "trials": summary["trials"],
                       "stopped_early": summary["stopped_early"], "failed": summary["failed"],
                       "final_validation_accuracy": summary["final_validation_accuracy"],
                       "final_validation_loss": summary["final_validation_loss"],
                       "seconds": summary["seconds"]["total"]}
            self.client.log_batch(self.run_id, metrics=[Metric(name, float(value), now, 0) for name, value in figures.items()])
            for path in sorted(Path(directory).iterdir()) if directory else []:
                if path.is_file() and path.suffix in (".json", ".parquet", ".png") and path.name != RUN_FILE:
                    self.client.log_artifact(self.run_id, str(path))
        self.client.set_terminated(self.run_id, status)
