"""Reading run directories for the report: each run's resolved config and whatever its stages wrote, found
under run or sweep directories (`<root>/<variant>/seed_<s>`, see experiments/runner.py) and grouped by variant.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from actors.reward_functions import describe
from common.config import RewardConfig, flatten
from common.config_schema import build
from common.errors import PathNotFound
from common.metrics import read_log

# keys that differ between runs without making them different experiments (a sweep names each run's tracker run)
NOT_A_VARIANT_KEY = {"seed", "run_dir", "torch_threads", "device", "model.policy", "reward.path", "tracking.run_name"}


@dataclass
class RunData:
    path: Path
    variant: str
    seed: int
    config: dict
    eval: dict | None = None
    rl: list[dict] = field(default_factory=list)
    stage_times: dict = field(default_factory=dict)
    rm: dict | None = None
    resume_changes: list[dict] = field(default_factory=list)  # resume_changes.jsonl: --allow-config-change's
    best_of_n: dict | None = None  # best_of_n.json (stages/best_of_n.py)


def read_json(path: Path) -> dict | None:
    """A JSON file's contents, or None when the file is absent (a stage that has not run)."""
    return json.loads(path.read_text()) if path.is_file() else None


def load_run(path: Path) -> RunData:
    """A run directory: its resolved config and whatever its stages wrote (missing stages stay empty)."""
    config = yaml.safe_load((path / "config.yaml").read_text())
    variant = path.parent.name if re.fullmatch(r"seed_\d+", path.name) else path.name
    rl_file = path / "metrics_rl.jsonl"
    rl = [json.loads(line) for line in read_log(rl_file)]
    rm = read_json(path / "rm_metrics.json")
    if rm is None and config["reward"]["path"]:  # a sweep variant reusing another run's reward model
        rm = read_json(Path(config["reward"]["path"]).parent / "rm_metrics.json")
    changes = path / "resume_changes.jsonl"
    resumed = [json.loads(line) for line in changes.read_text().splitlines() if line.strip()] if changes.is_file() \
        else []
    return RunData(path, variant, int(config["seed"]), config, read_json(path / "eval.json"), rl,
                   read_json(path / "stage_times.json") or {}, rm, resumed, read_json(path / "best_of_n.json"))


def discover(paths: list[str | Path]) -> list[RunData]:
    """Every run under the given directories (a run directory holds config.yaml), sorted by variant and seed."""
    found = []
    for p in map(Path, paths):
        if not p.is_dir():
            raise PathNotFound(f"report: {p} is not a directory")
        dirs = [p] if (p / "config.yaml").is_file() else sorted(c.parent for c in p.rglob("config.yaml"))
        found += [load_run(d) for d in dirs]
    runs = [r for r in found if r.eval or r.rl or r.best_of_n]
    if not runs:
        raise PathNotFound(f"report: no run with metrics_rl.jsonl, eval.json or best_of_n.json under "
                           f"{', '.join(map(str, paths))}")
    return sorted(runs, key=lambda r: (r.variant, r.seed))


def group(runs: list[RunData]) -> dict[str, list[RunData]]:
    out: dict[str, list[RunData]] = {}
    for r in runs:
        out.setdefault(r.variant, []).append(r)
    return out


def uses_functions(runs: list[RunData]) -> bool:
    """Whether any run adds reward.functions to its reward (older runs' configs have no such key)."""
    return any(r.config["reward"].get("functions") for r in runs)


def reward_name(runs: list[RunData], short: bool = False) -> str:
    """What the tables and figures call the reward RL maximised: the reward model's ("RM reward" short) where no run
    adds reward functions, else "reward" (the report's Reward line says what it is made of)."""
    return "reward" if uses_functions(runs) else ("RM reward" if short else "reward-model reward")


def reward_made_of(config: dict) -> str:
    """A run's reward in words, from its config (actors/reward_functions.describe; older configs: the defaults)."""
    return describe(build(RewardConfig, config["reward"], "reward."))["text"]


def varying_keys(variants: dict[str, list[RunData]]) -> dict[str, dict[str, object]]:
    """Per variant, the config values that differ between variants (seeds and paths excluded)."""
    flat = {v: flatten(runs[0].config) for v, runs in variants.items()}
    keys = sorted({k for f in flat.values() for k in f} - NOT_A_VARIANT_KEY)
    diff = [k for k in keys if len({repr(f.get(k)) for f in flat.values()}) > 1]
    return {v: {k: f.get(k) for k in diff} for v, f in flat.items()}


def differing(configs: list[dict]) -> list[str]:
    """The config keys whose values differ between these runs' configs (seeds and paths excluded)."""
    flat = [flatten(c) for c in configs]
    keys = sorted({k for f in flat for k in f} - NOT_A_VARIANT_KEY)
    return [k for k in keys if len({repr(f.get(k)) for f in flat}) > 1]


def mixed_variants(variants: dict[str, list[RunData]]) -> dict[str, list[tuple[int, dict[str, object]]]]:
    """Variants whose runs were made with different settings (each run's config.yaml: seeds of one variant run by
    different commands), with each run's values of the keys that differ; the report averages a variant's seeds,
    so it says so instead of quoting one setting for all of them."""
    out = {}
    for v, runs in variants.items():
        keys = differing([r.config for r in runs])
        if keys:
            out[v] = [(r.seed, {k: flatten(r.config).get(k) for k in keys}) for r in runs]
    return out
