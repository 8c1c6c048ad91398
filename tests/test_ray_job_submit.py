"""`ray job submit` of the job to a Ray head started on this machine (loopback, token auth).

The head is the test's own: every port free, its own temporary directory, stopped alone (never `ray stop`, which
ends every Ray process on the machine, a user's own cluster included).
"""
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from conftest import RAY_TMPDIR, TINY_IMAGE_SIZE
from test_distributed import LOCAL_RUN_FILES, REPO

PORT_FLAGS = ("port", "dashboard-port", "ray-client-server-port", "node-manager-port", "object-manager-port",
              "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "runtime-env-agent-port", "metrics-export-port")


def free_ports(count: int) -> list[int]:
    """count distinct ports that are free now."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for probe in sockets:
            probe.bind(("127.0.0.1", 0))
        return [probe.getsockname()[1] for probe in sockets]
    finally:
        for probe in sockets:
            probe.close()


@pytest.fixture()
def ray_head(tmp_path):
    """`ray start --head --block` on loopback at free ports, with token auth and its own temporary directory; the
    head and everything it started (its process group) are stopped after the test. Yields the `ray` command, the
    environment to reach it with (the address a driver joins: RAY_ADDRESS_OF_HEAD) and the dashboard's URL."""
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32),
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    env.pop("RAY_ADDRESS")  # the head's jobs are told its address by Ray
    ray = str(Path(sys.executable).parent / "ray")
    ports = dict(zip(PORT_FLAGS, free_ports(len(PORT_FLAGS))))
    log = tmp_path / "ray_start.log"
    with open(log, "wb") as output:
        head = subprocess.Popen(
            [ray, "start", "--head", "--block", f"--temp-dir={tempfile.mkdtemp(prefix='head-', dir=RAY_TMPDIR)}",
             "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1", "--num-cpus=4", "--disable-usage-stats",
             "--min-worker-port=0", "--max-worker-port=0", *(f"--{flag}={port}" for flag, port in ports.items())],
            env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
    dashboard = f"http://127.0.0.1:{ports['dashboard-port']}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                urllib.request.urlopen(f"{dashboard}/api/version", timeout=5).close()
                break
            except urllib.error.HTTPError:  # it answers (refusing a request without the token)
                break
            except OSError:
                assert head.poll() is None and time.monotonic() < deadline, log.read_text()[-4000:]
                time.sleep(1)
        yield ray, {**env, "RAY_ADDRESS_OF_HEAD": f"127.0.0.1:{ports['port']}"}, dashboard
    finally:
        # The group at once: stopped by SIGTERM, the head waits 30 s to drain itself through the GCS it stopped first.
        try:
            os.killpg(head.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        head.wait(timeout=30)


def test_ray_job_submit_runs_the_job(ray_head, tiny_backbone, colour_dataset, tmp_path):
    ray, env, dashboard = ray_head
    output_dir = tmp_path / "submitted"
    runtime_env = json.dumps({"env_vars": {"TF_USE_LEGACY_KERAS": "1", "TF_FORCE_GPU_ALLOW_GROWTH": "true"}})
    command = [
        ray, "job", "submit", "--address", dashboard, "--working-dir", str(REPO),
        "--runtime-env-json", runtime_env, "--submission-id", f"test-{secrets.token_hex(4)}", "--",
        "python", "-m", "jobs.train", "--data-dir", str(colour_dataset), "--backbone", tiny_backbone,
        "--image-size", str(TINY_IMAGE_SIZE), "--batch-size", "8", "--epochs", "2", "--learning-rate", "0.05",
        "--num-workers", "2", "--output-dir", str(output_dir)]
    for _attempt in range(12):  # a fresh head's job agent takes a few seconds to come up
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=400)
        if "No available agent" not in result.stderr:
            break
        time.sleep(5)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    assert "succeeded" in result.stdout + result.stderr
    # One line per event, from the chief only: no copy through Ray Train's print patch, no per-worker reports.
    log = result.stdout + result.stderr
    for line in ("Training on 24 x 2 of 48 images", "epoch   1/2", "epoch   2/2"):
        assert log.count(line) == 1, (line, log[-4000:])
    assert "Reporting training result" not in log
    assert LOCAL_RUN_FILES <= {p.name for p in output_dir.iterdir()}


def test_a_job_that_asks_a_joined_cluster_for_more_than_it_can_grow_to_waits_a_bounded_time_then_says_so(
        ray_head, tiny_backbone, colour_dataset, tmp_path):
    """Ray would wait for the GPUs without end; the command asks the cluster to grow, waits at most its bound (here
    3 s), then stops in one line, exit 2, having started nothing on the cluster."""
    _, env, _ = ray_head
    script = ("import sys; from tl_core import ray_session; ray_session.RESOURCE_WAIT_SECONDS = 3; "
              "from jobs import train; from jobs.cli import exit_after; exit_after(lambda: train.main(sys.argv[1:]))")
    result = subprocess.run(
        [sys.executable, "-c", script, "--data-dir", str(colour_dataset), "--backbone", tiny_backbone, "--image-size",
         str(TINY_IMAGE_SIZE), "--batch-size", "8", "--epochs", "1", "--num-workers", "2", "--use-gpu",
         "--output-dir", str(tmp_path / "run")],
        cwd=REPO, env={**env, "RAY_ADDRESS": env["RAY_ADDRESS_OF_HEAD"]}, capture_output=True, text=True, timeout=300)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert result.returncode == 2 and len(errors) == 1 and "Traceback" not in result.stderr, result.stderr[-4000:]
    assert errors[0].startswith("error: training on 2 Ray Train worker(s) asks Ray for 2 x (1 CPU, 1 GPU); after "), errors
    assert "the cluster still has only (4 CPU)" in errors[0], errors
