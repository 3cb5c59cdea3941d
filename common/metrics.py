"""Run logging: TensorBoard events (tags grouped rollout/, baseline/, losses/, perf/, sync/, eval/) and a JSONL
copy of every scalar, both under the run directory."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import sys
import time
from pathlib import Path

from torch.utils.tensorboard import SummaryWriter

from common.config import Config, flatten, to_dict
from common.errors import UserError


class RunLogger:
    """Scalars of one stage. A fresh run (`resume_step=0`) replaces what an earlier run of the stage in this
    directory logged; a resumed one keeps the steps up to its checkpoint and drops later ones, which a crash
    after the checkpoint may have left and which the resumed run logs again."""

    def __init__(self, run_dir: str | Path, name: str, resume_step: int = 0) -> None:
        self.dir = Path(run_dir)
        # TensorBoard hides events of earlier files from purge_step on (0 = all of them)
        self.writer = SummaryWriter(log_dir=str(self.dir / "tensorboard" / name),
                                    purge_step=resume_step + 1 if resume_step else 0)
        path = self.dir / f"metrics_{name}.jsonl"
        kept = [line for line in (read_log(path) if resume_step else []) if json.loads(line)["step"] <= resume_step]
        path.write_text("".join(line + "\n" for line in kept))
        self.jsonl = path.open("a")

    def hparams(self, cfg: Config) -> None:
        """Hyperparameters logged once, as text (readable in TensorBoard's Text tab)."""
        lines = [f"| {k} | {v} |" for k, v in flatten(to_dict(cfg)).items()]
        self.writer.add_text("hparams", "| key | value |\n|---|---|\n" + "\n".join(lines), 0)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        for tag, value in metrics.items():
            self.writer.add_scalar(tag, value, step)
        self.jsonl.write(json.dumps({"step": step, **metrics}) + "\n")
        self.jsonl.flush()

    def close(self) -> None:
        self.writer.flush()
        self.writer.close()
        self.jsonl.close()


def read_log(path: Path) -> list[str]:
    """The lines of a metrics log. A torn last line (a crash mid-write) is dropped with a warning; a bad line
    before it means the file was edited or damaged, and DataError names it."""
    if not path.is_file():
        return []
    lines = [line for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    for i, line in enumerate(lines):
        try:
            if not isinstance(json.loads(line).get("step"), int):
                raise ValueError("no integer 'step'")
        except (ValueError, AttributeError) as e:
            if i == len(lines) - 1:
                print(f"warning: {path}: dropping its torn last line {i + 1} (the run stopped mid-write)",
                      file=sys.stderr, flush=True)
                return lines[:-1]
            raise UserError(f"{path}: line {i + 1} is not a metrics record ({e}); repair or delete the file") from None
    return lines


def record_stage_time(run_dir: str | Path, stage: str, seconds: float) -> None:
    """Wall-clock seconds of each stage, in <run_dir>/stage_times.json (read by the report)."""
    path = Path(run_dir) / "stage_times.json"
    times = json.loads(path.read_text()) if path.is_file() else {}
    times[stage] = round(seconds, 2)
    path.write_text(json.dumps(times, indent=2))


def machine_info() -> dict:
    """What moves a run's trajectory between machines: CPU model, core count, GPU, platform, library versions."""
    import platform

    import torch

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name")), cpu)
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else ""
    return {"cpu": cpu, "cpus": os.cpu_count(), "gpu": gpu, "platform": platform.platform(),
            "python": platform.python_version(), "torch": torch.__version__,
            "blas": torch.backends.mkl.is_available() and "mkl" or "openblas/other"}


def record_invocation(out_dir: str | Path, argv: list[str]) -> None:
    """The command and machine of a run or experiment, in <out_dir>/invocation.json (quoted by the report)."""
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    info = {"command": " ".join(shlex.quote(a) for a in ["python", "launch.py", *argv]), "machine": machine_info(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    (Path(out_dir) / "invocation.json").write_text(json.dumps(info, indent=2))
