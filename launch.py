"""Entry point: `python launch.py [--mode local] [--config configs/tiny.yaml] [--stage all] [key=value ...]`.

Stages: sft (offline sandbox only), rm, rl, eval; `all` runs them in order (sft only for model.policy=tiny).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from common.config import ConfigError, load_config

STAGES = ("sft", "rm", "rl", "eval")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/tiny.yaml", help="YAML config (default: the offline demo)")
    parser.add_argument("--mode", default="local", choices=("local", "ray"),
                        help="local: one process, one device; ray: the rl stage on Ray actors (cluster: section)")
    parser.add_argument("--stage", default="all", choices=("all",) + STAGES)
    parser.add_argument("--resume", action="store_true", help="rl: continue from the latest checkpoint")
    parser.add_argument("overrides", nargs="*", help="key=value config overrides, e.g. rl.kl_coef=0.1")
    return parser.parse_args(argv)


def stages_for(stage: str, policy: str) -> list[str]:
    if stage != "all":
        return [stage]
    return list(STAGES) if policy == "tiny" else [s for s in STAGES if s != "sft"]


def run_stage(name: str, cfg, resume: bool, mode: str = "local") -> dict:
    if name == "sft":
        from learner.sft import run_sft
        return run_sft(cfg)
    if name == "rm":
        from learner.reward_training import run_rm
        return run_rm(cfg)
    if name == "rl" and mode == "ray":
        from cluster.ray_runner import run_rl_ray
        return run_rl_ray(cfg, resume=resume)
    if name == "rl":
        from cluster.local import run_rl_local
        return run_rl_local(cfg, resume=resume)
    from cluster.evaluate import run_eval
    return run_eval(cfg)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    t_start = time.perf_counter()
    for name in stages_for(args.stage, cfg.model.policy):
        t0 = time.perf_counter()
        result = run_stage(name, cfg, args.resume, args.mode)
        summary = {"rm": lambda r: f"val accuracy {r['val']['accuracy']:.3f}, val loss {r['val']['loss']:.4f}",
                   "sft": lambda r: f"final loss {r['final_loss']:.4f}",
                   "rl": lambda r: f"{r['steps']} steps"}.get(name, lambda r: "")(result)
        print(f"[{name}] done in {time.perf_counter() - t0:.1f}s {summary}", flush=True)
    print(f"all stages done in {time.perf_counter() - t_start:.1f}s; run directory: {cfg.run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
