"""Run logging: TensorBoard events (tags grouped rollout/, baseline/, losses/, perf/, sync/, eval/) and a JSONL
copy of every scalar, both under the run directory."""

from __future__ import annotations

import json
from pathlib import Path

from torch.utils.tensorboard import SummaryWriter

from common.config import Config, to_dict


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v if isinstance(v, (int, float, str, bool)) else str(v)
    return out


class RunLogger:
    def __init__(self, run_dir: str | Path, name: str) -> None:
        self.dir = Path(run_dir)
        self.writer = SummaryWriter(log_dir=str(self.dir / "tensorboard" / name))
        self.jsonl = (self.dir / f"metrics_{name}.jsonl").open("a")

    def hparams(self, cfg: Config) -> None:
        """Hyperparameters logged once, as text (readable in TensorBoard's Text tab)."""
        lines = [f"| {k} | {v} |" for k, v in _flat(to_dict(cfg)).items()]
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


def record_stage_time(run_dir: str | Path, stage: str, seconds: float) -> None:
    """Wall-clock seconds of each stage, in <run_dir>/stage_times.json (read by the report)."""
    path = Path(run_dir) / "stage_times.json"
    times = json.loads(path.read_text()) if path.is_file() else {}
    times[stage] = round(seconds, 2)
    path.write_text(json.dumps(times, indent=2))
