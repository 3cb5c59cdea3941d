"""Run logging: the one place a stage's metrics go. Every scalar is kept in <run_dir>/metrics_<stage>.jsonl (what the
report reads) and sent to the trackers of `tracking.report_to` (common/trackers.py: TensorBoard by default, wandb,
trackio), with the same tags in each, grouped rollout/, baseline/, losses/, perf/, sync/, eval/ (rl), rm/ and sft/."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import sys
import time
from pathlib import Path

from common.config import Config
from common.errors import UserError
from common.trackers import open_trackers


class RunLogger:
    """Metrics of one stage. A fresh run (`resume_step=0`) replaces what an earlier run of the stage in this
    directory logged and opens new tracker runs, given the hyperparameters; a resumed one keeps the steps up to
    its checkpoint, drops later ones (which a crash after the checkpoint may have left and which the resumed run
    logs again) and continues its tracker runs."""

    def __init__(self, cfg: Config, name: str, resume_step: int = 0) -> None:
        self.dir = Path(cfg.run_dir)
        path = self.dir / f"metrics_{name}.jsonl"
        kept = [line for line in (read_log(path) if resume_step else []) if json.loads(line)["step"] <= resume_step]
        self.trackers = open_trackers(cfg, name, resume_step)  # after read_log: a damaged log opens nothing
        path.write_text("".join(line + "\n" for line in kept))
        self.jsonl = path.open("a")

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self.jsonl.write(json.dumps({"step": step, **metrics}) + "\n")
        self.jsonl.flush()
        for tracker in self.trackers:
            tracker.log(step, metrics)

    def samples(self, step: int, rows: list[dict]) -> None:
        """A few rows (the same keys in each) for the trackers' text or table views; not in the jsonl."""
        if rows:
            for tracker in self.trackers:
                tracker.samples(step, rows)

    def close(self) -> None:
        for tracker in self.trackers:
            tracker.close()
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
