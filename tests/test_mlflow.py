"""Runs in MLflow (tl_core/tracking/mlflow_run.py), against a real `mlflow server` the tests start (SQLite backend
store, local artifact root) and, once, MLflow's embedded store without a server."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from tl_core.tracking import mlflow_run
from tl_core.tracking.mlflow_run import MLflow, RUN_FILE, UNLOGGED_FILE
from tl_core.tracking.tensorboard import TensorBoard
from tl_core.training import job

from conftest import ANY_CHALLENGER, REPO, tiny_config

mlflow = pytest.importorskip("mlflow")  # the test extra installs it


def run_with_mlflow(config, uri, experiment):
    tracker = MLflow(uri, experiment, tags={"ray_job_submission_id": "raysubmit_test"})
    return job.run(config, trackers=[TensorBoard(), tracker])


def the_run(client, experiment: str):
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert len(runs) == 1, [run.info.run_id for run in runs]
    return runs[0]


def assert_epochs_match_history(client, run_id: str, run_dir: Path) -> None:
    history = json.loads((run_dir / "history.json").read_text())
    for name in ("loss", "accuracy", "val_loss", "val_accuracy", "learning_rate", "images_per_second"):
        logged = sorted((metric.step, metric.value) for metric in client.get_metric_history(run_id, name))
        assert [step for step, _ in logged] == [row["epoch"] for row in history], name  # each epoch once
        np.testing.assert_allclose([value for _, value in logged], [row[name] for row in history], rtol=1e-6)


def test_a_run_is_one_mlflow_run_with_its_config_epochs_files_and_a_servable_model(server, tiny_backbone, colour_dataset,
                                                                                 tmp_path, capfd):
    config = tiny_config(tiny_backbone, colour_dataset, tmp_path / "run", "default", epochs=3)
    secret = "tl-tracking-token-8f2a"  # credentials in the URI (the server takes any): never printed or written
    metrics = run_with_mlflow(config, server.uri.replace("://", f"://alice:{secret}@", 1), "complete")
    printed = capfd.readouterr()
    assert secret not in printed.out + printed.err and "://***@" in printed.out
    assert not [path for path in (tmp_path / "run").rglob("*") if path.is_file() and secret.encode() in path.read_bytes()]
    client = mlflow.MlflowClient(server.uri)
    run, run_dir = the_run(client, "complete"), tmp_path / "run"
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    assert json.loads((run_dir / RUN_FILE).read_text())["run_id"] == run.info.run_id
    saved = json.loads((run_dir / "config.json").read_text())
    assert run.data.params == {name: json.dumps(value) if isinstance(value, (list, dict)) else str(value)
                               for name, value in saved.items()}
    assert_epochs_match_history(client, run.info.run_id, run_dir)
    assert run.data.metrics["final_accuracy"] == pytest.approx(metrics["accuracy"])
    assert run.data.metrics["final_recall.red"] == pytest.approx(metrics["per_class"][1]["recall"])
    tags = run.data.tags
    assert tags["ray_job_submission_id"] == "raysubmit_test" and tags["backbone_handle"] == tiny_backbone
    assert len(tags["data_fingerprint"]) == 64 and tags["version.tensorflow"] == tf.__version__
    files = {item.path for item in client.list_artifacts(run.info.run_id)}
    assert {"config.json", "history.json", "metrics.json", "history.png", "confusion_matrix.png", "augmented_batch.png",
            "model"} <= files

    # The MLflow model, in a fresh process, classifies encoded images as the run's SavedModel does.
    images = sorted((colour_dataset / "validation").rglob("*.*"))[:8]
    expected = tf.saved_model.load(str(run_dir / "model")).signatures["serving_bytes"](
        image_bytes=tf.constant([path.read_bytes() for path in images]))["class_names"].numpy()
    script = ("import sys, json, pathlib, mlflow.pyfunc, pandas\n"
              f"model = mlflow.pyfunc.load_model('runs:/{run.info.run_id}/model')\n"
              "images = pandas.DataFrame({'image': [pathlib.Path(path).read_bytes() for path in sys.argv[1:]]})\n"
              "print(json.dumps(model.predict(images)['class_name'].tolist()))\n")
    done = subprocess.run([sys.executable, "-c", script, *map(str, images)], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path, env={**_environment(), "MLFLOW_TRACKING_URI": server.uri})
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == [name.decode() for name in expected]


def _environment() -> dict:
    import os

    return {name: value for name, value in os.environ.items() if name != "PYTHONPATH"}


def test_a_server_gone_mid_run_costs_one_warning_and_what_waited_is_logged_when_it_is_back(
        server, tiny_backbone, colour_dataset, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(mlflow_run, "SEND_EVERY_SECONDS", 0)  # every epoch's row is sent when it ends
    class ServerAway(tf.keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch + 1 == 1:
                server.stop()
            if epoch + 1 == 3:
                server.start()

    config = tiny_config(tiny_backbone, colour_dataset, tmp_path / "run", "default", epochs=4)
    with_callbacks(config, MLflow(server.uri, "away-and-back"), ServerAway())
    client = mlflow.MlflowClient(server.uri)
    run = the_run(client, "away-and-back")
    assert run.info.status == "FINISHED"
    assert_epochs_match_history(client, run.info.run_id, tmp_path / "run")
    assert "model" in {item.path for item in client.list_artifacts(run.info.run_id)}
    err = capsys.readouterr().err
    assert err.count("warning: MLflow") == 1 and "stopped answering" in err
    assert not (tmp_path / "run" / UNLOGGED_FILE).exists()


def test_a_server_still_gone_at_the_end_leaves_the_run_whole_and_a_list_of_what_was_not_logged(
        server, tiny_backbone, colour_dataset, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(mlflow_run, "SEND_EVERY_SECONDS", 0)
    class ServerGone(tf.keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch + 1 == 1:
                server.stop()

    config = tiny_config(tiny_backbone, colour_dataset, tmp_path / "run", "default", epochs=3)
    metrics = with_callbacks(config, MLflow(server.uri, "gone"), ServerGone())
    run_dir = tmp_path / "run"
    assert metrics["accuracy"] == json.loads((run_dir / "metrics.json").read_text())["accuracy"]
    assert tf.saved_model.load(str(run_dir / "model")).signatures["serving_bytes"] is not None
    unlogged = json.loads((run_dir / UNLOGGED_FILE).read_text())
    assert unlogged["not_logged"][0] == "epoch 2" and "the model" in unlogged["not_logged"]
    err = capsys.readouterr().err
    assert err.count("stopped answering") == 1 and f"listed in {run_dir / UNLOGGED_FILE}" in err


def with_callbacks(config, tracker, *callbacks):
    from tl_core.run_dir import prepare_run_dir
    from tl_core.training.train import train

    tracker.check()
    return train(prepare_run_dir(config), trackers=[TensorBoard(), tracker], callbacks=list(callbacks))


def test_the_embedded_store_needs_no_server(tiny_backbone, colour_dataset, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    config = tiny_config(tiny_backbone, colour_dataset, tmp_path / "run", "default", epochs=2)
    job.run(config, trackers=[MLflow(uri, "embedded")])
    client = mlflow.MlflowClient(uri)
    run = the_run(client, "embedded")
    assert run.info.status == "FINISHED"
    assert_epochs_match_history(client, run.info.run_id, tmp_path / "run")
    artifacts = Path(run.info.artifact_uri)
    assert artifacts.is_relative_to(tmp_path / "mlruns")  # beside the database, not in the working directory
    assert (artifacts / "model" / "MLmodel").is_file()


def run_train(tmp_path, *args, environment=None):
    return subprocess.run([sys.executable, "-m", "jobs.train", *args], capture_output=True, text=True, timeout=300,
                          cwd=REPO, env={**_environment(), **(environment or {})})


def test_a_wrong_tracking_uri_is_one_line_and_nothing_is_written(tiny_backbone, colour_dataset, tmp_path):
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{probe.getsockname()[1]}"
    done = run_train(tmp_path, "--data-dir", str(colour_dataset), "--backbone", tiny_backbone, "--image-size", "32",
                     "--epochs", "1", "--output-dir", str(tmp_path / "run"), "--quiet",
                     environment={"MLFLOW_TRACKING_URI": closed.replace("://", "://alice:tl-token-31c9@")})
    assert done.returncode == 2, done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    masked = closed.replace("://", "://***@")
    assert len(errors) == 1 and errors[0].startswith(f"error: MLflow at {masked} does not answer"), done.stderr[-3000:]
    assert "tl-token-31c9" not in done.stdout + done.stderr
    assert "Traceback" not in done.stderr and "unset it to train without MLflow" in errors[0]
    assert not (tmp_path / "run").exists()


def test_without_a_tracking_uri_mlflow_is_not_imported(tiny_backbone, colour_dataset, tmp_path):
    script = ("import sys\nfrom jobs.train import main\n"
              f"status = main(['--data-dir', {str(colour_dataset)!r}, '--backbone', {tiny_backbone!r}, "
              f"'--image-size', '32', '--batch-size', '8', '--epochs', '1', '--output-dir', {str(tmp_path / 'run')!r}, '--quiet'])\n"
              "assert status == 0, status\nprint('mlflow imported:', 'mlflow' in sys.modules)\n")
    environment = {name: value for name, value in _environment().items() if name != "MLFLOW_TRACKING_URI"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=REPO,
                          env=environment)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "mlflow imported: False"
    assert not (tmp_path / "run" / RUN_FILE).exists()


# -- MLflow's registry mirrors the project's --

def retrain_with_mlflow(config, root, uri, name="colours", **options):
    from tl_core.registry.retrain import retrain
    from tl_core.tracking.mlflow_registry import MlflowRegistry

    lines = []

    def log(*parts, **options):
        lines.append(" ".join(map(str, parts)))

    record = retrain(config, root, trackers=[MLflow(uri, "retrain", log=log)], mirror=MlflowRegistry(uri, name, log=log),
                     log=log, **options)
    return record, lines


def versions(client, name="colours") -> tuple[dict, dict]:
    """tl run id -> (version, decision), and the aliases."""
    found = {version.tags["tl_run_id"]: (version.version, version.tags["decision"])
             for version in client.search_model_versions(f"name='{name}'")}
    return found, client.get_registered_model(name).aliases


def test_retrain_registers_each_challenger_and_the_aliases_follow_the_ledger(server, tiny_backbone, tmp_path):
    from conftest import write_colour_dataset
    from jobs import registry as registry_job
    from test_retrain import add_images

    data = write_colour_dataset(tmp_path / "data", {"train": 24, "validation": 10})
    config, root, client = tiny_config(tiny_backbone, data), tmp_path / "registry", mlflow.MlflowClient(server.uri)
    first, _ = retrain_with_mlflow(config, root, server.uri)
    found, aliases = versions(client)
    assert found == {first["run_id"]: ("1", "promoted")} and aliases == {"champion": "1", "challenger": "1"}

    train = data / "train"  # swapped labels: a worse challenger, rejected
    (train / "red").rename(train / "tmp")
    (train / "blue").rename(train / "red")
    (train / "tmp").rename(train / "blue")
    second, _ = retrain_with_mlflow(config, root, server.uri)
    assert second["action"] == "rejected"
    found, aliases = versions(client)
    assert found[second["run_id"]] == ("2", "rejected") and aliases == {"champion": "1", "challenger": "2"}
    assert client.get_model_version("colours", "2").tags["reason"] == second["reason"]

    add_images(data)
    third, _ = retrain_with_mlflow(config, root, server.uri, rule=ANY_CHALLENGER)  # promoted whatever it scores
    assert versions(client)[1] == {"champion": "3", "challenger": "3"}

    args = ["--registry", str(root), "--tracking-uri", server.uri, "--registered-model", "colours"]
    assert registry_job.main(["rollback", first["run_id"], *args]) == 0
    assert versions(client)[1] == {"champion": "1", "challenger": "3"}
    client.set_registered_model_alias("colours", "champion", "2")  # out of step, as a crash would leave it
    assert registry_job.main(["list", *args]) == 0
    assert versions(client)[1]["champion"] == "1"

    # The champion, from MLflow, classifies as the registry's champion does.
    images = sorted((data / "validation").rglob("*.*"))[:6]
    import pandas

    expected = tf.saved_model.load(str(root / "champion" / "model")).signatures["serving_bytes"](
        image_bytes=tf.constant([path.read_bytes() for path in images]))["class_names"].numpy()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", server.uri)
        served = mlflow.pyfunc.load_model("models:/colours@champion")
        predicted = served.predict(pandas.DataFrame({"image": [path.read_bytes() for path in images]}))
    assert predicted["class_name"].tolist() == [name.decode() for name in expected]


def test_a_retrain_killed_right_after_promotion_is_repaired_by_the_next(server, tiny_backbone, tmp_path):
    from conftest import write_colour_dataset
    from test_retrain import add_images
    from tl_core.registry.store import Registry

    data = write_colour_dataset(tmp_path / "data", {"train": 24, "validation": 10})
    config, root, client = tiny_config(tiny_backbone, data), tmp_path / "registry", mlflow.MlflowClient(server.uri)
    retrain_with_mlflow(config, root, server.uri, name="killed")
    add_images(data)
    script = ("import os, signal, sys\nfrom tl_core.registry.store import Registry\nreal = Registry.promote\n"
              "def promote_then_die(self, run_id):\n    real(self, run_id)\n    os.kill(os.getpid(), signal.SIGKILL)\n"
              "Registry.promote = promote_then_die\nfrom jobs.retrain import main\nmain(sys.argv[1:])\n")
    args = ["--registry", str(root), "--data-dir", str(data), "--backbone", tiny_backbone, "--image-size", "32",
            "--batch-size", "8", "--epochs", "4", "--learning-rate", "0.05", "--seed", "3", "--recipe", "seed",
            "--min-improvement", "-1", "--significance", "1", "--max-class-drop", "1", "--tracking-uri", server.uri,
            "--registered-model", "killed", "--experiment",
            "retrain", "--quiet"]
    done = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=300, cwd=REPO,
                          env=_environment())
    assert done.returncode == -9, done.stderr[-3000:]
    promoted = Registry(root).champion()
    found, aliases = versions(client, "killed")
    assert aliases["champion"] == "1" and len(found) == 1  # MLflow never heard of the promotion

    # The next retrain recovers the killed run (the ledger records its promotion) and repairs the alias first.
    record, lines = retrain_with_mlflow(config, root, server.uri, name="killed")
    assert record["run_id"] == promoted and record["action"] == "promoted"
    assert any(line.startswith("MLflow: repaired killed@champion: version 2") for line in lines), lines
    found, aliases = versions(client, "killed")
    assert found[promoted] == ("2", "promoted") and aliases == {"champion": "2", "challenger": "2"}
