"""cluster.yaml: what the project chose (pins, GPU workers that scale from zero and can be fed, a private
dashboard), and that Ray's own schema accepts it."""
import copy
import json
import math
import re
import tomllib
from pathlib import Path

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cluster():
    return yaml.safe_load((REPO / "cluster.yaml").read_text())


@pytest.fixture(scope="module")
def pins():
    dependencies = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    return dict(re.match(r"([a-z_-]+)(?:\[.*\])?==(.+)", d).groups() for d in dependencies if "==" in d)


def test_passes_ray_validation(cluster):
    validate_config(prepare_config(copy.deepcopy(cluster)))


def test_validation_catches_a_typo(cluster):
    broken = copy.deepcopy(cluster)
    broken["available_node_types"]["worker.gpu"]["min_worker"] = 0
    with pytest.raises(jsonschema.ValidationError, match="min_worker"):
        validate_config(prepare_config(broken))


def test_gpu_workers_scale_from_zero_and_the_head_has_no_gpu(cluster):
    nodes = cluster["available_node_types"]
    head = nodes[cluster["head_node_type"]]
    assert "GPU" not in head["resources"]
    gpu_types = [n for n in nodes.values() if n.get("resources", {}).get("GPU", 0) > 0]
    assert gpu_types and all(n["min_workers"] == 0 and n["max_workers"] >= 1 for n in gpu_types)


def test_image_and_packages_match_the_pins(cluster, pins):
    assert cluster["docker"]["image"] == f"rayproject/ray:{pins['ray']}-py311-gpu"
    setup = " ".join(cluster["setup_commands"])
    for package in ("tensorflow", "tf-keras", "tensorflow-hub"):
        assert re.search(rf'"{package}(\[and-cuda\])?=={re.escape(pins[package])}"', setup), package
    assert "pip install -q -e /home/ray/tl-job" in setup


# vCPUs of the GPU instance types a user might pick (AWS), each with one NVIDIA A10G.
VCPUS = {"g5.xlarge": 4, "g5.2xlarge": 8, "g5.4xlarge": 16, "g5.8xlarge": 32}


def test_gpu_workers_have_the_host_cores_to_feed_their_gpu(cluster):
    """The instance type follows benchmarks/host_input.py's measured cores per GPU for JPEG folders."""
    results = json.loads((REPO / "benchmarks" / "results" / "host_input.json").read_text())
    per_core = results["datasets"]["photos (500x375 JPEG)"]["rates"]["+ augment"]["per_cpu_second"]
    needed = math.ceil(results["backbone_rate"] / per_core)
    worker = cluster["available_node_types"]["worker.gpu"]
    assert worker["resources"] == {"CPU": VCPUS[worker["node_config"]["InstanceType"]], "GPU": 1}
    assert worker["resources"]["CPU"] >= needed + 1  # and one core for the worker process itself
    assert worker["max_workers"] <= cluster["max_workers"]


def test_dashboard_is_not_exposed(cluster):
    head_start = " ".join(cluster["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start


def test_nodes_share_a_bucket_not_a_file_system(cluster):
    """S3 is the default storage (docs/cluster.md): GPU workers reach the bucket through their instance profile, and
    nothing mounts a shared file system unless the user uncomments it."""
    worker = cluster["available_node_types"]["worker.gpu"]["node_config"]
    assert worker["IamInstanceProfile"] == {"Name": "tl-job-bucket"}
    assert not cluster["initialization_commands"]
    assert not any("/mnt/shared" in option for option in cluster["docker"]["run_options"])
