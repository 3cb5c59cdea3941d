"""Sweeps: one config over several seeds and a small grid of overrides, one run directory each.

`python launch.py --seeds 0,1,2 --grid rl.kl_coef=0.01,0.05,0.1 run_dir=runs/kl_sweep` runs every
(variant, seed) in `<run_dir>/<variant>/seed_<s>`. Every grid point's config is validated before anything runs.
A run whose `eval.json` exists is skipped (resumable); a failed run has its error saved to `error.txt` and the
sweep goes on. Each run is a child process (`launch.py --stage ...`), so a crash or out-of-memory in one run
cannot take the others down and every run starts from a clean interpreter.

What is shared, and why that is honest:
- the data split: `data.split_seed` is not touched by `seed`, so every seed and variant is evaluated on the
  same held-out prompts (and, in the sandbox, on the same generated data);
- for a grid over downstream keys only (rl.*, generator.*, eval.*), variants of the same seed reuse the first
  variant's SFT policy and reward model (`model.policy=` and `reward.path=` point at them). Those would be
  retrained bit for bit anyway, since they depend only on the seed and the upstream sections, and the shared
  reward model makes the variants' rewards comparable (a KL-reward frontier needs one reward scale per seed).
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from common.config import ConfigError, load_config

DOWNSTREAM = ("rl.", "generator.", "eval.")  # sections that do not change the SFT policy or the reward model
LAUNCH = Path(__file__).resolve().parent.parent / "launch.py"


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"--seeds {text!r}: expected comma-separated integers, e.g. 0,1,2") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds {text!r}: expected distinct integers, e.g. 0,1,2")
    return seeds


def parse_grid(items: list[str]) -> list[tuple[str, list[str]]]:
    """`--grid key=a,b,c` (repeatable) -> [(key, [a, b, c])]; the grid is the product over keys."""
    grid = []
    for item in items:
        key, sep, values = item.partition("=")
        vals = [v.strip() for v in values.split(",") if v.strip()]
        if not sep or not key.strip() or not vals:
            raise ConfigError(f"--grid {item!r}: expected key=v1,v2,... (for example rl.kl_coef=0.01,0.05,0.1)")
        if key in (k for k, _ in grid) or key.strip() in ("seed", "run_dir"):
            raise ConfigError(f"--grid {item!r}: {key!r} is repeated or set by the sweep itself")
        if len(set(vals)) != len(vals):
            raise ConfigError(f"--grid {item!r}: repeated values")
        grid.append((key.strip(), vals))
    return grid


@dataclass
class Run:
    variant: str
    seed: int
    run_dir: Path
    overrides: list[str]
    stages: list[str]
    status: str = "pending"  # pending | skipped | done | failed
    seconds: float = 0.0
    error: str = ""
    depends_on: "Run | None" = field(default=None, repr=False)


def variant_name(point: tuple[tuple[str, str], ...]) -> str:
    """`rl.kl_coef=0.05` -> `kl_coef=0.05`; several keys joined by `,`; no grid -> `default`."""
    return ",".join(f"{k.split('.')[-1]}={v}" for k, v in point).replace("/", "_") or "default"


def plan(config: str, overrides: list[str], seeds: list[int], grid: list[tuple[str, list[str]]],
         stage: str) -> tuple[Path, list[Run]]:
    """Every (variant, seed) run with its overrides, each config validated now (ConfigError names the run)."""
    base = load_config(config, overrides)
    root = Path(base.run_dir)
    points = list(itertools.product(*[[(k, v) for v in vals] for k, vals in grid]))
    share = len(points) > 1 and stage == "all" and all(k.startswith(DOWNSTREAM) for k, _ in grid)
    runs, firsts = [], {}  # variant-major order: every seed's first variant (which trains SFT and RM) runs first
    for point in points:
        for seed in seeds:
            first = firsts.get(seed)
            name = variant_name(point)
            run_dir = root / name / f"seed_{seed}"
            extra = [f"{k}={v}" for k, v in point] + [f"seed={seed}", f"run_dir={run_dir}"]
            stages = [stage]
            if share and first is not None:
                extra += [f"reward.path={first.run_dir / 'reward_model'}"]
                if base.model.policy == "tiny":
                    extra += [f"model.policy={first.run_dir / 'sft_model'}"]
                stages = ["rl", "eval"]
            try:
                load_config(config, overrides + extra)
            except ConfigError as e:
                raise ConfigError(f"sweep run {name}/seed_{seed}: {e}") from None
            run = Run(name, seed, run_dir, overrides + extra, stages, depends_on=first if share else None)
            firsts.setdefault(seed, run)
            runs.append(run)
    return root, runs


def execute(run: Run, config: str, mode: str = "local") -> None:
    """Run one (variant, seed) in a child process (`--mode` as the sweep's); output goes to <run_dir>/log.txt."""
    if (run.run_dir / "eval.json").is_file() and run.stages[-1] in ("all", "eval"):
        run.status = "skipped"
        return
    if run.depends_on is not None and run.depends_on.status == "failed":
        run.status, run.error = "failed", f"depends on {run.depends_on.run_dir}, which failed"
        return
    run.run_dir.mkdir(parents=True, exist_ok=True)
    (run.run_dir / "error.txt").unlink(missing_ok=True)
    t0 = time.perf_counter()
    with (run.run_dir / "log.txt").open("w") as log:
        for stage in run.stages:
            cmd = [sys.executable, str(LAUNCH), "--config", config, "--mode", mode, "--stage", stage, "--no-report",
                   *run.overrides]
            log.write("$ " + " ".join(cmd) + "\n")
            log.flush()
            if run_child(cmd, log) != 0:
                run.status = "failed"
                break
    run.seconds = time.perf_counter() - t0
    if run.status == "failed":
        tail = (run.run_dir / "log.txt").read_text().splitlines()[-30:]
        run.error = "\n".join(tail)
        (run.run_dir / "error.txt").write_text(run.error + "\n")
    else:
        run.status = "done"


def run_child(cmd: list[str], log) -> int:
    """The child's exit code. If the sweep is stopped (SIGTERM, Ctrl-C), the running child is stopped the same
    clean way (SIGTERM: its checkpoints stay intact and its lock is released), not killed."""
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    try:
        return proc.wait()
    except BaseException:
        try:
            proc.wait(timeout=5)  # Ctrl-C in a terminal reaches the child too: give it time to stop by itself
        except subprocess.TimeoutExpired:
            proc.terminate()
            try:
                proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                proc.kill()
        raise


def run_sweep(config: str, overrides: list[str], seeds: list[int], grid: list[tuple[str, list[str]]],
              stage: str = "all", mode: str = "local") -> tuple[Path, list[Run]]:
    root, runs = plan(config, overrides, seeds, grid, stage)
    print(f"sweep: {len(runs)} runs ({len({r.variant for r in runs})} variants x {len(seeds)} seeds) under {root}",
          flush=True)
    for k, run in enumerate(runs, 1):
        print(f"[{k}/{len(runs)}] {run.variant}/seed_{run.seed} ...", flush=True)
        execute(run, config, mode)
        print(f"[{k}/{len(runs)}] {run.variant}/seed_{run.seed}: {run.status}"
              + (f" in {run.seconds:.0f}s" if run.status == "done" else "")
              + (f" (see {run.run_dir / 'error.txt'})" if run.status == "failed" else ""), flush=True)
    write_summary(root, runs)
    return root, runs


def write_summary(root: Path, runs: list[Run]) -> None:
    rows = [{"variant": r.variant, "seed": r.seed, "run_dir": str(r.run_dir), "status": r.status,
             "seconds": round(r.seconds, 1), "error": r.error.splitlines()[-1] if r.error else ""} for r in runs]
    root.mkdir(parents=True, exist_ok=True)
    (root / "sweep.json").write_text(json.dumps(rows, indent=2))
    counts = {s: sum(r.status == s for r in runs) for s in ("done", "skipped", "failed")}
    print(f"sweep summary: {counts['done']} done, {counts['skipped']} skipped (already finished), "
          f"{counts['failed']} failed; details in {root / 'sweep.json'}")
    for r in runs:
        if r.status == "failed":
            print(f"  FAILED {r.variant}/seed_{r.seed}: {rows[runs.index(r)]['error']}")
