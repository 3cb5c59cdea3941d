"""Trackers: where RunLogger (common/metrics.py) sends a stage's scalars and sample tables besides its jsonl copy.

`tracking.report_to` names them, as TRL's `report_to` does: TensorBoard (the default), wandb, trackio. One small
adapter per library, each with the same three calls (`log`, `samples`, `close`) and the same tags (rollout/,
baseline/, losses/, perf/, sync/, eval/, rm/, sft/; the sample table is rollout/samples). The hyperparameters (the
flattened config) are given once, when the tracker run opens.

One tracker run per stage, named `<run_name>-<stage>` and grouped under `<run_name>` (wandb's group and job type,
trackio's group), rather than one per launch: each stage counts its own steps from 1, as TensorBoard's
`tensorboard/<stage>/` runs always have, while a wandb run's step may only grow; and the stages of one run
directory often run in separate processes (`--stage rl`, every sweep), which could share one wandb run only by
resuming it from each of them. The group keeps a training run's stages together in the dashboards; `--resume`
continues the rl stage's own tracker run (wandb by its id, trackio by its name).
"""

from __future__ import annotations

import importlib.util
import netrc
import os
import uuid
from pathlib import Path
from typing import Protocol
from urllib.parse import urlparse

from common.config import Config, ConfigError, flatten, to_dict
from common.errors import UserError, one_line

SAMPLES_TAG = "rollout/samples"  # the rl stage's sample completions: TensorBoard text, wandb and trackio tables
WANDB_STEP = "step"  # the x axis of every wandb chart (see WandbTracker)


class Tracker(Protocol):
    def log(self, step: int, metrics: dict[str, float]) -> None:
        """Scalars at the stage's step `step`."""

    def samples(self, step: int, rows: list[dict]) -> None:
        """A small table (one dict per row, the same keys in each) at step `step`."""

    def close(self) -> None:
        """Flush and end the tracker run."""


class StageRun:
    """What every tracker is told about the stage run it opens."""

    def __init__(self, cfg: Config, stage: str, resume_step: int) -> None:
        self.run_dir, self.stage, self.resume_step = Path(cfg.run_dir), stage, resume_step
        self.project, self.wandb_mode = cfg.tracking.project, cfg.tracking.wandb_mode
        self.group = cfg.tracking.run_name or Path(cfg.run_dir).resolve().name
        self.name = f"{self.group}-{stage}"
        self.config = flatten(to_dict(cfg))


def require(tracker: str) -> None:
    """A tracker named in tracking.report_to that is not installed stops the run at its start, in one line."""
    if importlib.util.find_spec(tracker) is None:
        raise ConfigError(f"tracking.report_to names {tracker}, which is not installed: pip install {tracker} (or "
                          f"pip install -e '.[tracking]'), or remove it from tracking.report_to")


def open_trackers(cfg: Config, stage: str, resume_step: int = 0) -> list[Tracker]:
    """The trackers of tracking.report_to, each with its stage run open; a fresh run (`resume_step=0`) starts new
    tracker runs, a resumed one continues them."""
    run = StageRun(cfg, stage, resume_step)
    opened: list[Tracker] = []
    try:
        for name in cfg.tracking.report_to:
            require(name)
            opened.append(ADAPTERS[name](run))
    except BaseException:
        for tracker in opened:  # nothing left open (a wandb process, an unflushed event file)
            tracker.close()
        raise
    return opened


def markdown_table(rows: list[dict]) -> str:
    """Rows as a Markdown table (TensorBoard's text tab renders it); floats to 4 significant digits, cells on one
    line, `|` escaped."""
    def cell(value) -> str:
        text = f"{value:.4g}" if isinstance(value, float) else str(value)
        return " ".join(text.split()).replace("|", "\\|")

    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    return "\n".join(lines + ["| " + " | ".join(cell(r[k]) for k in keys) + " |" for r in rows])


class TensorBoardTracker:
    """Events under <run_dir>/tensorboard/<stage>; the hyperparameters as a table in the Text tab."""

    def __init__(self, run: StageRun) -> None:
        from torch.utils.tensorboard import SummaryWriter

        # a resumed run hides what the interrupted one logged after its checkpoint (purge_step); a fresh one all
        self.writer = SummaryWriter(log_dir=str(run.run_dir / "tensorboard" / run.stage),
                                    purge_step=run.resume_step + 1 if run.resume_step else 0)
        if not run.resume_step:
            rows = [{"key": k, "value": str(v)} for k, v in run.config.items()]  # exact, not to 4 digits
            self.writer.add_text("hparams", markdown_table(rows), 0)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        for tag, value in metrics.items():
            self.writer.add_scalar(tag, value, step)

    def samples(self, step: int, rows: list[dict]) -> None:
        self.writer.add_text(SAMPLES_TAG, markdown_table(rows), step)

    def close(self) -> None:
        self.writer.flush()
        self.writer.close()


def wandb_mode(mode: str) -> str:
    """tracking.wandb_mode resolved: auto = $WANDB_MODE if set, else online with an API key, else offline."""
    if mode != "auto":
        return mode
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    return "online" if wandb_api_key_found() else "offline"


def wandb_api_key_found() -> bool:
    """$WANDB_API_KEY, or the login `wandb login` keeps in ~/.netrc (or $NETRC) for the wandb host."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or "api.wandb.ai"
    try:
        return netrc.netrc(os.environ.get("NETRC")).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


class WandbTracker:
    """A wandb run under <run_dir>/wandb. Its id is kept in <run_dir>/wandb/<stage>.id so that `--resume`
    continues the same run. Every chart's x axis is the logged `step` (define_metric), not wandb's own step,
    which may only grow: a resumed run logs again the steps after its checkpoint, and wandb keeps both copies
    (TensorBoard hides the interrupted run's; wandb cannot delete history)."""

    def __init__(self, run: StageRun) -> None:
        import wandb

        self.wandb = wandb
        id_file = run.run_dir / "wandb" / f"{run.stage}.id"
        resumed = run.resume_step and id_file.is_file()
        run_id = id_file.read_text().strip() if resumed else uuid.uuid4().hex[:8]
        id_file.parent.mkdir(parents=True, exist_ok=True)
        id_file.write_text(run_id)
        mode = wandb_mode(run.wandb_mode)
        if mode == "offline" and run.wandb_mode == "auto" and not os.environ.get("WANDB_MODE"):
            print(f"wandb: offline (no API key found): the run is written under {run.run_dir / 'wandb'}; "
                  f"`wandb sync` uploads it, tracking.wandb_mode=online after `wandb login` logs it live", flush=True)
        try:
            self.run = wandb.init(project=run.project, name=run.name, group=run.group, job_type=run.stage,
                                  dir=str(run.run_dir), id=run_id, resume="allow", mode=mode, config=run.config)
        except wandb.errors.Error as e:
            raise UserError(f"wandb could not start run {run.name} ({one_line(str(e))}): check `wandb login` and "
                            f"the network, or set tracking.wandb_mode=offline") from e
        self.run.define_metric(WANDB_STEP, hidden=True)
        self.run.define_metric("*", step_metric=WANDB_STEP)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self.run.log({WANDB_STEP: step, **metrics})

    def samples(self, step: int, rows: list[dict]) -> None:
        table = self.wandb.Table(columns=list(rows[0]), data=[list(r.values()) for r in rows])
        self.run.log({WANDB_STEP: step, SAMPLES_TAG: table})

    def close(self) -> None:
        self.run.finish()


class TrackioTracker:
    """A trackio run in trackio's local store ($TRACKIO_DIR, by default ~/.cache/huggingface/trackio: where
    `trackio show` looks); a resumed stage continues the latest run of its name."""

    def __init__(self, run: StageRun) -> None:
        import trackio

        self.trackio = trackio
        self.run = trackio.init(project=run.project, name=run.name, group=run.group, config=run.config,
                                resume="allow" if run.resume_step else "never", embed=False)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self.run.log(metrics, step=step)

    def samples(self, step: int, rows: list[dict]) -> None:
        table = self.trackio.Table(columns=list(rows[0]), data=[list(r.values()) for r in rows])
        self.run.log({SAMPLES_TAG: table}, step=step)

    def close(self) -> None:
        self.trackio.finish()  # this run, trackio's current one, also unset there (else its atexit finishes it again)


ADAPTERS = {"tensorboard": TensorBoardTracker, "wandb": WandbTracker, "trackio": TrackioTracker}
