"""Scheduled retraining: train a challenger when the data or the configuration changed, promote it only if it
beats the champion.

  1. plan: fingerprint the training data; data and configuration unchanged since the last trained run: record
     "skipped", stop;
  2. train a challenger with the training job (tl_core.training.job.run: locally or on Ray) into models/<run id>;
  3. evaluate the challenger and the champion's exported models on the same held-out split;
  4. decide: promote the challenger if the promotion rule holds (registry/promotion.py);
  5. record the decision in the ledger; with MLflow, mirror it in MLflow's registry (tracking/mlflow_registry.py).

A crash anywhere leaves the champion link untouched. pending.json names the run in progress; the
next retrain on the same data resumes that run (from its checkpoints, or just its evaluation)
instead of starting again.
"""
import dataclasses
import json
from pathlib import Path

import numpy as np

from tl_core import ray_session, storage
from tl_core.audit import leakage
from tl_core.training import job
from tl_core.model.assets import cache_dir
from tl_core.config import TrainConfig
from tl_core.metrics import SCORES
from tl_core.registry import existing_registry, registry_at
from tl_core.registry.promotion import Decision, PromotionRule, decide
from tl_core.serving.evaluate import ExportedModel, evaluate
from tl_core.registry.fingerprint import build_manifest, fingerprint, read_manifest, write_manifest
from tl_core.registry.store import TRAINED, Registry, RegistryError, new_run_id, utc_now
from tl_core.data.sources import data_directory
from tl_core.run_dir import CONFIG_FILE, METRICS_FILE, changed_settings


def retrain(config: TrainConfig, registry_dir: str | Path, *, rule: PromotionRule = PromotionRule(), keep: int = 5,
            force: bool = False, audit: str = "record", trackers=None, mirror=None, log=print) -> dict:
    """One scheduled retrain under the registry's lock; returns the ledger record it appended. rule: when a challenger
    replaces the champion (registry/promotion.py).

    audit: "record" (the validation images also in train/ and the exact-duplicate groups go into the ledger) or
    "strict" (and a challenger validated on images it trained on is never promoted).

    trackers: what records the challenger's run (job.run's). mirror: MLflow's registry
    (tracking/mlflow_registry.MlflowRegistry), told each decision after the ledger; None: no MLflow."""
    if config.uses_ray:
        ray_session.check()  # before the lock: ray.init() would wait without end where no Ray answers
    for service in [*(trackers or []), *([mirror] if mirror else [])]:
        service.check()  # a tracking server that does not answer: refused before the registry is touched
    registry = registry_at(registry_dir)
    with registry.lock(log):
        if mirror:
            mirror.sync_or_warn(registry)  # a retrain killed between promoting and moving MLflow's alias
        plan = plan_retrain(registry, config, rule, force, log)
        if plan.skipped:
            registry.append(plan.skipped)
            log(f"Skipped: {plan.skipped['reason']} (pass --force to retrain anyway)")
            return plan.skipped
        challenger = train_challenger(registry, plan, trackers, log)
        scores = evaluate_both(registry, challenger)
        decision = decide_promotion(scores, rule, audit, challenger, plan.data_dir)
        if decision.promote:
            registry.promote(challenger.run_id)
        record = record_retrain(registry, plan, challenger, scores, decision)
        if mirror:
            mirror.record(registry, record)
        registry.clear_pending()
        removed = registry.prune(keep)
        log(f"{record['action'].capitalize()}: {decision.reason}. Champion: {registry.champion()}"
            f"{f'; pruned {len(removed)} old model(s)' if removed else ''}")
        return record


@dataclasses.dataclass
class Plan:
    """What this retrain works on: the configuration (its data directory resolved), the data's manifest and fingerprint,
    the ledger's common fields; `skipped`: the record of a retrain with nothing to do."""

    config: TrainConfig
    data_dir: str
    manifest: object  # registry/fingerprint.py's table of files
    base: dict
    skipped: dict | None = None

    @property
    def data_fingerprint(self) -> str:
        return self.base["data_fingerprint"]


def plan_retrain(registry: Registry, config: TrainConfig, rule: PromotionRule, force: bool, log) -> Plan:
    """Fingerprint the training data; skip when data and configuration are unchanged since the last trained run."""
    started = utc_now()
    data_dir = str(data_directory(config.data_dir, cache_dir(config.cache_dir)))
    config = dataclasses.replace(config, data_dir=data_dir)
    last = registry.last_trained()
    previous = read_manifest(registry.manifest(last["run_id"])) if last else None
    manifest = build_manifest(data_dir, previous)
    data_fingerprint = fingerprint(manifest)
    log(f"Fingerprint of {data_dir}: {data_fingerprint[:12]} ({manifest.num_rows} files)", flush=True)
    base = {"started_at": started, "data_fingerprint": data_fingerprint, "min_improvement": rule.min_improvement,
            "promote_metric": rule.metric, "champion_before": registry.champion(),
            "config_json": json.dumps(config.to_dict())}
    plan = Plan(config, data_dir, manifest, base)
    changed = last and changed_settings(TrainConfig.from_dict(json.loads(last["config_json"])), config,
                                         ignore=("output_dir",))
    if last and last["data_fingerprint"] == data_fingerprint and not changed and not force:
        plan.skipped = {**base, "run_id": new_run_id(), "action": "skipped", "champion_after": registry.champion(),
                        "reason": f"data and configuration unchanged since run {last['run_id']}", "finished_at": utc_now()}
    elif changed:
        log(f"Configuration changed since run {last['run_id']}: {', '.join(changed)}", flush=True)
    return plan


@dataclasses.dataclass
class Challenger:
    run_id: str
    run_dir: str  # a path or URI
    validation: object  # the held-out split both models are evaluated on (data/source.ImageSource)
    audited: dict  # the ledger's audit of the data (audit_data)


def train_challenger(registry: Registry, plan: Plan, trackers, log) -> Challenger:
    """Train the challenger (or continue the one an interrupted retrain left) into the registry's models/<run id>."""
    run_id, resume = _start_or_recover(registry, plan.config, plan.data_fingerprint, log)
    run_dir = registry.model_dir(run_id)  # on object storage, job.run stages and uploads it (training/run_store.py)
    run_config = dataclasses.replace(plan.config, output_dir=run_dir)
    checked = job.check(run_config, log)  # once: for training and for the evaluation
    sources = checked.sources
    audited = audit_data(sources, plan.data_dir, plan.manifest, log)
    job.run(run_config, resume=resume, checked=checked, trackers=trackers, log=log)
    write_manifest(plan.manifest, registry.manifest(run_id))
    return Challenger(run_id, run_dir, sources.validation, audited)


@dataclasses.dataclass
class Scores:
    """Both models on the challenger's held-out split, through their exported SavedModels: metrics and, per image,
    whether each got it right. champion None: no champion, or one whose classes differ (champion_classes)."""

    challenger: dict
    challenger_right: np.ndarray
    champion_id: str | None = None
    champion: dict | None = None
    champion_right: np.ndarray | None = None
    champion_classes: list | None = None


def evaluate_both(registry: Registry, challenger: Challenger) -> Scores:
    validation = challenger.validation
    labels = np.asarray(validation.labels)
    with registry.local_model(challenger.run_id) as model:
        metrics, _, predicted = evaluate(ExportedModel(model), validation)
    scores = Scores(metrics, predicted == labels, champion_id=registry.champion())
    if scores.champion_id:
        with registry.local_model(scores.champion_id) as model:
            champion_model = ExportedModel(model)
            scores.champion_classes = champion_model.class_names
            if scores.champion_classes == validation.class_names:
                scores.champion, _, predicted = evaluate(champion_model, validation)
                scores.champion_right = predicted == labels
    return scores


def decide_promotion(scores: Scores, rule: PromotionRule, audit: str, challenger: Challenger, data_dir: str) -> Decision:
    """The promotion rule's decision (registry/promotion.py), but: a run promoted before an interruption is recorded as
    promoted, a champion that cannot classify this data is replaced, and --audit strict never promotes a challenger
    whose validation split overlaps train/."""
    decision = decide(scores.challenger, scores.champion, rule, challenger_right=scores.challenger_right,
                      champion_right=scores.champion_right)
    if scores.champion_id == challenger.run_id:  # switched just before a crash, not yet in the ledger
        return dataclasses.replace(decision, promote=True,
                                   reason="promoted before the run was interrupted; recorded on recovery")
    if scores.champion_id and scores.champion is None:  # a champion that cannot classify this data is no benchmark
        decision = dataclasses.replace(decision, promote=True, reason=(
            f"the classes changed (champion {scores.champion_classes}, data {challenger.validation.class_names})"))
    leaked = challenger.audited["validation_images_in_train"]
    if audit == "strict" and leaked:
        decision = dataclasses.replace(decision, promote=False, reason=(
            f"not promoted (--audit strict): {leaked} validation image(s) are also in train/, so the score counts "
            f"images the model trained on (`python -m jobs.audit --data-dir {storage.display(data_dir)}` lists them); "
            f"{decision.reason}"))
    return decision


def record_retrain(registry: Registry, plan: Plan, challenger: Challenger, scores: Scores, decision: Decision) -> dict:
    """The ledger's record of a trained run, appended."""
    run_metrics = json.loads(storage.read_bytes(storage.join(challenger.run_dir, METRICS_FILE)))
    record = {**plan.base, "run_id": challenger.run_id, "action": "promoted" if decision.promote else "rejected",
              "reason": decision.reason, "train_images": run_metrics["run"]["train_images"],
              "validation_images": len(challenger.validation),
              **{f"{model}_{name}": metrics and metrics[name]
                 for model, metrics in (("challenger", scores.challenger), ("champion", scores.champion))
                 for name in (*SCORES, "loss")},
              "p_value": decision.p_value, "worst_class": decision.worst_class,
              "worst_class_drop": decision.worst_class_drop, "champion_after": registry.champion(),
              "finished_at": utc_now(), **challenger.audited,
              **{key: run_metrics.get("audit", {}).get(key) for key in ("validation_images_near_train", "label_issues")}}
    registry.append(record)
    return record


def audit_data(sources, data_dir, manifest, log) -> dict:
    """The ledger's audit of the challenger's data: exact copies, from the manifest's hashes (no file read twice)."""
    known = {storage.join(data_dir, *path.split("/")): sha for path, sha in
             zip(manifest.column("path").to_pylist(), manifest.column("sha256").to_pylist())}
    audited = leakage({"train": sources.train, "validation": sources.validation}, known)
    log(f"Audit: {audited['validation_images_in_train']} validation image(s) also in train/ (leakage), "
        f"{audited['exact_duplicate_groups']} group(s) of exact copies in all", flush=True)
    return audited


def _start_or_recover(registry: Registry, config: TrainConfig, data_fingerprint: str, log) -> tuple[str, bool]:
    """(run id, resume?): the crashed run on the same data and config if there is one, else a new run."""
    pending = registry.pending()
    if pending:
        run_dir = registry.model_dir(pending["run_id"])
        same = pending["data_fingerprint"] == data_fingerprint and pending["config"] == config.to_dict()
        if same and storage.exists(storage.join(run_dir, CONFIG_FILE)):
            if not registry.taken_over:
                log(f"Recovering run {pending['run_id']}, interrupted at {pending['started_at']}", flush=True)
                return pending["run_id"], True
            # Its retrain may be alive, paused: it may still make the one write it had begun, so its directory is left
            # to it, and the run continues in a copy.
            run_id = new_run_id()
            storage.copy(run_dir, registry.model_dir(run_id))
            registry.set_pending({**pending, "run_id": run_id})
            log(f"Recovering run {pending['run_id']} (interrupted at {pending['started_at']}) as run {run_id}: the "
                "lock was taken over, so the run continues in a copy of its directory", flush=True)
            return run_id, True
        if storage.exists(run_dir) and pending["run_id"] != registry.champion():
            log(f"Discarding run {pending['run_id']}: interrupted, and the data or configuration changed since")
            storage.delete(run_dir)
    run_id = new_run_id()
    registry.set_pending({"run_id": run_id, "started_at": utc_now(), "data_fingerprint": data_fingerprint,
                          "config": config.to_dict()})
    return run_id, False


def restore(registry_dir: str | Path, run_id: str, mirror=None, log=print) -> dict:
    """Make an earlier run's model the champion again (one atomic switch), recorded in the ledger (and, with `mirror`,
    MLflow's champion alias moved back)."""
    registry = existing_registry(registry_dir)
    with registry.lock(log):
        trained = {record["run_id"]: record for record in registry.records() if record["action"] in TRAINED}
        if run_id not in trained:
            raise RegistryError(f"no trained run {run_id!r} in {registry.ledger}; "
                                "`python -m jobs.registry list` shows the runs")
        before = registry.champion()
        registry.promote(run_id)
        record = {"run_id": run_id, "started_at": utc_now(), "finished_at": utc_now(), "action": "rollback",
                  "reason": f"restored by hand (champion was {before})", "champion_before": before,
                  "champion_after": run_id, "data_fingerprint": trained[run_id]["data_fingerprint"],
                  "challenger_accuracy": trained[run_id]["challenger_accuracy"]}
        registry.append(record)
        log(f"Champion: {run_id} (was {before})")
        if mirror:
            mirror.sync_or_warn(registry)
        return record
