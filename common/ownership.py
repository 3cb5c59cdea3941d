"""Which run owns a stage's files in a run directory, so that one run never silently overwrites or continues another.

A run directory may hold one run of each training stage (sft, rm, rl). <run_dir>/stage_runs.json records, per stage,
the run that wrote its files: a run id (new for each fresh run, kept across --resume) and the resolved config's
hash (common/config.config_hash). From it:
- a fresh run of a stage whose files (metrics log, results, rl checkpoints) are there refuses to overwrite them,
  unless they were written with the same config (a rerun of the same command redoes the same run, as before) or
  the user passes --overwrite; either way the old files are removed, and one line says which;
- --resume continues only a checkpoint of the directory's own rl run, and refuses a changed setting that alters the
  algorithm (ALGORITHM_KEYS) unless --allow-config-change, which then records the change in resume_changes.jsonl.
eval and temperature are measurements of the models in the directory, recomputed on demand: a rerun replaces them.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from pathlib import Path

from common.config import Config, ConfigError, config_diff, config_hash, flatten, to_dict
from common.errors import UserError

RECORD = "stage_runs.json"
CHANGES = "resume_changes.jsonl"  # the settings --allow-config-change changed on --resume (read by the report)
# what a fresh run of each training stage replaces (the rl stage's checkpoints/step_*.pt besides these)
STAGE_FILES = {"sft": ("metrics_sft.jsonl", "sft_metrics.json"), "rm": ("metrics_rm.jsonl", "rm_metrics.json"),
               "rl": ("metrics_rl.jsonl", "rl_metrics.json", CHANGES)}
# Settings that change what the algorithm computes from the next step on: the objective (reward, KL, baseline),
# the update (lr, batch, clipping, weight decay), the data and sampling (seed, prompts, temperature, length,
# staleness), the models. A key ending in "." is a whole section. Changing one on --resume would splice two
# different runs together, so it needs --allow-config-change. Everything else (rl.steps, save/log/eval/sample
# cadence, micro-batching and checkpointing, which give the same update, tracking, threads, device, eval.*, the
# sft and rm training settings, which the rl stage does not read) is taken silently.
ALGORITHM_KEYS = ("seed", "model.", "data.", "sandbox.", "ifeval.", "reward.path", "reward.head", "reward.num_bins",
                  "reward.model_weight", "reward.functions", "reward.function_weights", "generator.temperature",
                  "generator.top_p", "generator.max_new_tokens", "rl.batch_size", "rl.lr", "rl.kl_coef",
                  "rl.baseline", "rl.ema_decay", "rl.baseline_start", "rl.rloo_k",
                  "rl.offpolicy_correction", "rl.tis_cap", "rl.max_grad_norm", "rl.weight_decay",
                  "rl.reward_reduction", "rl.risk_lambda", "rl.missing_eos_penalty", "cluster.max_staleness",
                  "cluster.sync_every")


class RunDirTaken(UserError):
    """A fresh run would overwrite another run's files in its run directory."""


class ConfigChangeRefused(ConfigError):
    """--resume with a changed setting that alters the algorithm, without --allow-config-change."""


class OtherRunCheckpoint(UserError):
    """--resume found a checkpoint written by another run than the directory's rl run."""


def read_record(run_dir: str | Path) -> dict:
    path = Path(run_dir) / RECORD
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except json.JSONDecodeError:
        raise UserError(f"{path} is not valid JSON: repair it, or delete it and rerun with --overwrite") from None


def write_record(run_dir: str | Path, record: dict) -> None:
    """Via a temporary file and a rename: a crash never leaves a half-written record (which would lock the run out)."""
    path = Path(run_dir) / RECORD
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=2))
    os.replace(tmp, path)


def existing_files(run_dir: str | Path, stage: str) -> list[Path]:
    """The files of `stage` a fresh run would replace (none for stages that keep no run of their own)."""
    run_dir = Path(run_dir)
    found = [run_dir / name for name in STAGE_FILES.get(stage, ()) if (run_dir / name).is_file()]  # data, not a device
    if stage == "rl":
        found += sorted((run_dir / "checkpoints").glob("step_*.pt"))
        found += sorted((run_dir / "checkpoints").glob("step_*.dcp"))  # a learner group's shards
    return found


def names(run_dir: str | Path, files: list[Path]) -> str:
    return ", ".join(str(p.relative_to(run_dir)) for p in files)


def check_fresh(cfg: Config, stage: str, overwrite: bool) -> None:
    """Refuse (before anything is written) a fresh run of `stage` that would overwrite another run's files."""
    files = existing_files(cfg.run_dir, stage)
    owner = read_record(cfg.run_dir).get(stage)
    if not files or overwrite or (owner and owner.get("config_hash") == config_hash(cfg)):
        return
    who = (f"run {owner.get('run_id')} (config {owner.get('config_hash')}, now {config_hash(cfg)})" if owner else
           f"a run this directory has no {RECORD} entry for")
    resume = " continue it with --stage rl --resume," if stage == "rl" and any(p.suffix == ".pt" for p in files) else ""
    raise RunDirTaken(f"run_dir {cfg.run_dir} holds the {stage} stage of {who}: {names(cfg.run_dir, files)}, which a "
                      f"fresh run of the {stage} stage with this config would overwrite:{resume} choose another "
                      f"run_dir, or pass --overwrite to replace them")


def claim(cfg: Config, stage: str, overwrite: bool, log=print) -> str:
    """Make this fresh run the owner of `stage` in the run directory: check, remove the old run's files (saying in
    one line which), record the new run id and config hash. Returns the run id."""
    check_fresh(cfg, stage, overwrite)
    files = existing_files(cfg.run_dir, stage)
    record = read_record(cfg.run_dir)
    if files:
        old = record.get(stage, {}).get("run_id", "unrecorded")
        for path in files:
            shutil.rmtree(path) if path.is_dir() else path.unlink()  # a learner group's step_*.dcp/ shards
        log(f"[{stage}] replacing the earlier {stage} run {old} in {cfg.run_dir}: removed {names(cfg.run_dir, files)}")
    run_id = new_run_id()
    record[stage] = {"run_id": run_id, "config_hash": config_hash(cfg), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    write_record(cfg.run_dir, record)
    return run_id


def new_run_id() -> str:
    return uuid.uuid4().hex[:12]


def run_meta(cfg: Config, run_id: str) -> dict:
    """What every rl checkpoint carries about its run: the run id, the config hash and the resolved config (flat,
    plain values: what --resume compares the current config with)."""
    return {"run_id": run_id, "config_hash": config_hash(cfg), "config": flatten(to_dict(cfg))}


def check_checkpoint_owner(run_dir: str | Path, path: Path, state: dict) -> str | None:
    """The run id --resume continues: the checkpoint's, which must be the directory's rl run (stage_runs.json).
    A checkpoint written before run ids existed carries none and is taken as the directory's."""
    theirs = state.get("run", {}).get("run_id")
    ours = read_record(run_dir).get("rl", {}).get("run_id")
    if theirs and ours and theirs != ours:
        raise OtherRunCheckpoint(f"--resume: {path} belongs to run {theirs}, not to this directory's rl run {ours} "
                                 f"({Path(run_dir) / RECORD}); move it away, or start fresh with --stage rl "
                                 f"--overwrite")
    return theirs or ours


def is_algorithm_key(key: str) -> bool:
    return any(key == k or (k.endswith(".") and key.startswith(k)) for k in ALGORITHM_KEYS)


def config_changes(cfg: Config, state: dict) -> dict[str, tuple]:
    """The algorithm settings (ALGORITHM_KEYS) whose value differs from the checkpoint's config: {key: (old, new)}."""
    old = state.get("run", {}).get("config")
    if not old:  # a checkpoint from before configs were stored in it: nothing to compare with
        return {}
    return {k: v for k, v in config_diff(old, flatten(to_dict(cfg))).items() if is_algorithm_key(k)}


def check_resume_config(cfg: Config, path: Path, state: dict, allow: bool) -> dict[str, tuple]:
    """The changes --resume applies; refuses them, naming each key with its old and new value, without `allow`."""
    changes = config_changes(cfg, state)
    if changes and not allow:
        listed = ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in changes.items())
        raise ConfigChangeRefused(f"--resume: {listed} differ from the config of {path} (step {state['step']}) and "
                                  f"would change the algorithm mid-run: resume with the checkpoint's values, start "
                                  f"a fresh run (--overwrite), or pass --allow-config-change to apply the change from "
                                  f"step {state['step']} on")
    return changes


def record_resume(cfg: Config, run_id: str | None, step: int, changes: dict[str, tuple]) -> None:
    """A resumed run's config becomes the rl run's (its hash in stage_runs.json); allowed changes of algorithm settings
    are appended to resume_changes.jsonl, one line per resume."""
    record = read_record(cfg.run_dir)
    record["rl"] = {**record.get("rl", {}), "run_id": run_id or record.get("rl", {}).get("run_id"),
                    "config_hash": config_hash(cfg)}
    write_record(cfg.run_dir, record)
    if changes:
        line = {"step": step, "changes": {k: {"old": old, "new": new} for k, (old, new) in changes.items()},
                "time": time.strftime("%Y-%m-%d %H:%M:%S")}
        with (Path(cfg.run_dir) / CHANGES).open("a") as f:
            f.write(json.dumps(line) + "\n")
