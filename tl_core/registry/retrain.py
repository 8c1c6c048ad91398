"""Scheduled retraining: train a challenger when the data or the configuration changed, promote it only if it
beats the champion.

  1. fingerprint the training data; data and configuration unchanged since the last trained run:
     record "skipped", stop;
  2. train a challenger with the training job (tl_core.training.job.run: locally or on Ray) into models/<run id>;
  3. evaluate the challenger and the champion's exported models on the same held-out split;
  4. promote the challenger if its accuracy beats the champion's by at least min_improvement;
  5. append the decision to the ledger; with MLflow, mirror it in MLflow's registry (tracking/mlflow_registry.py).

A crash anywhere leaves the champion link untouched. pending.json names the run in progress; the
next retrain on the same data resumes that run (from its checkpoints, or just its evaluation)
instead of starting again.
"""
import dataclasses
import json
from pathlib import Path

import numpy as np

from tl_core import storage
from tl_core.training import job
from tl_core.model.assets import cache_dir
from tl_core.config import TrainConfig
from tl_core.metrics import SCORES
from tl_core.registry import existing_registry, registry_at
from tl_core.registry.promotion import PromotionRule, decide
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
        from tl_core import ray_session

        ray_session.check()  # before the lock: ray.init() would wait without end where no Ray answers
    for service in [*(trackers or []), *([mirror] if mirror else [])]:
        service.check()  # a tracking server that does not answer: refused before the registry is touched
    registry = registry_at(registry_dir)
    with registry.lock(log):
        if mirror:
            mirror.sync_or_warn(registry)  # a retrain killed between promoting and moving MLflow's alias
        started = utc_now()
        data_dir = data_directory(config.data_dir, cache_dir(config.cache_dir))
        config = dataclasses.replace(config, data_dir=str(data_dir))
        last = registry.last_trained()
        previous = read_manifest(registry.manifest(last["run_id"])) if last else None
        manifest = build_manifest(data_dir, previous)
        data_fingerprint = fingerprint(manifest)
        log(f"Fingerprint of {data_dir}: {data_fingerprint[:12]} ({manifest.num_rows} files)", flush=True)
        base = {"started_at": started, "data_fingerprint": data_fingerprint, "min_improvement": rule.min_improvement,
                "promote_metric": rule.metric,
                "champion_before": registry.champion(), "config_json": json.dumps(config.to_dict())}
        changed = last and changed_settings(TrainConfig.from_dict(json.loads(last["config_json"])), config,
                                             ignore=("output_dir",))
        if last and last["data_fingerprint"] == data_fingerprint and not changed and not force:
            record = {**base, "run_id": new_run_id(), "action": "skipped", "champion_after": registry.champion(),
                      "reason": f"data and configuration unchanged since run {last['run_id']}", "finished_at": utc_now()}
            registry.append(record)
            log(f"Skipped: {record['reason']} (pass --force to retrain anyway)")
            return record
        if changed:
            log(f"Configuration changed since run {last['run_id']}: {', '.join(changed)}", flush=True)

        run_id, resume = _start_or_recover(registry, config, data_fingerprint, log)
        run_dir = registry.model_dir(run_id)  # on object storage, job.run stages and uploads it (training/run_store.py)
        run_config = dataclasses.replace(config, output_dir=run_dir)
        checked, skipped = job.check(run_config, log)  # once: for training and for the evaluation below
        audited = audit_data(checked.sources(skipped), data_dir, manifest, log)
        job.run(run_config, resume=resume, checked=(checked, skipped), trackers=trackers, log=log)
        write_manifest(manifest, registry.manifest(run_id))

        # Both models on the challenger's held-out split, through their exported SavedModels.
        validation = checked.sources(skipped).validation
        labels = np.asarray(validation.labels)
        with registry.local_model(run_id) as model:
            challenger, _, challenger_predicted = evaluate(ExportedModel(model), validation)
        champion_id, champion, champion_predicted, champion_classes = registry.champion(), None, None, None
        if champion_id:
            with registry.local_model(champion_id) as model:
                champion_model = ExportedModel(model)
                champion_classes = champion_model.class_names
                if champion_classes == validation.class_names:
                    champion, _, champion_predicted = evaluate(champion_model, validation)
        decision = decide(challenger, champion, rule, challenger_right=challenger_predicted == labels,
                          champion_right=None if champion is None else champion_predicted == labels)
        promote, reason = decision.promote, decision.reason
        if champion_id == run_id:  # switched just before a crash, not yet in the ledger
            promote, reason = True, "promoted before the run was interrupted; recorded on recovery"
        elif champion_id and champion is None:  # a champion that cannot classify this data is no benchmark
            promote, reason = True, f"the classes changed (champion {champion_classes}, data {validation.class_names})"
        if audit == "strict" and audited["validation_images_in_train"] and champion_id != run_id:
            promote, reason = False, (f"not promoted (--audit strict): {audited['validation_images_in_train']} validation "
                                      f"image(s) are also in train/, so the score counts images the model trained on "
                                      f"(`python -m jobs.audit --data-dir {storage.display(data_dir)}` lists them); "
                                      f"{reason}")
        if promote:
            registry.promote(run_id)
        run_metrics = json.loads(storage.read_bytes(storage.join(run_dir, METRICS_FILE)))
        record = {**base, "run_id": run_id, "action": "promoted" if promote else "rejected", "reason": reason,
                  "train_images": run_metrics["run"]["train_images"],
                  "validation_images": len(validation),
                  **{f"{model}_{name}": metrics and metrics[name] for model, metrics in (("challenger", challenger),
                                                                                         ("champion", champion))
                     for name in (*SCORES, "loss")},
                  "p_value": decision.p_value, "worst_class": decision.worst_class,
                  "worst_class_drop": decision.worst_class_drop,
                  "champion_after": registry.champion(), "finished_at": utc_now(), **audited,
                  **{key: run_metrics.get("audit", {}).get(key) for key in ("validation_images_near_train", "label_issues")}}
        registry.append(record)
        if mirror:
            mirror.record(registry, record)
        registry.clear_pending()
        removed = registry.prune(keep)
        log(f"{record['action'].capitalize()}: {reason}. Champion: {registry.champion()}"
            f"{f'; pruned {len(removed)} old model(s)' if removed else ''}")
        return record


def audit_data(sources, data_dir, manifest, log) -> dict:
    """The ledger's audit of the challenger's data: exact copies, from the manifest's hashes (no file read twice)."""
    from tl_core.audit import leakage

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
