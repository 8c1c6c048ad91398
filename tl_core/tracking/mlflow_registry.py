"""The project's model registry mirrored in MLflow's: each trained challenger a version of a registered model, the
champion and the newest challenger aliases (`models:/<name>@champion`, `models:/<name>@challenger`).

The project's ledger (tl_core/registry/store.py) stays the record that decides; MLflow mirrors it. A version's source
is the challenger's MLflow run's model (runs:/<id>/model, logged by mlflow_run.py while it trained); its tags name
the ledger's run id, the decision and its reason. A retrain killed between promoting and moving the alias leaves
the two out of step: sync(), run by the next retrain and by `jobs.registry list`, repairs the aliases (registering
a version that is missing) from the ledger, and says so.
"""
import json
import sys

from tl_core import storage
from tl_core.tracking.mlflow_run import RUN_FILE, check_server, client, first_line, shown

CHAMPION, CHALLENGER = "champion", "challenger"
RUN_TAG = "tl_run_id"  # the ledger's run id of a version


class MlflowRegistry:
    def __init__(self, uri: str, name: str, log=print):
        self.uri, self.name, self.log = uri, name, log

    def check(self) -> None:
        check_server(self.uri)

    def record(self, registry, record: dict) -> None:
        """After the ledger has a retrain's record: its challenger as a new version (promoted or rejected), the aliases
        as the ledger says. Never fails the retrain: a server that does not answer is one warning, and sync() repairs
        what was left out the next time."""
        try:
            mlflow = client(self.uri)
            version = self.version_of(mlflow, registry, record["run_id"], record)
            mlflow.set_registered_model_alias(self.name, CHALLENGER, version)
            self.sync(registry, mlflow=mlflow, quiet=True)  # the champion alias on the ledger's champion, promoted or not
            self.log(f"MLflow: {self.name} version {version} ({record['action']}); champion: version "
                     f"{self.alias(mlflow, CHAMPION) or '-'}", flush=True)
        except Exception as error:
            self.warn(error)

    def sync(self, registry, *, mlflow=None, quiet: bool = False) -> None:
        """The champion alias on the version of the ledger's champion; repaired (and, unless quiet, said) when it is
        not."""
        mlflow = mlflow or client(self.uri)
        champion = registry.champion()
        if champion is None:
            return
        version = self.version_of(mlflow, registry, champion)
        before = self.alias(mlflow, CHAMPION)
        if before != version:
            mlflow.set_registered_model_alias(self.name, CHAMPION, version)
            if not quiet:
                self.log(f"MLflow: repaired {self.name}@{CHAMPION}: version {version} (run {champion}), as the ledger "
                         f"says{f'; it was on version {before}' if before else ''}", flush=True)

    def sync_or_warn(self, registry) -> None:
        try:
            self.sync(registry)
        except Exception as error:
            self.warn(error)

    def version_of(self, mlflow, registry, run_id: str, record: dict | None = None) -> str:
        """The version of the ledger's run_id, registered now if it is not yet (tagged with record's decision)."""
        from mlflow.exceptions import MlflowException  # optional (.[mlflow]): imported where used

        try:
            mlflow.get_registered_model(self.name)
        except MlflowException:
            mlflow.create_registered_model(self.name, description="mirrored from the project's registry (tl-job)")
        decision = {"decision": record["action"], "reason": record["reason"]} if record else {}
        for version in mlflow.search_model_versions(f"name='{self.name}'"):
            if version.tags.get(RUN_TAG) == run_id:
                for name, value in decision.items():  # registered by a repair, before the ledger had the decision
                    if version.tags.get(name) != value:
                        mlflow.set_model_version_tag(self.name, version.version, name, value)
                return version.version
        tracked = storage.join(registry.model_dir(run_id), RUN_FILE)
        if not storage.exists(tracked):
            raise LookupError(f"run {run_id} was trained without MLflow (no {tracked}): it has no model in MLflow to "
                              "register")
        mlflow_run = json.loads(storage.read_bytes(tracked))["run_id"]
        trained = [row for row in registry.records() if row["run_id"] == run_id and row["action"] in ("promoted", "rejected")]
        decision = decision or ({"decision": trained[-1]["action"], "reason": trained[-1]["reason"]} if trained else
                                {"decision": "promoted", "reason": "the ledger's champion; registered by a repair"})
        tags = {RUN_TAG: run_id, **decision}
        return mlflow.create_model_version(self.name, f"runs:/{mlflow_run}/model", run_id=mlflow_run, tags=tags).version

    def alias(self, mlflow, alias: str) -> str | None:
        from mlflow.exceptions import MlflowException  # optional (.[mlflow]): imported where used

        try:
            return mlflow.get_model_version_by_alias(self.name, alias).version
        except MlflowException:
            return None

    def warn(self, error: BaseException) -> None:
        self.log(f"warning: MLflow's registry at {shown(self.uri)} was not updated ({first_line(error, self.uri)}); "
                 "the project's registry decides, and the next retrain or `jobs.registry list` repairs MLflow's aliases",
                 file=sys.stderr, flush=True)
