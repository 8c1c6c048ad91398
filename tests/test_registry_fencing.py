"""The registry's lock under pauses and races: a retrain that lost the lock writes nothing more (docs/retraining.md,
"What each registry guarantees")."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import boto3

from conftest import REPO, TINY_IMAGE_SIZE
from tl_core.registry.object_store import ObjectRegistry
from tl_core.registry.store import Registry

LEASE_SECONDS = 4.0


def retrain_process(registry: str, flags: list[str], lease_seconds: float = LEASE_SECONDS) -> subprocess.Popen:
    """`python -m jobs.retrain` as a scheduler starts it, with a short lease for a bucket registry."""
    script = textwrap.dedent(f"""
        import sys
        from jobs import retrain
        from jobs.cli import exit_after
        from tl_core.registry.object_store import ObjectRegistry
        ObjectRegistry.lease_seconds = {lease_seconds}
        exit_after(lambda: retrain.main(sys.argv[1:]))
    """)
    return subprocess.Popen([sys.executable, "-c", script, "--registry", registry, *flags], cwd=REPO, env=os.environ,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def retrain_flags(data_dir, tiny_backbone, tmp_path, epochs: int) -> list[str]:
    return ["--data-dir", str(data_dir), "--backbone", tiny_backbone, "--image-size", str(TINY_IMAGE_SIZE),
            "--batch-size", "8", "--epochs", str(epochs), "--cache-dir", str(tmp_path / "cache"), "--quiet"]


def bucket_objects(bucket: str) -> dict[str, str]:
    """Every object in the bucket and its version (ETag)."""
    pages = boto3.client("s3").get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return {item["Key"]: item["ETag"] for page in pages for item in page.get("Contents", [])}


def wait_for(condition, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"not within {seconds:g} s: {what}"
        time.sleep(0.1)


def test_a_retrain_paused_past_its_lease_writes_nothing_after_the_takeover_and_stops_as_busy(
        s3, colour_dataset, tiny_backbone, tmp_path, capsys, monkeypatch):
    from jobs import retrain as retrain_job

    bucket = s3.new_bucket()
    uri = f"s3://{bucket}/registry"
    flags = retrain_flags(colour_dataset, tiny_backbone, tmp_path, epochs=300)
    first = retrain_process(uri, flags)
    try:
        # Paused once its run is in the bucket with a completed epoch, while it uploads its epochs: the next retrain
        # recovers that run.
        wait_for(lambda: any(key.endswith("/checkpoints/latest.json") for key in bucket_objects(bucket)), 120,
                 "the first retrain's first epoch in the bucket")
        first.send_signal(signal.SIGSTOP)
        paused = json.loads(boto3.client("s3").get_object(Bucket=bucket, Key="registry/pending.json")["Body"].read())
        time.sleep(LEASE_SECONDS + 2)  # its lease, and the store's whole second

        monkeypatch.setattr(ObjectRegistry, "lease_seconds", LEASE_SECONDS)
        assert retrain_job.main(["--registry", uri, *flags]) == 0
        out = capsys.readouterr().out
        registry = ObjectRegistry(uri)
        [record] = registry.records()
        assert "Took over the registry's lock from pid " in out, out
        # The paused retrain's directory is left to it (it may still make the one write it had begun when paused):
        # its run continues in a copy.
        assert f"Recovering run {paused['run_id']} (interrupted at {paused['started_at']}) as run {record['run_id']}" \
            in out, out
        assert record["action"] == "promoted" and registry.champion() == record["run_id"] != paused["run_id"]
        before = bucket_objects(bucket)
    finally:
        first.send_signal(signal.SIGCONT)
    output, errors = first.communicate(timeout=300)
    assert first.returncode == 3, errors
    last = errors.strip().splitlines()[-1]
    assert last.startswith("error: another retrain took over the lock of the registry") and "Traceback" not in errors, \
        errors
    own = f"registry/models/{paused['run_id']}/"
    after = bucket_objects(bucket)
    # Nothing written, replaced or deleted after the takeover outside its own, abandoned directory.
    assert {key: tag for key, tag in after.items() if not key.startswith(own)} == \
        {key: tag for key, tag in before.items() if not key.startswith(own)}
    assert registry.records() == [record] and registry.champion() == record["run_id"] and not registry.pending()


def test_two_retrains_racing_to_take_over_a_dead_holders_lock_hold_it_one_at_a_time_and_lose_no_ledger_row(
        s3, colour_dataset, tiny_backbone, tmp_path):
    bucket = s3.new_bucket()
    uri = f"s3://{bucket}/registry"
    boto3.client("s3").put_object(Bucket=bucket, Key="registry/.lock", Body=json.dumps(
        {"owner": "pid 1 on a node that died", "since": "2026-12-07T00:00:00+00:00", "lease_seconds": 1}).encode())
    time.sleep(3)  # its lease, and the store's whole second
    flags = retrain_flags(colour_dataset, tiny_backbone, tmp_path, epochs=4)
    racers = [retrain_process(uri, flags) for _ in range(2)]
    results = [(racer.wait(timeout=300), *racer.communicate(timeout=60)) for racer in racers]
    statuses = sorted(status for status, _, _ in results)
    assert statuses in ([0, 0], [0, 3]), results
    took_over = [out for status, out, _ in results if "Took over the registry's lock from pid 1 on a node that died" in out]
    assert len(took_over) == 1, results  # of two takeovers of one version, one wins
    if statuses == [0, 3]:  # the other was refused: the lock was held
        refused = next(errors for status, _, errors in results if status == 3)
        assert "this run stops here" in refused.strip().splitlines()[-1], refused
    # Each retrain that finished has its row: one promoted, and a second one (after the first) skipped.
    actions = [record["action"] for record in ObjectRegistry(uri).records()]
    assert actions == ["promoted", "skipped"][:statuses.count(0)], (actions, results)
    assert ".lock" not in {key.rsplit("/", 1)[-1] for key in bucket_objects(bucket)}


def test_a_retrain_paused_on_a_disk_registry_keeps_its_lock_and_a_second_is_refused(colour_dataset, tiny_backbone,
                                                                                       tmp_path, capsys):
    from jobs import retrain as retrain_job

    registry = tmp_path / "registry"
    flags = retrain_flags(colour_dataset, tiny_backbone, tmp_path, epochs=300)
    first = retrain_process(str(registry), flags)
    try:
        wait_for(lambda: (registry / "pending.json").exists(), 120, "the first retrain's pending.json")
        first.send_signal(signal.SIGSTOP)
        time.sleep(LEASE_SECONDS + 2)  # a bucket's lease would have run out: flock's lock is held by the kernel
        assert retrain_job.main(["--registry", str(registry), *flags]) == 3
        assert f"pid {first.pid} on " in capsys.readouterr().err
    finally:
        first.send_signal(signal.SIGCONT)
    output, errors = first.communicate(timeout=300)
    assert first.returncode == 0, errors
    assert [record["action"] for record in Registry(registry).records()] == ["promoted"]
