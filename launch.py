"""Entry point: `python launch.py [--mode local] [--config configs/tiny.yaml] [--stage all] [key=value ...]`.

Stages: pairs (data.source=ifeval only), sft (offline sandbox only), rm, best_of_n (ifeval only; elsewhere on
request), rl, eval; `all` runs them in order (pairs only for the ifeval task, sft only for model.policy=tiny) and
ends with `report`. `--stage report [--runs DIR ...]` writes report.md and plots for one or more runs or sweeps.
`--push-to-hub REPO` uploads the run's policy to REPO and its reward model to REPO-reward-model after the stages
(`--stage push`: alone, from a finished run directory).
Experiments: `--seeds 0,1,2 [--grid rl.kl_coef=0.01,0.05,0.1 | --plan level2] [--jobs 2]` runs each (variant, seed)
in <run_dir>/<variant>/seed_<s> (experiments/runner.py) and ends with the report.

Errors: an expected failure (bad config, data, path, busy run directory, unreadable checkpoint, full disk, a
Ray actor that died) prints one line `error: ...` and exits non-zero (2 for config errors); `--debug` or
REINFORCE_DEBUG=1 adds the traceback. SIGINT exits 130 and SIGTERM 143, after the run has stopped cleanly.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
import traceback
from pathlib import Path

from common import checkpoint, ownership, runlock
from common.config import Config, ConfigError, load_config
from common.config_schema import keys_help
from common.errors import ENVIRONMENT_ERRNOS, Interrupted, UserError, disk_error, one_line, raise_on_sigterm
from common.metrics import record_invocation, record_stage_time
from common.runtime import lock_run_dir
from common.trackers import require as require_tracker
from experiments import PLANS, plan_finish, plan_seeds, plan_variants

STAGES = ("pairs", "sft", "rm", "rl", "eval")
REPORT = "report"
PUSH = "push"
EXPERIMENT = "experiment"  # what `running` holds while a sweep runs its runs' stages as child processes
TEMPERATURE = "temperature"
BEST_OF_N = "best_of_n"
VALIDATE = "validate"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    epilog = ("config keys, set in the YAML file or as key=value after the flags (defaults shown; the YAML file "
              "overrides them):\n" + keys_help(Config))
    parser = argparse.ArgumentParser(description=__doc__, epilog=epilog,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/tiny.yaml", help="YAML config (default: the offline demo)")
    parser.add_argument("--mode", default="local", choices=("local", "ray"),
                        help="local: one process, one device; ray: the rl stage on Ray actors (cluster: section)")
    parser.add_argument("--stage", default="all",
                        choices=("all",) + STAGES + (REPORT, TEMPERATURE, BEST_OF_N, VALIDATE, PUSH),
                        help="temperature: the SFT policy's held-out answers at each of eval.temperatures (not in "
                             "all; needs the rm stage's reward model); best_of_n: the SFT policy's best of n "
                             "answers by the reward model and by the gold judge, no training (in all for the ifeval "
                             "task, after rm; stages/best_of_n.py); validate: eval on the validation pools "
                             "(validation.json; not in all): what a choice between trained policies reads; push: "
                             "only the upload of --push-to-hub")
    parser.add_argument("--seeds", help="sweep: comma-separated training seeds, e.g. 0,1,2 (tune and confirm have "
                                        "their own defaults)")
    parser.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                        help="sweep: values of one config key (repeatable; the grid is the product)")
    parser.add_argument("--plan", choices=PLANS, help="experiment: a named plan of variants (results: the demo "
                        "over seeds; tune: the sweep behind the demo's settings, on the validation pools of the tuning "
                        "seeds; confirm: the shipped settings on fresh seeds, each with its own SFT policy and reward "
                        "model, on the test pools; level2: scalar vs distributional "
                        "reward model, each reduction; level2_kl: the same, compared at matched KL along the runs; "
                        "baselines: rl.baseline moving_average, none, batch_mean, rloo k=2, 4, the same; real: the "
                        "real-model experiment of configs/smollm2_ifeval.yaml, experiments/real_model.py)")
    parser.add_argument("--jobs", type=int, default=1, help="experiment: runs executed at the same time")
    parser.add_argument("--runs", nargs="+", help="report: run or sweep directories (default: run_dir)")
    parser.add_argument("--report-dir", help="report: output directory (default: <first run dir>/report)")
    parser.add_argument("--no-report", action="store_true", help="all: do not end with the report")
    parser.add_argument("--resume", action="store_true",
                        help="with --stage rl: continue from the latest checkpoint (the only stage that keeps "
                             "checkpoints; sft and rm start over when rerun)")
    parser.add_argument("--overwrite", action="store_true",
                        help="a fresh run replaces the files an earlier run of its stages left in run_dir (metrics, "
                             "results, rl checkpoints), which it otherwise refuses to overwrite unless they were "
                             "written with the same config; one line names what was removed")
    parser.add_argument("--allow-config-change", action="store_true",
                        help="with --resume: continue although settings that change the algorithm (rl.lr, seed, "
                             "rl.kl_coef, rl.batch_size, the baseline, model and reward paths, ...; "
                             "docs/troubleshooting.md) differ from the checkpoint's; the new values apply from the "
                             "checkpoint's step on and are recorded in resume_changes.jsonl")
    parser.add_argument("--push-to-hub", metavar="REPO",
                        help="after the stages (or alone: --stage push), upload policy/ to the hub repository REPO "
                             "(USER/NAME, or NAME under your account) and the run's reward_model/ to "
                             "REPO-reward-model; needs a write token (hf auth login or HF_TOKEN), checked first")
    parser.add_argument("--hub-public", action="store_true",
                        help="--push-to-hub: create the repositories public (default: private; an existing "
                             "repository keeps its visibility)")
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of expected errors too (or set REINFORCE_DEBUG=1)")
    parser.add_argument("overrides", nargs="*",
                        help="key=value config overrides, e.g. rl.kl_coef=0.1 (every key: below)")
    return parser.parse_args(argv)


def stages_for(stage: str, cfg) -> list[str]:
    """`--stage`'s stages: one, or for `all` the ones the task needs (tasks/: pairs for the ifeval task, sft for
    the sandbox's tiny policy, then rm (not with reward.model_weight=0), best_of_n for the ifeval task, rl, eval)."""
    if stage != "all":
        return [stage]
    from tasks.registry import load_task
    return list(load_task(cfg).planned_stages())


def run_stage(name: str, cfg, resume: bool, mode: str = "local", overwrite: bool = False,
              allow_config_change: bool = False) -> dict:
    if name == "pairs":
        from stages.pairs import run_pairs
        return run_pairs(cfg)
    if name == "sft":
        from stages.sft import run_sft
        return run_sft(cfg, overwrite=overwrite)
    if name == "rm":
        from stages.rm import run_rm
        return run_rm(cfg, overwrite=overwrite)
    if name == "rl":
        from stages.rl import run_rl
        return run_rl(cfg, resume=resume, mode=mode, overwrite=overwrite, allow_config_change=allow_config_change)
    if name == TEMPERATURE:
        from stages.temperature import run_temperature
        return run_temperature(cfg)
    if name == BEST_OF_N:
        from stages.best_of_n import run_best_of_n
        return run_best_of_n(cfg)
    from stages.eval import run_eval
    return run_eval(cfg, validation=name == VALIDATE)


def write_report(runs: list[str], report_dir: str | None) -> None:
    from stages.report import write_report as write
    path = write(runs, report_dir)
    print(f"[report] written to {path}", flush=True)


def main(argv: list[str] | None = None) -> int:
    """The error boundary: expected failures end here as one line and an exit code."""
    args = parse_args(argv)
    debug = args.debug or os.environ.get("REINFORCE_DEBUG", "") not in ("", "0")
    previous = signal.getsignal(signal.SIGTERM)
    try:
        raise_on_sigterm()
        return run(args)
    except UserError as e:
        return fail(one_line(str(e)), e.exit_code, debug)
    except OSError as e:
        if e.errno not in ENVIRONMENT_ERRNOS:
            raise
        return fail(disk_error(e, e.filename or f"under {getattr(args, 'run_dir', 'the run directory')}"), 1, debug)
    except KeyboardInterrupt:
        return fail(interrupted_text(signal.SIGINT, *running(args)), 128 + signal.SIGINT, debug)
    except Interrupted as e:
        return fail(interrupted_text(e.signum, *running(args)), 128 + e.signum, debug)
    finally:
        runlock.release_all()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def fail(message: str, code: int, debug: bool) -> int:
    if debug:
        traceback.print_exc()
    print(f"error: {message}", file=sys.stderr, flush=True)
    return code


def running(args: argparse.Namespace) -> tuple[str | None, str | None]:
    """(the stage that was running, the run directory) when the run stopped; None before any stage started."""
    return getattr(args, "running", None), getattr(args, "run_dir", None)


def interrupted_text(signum: int, stage: str | None = None, run_dir: str | None = None) -> str:
    """What an interruption left behind and what rerunning does for the stage it stopped: only the rl stage keeps
    checkpoints to continue from; the others start over when rerun."""
    head = f"interrupted by {signal.Signals(signum).name}"
    if stage is None:
        return f"{head}; the files already written are intact"
    if stage == EXPERIMENT:
        return (f"{head}; rerunning the same command skips the stages each run has finished and starts the "
                f"interrupted ones over")
    if stage == "rl":
        latest = checkpoint.latest(Path(run_dir) / "checkpoints") if run_dir else None
        if latest is None:
            return (f"{head} in the rl stage before its first checkpoint (rl.save_every): rerunning it (--stage rl) "
                    f"starts it over")
        return (f"{head} in the rl stage; its checkpoints are intact: --stage rl --resume continues from the latest, "
                f"{latest}")
    return (f"{head} in the {stage} stage, which keeps no checkpoints: rerunning it (--stage {stage}) starts it "
            f"over; what the stages before it wrote is intact")


def check_resume(args: argparse.Namespace, experiment: bool) -> None:
    """--resume continues the rl stage from its latest checkpoint; no other stage keeps checkpoints, so asking
    another one to resume is refused before anything runs instead of silently starting it over. --overwrite (a fresh
    run) and --allow-config-change (a resume) each belong to one of the two."""
    if args.overwrite and (args.resume or experiment):
        raise ConfigError("--overwrite starts fresh runs in one run_dir: it does not combine with --resume (which "
                          "continues the run there) or with --seeds/--grid/--plan (rerunning an experiment skips the "
                          "stages each run has finished); leave it out, or choose another run_dir")
    if args.allow_config_change and not args.resume:
        raise ConfigError("--allow-config-change applies to --resume (--stage rl --resume --allow-config-change); a "
                          "fresh run takes its config as given: leave it out")
    if not args.resume:
        return
    if experiment:
        raise ConfigError("--resume does not apply to --seeds/--grid/--plan: rerunning the experiment's command "
                          "skips the stages each run has finished; leave out --resume")
    if args.stage != "rl":
        raise ConfigError(f"--resume continues the rl stage only (--stage rl --resume); --stage {args.stage} would "
                          f"run stages that keep no checkpoints and start over: leave out --resume, or use "
                          f"--stage rl --resume")


def command_of(args: argparse.Namespace) -> list[str]:
    """The arguments that reproduce this invocation (what the report prints beside its figures)."""
    out = ["--config", args.config, "--mode", args.mode, "--stage", args.stage]
    out += [x for flag, value in (("--seeds", args.seeds), ("--plan", args.plan)) if value for x in (flag, value)]
    out += [x for g in args.grid for x in ("--grid", g)] + (["--jobs", str(args.jobs)] if args.jobs > 1 else [])
    return out + list(args.overrides)


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    args.run_dir = cfg.run_dir  # named by the boundary when a write fails without a file name (a full disk)
    if args.stage != REPORT:  # what is missing stops the run now, before anything is written (a report reads runs)
        from actors.reward_functions import check
        check(cfg)  # reward.functions resolve
        for tracker in cfg.tracking.report_to:  # a tracker asked for is installed
            require_tracker(tracker)
    experiment = bool(args.seeds or args.grid or args.plan)
    check_resume(args, experiment)
    repo_id = hub_target(args, experiment)  # token, network and namespace checked before any stage runs
    if experiment:
        from experiments.runner import parse_grid, parse_seeds, plan
        if args.plan and args.grid:
            raise ConfigError("--plan and --grid do not combine: a plan names its own variants")
        if args.jobs < 1:
            raise ConfigError(f"--jobs {args.jobs}: expected a positive integer")
        seeds = plan_seeds(args.plan, parse_seeds(args.seeds) if args.seeds else None, args.overrides) \
            or parse_seeds(str(cfg.seed))
        variants, reference = plan_variants(args.plan) if args.plan else (parse_grid(args.grid), None)
        root, planned = plan(args.config, args.overrides, seeds, variants, args.stage)  # every run's config checked
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.stage == PUSH:
        return push(args, cfg, repo_id)
    if args.stage == REPORT:
        args.running = REPORT
        write_report(args.runs or [cfg.run_dir], args.report_dir)
        return push(args, cfg, repo_id)
    if experiment:  # the root's lock, and the runs already there checked, before invocation.json is written
        from experiments.runner import claim
        claim(root, planned)
    else:
        lock_run_dir(cfg.run_dir)  # before anything is written: a second writer changes nothing
        if not args.resume:  # every stage that would overwrite another run's files refuses now
            for name in stages_for(args.stage, cfg):
                ownership.check_fresh(cfg, name, args.overwrite)
    if args.stage == "all":  # the report quotes the command and the machine beside the figures
        record_invocation(cfg.run_dir, command_of(args))
    if experiment:
        args.running = EXPERIMENT
        from experiments.runner import run_sweep
        root, runs = run_sweep(args.config, args.overrides, seeds, variants, args.stage, args.mode, args.jobs,
                               reference)
        finish = plan_finish(args.plan) if args.stage == "all" else None
        if finish is not None and not any(r.status == "failed" for r in runs):
            runs += finish(args.config, args.overrides, seeds, args.mode, args.jobs, root)
        if args.stage == "all" and any(r.status in ("done", "skipped") for r in runs):
            write_report([str(root)], args.report_dir)
        return 1 if any(r.status == "failed" for r in runs) else 0
    t_start = time.perf_counter()
    for name in stages_for(args.stage, cfg):
        args.running = name
        t0 = time.perf_counter()
        result = run_stage(name, cfg, args.resume, args.mode, args.overwrite, args.allow_config_change)
        record_stage_time(cfg.run_dir, name, time.perf_counter() - t0)
        summary = {"rm": lambda r: f"val accuracy {r['val']['accuracy']:.3f}, val loss {r['val']['loss']:.4f}",
                   "sft": lambda r: f"final loss {r['final_loss']:.4f}",
                   "pairs": lambda r: f"{r['pairs']} pairs, {r['ties']} ties",
                   "rl": lambda r: f"{r['steps']} steps"}.get(name, lambda r: "")(result)
        print(f"[{name}] done in {time.perf_counter() - t0:.1f}s {summary}", flush=True)
    print(f"all stages done in {time.perf_counter() - t_start:.1f}s; run directory: {cfg.run_dir}")
    if args.stage == "all" and not args.no_report:
        args.running = REPORT
        write_report([cfg.run_dir], args.report_dir)
    return push(args, cfg, repo_id)


def hub_target(args: argparse.Namespace, experiment: bool) -> str | None:
    """The repository --push-to-hub names, as USER/NAME, once the hub accepts the token for it (stages/push.py);
    None without the flag."""
    if args.stage == PUSH and not args.push_to_hub:
        raise ConfigError("--stage push uploads a finished run: name the repository with --push-to-hub REPO")
    if not args.push_to_hub:
        return None
    if experiment:
        raise ConfigError("--push-to-hub pushes one run, not an experiment: push the run you want with --stage push "
                          "--push-to-hub REPO run_dir=DIR (DIR: one <variant>/seed_<s> of the experiment)")
    from stages.push import check_access
    return check_access(args.push_to_hub)


def push(args: argparse.Namespace, cfg, repo_id: str | None) -> int:
    """--push-to-hub's upload of the run's policy and reward model, when the flag is given."""
    if repo_id is not None:
        args.running = PUSH
        from stages.push import push_run
        push_run(cfg, repo_id, private=not args.hub_public)
    return 0


if __name__ == "__main__":
    sys.exit(main())
