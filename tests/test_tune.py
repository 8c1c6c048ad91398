"""jobs.tune: the search space, the tuning split, and small searches on Ray Tune with the tiny backbone."""
import dataclasses
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from conftest import TINY_IMAGE_SIZE, write_colour_dataset
from tl_core.config import TrainConfig
from tl_core.data.images import tuning_folds
from tl_core.tuning.features import default_folds
from tl_core.tuning.space import DEFAULT_SPACE, SearchSpaceError, check_space, max_epochs, read_space

ROOT = Path(__file__).resolve().parents[1]
# Half the trials cannot learn (1e-6 moves nothing in 6 epochs), so early stopping has poor trials to stop.
SMALL_SPACE = {"learning_rate": {"choice": [1e-6, 0.05]}, "head_dropout": {"uniform": [0.0, 0.3]}, "epochs": 6}


@pytest.mark.parametrize("space, named", [
    ({"lr": {"loguniform": [1e-4, 1e-2]}}, "'lr' cannot be searched (it is not a training setting)"),
    ({"image_size": {"choice": [96, 224]}}, "'image_size' cannot be searched (it changes the features"),
    ({"learning_rate": {"normal": [0, 1]}}, "'learning_rate': expected a value or one of"),
    ({"learning_rate": {"loguniform": [0, 1e-2]}}, "'learning_rate': loguniform needs low > 0"),
    ({"learning_rate": {"uniform": [1e-2, 1e-3]}}, "'learning_rate': uniform takes numbers [low, high] with low < high"),
    ({"head_dropout": {"uniform": [0.0, 1.5]}}, "'head_dropout': 1.5 is not a valid value: head_dropout must be in [0, 1)"),
    ({"epochs": {"uniform": [10, 20]}}, "'epochs': 10.0 is not a valid value: epochs must be a positive integer"),
    ({"batch_size": {"choice": []}}, "'batch_size': choice takes a non-empty list of values"),
    ({"head_schedule": "cosine"}, "'head_schedule': 'cosine' is not a valid value"),
])
def test_a_bad_search_space_is_refused_naming_the_key(space, named):
    with pytest.raises(SearchSpaceError) as error:
        check_space(space, TrainConfig())
    assert named in str(error.value)


def test_the_default_space_and_files_of_either_format(tmp_path):
    assert check_space(DEFAULT_SPACE, TrainConfig()) == DEFAULT_SPACE
    assert max_epochs(DEFAULT_SPACE, TrainConfig()) == 80
    assert max_epochs({"learning_rate": 1e-3}, TrainConfig(epochs=7)) == 7  # epochs fixed by the base configuration
    (tmp_path / "space.yaml").write_text("learning_rate:\n  loguniform: [1.0e-4, 1.0e-2]\nhead_hidden: 512\n")
    (tmp_path / "space.json").write_text('{"batch_size": {"randint": [16, 65]}}')
    assert read_space(tmp_path / "space.yaml") == {"learning_rate": {"loguniform": [1e-4, 1e-2]}, "head_hidden": 512}
    assert check_space(read_space(tmp_path / "space.json"), TrainConfig()) == {"batch_size": {"randint": [16, 65]}}
    (tmp_path / "broken.json").write_text('{"batch_size": ')
    with pytest.raises(SearchSpaceError, match="broken.json is not valid JSON"):
        read_space(tmp_path / "broken.json")


def test_the_tuning_split_is_stratified_seeded_and_covers_each_image_once():
    labels = np.repeat(np.arange(3, dtype=np.int32), [50, 30, 21])
    holdout = tuning_folds(labels, 1, 0.2, seed=4)
    assert set(np.unique(holdout)) == {-1, 0}
    assert [int(np.sum((holdout == 0) & (labels == label))) for label in range(3)] == [10, 6, 4]
    np.testing.assert_array_equal(holdout, tuning_folds(labels, 1, 0.2, seed=4))
    assert not np.array_equal(holdout, tuning_folds(labels, 1, 0.2, seed=5))
    folds = tuning_folds(labels, 5, 0.2, seed=4)
    assert set(np.unique(folds)) == set(range(5))  # every image is scored in exactly one fold
    for label, size in enumerate([50, 30, 21]):
        per_fold = np.bincount(folds[labels == label], minlength=5)
        assert per_fold.max() - per_fold.min() <= 1 and per_fold.sum() == size
    assert default_folds(999, 0.2) == 5 and default_folds(1000, 0.2) == 1


def swapped_validation_dataset(root: Path) -> Path:
    """Colour images whose validation folders carry the other class's name: a model that learned the training
    images scores about 0 on validation, so a search that selected on the validation set could not look good."""
    write_colour_dataset(root, {"train": 20, "validation": 8}, seed=5)
    validation = root / "validation"
    (validation / "blue").rename(validation / "swap")
    (validation / "red").rename(validation / "blue")
    (validation / "swap").rename(validation / "red")
    return root


def tune_command(tiny_backbone, data_dir, output_dir, space_file, *extra) -> list[str]:
    return [sys.executable, "-m", "jobs.tune", "--data-dir", str(data_dir), "--backbone", tiny_backbone, "--image-size",
            str(TINY_IMAGE_SIZE), "--batch-size", "8", "--seed", "3", "--output-dir", str(output_dir),
            "--search-space", str(space_file), "--folds", "2", "--grace-period", "2", "--max-concurrent", "2", *extra]


def run(command, **options) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600, **options)


@pytest.fixture(scope="module")
def small_search(tiny_backbone, mlflow_server, tmp_path_factory):
    """A search tracked in MLflow (experiment "small-search" of the tests' server)."""
    root = tmp_path_factory.mktemp("tune")
    data_dir = swapped_validation_dataset(root / "data")
    (root / "space.json").write_text(json.dumps(SMALL_SPACE))
    if mlflow_server.process is None:  # a test stopped it
        mlflow_server.start()
    done = run(tune_command(tiny_backbone, data_dir, root / "search", root / "space.json", "--trials", "8",
                            "--tracking-uri", mlflow_server.uri, "--experiment", "small-search",
                            "--score", "balanced_accuracy"))
    assert done.returncode == 0, done.stderr[-3000:]
    return root, data_dir, done, mlflow_server.uri


def test_a_small_search_runs_stops_poor_trials_and_never_scores_on_validation(small_search):
    root, data_dir, done, _ = small_search
    search = root / "search"
    trials = pq.read_table(search / "trials.parquet").to_pylist()
    assert len(trials) == 8 and [row["trial"] for row in trials] == list(range(8))
    assert all(row["status"] in ("completed", "stopped early") for row in trials)
    stopped = [row for row in trials if row["status"] == "stopped early"]
    assert all(row["epochs_run"] == 2 for row in stopped)  # at the grace period's rung
    assert any(row["learning_rate"] == 1e-6 for row in stopped)  # ASHA keeps the top third at each rung
    assert all(len(row["accuracy_per_epoch"]) == row["epochs_run"] for row in trials)
    assert sum(line.startswith("[") for line in done.stdout.splitlines()) == 8  # a line per finished trial
    # Ranked by balanced accuracy (--score), ties broken by the loss; every trial has all three scores.
    for row in trials:
        assert row["tuning_score"] == pytest.approx(row["tuning_balanced_accuracy"] - row["tuning_loss"] / 1000)
        assert 0 <= row["tuning_macro_f1"] <= 1 and 0 <= row["tuning_accuracy"] <= 1
    assert "by balanced_accuracy: trial" in done.stdout

    split = pq.read_table(search / "tuning_split.parquet").to_pylist()
    training = {str(path) for path in (data_dir / "train").rglob("*.*")}
    validation = {str(path) for path in (data_dir / "validation").rglob("*.*")}
    assert {row["path"] for row in split} == training and not {row["path"] for row in split} & validation
    assert sorted({row["fold"] for row in split}) == [0, 1]

    summary = json.loads((search / "summary.json").read_text())
    best = json.loads((search / "best_config.json").read_text())
    assert summary["score"] == "balanced_accuracy" and summary["best_tuning_balanced_accuracy"] >= 0.9
    assert summary["best_tuning_accuracy"] >= 0.9  # scored on training images...
    assert summary["final_validation_accuracy"] <= 0.2  # ...while the swapped validation set is used once, at the end
    assert best["learning_rate"] == 0.05 and best["epochs"] == 6 and best["output_dir"] is None
    final = json.loads((search / "final" / "config.json").read_text())
    assert {**final, "output_dir": None} == best
    metrics = json.loads((search / "final" / "metrics.json").read_text())
    assert metrics["accuracy"] == summary["final_validation_accuracy"]
    assert (search / "trials.png").stat().st_size > 10_000
    assert "Backbone features of 16 validation and 40 training images: computed before this run" in done.stdout


def test_the_search_is_a_parent_run_in_mlflow_with_each_trial_and_the_final_run_its_children(small_search):
    import mlflow

    root, _, _, uri = small_search
    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name("small-search").experiment_id
    runs = client.search_runs([experiment])
    parents = [run for run in runs if "mlflow.parentRunId" not in run.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    parent = parents[0]
    assert parent.data.params["search.trials"] == "8" and parent.data.params["batch_size"] == "8"
    summary = json.loads((root / "search" / "summary.json").read_text())
    assert parent.data.metrics["final_validation_accuracy"] == pytest.approx(summary["final_validation_accuracy"])
    assert {"trials.parquet", "trials.png", "best_config.json", "summary.json"} <= {
        item.path for item in client.list_artifacts(parent.info.run_id)}
    children = [run for run in runs if run.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    trials = {run.data.tags["trial"]: run for run in children if "trial" in run.data.tags}
    final = [run for run in children if "trial" not in run.data.tags]
    assert len(children) == 9 and sorted(map(int, trials)) == list(range(8)) and len(final) == 1
    for row in pq.read_table(root / "search" / "trials.parquet").to_pylist():
        trial = trials[str(row["trial"])]
        assert trial.info.status == {"completed": "FINISHED", "stopped early": "KILLED"}[row["status"]]
        assert trial.data.params["learning_rate"] == str(row["learning_rate"])
        curve = sorted((metric.step, metric.value) for metric in client.get_metric_history(trial.info.run_id,
                                                                                           "tuning_accuracy"))
        assert [value for _, value in curve] == pytest.approx(row["accuracy_per_epoch"])
    assert final[0].info.status == "FINISHED" and final[0].data.metrics["final_accuracy"] == pytest.approx(
        summary["final_validation_accuracy"])


def test_best_config_trains_with_jobs_train_and_jobs_retrain(small_search, tmp_path):
    root, data_dir, _, _ = small_search
    best = root / "search" / "best_config.json"
    trained = run([sys.executable, "-m", "jobs.train", "--config", str(best), "--output-dir", str(tmp_path / "run")])
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert TrainConfig.from_json(tmp_path / "run" / "config.json") == dataclasses.replace(
        TrainConfig.from_json(best), output_dir=str(tmp_path / "run"))
    retrained = run([sys.executable, "-m", "jobs.retrain", "--config", str(best), "--registry", str(tmp_path / "registry")])
    assert retrained.returncode == 0, retrained.stderr[-3000:]
    assert (tmp_path / "registry" / "champion" / "model").is_dir()


def stopped_at(command: list[str], at: str, search: Path) -> list[str]:
    """Run jobs.tune, send SIGTERM as soon as it prints a line starting with `at`; the lines it printed. It must end
    with status 130 and the resume command, and no stack trace from any process (the driver, a Ray worker)."""
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = []
    for line in process.stdout:
        lines.append(line)
        if line.startswith(at):
            process.send_signal(signal.SIGTERM)
            break
    output, errors = process.communicate(timeout=300)
    assert process.returncode == 130 and "Traceback" not in errors, errors  # all of stderr: the cause is in there
    resume = f"  python -m jobs.tune --resume --output-dir {search}"
    assert errors.strip().splitlines()[-2:] == ["Continue the search with:", resume], errors
    assert "Stop signal received" not in errors and "Tuner.restore" not in errors  # only the command's own advice
    return lines + output.splitlines(keepends=True)


def search_command(tiny_backbone, tmp_path) -> list[str]:
    data_dir = write_colour_dataset(tmp_path / "data", {"train": 20, "validation": 8}, seed=6)
    (tmp_path / "space.json").write_text(json.dumps({**SMALL_SPACE, "learning_rate": {"loguniform": [1e-3, 0.1]}}))
    return tune_command(tiny_backbone, data_dir, tmp_path / "search", tmp_path / "space.json", "--trials", "6",
                        "--max-concurrent", "1")


def test_a_search_interrupted_while_ray_and_the_feature_tasks_start_says_how_to_resume(tiny_backbone, tmp_path):
    stopped_at(search_command(tiny_backbone, tmp_path), "Search space:", tmp_path / "search")  # ray.init comes next


def test_an_interrupted_search_continues_where_it_stopped(tiny_backbone, tmp_path):
    search = tmp_path / "search"
    lines = stopped_at(search_command(tiny_backbone, tmp_path), "[  2/6]", search)  # once two trials have finished
    finished_before = sum(line.startswith("[") for line in lines)
    assert 2 <= finished_before < 6 and not (search / "trials.parquet").exists()

    resume = [sys.executable, "-m", "jobs.tune", "--resume", "--output-dir", str(search)]
    lines = stopped_at(resume, "Training the best configuration", search)  # the final run, interrupted in turn
    assert "Continuing the search" in "".join(lines)
    assert sum(line.startswith("[") for line in lines) <= 6 - 2  # finished trials did not run again
    trials = pq.read_table(search / "trials.parquet").to_pylist()
    assert sorted(row["trial"] for row in trials) == list(range(6))

    resumed = run(resume)
    assert resumed.returncode == 0, resumed.stderr
    assert not [line for line in resumed.stdout.splitlines() if line.startswith("[")]  # no trial ran again
    assert (search / "final" / "metrics.json").exists()


def test_the_command_refuses_bad_input_in_one_line(tmp_path):
    (tmp_path / "space.json").write_text(json.dumps({"backbone": {"choice": ["a", "b"]}}))
    done = run([sys.executable, "-m", "jobs.tune", "--search-space", str(tmp_path / "space.json"), "--output-dir",
                str(tmp_path / "search")], env={**os.environ, "TL_CACHE_DIR": str(tmp_path / "cache")})
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("error: search space key 'backbone' cannot be searched")
    resumed = run([sys.executable, "-m", "jobs.tune", "--resume", "--output-dir", str(tmp_path / "search"), "--trials", "4"])
    assert resumed.returncode == 2 and "--resume continues a search with its saved settings" in resumed.stderr
    augmented = run([sys.executable, "-m", "jobs.tune", "--augment", "--output-dir", str(tmp_path / "other")])
    assert augmented.returncode == 2 and "cannot search with --augment" in augmented.stderr
