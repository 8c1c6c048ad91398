"""The whole job on the tiny backbone: it learns, writes every artifact, exports a usable model."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import tensorflow as tf

from conftest import TINY_IMAGE_SIZE, StopAfter, assert_tensorboard_matches_history, assert_the_sample_audit, tiny_config
from reference_training import assert_same_weights, final_head, head_trained_epoch_by_epoch
from tl_core.config import SEED_RECIPE, TrainConfig
from tl_core.data.images import list_image_folder, make_dataset, to_unit_range
from tl_core.data.sources import load_splits
from tl_core.model import assets
from tl_core.training.recorder import LocalCheckpoints
from tl_core.training.train import train
from tl_core.run_dir import RunDirectoryError, prepare_run_dir


@pytest.fixture(scope="module")
def finished_run(tiny_backbone, colour_dataset, tmp_path_factory):
    config = prepare_run_dir(tiny_config(tiny_backbone, colour_dataset, tmp_path_factory.mktemp("run") / "run",
                                         export_tflite=True))
    metrics = train(config)
    return config, metrics


def test_training_beats_chance_on_separable_data(finished_run):
    _, metrics = finished_run
    assert metrics["accuracy"] >= 0.9
    assert metrics["num_examples"] == 20


def test_every_artifact_is_written_and_well_formed(finished_run):
    config, metrics = finished_run
    run_dir = Path(config.output_dir)
    assert TrainConfig.from_json(run_dir / "config.json") == config
    assert json.loads((run_dir / "class_names.json").read_text()) == ["blue", "red"]
    history = json.loads((run_dir / "history.json").read_text())
    assert [row["epoch"] for row in history] == [1, 2, 3, 4]
    table = pq.read_table(run_dir / "history.parquet")
    assert table.to_pylist() == history
    assert set(table.column_names) >= {"epoch", "loss", "accuracy", "val_loss", "val_accuracy", "val_balanced_accuracy",
                                       "val_macro_f1"}
    saved_metrics = json.loads((run_dir / "metrics.json").read_text())
    assert saved_metrics["accuracy"] == metrics["accuracy"] == pytest.approx(history[-1]["val_accuracy"])
    assert saved_metrics["balanced_accuracy"] == pytest.approx(history[-1]["val_balanced_accuracy"])
    assert saved_metrics["macro_f1"] == pytest.approx(history[-1]["val_macro_f1"])
    assert np.sum(saved_metrics["confusion_matrix"]) == 20
    assert {row["class"] for row in saved_metrics["per_class"]} == {"blue", "red"}
    for plot in ("history.png", "confusion_matrix.png"):
        data = (run_dir / plot).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 5000
    assert not [p for p in run_dir.rglob(".*") if p.name.endswith(".tmp")]


def test_exported_model_reloads_in_a_fresh_process_without_this_package(finished_run, tmp_path):
    config, _ = finished_run
    validation = list_image_folder(f"{config.data_dir}/validation", ["blue", "red"])
    images = np.concatenate([to_unit_range(x).numpy() for x, _ in make_dataset(validation, TINY_IMAGE_SIZE, 8)])
    np.save(tmp_path / "images.npy", images)
    script = textwrap.dedent(f"""
        import sys, json
        class Block:  # prove that neither this project nor TF Hub is needed to serve
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("tl_core", "jobs", "tensorflow_hub"):
                    raise ImportError(f"blocked {{name}}")
        sys.meta_path.insert(0, Block())
        import numpy as np, tensorflow as tf
        serve = tf.saved_model.load({str(config.output_dir + '/model')!r}).signatures["serving_default"]
        out = serve(images=tf.constant(np.load({str(tmp_path / 'images.npy')!r})))
        np.save({str(tmp_path / 'probabilities.npy')!r}, out["probabilities"].numpy())
        print(json.dumps([n.decode() for n in out["class_names"].numpy()[:3]]))
    """)
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path,
                            env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    reloaded = np.load(tmp_path / "probabilities.npy")
    assert set(json.loads(result.stdout.strip().splitlines()[-1])) <= {"blue", "red"}

    in_process = tf.saved_model.load(config.output_dir + "/model").signatures["serving_default"]
    expected = in_process(images=tf.constant(images))["probabilities"].numpy()
    np.testing.assert_allclose(reloaded, expected, atol=1e-6)
    # And it is the trained model: its accuracy is the run's.
    accuracy = (reloaded.argmax(axis=1) == validation.labels).mean()
    assert accuracy == pytest.approx(finished_run[1]["accuracy"])


def test_bytes_signature_decodes_like_training_and_gives_the_same_probabilities(finished_run):
    config, _ = finished_run
    validation = list_image_folder(f"{config.data_dir}/validation", ["blue", "red"])
    encoded = tf.constant([Path(path).read_bytes() for path in validation.paths])  # PNG and JPEG, varied sizes
    loaded = tf.saved_model.load(config.output_dir + "/model")
    from_bytes = loaded.signatures["serving_bytes"](image_bytes=encoded)
    images = np.concatenate([to_unit_range(x).numpy() for x, _ in make_dataset(validation, TINY_IMAGE_SIZE, 8)])
    from_images = loaded.signatures["serving_default"](images=tf.constant(images))
    np.testing.assert_allclose(from_bytes["probabilities"].numpy(), from_images["probabilities"].numpy(), atol=1e-6)
    assert from_bytes["class_names"].numpy().tolist() == from_images["class_names"].numpy().tolist()


def test_tflite_exports_agree_with_the_saved_model(finished_run):
    config, metrics = finished_run
    run_dir = Path(config.output_dir)
    assert (run_dir / "labels.txt").read_text() == "blue\nred\n"
    exports = metrics["exports"]
    assert exports["model.tflite"]["max_abs_logit_difference"] < 1e-4
    assert exports["model.tflite"]["accuracy"] == exports["saved_model"]["accuracy"] == metrics["accuracy"]
    assert exports["model_dynamic_range.tflite"]["agreement_with_saved_model"] >= 0.9
    for name in ("model.tflite", "model_dynamic_range.tflite"):
        assert exports[name]["bytes"] == (run_dir / name).stat().st_size > 0


def _head_weights(run_dir):
    """The exported model's weights, the frozen backbone's excepted (the tiny one's conv2d), by position: Keras numbers the
    names of layers built in one process (dense, dense_1, ...)."""
    model = tf.saved_model.load(f"{run_dir}/model")
    return dict(enumerate(v.numpy() for v in model.model.variables if not v.name.startswith("conv2d")))


def test_keras_callbacks_see_the_validation_metrics(tiny_backbone, colour_dataset, tmp_path):
    seen = []

    class Record(tf.keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen.append((epoch + 1, logs["val_loss"], logs["val_accuracy"], logs["loss"]))

    train(prepare_run_dir(tiny_config(tiny_backbone, colour_dataset, tmp_path / "run", "default", epochs=3)),
          callbacks=[Record()])
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert seen == [(row["epoch"], row["val_loss"], row["val_accuracy"], row["loss"]) for row in history]


def test_a_stop_that_tensorflow_swallowed_is_honoured_before_the_next_epoch(tiny_backbone, colour_dataset, tmp_path):
    """The signal handler records the stop, then raises KeyboardInterrupt; raised inside TensorFlow's C++ code calling
    back into Python, it can be printed and cleared there (seen: a search's final run went on to finish, exit 0)."""
    from tl_core import interrupts

    class SwallowedStop(tf.keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch + 1 == 2:
                interrupts.requested.set()  # the handler ran, its KeyboardInterrupt lost

    config = prepare_run_dir(tiny_config(tiny_backbone, colour_dataset, tmp_path / "run", "default", epochs=4))
    try:
        with pytest.raises(KeyboardInterrupt):
            train(config, callbacks=[SwallowedStop()])
    finally:
        interrupts.requested.clear()
    assert len(json.loads((tmp_path / "run" / "history.json").read_text())) == 2 and not (tmp_path / "run" / "model").exists()


@pytest.mark.parametrize("recipe", ["seed", "default"])
def test_an_interrupted_run_resumed_ends_with_the_weights_of_an_uninterrupted_one(tiny_backbone, colour_dataset, tmp_path,
                                                                                   recipe):
    straight = prepare_run_dir(tiny_config(tiny_backbone, colour_dataset, tmp_path / "straight", recipe, epochs=3))
    train(straight)
    interrupted = prepare_run_dir(tiny_config(tiny_backbone, colour_dataset, tmp_path / "resumed", recipe, epochs=3))
    with pytest.raises(KeyboardInterrupt):
        train(interrupted, callbacks=[StopAfter(2)])
    assert len(json.loads((tmp_path / "resumed" / "history.json").read_text())) == 2
    resumed = prepare_run_dir(tiny_config(tiny_backbone, colour_dataset, tmp_path / "resumed", recipe, epochs=3), resume=True)
    train(resumed)
    history = json.loads((tmp_path / "resumed" / "history.json").read_text())
    assert [row["epoch"] for row in history] == [1, 2, 3]
    straight_history = json.loads((tmp_path / "straight" / "history.json").read_text())
    assert [row["learning_rate"] for row in history] == [row["learning_rate"] for row in straight_history]
    expected, got = _head_weights(tmp_path / "straight"), _head_weights(tmp_path / "resumed")
    assert expected.keys() == got.keys() and expected
    for name in expected:
        np.testing.assert_allclose(got[name], expected[name], rtol=1e-5, atol=1e-6)


def test_run_directory_is_never_mixed(tiny_backbone, colour_dataset, tmp_path):
    config = tiny_config(tiny_backbone, colour_dataset, tmp_path / "run")
    prepare_run_dir(config)
    (tmp_path / "run" / "history.json").write_text("[]")
    with pytest.raises(RunDirectoryError, match="--overwrite"):
        prepare_run_dir(config)
    with pytest.raises(RunDirectoryError, match=r"--seed 99 \(the run has 3\)"):
        prepare_run_dir(tiny_config(tiny_backbone, colour_dataset, tmp_path / "run", seed=99), resume=True)
    (tmp_path / "run" / "model").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("the user's own file")
    prepare_run_dir(config, overwrite=True)
    assert not (tmp_path / "run" / "history.json").exists() and not (tmp_path / "run" / "model").exists()
    assert (tmp_path / "run" / "notes.txt").exists()  # only the run's own files are replaced
    # A run saved before config.json had a version is a run too: --overwrite replaces its files.
    from test_recipe import saved_before_versions

    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "config.json").write_text(json.dumps(saved_before_versions(config)))
    (tmp_path / "old" / "model").mkdir()
    prepare_run_dir(tiny_config(tiny_backbone, colour_dataset, tmp_path / "old"), overwrite=True)
    assert not (tmp_path / "old" / "model").exists()
    with pytest.raises(RunDirectoryError, match="no run to resume"):
        prepare_run_dir(tiny_config(tiny_backbone, colour_dataset, tmp_path / "other"), resume=True)


def test_default_job_reaches_fastais_accuracy_with_the_weights_it_always_had(tmp_path):
    """The README's main command on the built-in sample and backbone (under a minute on 2 cores). Its final head is the
    one the per-epoch fit() loop of before the job's speed-up (issue 31) trains from the same start on the same features,
    on this machine (tests/reference_training.py): a faster job must compute the same weights (the same batches, in the
    same order, the same steps)."""
    config = prepare_run_dir(TrainConfig(output_dir=str(tmp_path / "run")))
    metrics = train(config)
    assert metrics["accuracy"] >= 0.975  # fastai's figure on this sample (issue 15)
    assert_the_sample_audit(tmp_path / "run")  # from the run's own features
    assert metrics["audit"]["validation_images_in_train"] == 5
    train_images, _, _ = load_splits(config.data, assets.cache_dir(config.cache_dir))
    assert_same_weights(final_head(tmp_path / "run"), head_trained_epoch_by_epoch(config, train_images))


@pytest.mark.slow
def test_the_seed_recipe_reaches_its_accuracy(tmp_path):
    """`--recipe seed` on the built-in sample and backbone (about 3 minutes on 2 cores)."""
    config = prepare_run_dir(TrainConfig(**SEED_RECIPE, output_dir=str(tmp_path / "run")))
    metrics = train(config)
    assert metrics["accuracy"] >= 0.87  # 0.902 measured; the recipe target


def test_cached_features_train_the_same_head_with_one_backbone_pass(tiny_backbone, colour_dataset, tmp_path, monkeypatch):
    import tl_core.data.features as features_module

    images_through_backbone = []
    real = features_module.backbone_feature_batches

    def counting(model, dataset):
        count = 0
        for features, labels in real(model, dataset):
            count += len(features)
            yield features, labels
        images_through_backbone.append(count)

    monkeypatch.setattr(features_module, "backbone_feature_batches", counting)  # every backbone pass of the run
    cached = prepare_run_dir(tiny_config(tiny_backbone, colour_dataset, tmp_path / "cached", augment=False))
    assert cached.uses_feature_cache
    cached_metrics = train(cached)
    assert sorted(images_through_backbone) == [20, 48]  # validation once, training once, for 4 epochs

    images_through_backbone.clear()
    direct = prepare_run_dir(tiny_config(tiny_backbone, colour_dataset, tmp_path / "direct", augment=False,
                                         cache_features=False))
    direct_metrics = train(direct)
    assert images_through_backbone == [20]  # training images went through the full model instead
    # Same batches in the same order: the same head, whether its inputs were cached or not.
    expected, got = _head_weights(tmp_path / "direct"), _head_weights(tmp_path / "cached")
    for name in expected:
        np.testing.assert_allclose(got[name], expected[name], atol=1e-4)
    assert cached_metrics["accuracy"] == direct_metrics["accuracy"] >= 0.9
    assert cached_metrics["run"]["cached_features"] and not direct_metrics["run"]["cached_features"]


def test_cached_features_too_large_for_memory_stream_from_disk(tiny_backbone, colour_dataset, tmp_path):
    config = prepare_run_dir(tiny_config(tiny_backbone, colour_dataset, tmp_path / "spilled", augment=False,
                                         feature_cache_memory_mb=0, epochs=6))
    metrics = train(config)
    spilled = pq.read_table(Path(config.output_dir) / "features" / "worker-0.parquet")
    assert spilled.num_rows == 48 and sorted(spilled.column("label").to_pylist()) == [0] * 24 + [1] * 24
    assert metrics["run"]["features_on_disk"] and metrics["accuracy"] >= 0.9
    from tl_core.data.feature_sets import FeatureFile

    streamed = FeatureFile(Path(config.output_dir) / "features" / "worker-0.parquet", 11)
    first, again = ([labels.numpy().tolist() for _, labels in streamed.dataset(8, seed=1, epoch=e)] for e in (0, 0))
    assert first == again  # an epoch's order is a function of (seed, epoch)
    assert sorted(sum(first, [])) == sorted(spilled.column("label").to_pylist())


def test_cached_features_refuse_augmentation():
    with pytest.raises(ValueError, match="--no-augment"):
        TrainConfig(augment=True, cache_features=True)


@pytest.mark.parametrize("recipe", ["seed", "default"])
def test_sigterm_stops_and_resume_reaches_the_uninterrupted_result(tiny_backbone, colour_dataset, tmp_path, recipe, server):
    """Tracked in MLflow (the tests' server): the stopped and the resumed process are one MLflow run."""
    import signal
    import time

    import mlflow

    repo = Path(__file__).resolve().parents[1]
    common = ["--data-dir", str(colour_dataset), "--backbone", tiny_backbone, "--image-size", str(TINY_IMAGE_SIZE),
              "--batch-size", "8", "--learning-rate", "0.05", "--seed", "3", "--epochs", "30", "--recipe", recipe]
    tracking = {**os.environ, "MLFLOW_TRACKING_URI": server.uri}
    experiment = ["--experiment", f"sigterm-{recipe}"]
    run_dir = tmp_path / "interrupted"
    process = subprocess.Popen([sys.executable, "-m", "jobs.train", *common, *experiment, "--output-dir", str(run_dir)],
                               cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=tracking)
    deadline = time.time() + 240
    while time.time() < deadline and process.poll() is None:
        history = run_dir / "history.json"
        if history.exists() and len(json.loads(history.read_text())) >= 2:
            process.send_signal(signal.SIGTERM)
            break
        time.sleep(0.05)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130 and "Traceback" not in stderr, stderr  # all of it: a failure's cause is in there
    assert "--resume" in stderr
    # What --resume continues from is the checkpoint. The run directory's history.json is written just after it, so a
    # SIGTERM between the two leaves it one epoch behind (an epoch of the default recipe takes about 50 ms here).
    done = len(json.loads((LocalCheckpoints(run_dir).latest() / "history.json").read_text()))
    assert len(json.loads((run_dir / "history.json").read_text())) in (done - 1, done)
    assert 2 <= done < 30 and not (run_dir / "model").exists()
    client = mlflow.MlflowClient(server.uri)
    experiment_id = client.get_experiment_by_name(f"sigterm-{recipe}").experiment_id
    assert [run.info.status for run in client.search_runs([experiment_id])] == ["KILLED"]

    resumed = subprocess.run([sys.executable, "-m", "jobs.train", "--config", str(run_dir / "config.json"), "--resume",
                              *experiment], cwd=repo, capture_output=True, text=True, timeout=300, env=tracking)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"after epoch {done}" in resumed.stdout
    assert [row["epoch"] for row in json.loads((run_dir / "history.json").read_text())] == list(range(1, 31))
    assert_tensorboard_matches_history(run_dir)  # each epoch once, across the interruption
    runs = client.search_runs([experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    history = json.loads((run_dir / "history.json").read_text())
    for name in ("loss", "val_accuracy", "learning_rate"):
        logged = sorted((metric.step, metric.value) for metric in client.get_metric_history(runs[0].info.run_id, name))
        assert logged == [(row["epoch"], pytest.approx(row[name], rel=1e-6)) for row in history], name  # each epoch once

    straight = prepare_run_dir(tiny_config(tiny_backbone, colour_dataset, tmp_path / "straight", recipe, epochs=30))
    train(straight)
    expected, got = _head_weights(tmp_path / "straight"), _head_weights(run_dir)
    for name in expected:
        np.testing.assert_allclose(got[name], expected[name], rtol=1e-5, atol=1e-6)


def test_sigkill_at_a_random_moment_leaves_only_complete_files_and_resume_finishes(tiny_backbone, colour_dataset,
                                                                                    tmp_path):
    import random
    import signal
    import time

    repo = Path(__file__).resolve().parents[1]
    run_dir = tmp_path / "killed"
    epochs = 40  # epochs of a fifth of a second here: far more than the 1.5 s the kill may wait (8 were all done once)
    process = subprocess.Popen(
        [sys.executable, "-m", "jobs.train", "--data-dir", str(colour_dataset), "--backbone", tiny_backbone,
         "--image-size", str(TINY_IMAGE_SIZE), "--batch-size", "8", "--learning-rate", "0.05", "--recipe", "seed",
         "--epochs", str(epochs), "--output-dir", str(run_dir)], cwd=repo, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and not (run_dir / "history.json").exists():
        time.sleep(0.01)
    time.sleep(random.uniform(0, 1.5))  # anywhere in the epochs that follow, writes included
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    # The kill landed while the run was still training: not every epoch was done, no final metrics.
    assert process.returncode == -signal.SIGKILL
    assert len(json.loads((run_dir / "history.json").read_text())) < epochs and not (run_dir / "metrics.json").exists()
    for path in run_dir.rglob("*.json"):
        if not any(part.startswith(".") for part in path.relative_to(run_dir).parts):
            json.loads(path.read_text())  # complete under its final name, or absent
    if (run_dir / "history.parquet").exists():
        pq.read_table(run_dir / "history.parquet")
    resumed = subprocess.run([sys.executable, "-m", "jobs.train", "--config", str(run_dir / "config.json"), "--resume"],
                             cwd=repo, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert [row["epoch"] for row in json.loads((run_dir / "history.json").read_text())] == list(range(1, epochs + 1))
    assert not list(run_dir.rglob(".*"))  # the killed run's temporaries are gone, at every depth


def test_a_run_lists_and_checks_its_data_once(tiny_backbone, colour_dataset, tmp_path, monkeypatch):
    import tl_core.data.sources as sources_module
    from tl_core.training import job

    listed, checked = [], []
    list_folder, find_bad = sources_module.list_image_folder, sources_module.find_bad_files
    monkeypatch.setattr(sources_module, "list_image_folder", lambda *a, **k: listed.append(a[0]) or list_folder(*a, **k))
    monkeypatch.setattr(sources_module, "find_bad_files", lambda *a, **k: checked.append(len(a[0])) or find_bad(*a, **k))
    job.run(tiny_config(tiny_backbone, colour_dataset, tmp_path / "run", epochs=1, cache_dir=str(tmp_path / "cache")),
            log=lambda *args, **kwargs: None)  # a new cache: no file's verdict is remembered
    assert sorted(Path(path).name for path in listed) == ["train", "validation"]  # not again by train()
    assert sorted(checked) == [20, 48]


def test_a_stop_at_any_step_of_saving_a_checkpoint_leaves_a_complete_one(tmp_path, monkeypatch):
    """KeyboardInterrupt (Ctrl-C, SIGTERM) before or after each file-system step of an epoch's checkpoint save: the run
    directory still holds a complete checkpoint, the new epoch's or the one before (seen before: none)."""
    import os
    import shutil

    from tl_core.training.distribute import Worker
    from tl_core.training.recorder import LocalCheckpoints

    def writer(epoch: int):
        def write(directory: Path) -> None:
            (directory / "state").write_text(str(epoch))
            (directory / "history.json").write_text(json.dumps(list(range(epoch))))
        return write

    steps, stop_at = [], [None]

    def step(real, when):
        def run(*args, **kwargs):
            steps.append(real)
            if len(steps) == stop_at[0] and when == "before":
                raise KeyboardInterrupt
            result = real(*args, **kwargs)
            if len(steps) == stop_at[0] and when == "after":
                raise KeyboardInterrupt
            return result
        return run

    def save_third_epoch(run_dir: Path, at: int | None, when: str = "before") -> None:
        steps.clear()
        stop_at[0] = at
        with monkeypatch.context() as patch:
            for owner, name in ((os, "replace"), (shutil, "rmtree"), (Path, "unlink"), (Path, "write_text")):
                patch.setattr(owner, name, step(getattr(owner, name), when))
            try:
                LocalCheckpoints(run_dir).save(writer(3), {"epoch": 3}, Worker())
            except KeyboardInterrupt:
                pass

    def two_epochs(name: str) -> Path:
        run_dir = tmp_path / name
        for epoch in (1, 2):
            LocalCheckpoints(run_dir).save(writer(epoch), {"epoch": epoch}, Worker())
        return run_dir

    save_third_epoch(two_epochs("count"), None)
    total = len(steps)
    assert total >= 4
    for at in range(1, total + 1):
        for when in ("before", "after"):
            run_dir = two_epochs(f"stop-{at}-{when}")
            save_third_epoch(run_dir, at, when)
            latest = LocalCheckpoints(run_dir).latest()
            assert latest is not None, (at, when)
            epochs = len(json.loads((latest / "history.json").read_text()))
            assert epochs in (2, 3) and (latest / "state").read_text() == str(epochs), (at, when)


def test_a_checkpoint_saved_before_the_pointer_still_resumes(tiny_backbone, colour_dataset, tmp_path):
    """Runs checkpointed before latest.json kept the epoch's files in checkpoints/ itself."""
    import shutil

    straight = prepare_run_dir(tiny_config(tiny_backbone, colour_dataset, tmp_path / "straight", "default", epochs=3))
    train(straight)
    interrupted = prepare_run_dir(tiny_config(tiny_backbone, colour_dataset, tmp_path / "old", "default", epochs=3))
    with pytest.raises(KeyboardInterrupt):
        train(interrupted, callbacks=[StopAfter(2)])
    checkpoints = tmp_path / "old" / "checkpoints"
    for path in (checkpoints / "epoch-00002").iterdir():  # the layout before the pointer
        path.rename(checkpoints / path.name)
    shutil.rmtree(checkpoints / "epoch-00002")
    (checkpoints / "latest.json").unlink()
    assert LocalCheckpoints(tmp_path / "old").latest() == checkpoints
    train(prepare_run_dir(interrupted, resume=True))
    assert sorted(path.name for path in checkpoints.iterdir()) == ["epoch-00003", "latest.json"]  # the old files gone
    expected, got = _head_weights(tmp_path / "straight"), _head_weights(tmp_path / "old")
    for name in expected:
        np.testing.assert_allclose(got[name], expected[name], rtol=1e-5, atol=1e-6)
