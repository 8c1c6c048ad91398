"""The same job on Ray Train: 2 CPU workers on a Ray instance this test starts on this machine."""
import dataclasses
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import assert_tensorboard_matches_history, local_ray, tiny_config
from tl_core.data.images import ImageFolder, make_dataset
from tl_core.training.distribute import DEFAULT, MIRRORED, MULTI_WORKER, strategy_kind
from tl_core.training.train import train
from tl_core.run_dir import prepare_run_dir

REPO = Path(__file__).resolve().parents[1]
LOCAL_RUN_FILES = {"config.json", "class_names.json", "history.json", "history.parquet", "metrics.json",
                   "history.png", "confusion_matrix.png", "model", "tensorboard", "augmented_batch.png"}


def test_strategy_choice():
    two_workers = json.dumps({"cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}, "task": {"type": "worker", "index": 0}})
    one_worker = json.dumps({"cluster": {"worker": ["127.0.0.1:1"]}, "task": {"type": "worker", "index": 0}})
    assert strategy_kind(two_workers, num_gpus=0) == MULTI_WORKER
    assert strategy_kind(two_workers, num_gpus=4) == MULTI_WORKER  # MWMS mirrors local GPUs too
    assert strategy_kind(None, num_gpus=4) == MIRRORED
    assert strategy_kind(one_worker, num_gpus=2) == MIRRORED
    assert strategy_kind(None, num_gpus=1) == DEFAULT
    assert strategy_kind(None, num_gpus=0) == DEFAULT


def test_shards_are_disjoint_equal_and_are_what_the_pipeline_reads(tmp_path):
    import tensorflow as tf

    paths = []
    for i in range(11):
        path = tmp_path / f"{i}.png"
        path.write_bytes(tf.io.encode_png(np.full((4, 4, 1), i * 20, np.uint8)).numpy())
        paths.append(str(path))
    folder = ImageFolder(paths, np.arange(11, dtype=np.int32) % 2, ["a", "b"])
    shards = [folder.shard(rank, 3, seed=5) for rank in range(3)]
    assert [len(s) for s in shards] == [3, 3, 3]  # 11 // 3 each: every worker runs the same steps
    assert not set(shards[0].paths) & set(shards[1].paths) | set(shards[1].paths) & set(shards[2].paths)
    for shard in shards:
        seen = np.concatenate([x.numpy() for x, _ in make_dataset(shard, 4, 2, shuffle=True, seed=1)])
        levels = sorted({int(round(v / 20)) for v in seen[:, 0, 0, 0]})
        assert levels == sorted(int(Path(p).stem) for p in shard.paths)


@pytest.fixture(scope="module")
def ray_instance():
    with local_ray() as ray:
        yield ray


def distributed_config(tiny_backbone, colour_dataset, output_dir, **overrides):
    return prepare_run_dir(tiny_config(tiny_backbone, colour_dataset, output_dir,
                                       **{"epochs": 3, "num_workers": 2, "max_failures": 1, **overrides}))


def test_two_workers_train_like_a_local_run(ray_instance, server, tiny_backbone, colour_dataset, tmp_path):
    import mlflow

    from tl_core.tracking.mlflow_run import MLflow
    from tl_core.tracking.tensorboard import TensorBoard
    from tl_core.training.ray_train import train_on_ray

    config = distributed_config(tiny_backbone, colour_dataset, tmp_path / "ray_run", epochs=5)
    train_on_ray(config, trackers=[TensorBoard(), MLflow(server.uri, "two-workers")])
    run_dir = Path(config.output_dir)
    client = mlflow.MlflowClient(server.uri)
    runs = client.search_runs([client.get_experiment_by_name("two-workers").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"  # logged by the chief alone
    assert sorted(metric.step for metric in client.get_metric_history(runs[0].info.run_id, "val_accuracy")) == [1, 2, 3, 4, 5]
    assert LOCAL_RUN_FILES <= {p.name for p in run_dir.iterdir()}
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["run"]["num_workers"] == 2 and metrics["run"]["global_batch_size"] == 16
    assert_single_process_validation(run_dir, colour_dataset, metrics)
    assert json.loads((run_dir / "config.json").read_text())["global_batch_size"] == 16
    assert [row["epoch"] for row in json.loads((run_dir / "history.json").read_text())] == [1, 2, 3, 4, 5]
    assert_tensorboard_matches_history(run_dir)
    assert len(list((run_dir / "tensorboard" / "train").iterdir())) == 1  # written by the chief alone

    local = prepare_run_dir(dataclasses.replace(config, num_workers=1, output_dir=str(tmp_path / "local")))
    local_metrics = train(local)
    # Same epochs, half the optimizer steps (global batch 16 instead of 8): still comparable.
    assert metrics["accuracy"] >= 0.9 and abs(metrics["accuracy"] - local_metrics["accuracy"]) <= 0.1

    shards = [json.loads((run_dir / "shards" / f"worker-{rank}.json").read_text()) for rank in (0, 1)]
    assert len(shards[0]) == len(shards[1]) == 24  # 48 training images over 2 workers
    assert not set(shards[0]) & set(shards[1])


def kill_worker_once(rank: int, epoch: int, marker: Path):
    """Worker callbacks (train_on_ray's callbacks=): on its first attempt, worker `rank` dies mid-epoch `epoch`
    (1-based), as if its node failed. A closure: pickled by value, so the Ray workers need not import this module."""
    def callbacks(worker) -> list:
        import tf_keras

        class Kill(tf_keras.callbacks.Callback):
            def on_epoch_begin(self, begun, logs=None):
                self.epoch = begun + 1

            def on_train_batch_end(self, batch, logs=None):
                if worker.rank == rank and self.epoch == epoch and batch == 1 and not marker.exists():
                    # Ray's controller collects reports when it polls workers (every 2 s): a worker
                    # dying sooner than that after a report loses it. Real epochs are longer.
                    time.sleep(5)
                    marker.write_text("killed\n")
                    os._exit(1)

        return [Kill()]

    return callbacks


def test_a_killed_worker_resumes_from_the_last_checkpoint(ray_instance, tiny_backbone, colour_dataset, tmp_path):
    from tl_core.training.ray_train import train_on_ray

    config = distributed_config(tiny_backbone, colour_dataset, tmp_path / "ray_fault", epochs=5)
    marker = tmp_path / "killed"
    train_on_ray(config, callbacks=kill_worker_once(rank=1, epoch=3, marker=marker))
    assert marker.exists()  # the fault really fired
    history = json.loads((Path(config.output_dir) / "history.json").read_text())
    assert [row["epoch"] for row in history] == [1, 2, 3, 4, 5]  # no epoch twice, none missing
    killed_at = marker.stat().st_mtime
    # Epochs 1-2 finished before the kill and were restored from the checkpoint, not trained again.
    assert history[1]["finished_at"] < killed_at < history[2]["finished_at"]
    assert_tensorboard_matches_history(config.output_dir)  # the restarted chief appended, no epoch twice
    assert json.loads((Path(config.output_dir) / "metrics.json").read_text())["accuracy"] >= 0.9


def test_predict_on_ray_data_matches_the_local_prediction(ray_instance, tiny_backbone, colour_dataset, tmp_path):
    import pyarrow.parquet as pq

    from tl_core.serving.evaluate import ExportedModel
    from tl_core.serving.predict import predict_to_parquet
    from tl_core.serving.predict_ray import predict_on_ray

    config = distributed_config(tiny_backbone, colour_dataset, tmp_path / "run", num_workers=1, epochs=1)
    train(config)
    inputs = sorted(str(p) for p in (colour_dataset / "validation").rglob("*.*")) + [str(tmp_path / "missing.png")]
    summary = predict_on_ray(Path(config.output_dir) / "model", inputs, tmp_path / "ray_out", chunk_size=4,
                             concurrency=2)
    assert summary["rows"] == 21 and summary["errors"] == 1
    predict_to_parquet(ExportedModel(config.output_dir), inputs, tmp_path / "local_out")
    on_ray = sorted(pq.read_table(tmp_path / "ray_out").to_pylist(), key=lambda row: row["path"])
    local = sorted(pq.read_table(tmp_path / "local_out").to_pylist(), key=lambda row: row["path"])
    assert [row["path"] for row in on_ray] == [row["path"] for row in local]
    for a, b in zip(on_ray, local):
        assert a["error"] == b["error"] and a["predicted_class"] == b["predicted_class"]
        if a["error"] is None:
            np.testing.assert_allclose([a["p_blue"], a["p_red"]], [b["p_blue"], b["p_red"]], atol=1e-6)


def test_a_one_worker_ray_run_resumes_on_ray_from_its_checkpoint(ray_instance, tiny_backbone, colour_dataset, tmp_path):
    from tl_core.training import job
    from tl_core.run_dir import resume_config

    run_dir = tmp_path / "ray_one"
    config = tiny_config(tiny_backbone, colour_dataset, run_dir, epochs=2, ray=True)
    job.run(config, log=lambda *args, **kwargs: None)
    assert not (run_dir / "checkpoints").exists() and (run_dir / "ray").is_dir()  # Ray's checkpoints only
    before = json.loads((run_dir / "history.json").read_text())
    job.run(resume_config(run_dir, {"epochs": 3}), resume=True, log=lambda *args, **kwargs: None)
    history = json.loads((run_dir / "history.json").read_text())
    assert [row["epoch"] for row in history] == [1, 2, 3]
    assert history[:2] == before  # epochs 1 and 2 came from the checkpoint, not from training again
    assert json.loads((run_dir / "config.json").read_text())["ray"] is True


def assert_single_process_validation(run_dir: Path, colour_dataset: Path, metrics: dict) -> None:
    """Each of the 2 workers computed half of the 20 validation images; the gathered metrics are those of the same
    model evaluated in this one process."""
    from tl_core.data.sources import list_split
    from tl_core.serving.evaluate import evaluate_run

    assert metrics["run"]["validation_images"] == 20 and metrics["run"]["validation_images_per_worker"] == 10
    local = evaluate_run(run_dir, list_split(colour_dataset / "validation"))
    assert metrics["accuracy"] == local["accuracy"] and metrics["confusion_matrix"] == local["confusion_matrix"]
    np.testing.assert_allclose(metrics["loss"], local["loss"], rtol=1e-5)
    history = json.loads((run_dir / "history.json").read_text())
    assert history[-1]["val_loss"] == pytest.approx(metrics["loss"], rel=1e-6)


@pytest.mark.parametrize("built_in", [
    pytest.param(True, marks=pytest.mark.slow, id="built-in"),  # fine-tuning MobileNetV2's top 10 layers: 2 minutes
    pytest.param(False, id="opaque-hub-module"),  # the whole SavedModel trains (it once failed: tensorflow/hub#649)
])
def test_two_workers_share_the_validation_logits_while_fine_tuning(built_in, ray_instance, tiny_backbone, real_cache,
                                                                    colour_dataset, tmp_path):
    """In fine-tuning the backbone changes: each worker runs the whole model on its half of the validation images
    every epoch (the head phase's shared features are tested by test_two_workers_train_like_a_local_run)."""
    from tl_core.training.ray_train import train_on_ray

    config = distributed_config(tiny_backbone, colour_dataset, tmp_path / "run", epochs=2,
                                backbone="mobilenet_v2" if built_in else tiny_backbone, cache_dir=str(real_cache),
                                fine_tune_epochs=1, fine_tune_layers=10 if built_in else 0, fine_tune_learning_rate=1e-3)
    train_on_ray(config)
    run_dir = Path(config.output_dir)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert [row["phase"] for row in json.loads((run_dir / "history.json").read_text())] == ["head", "head", "fine_tune"]
    assert_single_process_validation(run_dir, colour_dataset, metrics)


def test_ingest_on_ray_writes_the_local_ingests_files_and_reports_the_same_bad_files(
        ray_instance, colour_dataset, tmp_path, capsys):
    """jobs.ingest --ray: Ray Data tasks check chunks of files and write one part each; the result is the local
    ingest's, file for file (rows, row groups, schema metadata), with the same bad files and reasons."""
    import shutil

    import pyarrow.parquet as pq

    from conftest import colour_image, encode
    from jobs.ingest import main as ingest

    data = tmp_path / "data"
    shutil.copytree(colour_dataset, data)
    (data / "train" / "red" / "red_broken.jpg").write_bytes(b"\xff\xd8 not a JPEG")
    (data / "validation" / "blue" / "blue_tiny.png").write_bytes(encode(colour_image(np.random.default_rng(0), 2, 4, 4), "PNG"))

    def run(*flags, cache):
        code = ingest(["--data-dir", str(data), "--rows-per-file", "7", "--quiet", "--cache-dir", str(tmp_path / cache), *flags])
        return code, capsys.readouterr()

    code, refused = run("--ray", "--output", str(tmp_path / "refused"), cache="ray_cache")
    assert code == 2 and not (tmp_path / "refused").exists()
    assert "2 file(s) cannot be used" in refused.err and "red_broken.jpg" in refused.err and "blue_tiny.png" in refused.err

    outputs = {}
    for name, flags in (("local", ()), ("ray", ("--ray",))):
        code, printed = run(*flags, "--output", str(tmp_path / name), "--skip-bad-files", "--image-size", "32",
                            cache=f"{name}_cache_2")  # a new cache each: every file decoded, by this ingest
        assert code == 0
        outputs[name] = printed.out.split("Leaving out")[1].split("train: writing")[0]
    assert outputs["ray"] == outputs["local"] and "red_broken.jpg" in outputs["ray"] and "blue_tiny.png" in outputs["ray"]
    for split, rows in (("train", 48), ("validation", 19)):
        local, on_ray = (sorted(p.name for p in (tmp_path / name / split).iterdir()) for name in ("local", "ray"))
        assert on_ray == local == [f"part-{i:05d}.parquet" for i in range(-(-rows // 7))]
        for file in local:
            a, b = pq.ParquetFile(tmp_path / "local" / split / file), pq.ParquetFile(tmp_path / "ray" / split / file)
            assert b.schema_arrow.metadata == a.schema_arrow.metadata and b.num_row_groups == a.num_row_groups
            assert b.read().equals(a.read())

    code, again = run("--ray", "--check", cache="ray_cache")  # the refused run's verdicts: nothing decoded again
    assert code == 1 and f"0 decoded; {48 + 1 + 20 + 1} unchanged since their last check" in again.out
