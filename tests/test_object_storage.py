"""Data on S3: every reader takes s3:// URIs, against a real S3-compatible server (moto_server) on 127.0.0.1."""
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from conftest import ANY_CHALLENGER, S3Server, TINY_IMAGE_SIZE, upload
from jobs import evaluate as evaluate_job
from jobs import ingest as ingest_job
from jobs import predict as predict_job
from jobs import retrain as retrain_job
from jobs import train as train_job
from tl_core import storage
from tl_core.data.images import list_image_folder, make_dataset
from tl_core.data.sources import list_split

SECRET = S3Server.ENVIRONMENT["AWS_SECRET_ACCESS_KEY"]


@pytest.fixture(scope="module")
def s3_data(s3_server, colour_dataset, tmp_path_factory) -> dict:
    """The colour dataset on S3 as class folders and as Parquet shards, with their local twins."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in s3_server.environment().items():
            patch.setenv(name, value)
        bucket = s3_server.new_bucket()
        parquet = tmp_path_factory.mktemp("parquet") / "data"
        assert ingest_job.main(["--data-dir", str(colour_dataset), "--output", str(parquet), "--rows-per-file", "20",
                                "--quiet"]) == 0
        return {"folders": upload(colour_dataset, f"s3://{bucket}/folders"), "local_folders": colour_dataset,
                "parquet": upload(parquet, f"s3://{bucket}/parquet"), "local_parquet": parquet, "bucket": bucket}


def test_locations_are_joined_and_named_alike_and_credentials_in_a_uri_are_refused():
    assert storage.is_uri("s3://bucket/a") and not storage.is_uri("data/a") and not storage.is_uri("C:\\data")
    assert storage.join("s3://bucket/a/", "train", "red") == "s3://bucket/a/train/red"
    assert storage.join("data", "train") == str(Path("data") / "train")
    assert storage.relative("s3://bucket/a/train/x.png", "s3://bucket/a/") == "train/x.png"
    assert (storage.name("s3://bucket/a/x.png"), storage.parent("s3://bucket/a/x.png")) == ("x.png", "s3://bucket/a")
    with pytest.raises(storage.StorageError, match="credentials do not belong in a URI") as raised:
        storage.is_dir(f"s3://AKIAEXAMPLE:{SECRET}@bucket/data")
    assert SECRET not in str(raised.value) and "AKIAEXAMPLE" not in str(raised.value)
    with pytest.raises(storage.StorageError, match="no bucket"):
        storage.is_dir("s3:///data")
    with pytest.raises(storage.StorageError, match="takes no") as raised:  # pyarrow would take keys from a query
        storage.is_dir(f"s3://bucket/data?access_key=AKIAEXAMPLE&secret_key={SECRET}")
    assert SECRET not in str(raised.value) and "AKIAEXAMPLE" not in str(raised.value)


def test_a_listing_on_s3_is_the_local_listing(s3, colour_dataset, tmp_path):
    local = Path(shutil.copytree(colour_dataset / "train", tmp_path / "train"))
    (local / "red" / ".DS_Store").write_bytes(b"\0")  # ignored, and said so, on both
    (local / "blue" / ".thumbnails").mkdir()
    (local / "blue" / ".thumbnails" / "t.png").write_bytes(b"x")
    (local / "blue" / "deeper").mkdir()
    shutil.copy(local / "blue" / "blue_000.jpg", local / "blue" / "deeper" / "copy.jpg")
    uri = upload(local, f"s3://{s3.new_bucket()}/train")
    on_disk, on_s3 = list_image_folder(local), list_image_folder(uri)
    assert on_s3.class_names == on_disk.class_names == ["blue", "red"]
    assert [storage.relative(p, uri) for p in on_s3.paths] == [storage.relative(p, local) for p in on_disk.paths]
    assert [storage.relative(p, uri) for p in on_s3.ignored] == [storage.relative(p, local) for p in on_disk.ignored] \
        == ["blue/.thumbnails", "red/.DS_Store"]
    np.testing.assert_array_equal(on_s3.labels, on_disk.labels)
    np.testing.assert_array_equal(on_s3.stats[:, 0], on_disk.stats[:, 0])  # sizes; times are the upload's
    assert storage.read_bytes(on_s3.paths[3]) == Path(on_disk.paths[3]).read_bytes()


def test_folders_and_parquet_on_s3_give_the_batches_they_give_on_disk(s3, s3_data):
    for remote, local in (("folders", "local_folders"), ("parquet", "local_parquet")):
        for split in ("train", "validation"):
            on_s3 = list_split(storage.join(s3_data[remote], split))
            on_disk = list_split(Path(s3_data[local]) / split)
            assert type(on_s3) is type(on_disk) and len(on_s3) == len(on_disk)
            for shuffle in (False, True):
                batches = [[(x.numpy(), y.numpy()) for x, y in make_dataset(source, TINY_IMAGE_SIZE, 8, shuffle=shuffle,
                                                                           seed=2, epoch=1)] for source in (on_s3, on_disk)]
                for (x_s3, y_s3), (x_disk, y_disk) in zip(*batches, strict=True):
                    np.testing.assert_array_equal(x_s3, x_disk)
                    np.testing.assert_array_equal(y_s3, y_disk)


def run_files_text(run_dir: Path) -> str:
    return "\n".join(path.read_bytes().decode("utf-8", "replace") for path in Path(run_dir).rglob("*") if path.is_file())


@pytest.mark.parametrize("layout", ["folders", "parquet"])
def test_train_on_s3_data_and_no_credential_is_written_or_printed(s3, s3_data, tiny_backbone, tmp_path, capsys, layout):
    run_dir = tmp_path / "run"
    flags = ["--data-dir", s3_data[layout], "--backbone", tiny_backbone, "--image-size", str(TINY_IMAGE_SIZE),
             "--batch-size", "8", "--epochs", "3", "--cache-dir", str(tmp_path / "cache"), "--quiet"]
    assert train_job.main([*flags, "--output-dir", str(run_dir)]) == 0
    printed = capsys.readouterr()
    config = json.loads((run_dir / "config.json").read_text())
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert config["data_dir"] == s3_data[layout] and metrics["run"]["data_dir"] == s3_data[layout]
    assert metrics["accuracy"] >= 0.9
    for text in (printed.out, printed.err, run_files_text(run_dir), run_files_text(tmp_path / "cache")):
        assert SECRET not in text and S3Server.ENVIRONMENT["AWS_ACCESS_KEY_ID"] not in text


def test_the_check_of_s3_folders_remembers_unchanged_objects_and_names_bad_ones(s3, colour_dataset, tiny_backbone,
                                                                              tmp_path, capsys):
    local = Path(shutil.copytree(colour_dataset, tmp_path / "data"))
    uri = upload(local, f"s3://{s3.new_bucket()}/data")
    flags = ["--data-dir", uri, "--cache-dir", str(tmp_path / "cache"), "--backbone", tiny_backbone, "--image-size",
             str(TINY_IMAGE_SIZE), "--batch-size", "8", "--check", "--quiet"]
    assert train_job.main(flags) == 0
    assert "68 decoded" in capsys.readouterr().out
    assert train_job.main(flags) == 0
    assert "0 decoded; 68 unchanged since their last check" in capsys.readouterr().out
    storage.resolve(uri)[0].open_output_stream(storage.resolve(f"{uri}/train/red/broken.png")[1]).close()  # 0 bytes
    assert train_job.main(flags) == 1
    printed = capsys.readouterr()
    assert "1 decoded; 68 unchanged" in printed.out
    assert f"{uri}/train/red/broken.png: empty file (0 bytes)" in printed.out + printed.err


def test_keys_and_pointers_that_climb_out_of_their_directory_are_refused_before_anything_is_written(s3, tmp_path):
    import boto3

    from tl_core.training.run_store import Mirror

    bucket = s3.new_bucket()
    client = boto3.client("s3")
    client.put_object(Bucket=bucket, Key="runs/x/checkpoints/epoch-00001/state.index", Body=b"checkpoint")
    client.put_object(Bucket=bucket, Key="runs/x/../../escaped.txt", Body=b"outside")
    storage.download(f"s3://{bucket}/runs/x", tmp_path / "local" / "x")  # pyarrow's listing passes the '..' key over
    assert sorted(path.relative_to(tmp_path).as_posix() for path in tmp_path.rglob("*") if path.is_file()) == [
        "local/x/checkpoints/epoch-00001/state.index"]
    for climbing in ("../x", "a/../b", "/etc/passwd", "a//b", ".", ""):  # and download() refuses any that it lists
        with pytest.raises(storage.StorageError, match="is not a plain relative path"):
            storage.plain_relative(climbing, f"s3://{bucket}/runs/x")

    # A checkpoint pointer read back from the bucket on --resume names a directory below the checkpoints, or nothing.
    client.put_object(Bucket=bucket, Key="runs/y/checkpoints/latest.json", Body=b'{"directory": "../../../../tmp", "epoch": 1}')
    (tmp_path / "staging").mkdir()
    with pytest.raises(storage.StorageError, match=r"'../../../../tmp' is not a plain relative path"):
        Mirror(f"s3://{bucket}/runs/y", tmp_path / "staging").pull()


def test_evaluate_predict_and_ingest_read_s3(s3, s3_data, tiny_backbone, tmp_path):
    run_dir = tmp_path / "run"
    assert train_job.main(["--data-dir", s3_data["folders"], "--backbone", tiny_backbone, "--image-size",
                           str(TINY_IMAGE_SIZE), "--batch-size", "8", "--epochs", "2", "--output-dir", str(run_dir),
                           "--cache-dir", str(tmp_path / "cache"), "--quiet"]) == 0
    for data in (s3_data["folders"], str(s3_data["local_folders"])):
        output = tmp_path / ("evaluation_s3" if storage.is_uri(data) else "evaluation_disk")
        assert evaluate_job.main(["--model", str(run_dir / "model"), "--data-dir", data, "--output", str(output),
                                  "--quiet"]) == 0
    on_s3, on_disk = (json.loads((tmp_path / name / "metrics.json").read_text()) for name in ("evaluation_s3",
                                                                                              "evaluation_disk"))
    assert on_s3["confusion_matrix"] == on_disk["confusion_matrix"] and on_s3["loss"] == pytest.approx(on_disk["loss"])
    assert on_s3["data_dir"] == s3_data["folders"]

    for layout, local in (("folders", s3_data["local_folders"]), ("parquet", s3_data["local_parquet"])):
        for data in (storage.join(s3_data[layout], "validation"), str(Path(local) / "validation")):
            assert predict_job.main(["--model", str(run_dir / "model"), "--input", data, "--quiet", "--output",
                                     str(tmp_path / f"{layout}_{'s3' if storage.is_uri(data) else 'disk'}")]) == 0
        on_s3, on_disk = (pq.read_table(tmp_path / f"{layout}_{where}").to_pylist() for where in ("s3", "disk"))
        assert [row["predicted_class"] for row in on_s3] == [row["predicted_class"] for row in on_disk]
        assert len(on_s3) == 20 and all(row["error"] is None for row in on_s3)
        if layout == "folders":
            relative = [storage.relative(row["path"], local / "validation") for row in on_disk]
            assert [row["path"] for row in on_s3] == [f"{s3_data['folders']}/validation/{name}" for name in relative]

    output = tmp_path / "ingested"
    assert ingest_job.main(["--data-dir", s3_data["folders"], "--output", str(output), "--rows-per-file", "20",
                            "--quiet"]) == 0
    for split in ("train", "validation"):
        rows = [pq.read_table(path).drop(["path"]) for path in sorted((output / split).glob("*.parquet"))]
        local = [pq.read_table(path).drop(["path"]) for path in sorted((s3_data["local_parquet"] / split).glob("*.parquet"))]
        assert [table.to_pylist() for table in rows] == [table.to_pylist() for table in local]


def read_predictions(location) -> list[dict]:
    filesystem, path = storage.resolve(location)
    return pq.read_table(path, filesystem=filesystem).to_pylist()


def test_models_and_outputs_in_the_bucket_are_what_they_are_on_disk(s3, s3_data, tiny_backbone, tmp_path):
    """A run trained into the bucket is the --model of evaluate and predict, read from there; evaluate's, predict's
    and ingest's outputs go to the bucket, each the same as on disk."""
    bucket = f"s3://{s3.new_bucket()}"
    run, local_run, data = f"{bucket}/runs/a", tmp_path / "run", str(s3_data["local_folders"])
    assert train_job.main(["--data-dir", data, "--backbone", tiny_backbone, "--image-size", str(TINY_IMAGE_SIZE),
                           "--batch-size", "8", "--epochs", "2", "--output-dir", run, "--cache-dir",
                           str(tmp_path / "cache"), "--quiet"]) == 0
    storage.download(run, local_run)

    for model, output in ((run, f"{bucket}/evaluation"), (str(local_run), str(tmp_path / "evaluation"))):
        assert evaluate_job.main(["--model", model, "--data-dir", data, "--output-dir", output, "--quiet"]) == 0
    in_bucket = json.loads(storage.read_bytes(f"{bucket}/evaluation/metrics.json"))
    on_disk = json.loads((tmp_path / "evaluation" / "metrics.json").read_text())
    assert in_bucket["confusion_matrix"] == on_disk["confusion_matrix"] and in_bucket["loss"] == pytest.approx(on_disk["loss"])
    assert in_bucket["model"] == f"{run}/model"
    assert sorted(storage.name(path) for path in storage.walk(f"{bucket}/evaluation").paths) == sorted(
        path.name for path in (tmp_path / "evaluation").iterdir())

    for model, output in ((run, f"{bucket}/predictions"), (str(local_run), str(tmp_path / "predictions"))):
        assert predict_job.main(["--model", model, "--input", f"{data}/validation", "--output", output, "--quiet"]) == 0
    assert read_predictions(f"{bucket}/predictions") == read_predictions(tmp_path / "predictions")
    assert predict_job.main(["--model", run, "--input", f"{data}/validation", "--output", f"{bucket}/predictions",
                             "--quiet"]) == 2  # a prefix that holds files, as a folder that does

    assert ingest_job.main(["--data-dir", data, "--output", f"{bucket}/parquet", "--rows-per-file", "20", "--quiet"]) == 0
    for split in ("train", "validation"):
        in_bucket = storage.files_in(f"{bucket}/parquet/{split}", ".parquet")
        on_disk = sorted((s3_data["local_parquet"] / split).glob("*.parquet"))
        assert [storage.name(path) for path in in_bucket] == [path.name for path in on_disk]
        for remote, local in zip(in_bucket, on_disk):
            filesystem, path = storage.resolve(remote)
            assert pq.read_table(path, filesystem=filesystem).equals(pq.read_table(local))
    assert not list(Path(tempfile.gettempdir()).glob("tl-output-*")) and not list(Path(tempfile.gettempdir()).glob(
        "tl-copy-*"))  # staging and model copies removed


def test_predict_and_ingest_on_ray_write_to_the_bucket(s3, s3_data, tiny_backbone, tmp_path):
    """Ray Data writes the predictions, and each ingest task its own shards, into the bucket; the store's file system
    that Ray hands its tasks holds no credential."""
    import pickle

    from conftest import local_ray

    bucket = f"s3://{s3.new_bucket()}"
    data, run = str(s3_data["local_folders"]), tmp_path / "run"
    assert SECRET.encode() not in pickle.dumps(storage.resolve(bucket)[0])
    assert train_job.main(["--data-dir", data, "--backbone", tiny_backbone, "--image-size", str(TINY_IMAGE_SIZE),
                           "--batch-size", "8", "--epochs", "1", "--output-dir", str(run), "--cache-dir",
                           str(tmp_path / "cache"), "--quiet"]) == 0
    upload(run, f"{bucket}/run")
    assert predict_job.main(["--model", str(run), "--input", f"{data}/validation", "--output",
                             str(tmp_path / "predictions"), "--quiet"]) == 0
    with local_ray(s3.environment()):
        assert predict_job.main(["--model", f"{bucket}/run", "--input", f"{data}/validation", "--output",
                                 f"{bucket}/predictions", "--ray", "--quiet"]) == 0
        assert ingest_job.main(["--data-dir", data, "--output", f"{bucket}/parquet", "--rows-per-file", "20", "--ray",
                                "--cache-dir", str(tmp_path / "cache"), "--quiet"]) == 0
    by_path = sorted(read_predictions(f"{bucket}/predictions"), key=lambda row: row["path"])
    assert by_path == sorted(read_predictions(tmp_path / "predictions"), key=lambda row: row["path"])
    for split in ("train", "validation"):
        in_bucket = storage.files_in(f"{bucket}/parquet/{split}", ".parquet")
        on_disk = sorted((s3_data["local_parquet"] / split).glob("*.parquet"))
        assert [storage.name(path) for path in in_bucket] == [path.name for path in on_disk]
        filesystem, path = storage.resolve(in_bucket[0])
        assert pq.read_table(path, filesystem=filesystem).equals(pq.read_table(on_disk[0]))


@pytest.mark.parametrize("fault", ["missing bucket", "unreachable endpoint", "credentials in the URI"])
def test_a_bad_store_is_one_line_and_exit_2_before_anything_is_written(s3, tmp_path, capsys, monkeypatch, fault):
    data = {"missing bucket": "s3://no-such-bucket/data", "unreachable endpoint": f"s3://{s3.new_bucket()}/data",
            "credentials in the URI": f"s3://AKIAEXAMPLE:{SECRET}@bucket/data"}[fault]
    if fault == "unreachable endpoint":
        monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # the discard port: nothing listens
    status = train_job.main(["--data-dir", data, "--output-dir", str(tmp_path / "run"), "--quiet"])
    err = capsys.readouterr().err
    assert status == 2 and len(err.strip().splitlines()) == 1, err
    expected = {"missing bucket": "the bucket 'no-such-bucket' does not exist",
                "unreachable endpoint": "cannot connect to http://127.0.0.1:9",
                "credentials in the URI": "credentials do not belong in a URI"}[fault]
    assert expected in err and SECRET not in err
    assert not (tmp_path / "run").exists()


def test_retrain_on_s3_data_fingerprints_it_once_and_skips_it_unchanged(s3, colour_dataset, tiny_backbone, tmp_path,
                                                                       monkeypatch):
    from conftest import tiny_config
    from tl_core.registry import fingerprint
    from tl_core.registry.retrain import retrain

    uri = upload(colour_dataset, f"s3://{s3.new_bucket()}/data")
    hashed = []
    real_sha256 = storage.sha256
    monkeypatch.setattr(storage, "sha256", lambda path: hashed.append(path) or real_sha256(path))
    on_s3 = fingerprint.build_manifest(uri)
    # The same files under the same relative paths: the fingerprint does not depend on where the data is.
    assert fingerprint.fingerprint(on_s3) == fingerprint.fingerprint(fingerprint.build_manifest(colour_dataset))
    hashed.clear()
    assert fingerprint.build_manifest(uri, on_s3) == on_s3 and hashed == []  # unchanged objects: hashes reused

    config = tiny_config(tiny_backbone, uri, cache_dir=str(tmp_path / "cache"))
    first = retrain(config, tmp_path / "registry", log=lambda *args, **kwargs: None)
    assert first["action"] == "promoted" and first["challenger_accuracy"] >= 0.9
    second = retrain(config, tmp_path / "registry", log=lambda *args, **kwargs: None)
    assert second["action"] == "skipped" and first["run_id"] in second["reason"]


def test_two_ray_workers_train_from_and_to_s3_with_no_shared_directory_and_resume_from_the_bucket(
        s3, s3_data, tiny_backbone, tmp_path):
    """The workers read their shards from S3 themselves (the driver hands them URIs, no files), Ray Train keeps its
    checkpoints in the bucket, each worker uploads its own files; a resumed run continues from Ray's checkpoint there."""
    import tl_core
    from conftest import assert_tensorboard_matches_history, local_ray, tiny_config
    from tl_core.run_dir import resume_config
    from tl_core.training.job import has_checkpoint, run

    told = tl_core.worker_env()
    assert told["AWS_ENDPOINT_URL"] == s3.endpoint and told["AWS_REGION"] == "us-east-1"
    assert not {"AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID", "AWS_SESSION_TOKEN"} & set(told)
    uri = f"s3://{s3.new_bucket()}/runs/ray"
    config = tiny_config(tiny_backbone, s3_data["folders"], uri, epochs=2, num_workers=2, max_failures=0,
                         cache_dir=str(tmp_path / "cache"))
    with local_ray(s3.environment()):
        metrics = run(config, log=lambda *args, **kwargs: None)
        assert has_checkpoint(config)
        first = json.loads(storage.read_bytes(f"{uri}/history.json"))
        resumed = run(resume_config(uri, {"epochs": 3}), resume=True, log=lambda *args, **kwargs: None)
    assert metrics["run"]["num_workers"] == 2 and metrics["run"]["data_dir"] == s3_data["folders"]
    assert resumed["run"]["num_workers"] == 2
    downloaded = tmp_path / "downloaded"
    storage.download(uri, downloaded)
    shards = [json.loads((downloaded / "shards" / f"worker-{rank}.json").read_text()) for rank in (0, 1)]
    assert all(path.startswith(f"{s3_data['folders']}/train/") for shard in shards for path in shard)
    assert len(shards[0]) == len(shards[1]) == 24 and not set(shards[0]) & set(shards[1])
    history = json.loads((downloaded / "history.json").read_text())
    assert [row["epoch"] for row in history] == [1, 2, 3] and history[:2] == first  # continued, not trained again
    assert json.loads((downloaded / "metrics.json").read_text()) == resumed
    assert json.loads((downloaded / "config.json").read_text())["output_dir"] == uri
    assert any(path.name.startswith("checkpoint_") for path in (downloaded / "ray").iterdir())
    assert {"model", "history.png", "confusion_matrix.png", "class_names.json"} <= {p.name for p in downloaded.iterdir()}
    assert not (downloaded / "checkpoints").exists()  # Ray Train's checkpoints are the run's
    assert_tensorboard_matches_history(downloaded)
    assert not list(Path(tempfile.gettempdir()).glob("tl-worker-*"))  # the workers' staging is gone


def test_sigterm_stops_a_ray_run_in_the_bucket_with_its_resume_command_and_resume_finishes_it(
        s3, colour_dataset, tiny_backbone, tmp_path):
    """jobs.train --num-workers 2 into the bucket, stopped by SIGTERM once Ray Train has stored an epoch there: exit
    130 and the resume command, the driver's staging removed (the killed workers' is removed by the next workers of
    the run); --resume continues from the bucket."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from conftest import REPO

    uri, epochs = f"s3://{s3.new_bucket()}/runs/ray-stopped", 12
    staging = tmp_path / "staging"
    staging.mkdir()
    flags = [*seed_recipe_flags(colour_dataset, tiny_backbone, tmp_path / "cache", epochs), "--num-workers", "2",
             "--max-failures", "0", "--output-dir", uri]
    environment = {**os.environ, "TMPDIR": str(staging)}
    process = subprocess.Popen([sys.executable, "-m", "jobs.train", *flags], cwd=REPO, env=environment,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while process.poll() is None and time.monotonic() < deadline and not (
                storage.exists(f"{uri}/history.json") and storage.exists(f"{uri}/ray")):
            time.sleep(0.2)
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=180)
    finally:
        process.kill()
        process.wait(timeout=30)
    # Ray Train's PlacementGroupCleaner actor, finding its controller gone, asks Ray's state API whether it lives;
    # with RAY_ADDRESS=local that API looks for Ray's processes on the machine, and with a second Ray running there
    # (a developer's `ray start`) it fails with "Found multiple active Ray instances" and prints a traceback (Ray
    # 2.60, seen in .ci/run with a live cluster). The command's own output has none.
    own = "\n".join(line for line in err.splitlines() if "(PlacementGroupCleaner pid=" not in line)
    assert process.returncode == 130 and "Traceback" not in own, err[-3000:]
    assert f"python -m jobs.train --resume --output-dir {uri}" in err
    completed = len(json.loads(storage.read_bytes(f"{uri}/history.json")))
    assert 1 <= completed < epochs and not storage.exists(f"{uri}/metrics.json")
    assert not [path for path in staging.iterdir() if path.name.startswith("tl-run-")]  # the driver's, at once
    left = sorted(path.name for path in staging.iterdir() if path.name.startswith("tl-worker-"))  # Ray killed them

    resumed = subprocess.run([sys.executable, "-m", "jobs.train", "--resume", "--output-dir", uri, "--quiet"], cwd=REPO,
                             env=environment, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    history = json.loads(storage.read_bytes(f"{uri}/history.json"))
    assert [row["epoch"] for row in history] == list(range(1, epochs + 1))
    assert json.loads(storage.read_bytes(f"{uri}/metrics.json"))["run"]["num_workers"] == 2
    assert len(left) <= 2 and not [path for path in staging.iterdir() if path.name.startswith(("tl-run-", "tl-worker-"))]
def test_a_retrain_on_ray_with_its_registry_in_s3_promotes_a_challenger_trained_into_the_bucket(
        s3, colour_dataset, tiny_backbone, tmp_path):
    from conftest import local_ray, tiny_config
    from tl_core.registry.retrain import retrain
    from tl_core.registry import registry_at

    uri = f"s3://{s3.new_bucket()}/registry"
    config = tiny_config(tiny_backbone, colour_dataset, epochs=2, num_workers=2, max_failures=0,
                         cache_dir=str(tmp_path / "cache"))
    with local_ray(s3.environment()):
        record = retrain(config, uri, log=lambda *args, **kwargs: None)
    registry = registry_at(uri)
    assert record["action"] == "promoted" and registry.champion() == record["run_id"]
    run = f"{uri}/models/{record['run_id']}"
    metrics = json.loads(storage.read_bytes(f"{run}/metrics.json"))
    assert metrics["run"]["num_workers"] == 2 and record["validation_images"] == 20
    assert any(name.startswith("checkpoint_") for name in storage.list_dirs(f"{run}/ray"))  # Ray Train's, in the bucket
    assert json.loads(storage.read_bytes(f"{uri}/champion.json"))["model"] == f"models/{record['run_id']}/model"


def test_a_search_in_the_bucket_keeps_everything_there_and_resumes_from_it(s3, s3_data, tiny_backbone, tmp_path):
    """jobs.tune on data in the bucket, into the bucket: its files, features, Ray Tune's experiment and the final run
    are there; --resume of the finished search reads them back from there and trains nothing again."""
    import subprocess
    import sys

    from conftest import REPO
    from test_tune import SMALL_SPACE, tune_command

    uri = f"s3://{s3.new_bucket()}/search"
    (tmp_path / "space.json").write_text(json.dumps(SMALL_SPACE))
    command = tune_command(tiny_backbone, s3_data["folders"], uri, tmp_path / "space.json", "--trials", "4")
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert set(storage.list_dirs(uri)) == {"features", "search", "final"}
    for name in ("tune.json", "tuning_split.parquet", "trials.parquet", "trials.png", "best_config.json", "summary.json",
                 "features/done.json", "final/metrics.json", "final/model/saved_model.pb"):
        assert storage.exists(f"{uri}/{name}"), name
    summary = json.loads(storage.read_bytes(f"{uri}/summary.json"))
    assert summary["trials"] == 4
    assert json.loads(storage.read_bytes(f"{uri}/final/metrics.json"))["accuracy"] == summary["final_validation_accuracy"]

    resumed = subprocess.run([sys.executable, "-m", "jobs.tune", "--resume", "--output-dir", uri], cwd=REPO,
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert not [line for line in resumed.stdout.splitlines() if line.startswith("[")]  # no trial ran again
    assert resumed.stdout.startswith(f"Continuing the search in {uri} (tune.json)")
    assert json.loads(storage.read_bytes(f"{uri}/summary.json"))["final_validation_accuracy"] == \
        summary["final_validation_accuracy"]


def test_an_asset_cache_in_object_storage_is_refused_in_one_line(tmp_path, capsys, monkeypatch):
    """The one location that stays on disk: each machine keeps its own asset cache."""
    monkeypatch.chdir(tmp_path)
    assert train_job.main(["--cache-dir", "s3://bucket/cache", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--cache-dir s3://bucket/cache" in err, err
    assert "give --cache-dir a local path" in err and not (tmp_path / "s3:").exists()


def seed_recipe_flags(colour_dataset, tiny_backbone, cache, epochs: int) -> list[str]:
    return ["--data-dir", str(colour_dataset), "--backbone", tiny_backbone, "--recipe", "seed", "--image-size",
            str(TINY_IMAGE_SIZE), "--batch-size", "8", "--epochs", str(epochs), "--learning-rate", "0.05", "--seed", "3",
            "--cache-dir", str(cache), "--quiet"]


def test_a_run_on_s3_killed_mid_way_resumes_from_the_bucket_alone_and_ends_as_an_uninterrupted_run(
        s3, colour_dataset, tiny_backbone, tmp_path):
    """SIGKILL: nothing is uploaded at the end, so only what each epoch uploaded survives; the resume starts from a new
    staging directory (what another machine would do) and must end with the weights of an uninterrupted local run."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from conftest import REPO, assert_tensorboard_matches_history

    uri, epochs = f"s3://{s3.new_bucket()}/runs/a", 30
    flags = seed_recipe_flags(colour_dataset, tiny_backbone, tmp_path / "cache", epochs)
    process = subprocess.Popen([sys.executable, "-m", "jobs.train", *flags, "--output-dir", uri], cwd=REPO,
                               env=os.environ, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline, completed = time.monotonic() + 240, 0
    while completed < 3 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
        if storage.exists(f"{uri}/checkpoints/latest.json"):
            completed = json.loads(storage.read_bytes(f"{uri}/checkpoints/latest.json"))["epoch"]
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert 3 <= completed < epochs, process.stderr.read().decode()[-3000:]
    assert not storage.exists(f"{uri}/metrics.json") and not storage.exists(f"{uri}/model")

    assert train_job.main(["--resume", "--output-dir", uri, "--quiet"]) == 0
    assert train_job.main([*flags, "--output-dir", str(tmp_path / "local")]) == 0
    run = tmp_path / "downloaded"
    storage.download(uri, run)
    history = json.loads((run / "history.json").read_text())
    uninterrupted = json.loads((tmp_path / "local" / "history.json").read_text())
    assert [row["epoch"] for row in history] == list(range(1, epochs + 1))
    for key in ("loss", "val_loss", "val_accuracy"):
        np.testing.assert_allclose([row[key] for row in history], [row[key] for row in uninterrupted], rtol=1e-5)
    from test_reproduce_resume import head_weights

    np.testing.assert_array_equal(head_weights(run), head_weights(tmp_path / "local"))
    assert json.loads((run / "config.json").read_text())["output_dir"] == uri
    assert {"metrics.json", "history.png", "confusion_matrix.png", "class_names.json", "tensorboard"} <= {
        path.name for path in run.iterdir()}
    assert sorted(path.name for path in (run / "checkpoints").iterdir()) == ["epoch-00030", "latest.json"]
    assert_tensorboard_matches_history(run)
    assert SECRET not in run_files_text(run)


def test_a_run_on_s3_refuses_to_mix_runs_as_on_disk(s3, colour_dataset, tiny_backbone, tmp_path, capsys):
    uri = f"s3://{s3.new_bucket()}/runs/b"
    flags = seed_recipe_flags(colour_dataset, tiny_backbone, tmp_path / "cache", 2)
    assert train_job.main([*flags, "--output-dir", uri]) == 0
    capsys.readouterr()
    assert train_job.main([*flags, "--output-dir", uri]) == 2
    assert f"error: {uri} already holds files; pass --resume" in capsys.readouterr().err
    assert train_job.main([*flags, "--epochs", "3", "--seed", "4", "--output-dir", uri, "--resume"]) == 2
    assert "--seed 4 (the run has 3)" in capsys.readouterr().err
    assert train_job.main([*flags, "--output-dir", uri, "--overwrite"]) == 0
    assert train_job.main(["--resume", "--output-dir", f"s3://{s3.new_bucket()}/nothing", "--quiet"]) == 2
    assert "holds no run to resume" in capsys.readouterr().err


def test_sigterm_stops_a_run_on_s3_with_its_resume_command_and_leaves_no_staging(s3, colour_dataset, tiny_backbone,
                                                                                  tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    from conftest import REPO

    uri, epochs = f"s3://{s3.new_bucket()}/runs/c", 30
    flags = seed_recipe_flags(colour_dataset, tiny_backbone, tmp_path / "cache", epochs)
    staging = tmp_path / "staging"
    staging.mkdir()
    process = subprocess.Popen([sys.executable, "-m", "jobs.train", *flags, "--output-dir", uri], cwd=REPO,
                               env={**os.environ, "TMPDIR": str(staging)}, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not storage.exists(f"{uri}/checkpoints/latest.json") and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert f"python -m jobs.train --resume --output-dir {uri}" in err
    assert not any(staging.iterdir())  # everything it had completed is in the bucket, the staging copy is gone
    completed = len(json.loads(storage.read_bytes(f"{uri}/history.json")))
    assert 1 <= completed < epochs
    assert train_job.main(["--resume", "--output-dir", uri, "--quiet"]) == 0
    assert [row["epoch"] for row in json.loads(storage.read_bytes(f"{uri}/history.json"))] == list(range(1, epochs + 1))


class Proxy:
    """A TCP proxy on 127.0.0.1 in front of a server, that a test takes down (listener and open connections: the
    store is gone) and brings back on the same port."""

    def __init__(self, target_port: int):
        import socket

        self.target, self.connections, self.listener = ("127.0.0.1", target_port), [], None
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.start()

    def start(self) -> None:
        import socket
        import threading

        self.listener = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, args=(self.listener,), daemon=True).start()

    def _accept(self, listener) -> None:
        import socket
        import threading

        while True:
            try:
                client = listener.accept()[0]
                server = socket.create_connection(self.target)
            except OSError:  # stopped
                return
            self.connections += [client, server]
            for source, sink in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pump(source, sink) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                end.close()

    def stop(self) -> None:
        self.listener.close()
        for connection in self.connections:
            connection.close()
        self.connections = []


def test_a_store_gone_mid_run_stops_it_in_one_line_and_resume_continues_once_it_is_back(
        s3, colour_dataset, tiny_backbone, tmp_path):
    """The run reaches the store through a proxy, which goes down after two epochs for longer than the retries:
    the run stops with one line, exit 2, and the resume command; its completed epochs are safe in the bucket, and
    --resume continues once the store is back. (When the remaining epochs outran the uploads' retries, the run
    finished here: its copy is kept and the last line is the command that uploads it.)"""
    import os
    import shlex
    import subprocess
    import sys
    import time

    from conftest import REPO

    uri, epochs = f"s3://{s3.new_bucket()}/runs/outage", 30
    proxy = Proxy(s3.port)
    flags = seed_recipe_flags(colour_dataset, tiny_backbone, tmp_path / "cache", epochs)
    staging = tmp_path / "staging"
    staging.mkdir()
    environment = {**os.environ, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{proxy.port}", "TMPDIR": str(staging)}
    process = subprocess.Popen([sys.executable, "-m", "jobs.train", *flags, "--output-dir", uri], cwd=REPO,
                               env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline, completed = time.monotonic() + 240, 0
        while completed < 2 and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
            if storage.exists(f"{uri}/checkpoints/latest.json"):  # read from the server itself, not the proxy
                completed = json.loads(storage.read_bytes(f"{uri}/checkpoints/latest.json"))["epoch"]
        proxy.stop()
        _, err = process.communicate(timeout=180)
    finally:
        process.kill()
        process.wait(timeout=30)
        proxy.stop()
    lines = err.strip().splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    assert process.returncode == 2 and len(errors) == 1 and "Traceback" not in err, err[-3000:]
    saved = json.loads(storage.read_bytes(f"{uri}/checkpoints/latest.json"))["epoch"]
    assert 2 <= saved < epochs and not storage.exists(f"{uri}/metrics.json")
    kept = list(staging.glob("tl-run-*"))
    if kept:  # the epochs outran the uploads' retries: the run finished here, and its copy is kept for the upload
        assert (kept[0] / "metrics.json").is_file() and lines[-1].startswith("  python -c "), err[-3000:]
        command = [sys.executable, "-c", shlex.split(lines[-1])[2]]
    else:  # stopped at an epoch's end: nothing left behind, the bucket's epochs are what --resume continues from
        assert f"python -m jobs.train --resume --output-dir {uri}" in lines[-1], err[-3000:]
        assert not any(staging.iterdir())
        command = [sys.executable, "-m", "jobs.train", "--resume", "--output-dir", uri, "--quiet"]

    proxy.start()  # the store is back: what the last line says
    try:
        resumed = subprocess.run(command, cwd=REPO, env=environment, capture_output=True, text=True, timeout=300)
    finally:
        proxy.stop()
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert [row["epoch"] for row in json.loads(storage.read_bytes(f"{uri}/history.json"))] == list(range(1, epochs + 1))


def test_a_store_gone_at_the_final_upload_keeps_the_finished_run_and_the_printed_command_uploads_it(
        s3, colour_dataset, tiny_backbone, tmp_path, capsys, monkeypatch):
    import os
    import subprocess
    import sys

    from conftest import REPO
    from tl_core.training.run_store import Mirror

    uri = f"s3://{s3.new_bucket()}/runs/finished"
    proxy = Proxy(s3.port)
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{proxy.port}")
    staging = tmp_path / "staging"
    staging.mkdir()
    monkeypatch.setenv("TMPDIR", str(staging))
    monkeypatch.setattr(tempfile, "tempdir", None)  # read TMPDIR again
    push_all = Mirror.push_all

    def gone_at_the_end(mirror):
        proxy.stop()  # the training is over: the store goes away as the run's files are uploaded
        push_all(mirror)

    monkeypatch.setattr(Mirror, "push_all", gone_at_the_end)
    try:
        status = train_job.main(seed_recipe_flags(colour_dataset, tiny_backbone, tmp_path / "cache", 2)
                                + ["--output-dir", uri])
        err = capsys.readouterr().err
        lines = err.strip().splitlines()
        assert status == 2 and lines[0].startswith("error: cannot write ") and "Traceback" not in err, err
        kept = next(staging.glob("tl-run-*"))
        assert (kept / "model" / "saved_model.pb").is_file()
        metrics = json.loads((kept / "metrics.json").read_text())
        assert lines[-2] == f"The finished run is kept in {kept}; once the store is back, finish its upload with:", err
        proxy.start()  # the store is back
        assert not storage.exists(f"{uri}/metrics.json")
        monkeypatch.setattr(Mirror, "push_all", push_all)
        # The printed command, as a user runs it (`python` on the PATH: this environment's).
        finished = subprocess.run(lines[-1].strip(), shell=True, cwd=REPO, capture_output=True, text=True, timeout=300,
                                  env={**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"})
        assert finished.returncode == 0 and finished.stdout.strip() == f"Uploaded the run to {uri}", finished.stderr
        assert not kept.exists()
        assert json.loads(storage.read_bytes(f"{uri}/metrics.json")) == metrics
        assert json.loads(storage.read_bytes(f"{uri}/config.json"))["output_dir"] == uri
        assert storage.exists(f"{uri}/model/saved_model.pb")
    finally:
        proxy.stop()


# A command whose store went away, ending while threads of its own are still in requests to it (an epoch's upload:
# a request refused and retried). Ended by sys.exit alone, such a process crashed (SIGSEGV or abort) in 4 of 5 runs
# here: pyarrow finalised S3 at exit under the requests.
EXIT_WHILE_THREADS_CALL_THE_STORE = """
import sys, threading
from jobs.cli import exit_after
from tl_core import storage

def requests():  # refused, retried: about 6 s
    try:
        storage.exists("s3://bucket/runs/x/checkpoints/latest.json")
    except storage.StorageError:
        pass

def main():
    for _ in range(2):
        storage.calls_store(threading.Thread(target=requests, daemon=True)).start()
    print("error: the store is gone", file=sys.stderr)
    return 2

exit_after(main)
"""


def test_a_command_that_ends_while_its_threads_call_a_gone_store_exits_with_its_own_status(tmp_path):
    import os
    import socket
    import subprocess
    import sys

    from conftest import REPO

    with socket.socket() as probe:  # a port where nothing listens: the store is gone
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    environment = {**os.environ, **S3Server.ENVIRONMENT, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
    processes = [subprocess.Popen([sys.executable, "-c", EXIT_WHILE_THREADS_CALL_THE_STORE], cwd=REPO, env=environment,
                                  stderr=subprocess.PIPE, text=True) for _ in range(3)]
    for process in processes:
        try:
            _, err = process.communicate(timeout=120)
        finally:
            process.kill()
        assert process.returncode == 2 and err.strip().splitlines() == ["error: the store is gone"], err[-3000:]


def test_an_s3_registry_promotes_skips_rejects_rolls_back_and_serves_through_its_pointer(s3, colour_dataset,
                                                                                          tiny_backbone, tmp_path):
    import tensorflow as tf

    from conftest import tiny_config
    from jobs import registry as registry_job
    from test_retrain import add_images
    from tl_core.registry.retrain import retrain
    from tl_core.registry import registry_at

    data = Path(shutil.copytree(colour_dataset, tmp_path / "data"))
    uri = f"s3://{s3.new_bucket()}/registry"
    config = tiny_config(tiny_backbone, data, cache_dir=str(tmp_path / "cache"))
    quiet = lambda *args, **kwargs: None  # noqa: E731
    first = retrain(config, uri, log=quiet)
    registry = registry_at(uri)
    assert first["action"] == "promoted" and registry.champion() == first["run_id"]
    pointer = json.loads(storage.read_bytes(f"{uri}/champion.json"))
    assert pointer["model"] == f"models/{first['run_id']}/model"
    # What serving does (docs/object-storage.md): read the pointer, copy the model it names, load it.
    storage.download(f"{uri}/{pointer['model']}", tmp_path / "served")
    serve = tf.saved_model.load(str(tmp_path / "served")).signatures["serving_default"]
    assert serve(images=tf.zeros([1, TINY_IMAGE_SIZE, TINY_IMAGE_SIZE, 3]))["probabilities"].shape == (1, 2)

    assert retrain(config, uri, log=quiet)["action"] == "skipped"
    add_images(data)
    third = retrain(config, uri, log=quiet)
    assert third["action"] == "rejected" and registry.champion() == first["run_id"]
    add_images(data, seed=10)
    fourth = retrain(config, uri, rule=ANY_CHALLENGER, log=quiet)
    assert fourth["action"] == "promoted" and registry.champion() == fourth["run_id"]
    assert registry_job.main(["rollback", first["run_id"], "--registry", uri]) == 0
    assert registry.champion() == first["run_id"]
    assert [record["action"] for record in registry.records()] == ["promoted", "skipped", "rejected", "promoted",
                                                                   "rollback"]
    assert sorted(registry.model_runs()) == sorted([first["run_id"], third["run_id"], fourth["run_id"]])
    assert not storage.exists(f"{uri}/.lock") and not storage.exists(f"{uri}/pending.json")
    ledger = storage.read_bytes(f"{uri}/ledger.parquet").decode("utf-8", "replace")
    assert SECRET not in ledger and S3Server.ENVIRONMENT["AWS_ACCESS_KEY_ID"] not in ledger


def test_a_second_retrain_on_an_s3_registry_is_refused_and_a_killed_holders_lock_is_taken_over_after_its_lease(
        s3, colour_dataset, tiny_backbone, tmp_path, capsys, monkeypatch):
    import os
    import subprocess
    import sys
    import textwrap
    import time

    from conftest import REPO
    from tl_core.registry.object_store import ObjectRegistry

    uri = f"s3://{s3.new_bucket()}/registry"
    monkeypatch.setattr(ObjectRegistry, "lease_seconds", ObjectRegistry.lease_seconds)
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time
        from tl_core.registry.object_store import ObjectRegistry
        ObjectRegistry.lease_seconds = 3.0
        with ObjectRegistry({uri!r}).lock():
            print("locked", flush=True)
            time.sleep(600)
    """)], cwd=REPO, env=os.environ, stdout=subprocess.PIPE, text=True)
    flags = ["--registry", uri, "--data-dir", str(colour_dataset), "--backbone", tiny_backbone, "--image-size",
             str(TINY_IMAGE_SIZE), "--batch-size", "8", "--epochs", "2", "--cache-dir", str(tmp_path / "cache"), "--quiet"]
    try:
        assert holder.stdout.readline().strip() == "locked"
        time.sleep(4)  # longer than the lease: the holder renews it, so it still holds the lock
        assert retrain_job.main(flags) == 3
        assert f"pid {holder.pid} on " in capsys.readouterr().err
    finally:
        holder.kill()  # SIGKILL: the lock object stays, and nobody renews its lease
        holder.wait(timeout=30)
    assert retrain_job.main(flags) == 3  # the dead holder's lease has not run out yet
    capsys.readouterr()
    time.sleep(5)  # its lease, and the store's timestamps' whole second
    assert retrain_job.main(flags) == 0
    assert f"Took over the registry's lock from pid {holder.pid} on " in capsys.readouterr().out
    assert not storage.exists(f"{uri}/.lock") and ObjectRegistry(uri).champion() is not None

    # A lock object this project did not write (not JSON) is judged by its age in the store, like a dead holder's.
    import boto3

    boto3.client("s3").put_object(Bucket=uri.split("/")[2], Key="registry/.lock", Body=b"held by hand")
    ObjectRegistry.lease_seconds = 2.0  # this process's retrains (restored by the monkeypatch below)
    assert retrain_job.main(flags) == 3
    assert "a lock object this project did not write" in capsys.readouterr().err
    time.sleep(4)
    assert retrain_job.main(flags) == 0
    assert "Took over the registry's lock from a lock object this project did not write" in capsys.readouterr().out


def test_credentials_the_store_refuses_are_one_line_and_exit_2(s3, tmp_path, capsys, monkeypatch):
    strict = S3Server(tmp_path, checks_credentials=True)  # knows no key: every key is refused
    try:
        monkeypatch.setenv("AWS_ENDPOINT_URL", strict.endpoint)
        status = train_job.main(["--data-dir", "s3://some-bucket/data", "--output-dir", str(tmp_path / "run"), "--quiet"])
    finally:
        strict.stop()
    err = capsys.readouterr().err
    assert status == 2 and len(err.strip().splitlines()) == 1, err
    assert "access denied: check the credentials" in err and SECRET not in err
    assert not (tmp_path / "run").exists()
