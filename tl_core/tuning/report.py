"""A search's results as a user reads them: one row per trial (trials.parquet), the best trial, and a plot."""
import re
from pathlib import Path

import numpy as np

from tl_core import artifacts
from tl_core.tuning.space import SEARCHABLE
from tl_core.tuning.trial import TUNING_ACCURACY, TUNING_LOSS, TUNING_METRICS, TUNING_SCORE

COMPLETED, STOPPED, FAILED = "completed", "stopped early", "failed"


def trial_number(trial_id: str) -> int:
    """The trial's number in Ray Tune's id ("3f2a1_00007": 7) or directory name ("run_trial_3f2a1_00007_7_...")."""
    return int(re.search(r"_(\d{5})(_|$)", trial_id).group(1))


def trial_rows(results, base: dict) -> list[dict]:
    """One dict per trial of a Ray Tune ResultGrid: its head settings (base's where the space fixed them), status,
    epochs run, last scores, curve."""
    rows = []
    for result in results:
        params = {key: result.config.get(key, base[key]) for key in SEARCHABLE}
        history = result.metrics_dataframe
        epochs_run = int(history["epochs_run"].iloc[-1]) if history is not None and len(history) else 0
        if result.error is not None:
            status = FAILED
        else:
            status = COMPLETED if epochs_run >= params["epochs"] else STOPPED
        # A trial that failed before its first report has no metrics; its directory name holds its number too.
        trial_id = (result.metrics or {}).get("trial_id") or Path(result.path).name
        rows.append({"trial": trial_number(trial_id), "trial_id": trial_id, **params,
                     "status": status, "epochs_run": epochs_run,
                     TUNING_SCORE: float(history[TUNING_SCORE].iloc[-1]) if epochs_run else None,
                     **{column: float(history[column].iloc[-1]) if epochs_run and column in history else None
                        for column in TUNING_METRICS.values()},  # (a search from before balanced accuracy: accuracy)
                     TUNING_LOSS: float(history[TUNING_LOSS].iloc[-1]) if epochs_run else None,
                     "seconds": float(history["seconds"].iloc[-1]) if epochs_run else None,
                     "accuracy_per_epoch": [float(value) for value in history[TUNING_ACCURACY]] if epochs_run else [],
                     "error": None if result.error is None else str(result.error).strip().splitlines()[-1][:300]})
    return sorted(rows, key=lambda row: row["trial"])


def best_trial(rows: list[dict]) -> dict:
    """The completed trial with the highest tuning score (the tuning accuracy, ties broken by the tuning loss), then
    the earlier trial. Trials stopped early are not candidates: their settings name more epochs than they ran."""
    completed = [row for row in rows if row["status"] == COMPLETED]
    if not completed:
        reasons = sorted({row["error"] for row in rows if row["error"]})
        raise RuntimeError("no trial completed" + (f": {reasons[0]}" if reasons else ""))
    return min(completed, key=lambda row: (-row[TUNING_SCORE], row["trial"]))


def plot_trials(rows: list[dict], best: dict, path) -> None:
    """Left: each trial's last tuning accuracy against its learning rate. Right: every trial's curve over epochs,
    where early stopping cut the poor ones."""
    plt = artifacts.plt
    figure, (rate_axis, curve_axis) = plt.subplots(1, 2, figsize=(12, 4.5))
    styles = {COMPLETED: dict(color="tab:blue"), STOPPED: dict(color="tab:gray", alpha=0.6)}
    for status, style in styles.items():
        chosen = [row for row in rows if row["status"] == status]
        if chosen:
            rate_axis.scatter([row["learning_rate"] for row in chosen], [row[TUNING_ACCURACY] for row in chosen],
                              s=[12 + 0.6 * row["epochs_run"] for row in chosen], label=status, **style)
        for row in chosen:
            curve_axis.plot(np.arange(1, row["epochs_run"] + 1), row["accuracy_per_epoch"], linewidth=1, **style)
    rate_axis.scatter([best["learning_rate"]], [best[TUNING_ACCURACY]], s=160, facecolors="none", edgecolors="tab:red",
                      linewidths=2, label="best")
    curve_axis.plot(np.arange(1, best["epochs_run"] + 1), best["accuracy_per_epoch"], color="tab:red", linewidth=2,
                    label=f"best (trial {best['trial']})")
    rate_axis.set_xscale("log")
    rate_axis.set_xlabel("learning rate (marker size: epochs run)")
    rate_axis.set_ylabel("tuning accuracy")
    rate_axis.set_title("Score against learning rate")
    curve_axis.set_xlabel("epoch")
    curve_axis.set_ylabel("tuning accuracy")
    curve_axis.set_title("Every trial by epoch (grey: stopped early)")
    for axis in (rate_axis, curve_axis):
        axis.grid(alpha=0.3)
        axis.legend()
    artifacts.save_figure(figure, path)
