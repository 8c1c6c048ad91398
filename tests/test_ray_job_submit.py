"""`ray job submit` of the job to a Ray head started on this machine (loopback, token auth).

In a module of its own: the in-process Ray of test_distributed.py must be shut down first, or the
two instances' agents collide on their default ports.
"""
import json
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import TINY_IMAGE_SIZE
from test_distributed import LOCAL_RUN_FILES, REPO


@pytest.fixture()
def ray_head(tmp_path):
    """`ray start --head` on loopback, with token auth; stopped after the test."""
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32),
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    ray = str(Path(sys.executable).parent / "ray")
    subprocess.run([ray, "start", "--head", "--node-ip-address=127.0.0.1", "--port=6479",
                    "--dashboard-host=127.0.0.1", "--dashboard-port=8365", "--num-cpus=4",
                    "--disable-usage-stats"], env=env, check=True, capture_output=True, timeout=120)
    try:
        yield ray, env
    finally:
        subprocess.run([ray, "stop", "--force"], env=env, capture_output=True, timeout=120)


def test_ray_job_submit_runs_the_job(ray_head, tiny_backbone, colour_dataset, tmp_path):
    ray, env = ray_head
    output_dir = tmp_path / "submitted"
    runtime_env = json.dumps({"env_vars": {"TF_USE_LEGACY_KERAS": "1", "TF_FORCE_GPU_ALLOW_GROWTH": "true"}})
    command = [
        ray, "job", "submit", "--address", "http://127.0.0.1:8365", "--working-dir", str(REPO),
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
