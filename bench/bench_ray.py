"""Throughput of the RL stage: local mode vs Ray mode (1 and 2 generators, max_staleness 0 and 1), and the learner on
1 against 2 ranks (cluster.learner_ranks, FSDP2 over gloo on CPU): the same update, memory per rank, sync seconds.

Every variant runs the one RL loop (`stages/rl.py run_rl`, local or Ray mode) on the same random tiny Llama
(configs/tiny.yaml `model.tiny`, bundled SmolLM2 tokenizer) and tiny reward model, the same sandbox prompts, batch
and length. samples/s = batch x timed steps / their wall time, read from the run's per-step `perf/step_s` after
`--warmup` steps (the step's wall time: getting the batch, which in Ray mode is waiting on the queue, the learner
and the weight sync; logging and checkpoints are not in it). Actor start-up is not timed.

Torch threads (2 cores): local mode uses all cores in each phase. Ray with max_staleness 0 runs generate ->
score -> learn one after another, so each role gets all cores too; with max_staleness 1 generation overlaps
learning, so the generators and the learner share the cores (1 thread each with 1 generator).

Learner ranks (`ray:<generators>:<staleness>:<ranks>`, e.g. ray:1:0:2): the ranks run side by side, so each gets
cores // ranks threads; no speed-up is expected on 2 cores (the same work is split and the ranks add collectives).
For each such variant the table adds: the largest relative difference of its per-step loss, KL and gradient norm
from the 1-rank variant with the same generators and staleness (the same batches at staleness 0); its state per
rank (policy, reference, gradient and AdamW shards: `perf/learner_shard_mib`) against the 1-rank learner's whole
state (20 bytes per parameter); rank 0's peak resident memory; and the mean weight sync (`perf/sync_s`: the 1-rank
learner puts its state dict in the object store from the driver; a group's rank 0 gathers it tensor by tensor and
puts it, and the driver passes the ObjectRef on).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import ray
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from bench.shared import print_table, write_json
from common.config import load_config
from common.models import load_tokenizer, save_untrained_stand_ins
from stages.rl import run_rl


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default=str(ROOT / "configs" / "tiny.yaml"))
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--new-tokens", type=int, default=24)
    p.add_argument("--steps", type=int, default=8, help="timed steps")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--cores", type=int, default=len(os.sched_getaffinity(0)), help="cores to plan threads for")
    p.add_argument("--threads", type=int, default=0, help="torch threads for every role (overrides the plan; "
                                                             "use 1 when other jobs hold the cores)")
    p.add_argument("--variants", default="local,ray:1:0,ray:1:1,ray:2:0,ray:2:1,ray:1:0:2",
                   help="local and ray:<generators>:<max_staleness>[:<learner ranks>]")
    p.add_argument("--json", default="")
    return p.parse_args(argv)


def threads(cores: int, generators: int, staleness: int) -> dict[str, int]:
    """Torch threads per role so that what runs at the same time does not oversubscribe `cores`."""
    if staleness == 0:  # phases in sequence; the generators of one step run side by side
        return {"learner": cores, "generator": max(1, cores // generators), "scorer": cores}
    share = max(1, cores // (generators + 1))  # generators overlap the learner
    return {"learner": share, "generator": share, "scorer": share}


def overrides(args, run_dir: Path, variant: str) -> list[str]:
    base = [f"run_dir={run_dir}", "model.dtype=float32", f"rl.batch_size={args.batch}", "rl.save_every=0",
            f"rl.steps={args.warmup + args.steps}", f"generator.max_new_tokens={args.new_tokens}",
            "sandbox.num_pairs=400", "rl.eval_every=0"]
    if variant == "local":
        return base + [f"torch_threads={args.threads or args.cores}"]
    _, gens, stale, ranks = (variant + ":1").split(":")[:4]
    t = threads(args.cores, int(gens), int(stale))
    if args.threads:
        t = dict.fromkeys(t, args.threads)
    group = [f"cluster.learner_ranks={ranks}", "cluster.learner_cpus=0.5",
             f"cluster.learner_threads={args.threads or max(1, t['learner'] // int(ranks))}"] if ranks != "1" else []
    return base + [f"torch_threads={t['learner']}", f"cluster.num_generators={gens}",
                   f"cluster.max_staleness={stale}", f"cluster.generator_threads={t['generator']}",
                   f"cluster.scorer_threads={t['scorer']}", "cluster.generator_cpus=0.5", "cluster.scorer_cpus=0.5",
                   *group]


def run_variant(args, workdir: Path, variant: str) -> dict:
    run_dir = workdir / variant.replace(":", "_")
    cfg = load_config(args.config, overrides(args, run_dir, variant))
    save_untrained_stand_ins(run_dir, cfg.model.tiny, load_tokenizer(cfg.model.policy, cfg.model.tokenizer), seed=0)
    run_rl(cfg, mode="local" if variant == "local" else "ray")
    rows = [json.loads(x) for x in (run_dir / "metrics_rl.jsonl").read_text().splitlines()][args.warmup:]
    wall = sum(r["perf/step_s"] for r in rows)
    phases = {k: sum(r[f"perf/{k}"] for r in rows) / len(rows) for k in ("generate_s", "score_s", "learner_s")}
    syncs = [r["perf/sync_s"] for r in rows if r.get("perf/sync_bytes")]
    with torch.device("meta"):  # the policy's parameter count: shapes only
        params = sum(p.numel() for p in AutoModelForCausalLM.from_config(
            AutoConfig.from_pretrained(run_dir / "sft_model")).parameters())
    return {"variant": variant, "samples_per_s": args.batch * len(rows) / wall, "s_per_step": wall / len(rows),
            "staleness": max(r["sync/staleness"] for r in rows), "dropped": rows[-1].get("sync/dropped", 0.0),
            "sync_s": sum(syncs) / len(syncs) if syncs else float("nan"),
            "state_mib": rows[-1].get("perf/learner_shard_mib", 20 * params / 2 ** 20),
            "peak_mib": rows[-1].get("perf/learner_peak_mib", float("nan")),
            "overrides": overrides(args, run_dir, variant), "steps": rows, **phases}


def rank_differences(rows: list[dict]) -> None:
    """For each multi-rank variant: the largest relative difference of its per-step figures from the 1-rank one."""
    by_name = {r["variant"]: r for r in rows}
    for r in rows:
        parts = r["variant"].split(":")
        one = by_name.get(":".join(parts[:3])) if len(parts) == 4 else None
        if one is None:
            r["vs_1_rank"] = "-"
            continue
        # each figure's largest difference over the steps, relative to its largest size over the steps (a loss near
        # 0 on one step would make a per-step ratio meaningless)
        rel = {k: max(abs(a[k] - b[k]) for a, b in zip(one["steps"], r["steps"]))
               / max(max(abs(a[k]) for a in one["steps"]), 1e-12)
               for k in ("losses/policy", "rollout/kl", "losses/grad_norm", "rollout/logprob", "baseline/value")}
        print(f"{r['variant']} against {one['variant']}, largest difference / largest size over the steps: "
              + ", ".join(f"{k} {v:.1e}" for k, v in rel.items()))
        r["vs_1_rank"] = f"{max(rel.values()):.1e}"


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    os.environ.setdefault("TQDM_DISABLE", "1")
    print(f"torch {torch.__version__}, ray {ray.__version__}, {args.cores} cores, batch {args.batch}, "
          f"{args.new_tokens} new tokens, {args.warmup} warm-up + {args.steps} timed steps", flush=True)
    env = {"PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false", "TQDM_DISABLE": "1"}
    ray.init(num_cpus=4, include_dashboard=False, runtime_env={"env_vars": env}, log_to_driver=False)
    rows = []
    try:
        with tempfile.TemporaryDirectory(prefix="bench_ray_") as tmp:
            for variant in args.variants.split(","):
                rows.append(run_variant(args, Path(tmp), variant))
                print(f"{variant}: {rows[-1]['samples_per_s']:.2f} samples/s", flush=True)
    finally:
        ray.shutdown()
    rank_differences(rows)
    local = next((r for r in rows if r["variant"] == "local"), None)
    for r in rows:
        r["vs_local"] = f"{r['samples_per_s'] / local['samples_per_s']:.2f}x" if local else "-"
    print_table(rows, [("variant", "variant", "<12"), ("samples/s", "samples_per_s", ">10.2f"),
                       ("vs local", "vs_local", ">10"), ("s/step", "s_per_step", ">8.3f"),
                       ("gen s", "generate_s", ">7.3f"), ("score s", "score_s", ">8.3f"),
                       ("learn s", "learner_s", ">8.3f"), ("max stale", "staleness", ">10.0f"),
                       ("sync s", "sync_s", ">7.4f"), ("state MiB/rank", "state_mib", ">15.1f"),
                       ("rank peak MiB", "peak_mib", ">14.0f"), ("vs 1 rank", "vs_1_rank", ">10")])
    write_json(args.json, vars(args), [{k: v for k, v in r.items() if k != "steps"} for r in rows])
    return rows


if __name__ == "__main__":
    main()
