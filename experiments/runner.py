"""The one experiment runner: named variants x seeds, artifacts shared between variants, parallel runs.

    python launch.py --seeds 0,1,2 --grid rl.kl_coef=0.01,0.05,0.1 run_dir=runs/kl      # a grid sweep
    python launch.py --plan level2 --seeds 0,1,2 --jobs 2 run_dir=runs/level2            # a named plan

Every (variant, seed) is a run in `<run_dir>/<variant>/seed_<s>` (the layout the report reads). Every run's
config is validated before anything runs. Each run executes its stages as child processes (`launch.py
--stage ...`), so a crash or out-of-memory in one run cannot take the others down, and writes its output to
<run>/log.txt. A stage whose output file exists is skipped, so an interrupted experiment resumes where it
stopped; a failed run has its error saved to error.txt, the runs that need its artifacts are marked failed, and
the others go on. `--jobs N` runs N runs at once; a run starts as soon as the artifacts it needs exist.

A sweep holds its root's lock (common/runlock.py) from before it writes anything there until it ends: a second sweep
on the same root is refused, naming the first. A run directory that already holds a config.yaml is reused only when
that config's hash equals the new run's (common.config.config_hash): a rerun with other overrides is refused, naming
the run and the keys that differ, instead of skipping old results as if they had the new settings.

What is shared, and why that is honest:
- the data split: `data.split_seed` is not touched by `seed`, so every seed and variant is evaluated on the
  same held-out prompts (and, in the sandbox, on the same generated data);
- the ifeval task (data.source=ifeval): its prompts and pairs depend on the SFT policy and data.split_seed, not
  on `seed`, so the first run builds them once (`--stage pairs`) in one directory (ifeval.dir, '' = <run_dir>/data
  of the experiment) and every other run reads them after it has;
- a variant may take another variant's SFT policy (`policy_from`, sandbox only) or reward model (`reward_from`)
  of the same seed. A grid over downstream keys only (rl.*, generator.*, eval.*) shares both with its first
  variant: they would be retrained bit for bit anyway (they depend only on the seed and upstream sections), and
  one reward model per seed puts the variants' rewards on one scale (a KL-reward frontier needs that).
- best_of_n (the SFT policy's best of n by the reward model, before RL): a variant that takes another's reward
  model and changes only rl.* keys that stage does not read would measure the same thing again, so it skips it.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

from actors.reward_functions import check as check_reward_functions
from common import runlock
from common.config import Config, ConfigError, changed_keys, config_hash, load_config
from common.errors import SettingsChanged
from common.runtime import make_run_dir
from tasks.registry import load_task

DOWNSTREAM = ("rl.", "generator.", "eval.")  # sections that do not change the SFT policy or the reward model
LAUNCH = Path(__file__).resolve().parent.parent / "launch.py"
STAGE_OUTPUT = {"pairs": "pairs_metrics.json", "sft": "sft_metrics.json", "rm": "rm_metrics.json",
                "rl": "rl_metrics.json", "eval": "eval.json", "best_of_n": "best_of_n.json",
                "validate": "validation.json"}
ARTIFACT = {"sft": "sft_model", "rm": "reward_model"}  # what another variant can take from a run
BEST_OF_N_RL_KEYS = ("rl.reward_reduction", "rl.risk_lambda")  # the rl.* keys stages/best_of_n.py reads


@dataclass(frozen=True)
class Variant:
    """A named set of overrides; `policy_from` / `reward_from` name the variant whose SFT policy / reward model
    (same seed) this one uses instead of training its own; `skip` names stages it does not run."""
    name: str
    overrides: tuple[str, ...] = ()
    policy_from: str | None = None
    reward_from: str | None = None
    skip: tuple[str, ...] = ()  # stages of `--stage all` this variant leaves out (tune: eval, the test pools)
    also: tuple[str, ...] = ()  # stages it runs after those of `--stage all` (validate: the validation pools)
    one_reward_model: bool = False  # every seed takes reward_from's reward model of the first seed (else its own)


def owner_of(v: Variant, kind: str, seed: int, first: int) -> tuple[str, int] | None:
    """(variant, seed) of the run whose `kind` artifact ("rm" or "sft") `v`'s run of `seed` takes (`first`: the
    experiment's first seed); None: it trains its own."""
    name = v.reward_from if kind == "rm" else v.policy_from
    owner_seed = first if kind == "rm" and v.one_reward_model else seed
    return None if name is None or (name, owner_seed) == (v.name, seed) else (name, owner_seed)


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
    depends_on: list[tuple[Run, str]] = field(default_factory=list, repr=False)  # (run, stage it must finish)
    config: Config | None = field(default=None, repr=False)  # the resolved config its stages will save

    @property
    def name(self) -> str:
        return f"{self.variant}/seed_{self.seed}"

    def finished(self, stage: str) -> bool:
        return (self.run_dir / STAGE_OUTPUT[stage]).is_file()

    @property
    def todo(self) -> list[str]:
        """The stages still to run (a stage whose output exists is done: resuming skips it)."""
        return [s for s in self.stages if not self.finished(s)]


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


def variant_name(point: tuple[tuple[str, str], ...]) -> str:
    """`rl.kl_coef=0.05` -> `kl_coef=0.05`; several keys joined by `,`; no grid -> `default`."""
    return ",".join(f"{k.split('.')[-1]}={v}" for k, v in point).replace("/", "_") or "default"


def grid_variants(grid: list[tuple[str, list[str]]]) -> list[Variant]:
    """One variant per grid point; a grid over downstream keys only shares SFT and RM with the first point."""
    points = list(itertools.product(*[[(k, v) for v in vals] for k, vals in grid]))
    share = len(points) > 1 and all(k.startswith(DOWNSTREAM) for k, _ in grid)
    first = variant_name(points[0])
    return [Variant(variant_name(p), tuple(f"{k}={v}" for k, v in p),
                    policy_from=first if share and i else None, reward_from=first if share and i else None)
            for i, p in enumerate(points)]


def plan(config: str, overrides: list[str], seeds: list[int], variants: list[Variant] | list[tuple[str, list[str]]],
         stage: str) -> tuple[Path, list[Run]]:
    """Every (variant, seed) run with its overrides, stages and dependencies, each config validated now
    (ConfigError names the run). `variants` is a list of Variant, or a grid (see parse_grid). Runs are in
    variant-major order, so every artifact's owner comes before the runs that take it."""
    if not variants or not isinstance(variants[0], Variant):
        variants = grid_variants(variants)
    base = load_config(config, overrides)
    root, task = Path(base.run_dir), load_task(base)
    shared = task.experiment_overrides(root)  # the ifeval task: built once, in <root>/data, for every run
    by_key: dict[tuple[str, int], Run] = {}
    runs: list[Run] = []
    sweep_name = base.tracking.run_name or root.resolve().name  # the runs' tracker names: <sweep>/<variant>/seed_<s>
    for v in variants:
        for seed in seeds:
            run_dir = root / v.name / f"seed_{seed}"
            tracked = json.dumps(f"{sweep_name}/{v.name}/seed_{seed}")  # quoted: the name stays a YAML string
            extra, stages, needs = [*shared, *v.overrides, f"seed={seed}", f"run_dir={run_dir}",
                                    f"tracking.run_name={tracked}"], [stage], []
            # the run's own stages (a variant may set reward.model_weight=0: no rm stage)
            task_stages = load_task(run_config(config, overrides + extra, v.name, seed)).planned_stages()
            taken = {kind: owner_of(v, kind, seed, seeds[0]) for kind in ("rm", "sft")}
            for kind, owner in taken.items():  # at any --stage, so that a later stage has the same config
                if owner is not None and kind in task_stages:  # no rm stage: no reward model to share
                    run = by_key.get(owner)  # None: a run of an earlier sweep on this root (a plan's later step)
                    where = run.run_dir if run else root / owner[0] / f"seed_{owner[1]}"
                    extra.append(("reward.path=" if kind == "rm" else "model.policy=") + str(where / ARTIFACT[kind]))
                    needs += [(run, kind)] if run else []
            if stage == "all":  # explicit stages, so that a resumed experiment skips the finished ones
                skip = {"pairs": bool(runs), "sft": taken["sft"], "rm": taken["rm"],
                        "best_of_n": repeats_best_of_n(v, taken["rm"]), **dict.fromkeys(v.skip, True)}
                stages = [s for s in task_stages if not skip.get(s)] + list(v.also)
                if "pairs" in task_stages and runs:
                    needs.append((runs[0], "pairs"))
            else:
                needs = []
            cfg = run_config(config, overrides + extra, v.name, seed)
            run = Run(v.name, seed, run_dir, overrides + extra, stages, depends_on=needs, config=cfg)
            by_key[(v.name, seed)] = run
            runs.append(run)
    return root, runs


def repeats_best_of_n(v: Variant, owner: tuple[str, int] | None) -> bool:
    """Whether `v`'s run would measure in best_of_n what its reward model's `owner` run measures: it takes that
    reward model (and so the same SFT policy) and changes only rl.* keys best_of_n does not read (it reads the
    reward reduction, which ranks a distributional head's answers). Such a run skips it."""
    keys = [o.partition("=")[0] for o in v.overrides]
    return owner is not None and all(k.startswith("rl.") and k not in BEST_OF_N_RL_KEYS
                                                       for k in keys)


def run_config(config: str, overrides: list[str], variant: str, seed: int):
    """One run's config, validated as launch.py validates it (reward.functions resolved too); a ConfigError names
    the run."""
    try:
        cfg = load_config(config, overrides)
        check_reward_functions(cfg)
    except ConfigError as e:
        raise ConfigError(f"sweep run {variant}/seed_{seed}: {e}") from None
    return cfg


def claim(root: Path, runs: list[Run]) -> None:
    """Lock the sweep's root, then check that the runs already there were made with these settings. Both come
    before the sweep writes anything under root (invocation.json, experiment.json, logs, error files), so a sweep
    refused here has changed nothing. The lock stays held until the process releases it (launch.py, run_sweep)."""
    make_run_dir(root)
    runlock.acquire(root, what="a sweep")
    for run in runs:
        check_settings(run)


def check_settings(run: Run) -> None:
    """A run directory with a config.yaml was made by an earlier sweep: its finished stages may be skipped only if
    its resolved config is the one this sweep would run (same hash); otherwise SettingsChanged names the keys."""
    stored = run.run_dir / "config.yaml"
    if run.config is None or not stored.is_file():
        return
    what = f"sweep run {run.run_dir} was made with other settings"
    todo = (f": use another run_dir, or remove {run.run_dir} (and any other run of the old settings) to run "
            f"it again")
    try:
        old = load_config(stored)
    except ConfigError as e:  # written by an older version of the config schema
        raise SettingsChanged(f"{what} ({stored} does not load: {e}){todo}") from None
    if config_hash(old) != config_hash(run.config):
        raise SettingsChanged(f"{what} ({changed_keys(old, run.config)}){todo}")


def execute(run: Run, config: str, mode: str = "local") -> None:
    """Run one (variant, seed)'s stages in child processes (`--mode` as the experiment's); output goes to
    <run_dir>/log.txt. Stages whose output already exists are skipped."""
    run.run_dir.mkdir(parents=True, exist_ok=True)
    (run.run_dir / "error.txt").unlink(missing_ok=True)
    t0 = time.perf_counter()
    with (run.run_dir / "log.txt").open("a") as log:
        for stage in run.todo:
            cmd = [sys.executable, str(LAUNCH), "--config", config, "--mode", mode, "--stage", stage, "--no-report",
                   *run.overrides]
            log.write("$ " + " ".join(cmd) + "\n")
            log.flush()
            if run_child(cmd, log) != 0:
                run.status = "failed"
                break
    run.seconds = time.perf_counter() - t0
    if run.status == "failed":
        run.error = "\n".join((run.run_dir / "log.txt").read_text().splitlines()[-30:])
        (run.run_dir / "error.txt").write_text(run.error + "\n")
    else:
        run.status = "done"


_children: set[subprocess.Popen] = set()  # stage processes running now (one per worker thread)


def run_child(cmd: list[str], log) -> int:
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    _children.add(proc)
    try:
        return proc.wait()
    finally:
        _children.discard(proc)


def stop_children(interrupt: BaseException) -> None:
    """The sweep was stopped (SIGTERM, Ctrl-C): stop its running stages the same clean way (SIGTERM: their
    checkpoints stay intact, their run directories' locks are released), not by killing them."""
    if isinstance(interrupt, KeyboardInterrupt):  # Ctrl-C in a terminal reached the children too
        time.sleep(min(5.0, 0.5 * len(_children)))
    for proc in list(_children):
        proc.terminate()
    for proc in list(_children):
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()


def blocked_by(run: Run) -> Run | None:
    """The run whose failure leaves `run` without an artifact it needs (None if nothing is lost)."""
    return next((dep for dep, stage in run.depends_on if dep.status == "failed" and not dep.finished(stage)), None)


def ready(run: Run) -> bool:
    return all(dep.finished(stage) or dep.status in ("done", "skipped") for dep, stage in run.depends_on)


def run_sweep(config: str, overrides: list[str], seeds: list[int], variants, stage: str = "all",
              mode: str = "local", jobs: int = 1, reference: str | None = None) -> tuple[Path, list[Run]]:
    """Plan and execute: up to `jobs` runs at once, each started once the artifacts it needs exist.
    `reference` names the variant the report compares every other variant with (experiment.json)."""
    root, runs = plan(config, overrides, seeds, variants, stage)
    owner = not runlock.holds(root)  # launch.py claims the root first, and keeps it for the report after the sweep
    claim(root, runs)
    try:
        (root / "experiment.json").write_text(json.dumps(
            {"config": config, "overrides": overrides, "seeds": seeds, "stage": stage, "mode": mode,
             "variants": sorted({r.variant for r in runs}, key=[r.variant for r in runs].index),
             "reference": reference}, indent=2))
        print(f"sweep: {len(runs)} runs ({len({r.variant for r in runs})} variants x {len(seeds)} seeds) under "
              f"{root}" + (f", {jobs} at a time" if jobs > 1 else ""), flush=True)
        execute_all(runs, config, mode, jobs)
        write_summary(root, runs)
    finally:
        if owner:
            runlock.release(root)
    return root, runs


def execute_all(runs: list[Run], config: str, mode: str, jobs: int) -> None:
    """Every run, up to `jobs` at once; an interruption stops the running stages cleanly before it propagates."""
    pending, running = list(runs), {}
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        try:
            schedule(runs, pending, running, pool, jobs, config, mode)
        except BaseException as e:
            stop_children(e)
            raise


def schedule(runs: list[Run], pending: list[Run], running: dict, pool: ThreadPoolExecutor, jobs: int, config: str,
             mode: str) -> None:
    """Start every run once the artifacts it needs exist, up to `jobs` at once; return when all have ended."""
    while pending or running:
        for run in list(pending):
            if (dep := blocked_by(run)) is not None:
                pending.remove(run)
                run.status, run.error = "failed", f"depends on {dep.run_dir}, which failed"
                report_progress(runs, run)
            elif not run.todo:
                pending.remove(run)
                run.status = "skipped"
                report_progress(runs, run)
            elif len(running) < jobs and ready(run):
                pending.remove(run)
                print(f"[{runs.index(run) + 1}/{len(runs)}] {run.name} ...", flush=True)
                running[pool.submit(execute, run, config, mode)] = run
        if running:
            done, _ = wait(list(running), timeout=5, return_when=FIRST_COMPLETED)
            for future in done:
                future.result()
                report_progress(runs, running.pop(future))
        elif pending:  # nothing runs and nothing can start: a dependency cycle would be a planning bug
            raise RuntimeError(f"sweep: runs {[r.name for r in pending]} wait on artifacts nobody produces")


def report_progress(runs: list[Run], run: Run) -> None:
    k = runs.index(run) + 1
    print(f"[{k}/{len(runs)}] {run.name}: {run.status}" + (f" in {run.seconds:.0f}s" if run.status == "done" else "")
          + (f" (see {run.run_dir / 'error.txt'})" if run.status == "failed" and run.seconds else ""), flush=True)


def write_summary(root: Path, runs: list[Run], name: str = "sweep.json") -> None:
    rows = [{"variant": r.variant, "seed": r.seed, "run_dir": str(r.run_dir), "status": r.status,
             "seconds": round(r.seconds, 1), "error": r.error.splitlines()[-1] if r.error else ""} for r in runs]
    root.mkdir(parents=True, exist_ok=True)
    (root / name).write_text(json.dumps(rows, indent=2))
    counts = {s: sum(r.status == s for r in runs) for s in ("done", "skipped", "failed")}
    print(f"sweep summary: {counts['done']} done, {counts['skipped']} skipped (already finished), "
          f"{counts['failed']} failed; details in {root / name}")
    for row in rows:
        if row["status"] == "failed":
            print(f"  FAILED {row['variant']}/seed_{row['seed']}: {row['error']}")
