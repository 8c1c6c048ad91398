"""A Ray that does not answer: every command that would join it says so in one line, within a bound, before it
writes anything (tl_core/ray_session.py); and a stop while it checks is taken at once. Each case is set up in a
temporary RAY_TMPDIR: never the machine's own /tmp/ray."""
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import TINY_IMAGE_SIZE, REPO
from tl_core import ray_session

# Importing TensorFlow and Ray, then the check: generous on a slow machine, and far below "never".
ENDS_WITHIN = 120


def closed_port() -> int:
    """A port on this machine where nothing listens (bound, then let go)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def listener():
    """A port that accepts connections and never answers them (a stuck or foreign service)."""
    with socket.create_server(("0.0.0.0", 0)) as server:
        yield server


def dead_record(tmp_path) -> tuple[dict, Path]:
    """A Ray temporary directory whose `ray start` record names an address where nothing listens; the environment
    that uses it (no RAY_ADDRESS: Ray would join the record's cluster) and the record's path."""
    record = tmp_path / "ray-tmp" / "ray" / "ray_current_cluster"
    record.parent.mkdir(parents=True)
    record.write_text(f"127.0.0.1:{closed_port()}")
    environment = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
    return {**environment, "RAY_TMPDIR": str(tmp_path / "ray-tmp")}, record


def commands(tiny_backbone, data_dir, output: Path) -> dict[str, list[str]]:
    common = ["--data-dir", str(data_dir), "--backbone", tiny_backbone, "--image-size", str(TINY_IMAGE_SIZE),
              "--batch-size", "8"]
    return {
        "tune": [sys.executable, "-m", "jobs.tune", *common, "--trials", "2", "--output-dir", str(output)],
        "train": [sys.executable, "-m", "jobs.train", *common, "--num-workers", "2", "--output-dir", str(output)],
        "ingest": [sys.executable, "-m", "jobs.ingest", "--ray", "--data-dir", str(data_dir), "--output", str(output)],
    }


@pytest.mark.parametrize("source", ["record", "RAY_ADDRESS"])
@pytest.mark.parametrize("command", ["tune", "train", "ingest"])
def test_a_command_that_would_join_a_ray_where_nothing_answers_says_so_in_one_line(
        command, source, tiny_backbone, colour_dataset, tmp_path):
    if source == "record":
        environment, record = dead_record(tmp_path)
        named = f"(the record {record} that `ray start` left on this machine)"
    else:
        address = f"127.0.0.1:{closed_port()}"
        environment, named = {**os.environ, "RAY_ADDRESS": address}, f"(RAY_ADDRESS={address})"
    output = tmp_path / "output"
    started = time.monotonic()
    done = subprocess.run(commands(tiny_backbone, colour_dataset, output)[command], cwd=REPO, env=environment,
                          capture_output=True, text=True, timeout=ENDS_WITHIN)
    assert time.monotonic() - started < ENDS_WITHIN
    assert done.returncode == 2, done.stderr[-3000:]
    lines = done.stderr.strip().splitlines()
    assert lines[-1].startswith("error: no Ray answers at 127.0.0.1:") and named in lines[-1], done.stderr[-3000:]
    assert "connection refused" in lines[-1] and "RAY_ADDRESS=local" in lines[-1]
    assert "Traceback" not in done.stderr and not output.exists()  # nothing written


def test_the_check_is_bounded_where_something_accepts_connections_but_never_answers(listener, monkeypatch):
    address = f"127.0.0.1:{listener.getsockname()[1]}"
    monkeypatch.setenv("RAY_ADDRESS", address)
    started = time.monotonic()
    with pytest.raises(ray_session.RayUnreachable) as refused:
        ray_session.check(seconds=1)
    assert time.monotonic() - started < 5
    assert str(refused.value).startswith(f"no Ray answers at {address} (RAY_ADDRESS={address}): ")
    assert "accepts connections but does not answer as Ray within 1 s" in str(refused.value)


@pytest.mark.parametrize("value, joins", [("local", None), ("auto", "auto"), ("10.1.2.3:6379", "10.1.2.3:6379"),
                                          ("ray://head:10001", "ray://head:10001")])
def test_ray_address_follows_rays_rule(value, joins, monkeypatch, tmp_path):
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))  # no record there
    monkeypatch.setenv("RAY_ADDRESS", value)
    assert ray_session.ray_address().address == joins
    monkeypatch.delenv("RAY_ADDRESS")
    assert ray_session.ray_address() == ray_session.RayAddress(None, "no address given")  # a new Ray here
    record = tmp_path / "ray" / "ray_current_cluster"
    record.parent.mkdir()
    record.write_text("10.9.8.7:6379\n")
    assert ray_session.ray_address().address == "10.9.8.7:6379" and ray_session.ray_address().record == record
    monkeypatch.setenv("RAY_ADDRESS", "local")  # the variable wins over the record, as in Ray
    assert ray_session.ray_address().address is None


def test_a_malformed_address_is_named(monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "ray://no-port")
    with pytest.raises(ray_session.RayUnreachable, match="'ray://no-port' .* is not host:port or ray://host:port"):
        ray_session.check()


def test_sigterm_while_the_command_checks_its_ray_stops_it_at_once(listener, tiny_backbone, colour_dataset, tmp_path):
    """jobs.tune checks a Ray that accepts and never answers: SIGTERM as soon as the check has connected ends the
    command with the interrupt status, long before the check's bound."""
    environment = {**os.environ, "RAY_ADDRESS": f"127.0.0.1:{listener.getsockname()[1]}"}
    output = tmp_path / "search"
    process = subprocess.Popen(commands(tiny_backbone, colour_dataset, output)["tune"], cwd=REPO, env=environment,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        listener.settimeout(ENDS_WITHIN)
        connection, _ = listener.accept()  # the check's connection: the command is waiting for an answer
        process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        errors = process.communicate(timeout=ENDS_WITHIN)[1]
        stopped_after = time.monotonic() - signalled
        connection.close()
    finally:
        process.kill()
        process.wait(timeout=10)
    assert process.returncode == 130, errors[-3000:]
    assert stopped_after < ray_session.CHECK_SECONDS and errors.strip().splitlines()[-1] == "Interrupted.", errors
    assert not output.exists()


@pytest.mark.parametrize("command", ["train", "tune"])
def test_a_request_the_ray_started_here_cannot_meet_is_refused_in_one_line(command, tiny_backbone, colour_dataset,
                                                                           tmp_path):
    """GPUs on a machine without one: Ray would wait for them without end. Refused once Ray started, before any work."""
    argv = commands(tiny_backbone, colour_dataset, tmp_path / "out")[command] + ["--use-gpu"]
    result = subprocess.run(argv, cwd=REPO, env={**os.environ, "RAY_ADDRESS": "local"}, capture_output=True, text=True,
                            timeout=ENDS_WITHIN * 2)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert result.returncode == 2 and len(errors) == 1 and "Traceback" not in result.stderr, result.stderr[-4000:]
    asked = {"train": "training on 2 Ray Train worker(s) asks Ray for 2 x (1 CPU, 1 GPU)",
             "tune": "the search's backbone features asks Ray for (1 CPU, 1 GPU)"}[command]
    assert errors[0].startswith(f"error: {asked}, which the Ray this command started on this machine cannot give "
                                f"(node 1: {os.cpu_count()} CPU)"), errors


def test_bundles_fit_a_node_each_and_the_cluster_together():
    two_cpu_nodes = [{"CPU": 2}, {"CPU": 2}]
    assert ray_session._fits([{"CPU": 2}] * 2, two_cpu_nodes)
    assert not ray_session._fits([{"CPU": 3}], two_cpu_nodes)  # 4 CPUs in all, but no node has 3
    assert not ray_session._fits([{"CPU": 1}] * 5, two_cpu_nodes)
    assert not ray_session._fits([{"CPU": 1, "GPU": 1}], two_cpu_nodes + [{"GPU": 1}])  # not on one node
    assert ray_session._fits([{"CPU": 1, "GPU": 1}], [{"CPU": 8, "GPU": 1}])
