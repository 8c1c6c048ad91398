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


def documented_policies() -> list[dict]:
    """The IAM policies docs/cluster.md gives for the instance profiles: the workers', then the head's."""
    text = (REPO / "docs" / "cluster.md").read_text()
    return [json.loads(block) for block in re.findall(r"```json\n(.*?)```", text, re.S)]


def allowed(policy: dict) -> dict[str, list[str]]:
    """action -> the resources a policy allows it on."""
    found = {}
    for statement in policy["Statement"]:
        assert statement["Effect"] == "Allow"
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        for action in actions:
            found.setdefault(action, []).append(statement["Resource"])
    return found


# The EC2 calls of Ray's AWS node provider (the autoscaler on the head), by the boto3 names it uses, and the IAM action
# each needs.
NODE_PROVIDER_CALLS = {"create_instances": "ec2:RunInstances", "terminate_instances": "ec2:TerminateInstances",
                       "stop_instances": "ec2:StopInstances", "start_instances": "ec2:StartInstances",
                       "create_tags": "ec2:CreateTags", "instances.filter": "ec2:DescribeInstances",
                       "describe_instance_types": "ec2:DescribeInstanceTypes", "describe_images": "ec2:DescribeImages"}


def test_each_node_has_its_own_instance_profile_allowed_the_one_bucket_and_no_more(cluster):
    """The head runs every job's driver: never Ray's default profile (AmazonS3FullAccess, AmazonEC2FullAccess)."""
    nodes = cluster["available_node_types"]
    head = nodes[cluster["head_node_type"]]["node_config"]
    assert head["IamInstanceProfile"] == {"Name": "tl-job-head"}
    assert nodes["worker.gpu"]["node_config"]["IamInstanceProfile"] == {"Name": "tl-job-bucket"}
    workers, head_policy = (allowed(policy) for policy in documented_policies())
    bucket = {"s3:ListBucket": ["arn:aws:s3:::pets"], "s3:GetObject": ["arn:aws:s3:::pets/*"],
              "s3:PutObject": ["arn:aws:s3:::pets/*"], "s3:DeleteObject": ["arn:aws:s3:::pets/*"]}
    assert workers == bucket
    assert {action: where for action, where in head_policy.items() if action.startswith("s3:")} == bucket
    assert head_policy["iam:PassRole"] == ["arn:aws:iam::ACCOUNT:role/tl-job-bucket"]  # only the workers' role
    assert not any("*" in action for action in head_policy)
    source = (Path(validate_config.__code__.co_filename).parent / "aws" / "node_provider.py").read_text()
    for call, action in NODE_PROVIDER_CALLS.items():
        assert call in source, call  # Ray still makes it (a new call would be missed: see the list above)
        assert action in head_policy, action
