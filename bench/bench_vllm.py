"""Generator backends hf vs vllm: generation tokens/s and RL-loop samples/s, with the weight-sync times.

For each model (the tiny Llama, and a randomly initialised model of SmolLM2-135M's shape from
common/assets/smollm2-135m-config.json), in one process, on one device, fp32 on CPU:
- generation: `--batch` prompts x exactly `--new-tokens` sampled tokens (EOS suppressed in both backends, so both
  produce the same number of tokens), timed over `--steps` calls after one warm-up call;
- RL loop: stages/rl.py's rl_step (sync -> generate -> score -> learner step) with the backend's generator; hf
  shares the learner's module (no sync), vllm receives the learner's full weights before every step.
Random weights make the text meaningless but not the cost: the work per token is the model's.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from actors.scorer import Scorer
from bench.shared import (
    FixedLengthHF,
    FixedLengthVLLM,
    bench_learner,
    bench_prompts,
    print_table,
    timed_rl_steps,
    write_json,
)
from common.config import load_config
from common.models import ASSETS, frozen_copy, load_reward_model, load_tokenizer, tiny_llama_config


def model_config(name: str, cfg, tokenizer) -> LlamaConfig:
    if name == "tiny":  # configs/tiny.yaml's shape (head size 32, one vLLM's CPU attention accepts)
        return tiny_llama_config(cfg.model.tiny, tokenizer)
    config = LlamaConfig.from_pretrained(ASSETS / "smollm2-135m-config.json")
    config.eos_token_id, config.pad_token_id = tokenizer.eos_token_id, tokenizer.pad_token_id
    return config


def setup(args, name: str, workdir: Path) -> dict:
    cfg = load_config(ROOT / "configs" / "tiny.yaml", [
        f"seed={args.seed}", "device=cpu", f"run_dir={workdir / 'run'}", "model.dtype=float32",
        f"rl.batch_size={args.batch}", f"generator.max_new_tokens={args.new_tokens}",
        *(["generator.enforce_eager=false"] if args.compile else []), f"generator.kv_cache_gb={args.kv_cache_gb}"])
    tokenizer = load_tokenizer(cfg.model.policy, cfg.model.tokenizer)
    prompts, prompt_tokens = bench_prompts(cfg, tokenizer)
    torch.manual_seed(args.seed)
    policy = LlamaForCausalLM(model_config(name, cfg, tokenizer)).float().eval()
    path = workdir / name
    policy.save_pretrained(path)
    tokenizer.save_pretrained(path)
    rm_path = workdir / "rm"
    LlamaForCausalLM(tiny_llama_config(cfg.model.tiny, tokenizer)).save_pretrained(rm_path)  # scoring stays tiny
    rm = load_reward_model(str(rm_path), 1, tokenizer, torch.device("cpu"))
    scorer = Scorer(rm, tokenizer, prompts, cfg.data, torch.device("cpu"), 64)
    return {"cfg": cfg, "tokenizer": tokenizer, "prompt_tokens": prompt_tokens, "policy": policy, "path": str(path),
            "scorer": scorer, "params_m": sum(p.numel() for p in policy.parameters()) / 1e6}


def time_generation(gen, args) -> float:
    gen.generate(list(range(args.batch)), seed=0)  # warm-up (vLLM's first call pays one-off costs)
    start = time.perf_counter()
    tokens = 0
    for k in range(args.steps):
        batch = gen.generate(list(range(k * args.batch, (k + 1) * args.batch)), seed=k + 1)
        tokens += int(batch.response_mask.sum())
    return tokens / (time.perf_counter() - start)


def time_rl(gen, s: dict, args) -> tuple[float, list[float]]:
    """RL-loop samples/s over `--steps` local steps after one warm-up step, and the weight-sync seconds."""
    policy = s["policy"]
    learner = bench_learner(s["cfg"], policy, frozen_copy(policy), torch.device("cpu"))
    t = timed_rl_steps(s["cfg"], gen, s["scorer"], learner, s["tokenizer"], len(s["prompt_tokens"]), 1, args.steps)
    return t["samples"] / t["wall_s"], t["sync_s"]


def bench_model(args, name: str, workdir: Path) -> list[dict]:
    s = setup(args, name, workdir)
    cpu = torch.device("cpu")
    rows = []
    for backend in args.backends.split(","):
        t0 = time.perf_counter()
        if backend == "hf":
            gen = FixedLengthHF(s["policy"], s["tokenizer"], s["cfg"].generator, s["prompt_tokens"], cpu)
        else:
            gen = FixedLengthVLLM(s["cfg"], s["path"], s["tokenizer"], s["prompt_tokens"], cpu)
        init_s = time.perf_counter() - t0
        tok_s = time_generation(gen, args)
        samples_s, syncs = time_rl(gen, s, args)
        rows.append({"model": name, "params_m": s["params_m"], "backend": backend, "init_s": init_s,
                     "gen_tokens_per_s": tok_s, "rl_samples_per_s": samples_s,
                     "sync_s_mean": sum(syncs) / len(syncs) if syncs else 0.0, "sync_s_max": max(syncs, default=0.0)})
        print(json.dumps(rows[-1]), flush=True)
        del gen
    return rows


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="tiny,smollm2-135m-shape")
    p.add_argument("--backends", default="hf,vllm")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--steps", type=int, default=3, help="timed calls / RL steps, after one warm-up")
    p.add_argument("--threads", type=int, default=0, help="torch threads for hf; 0 = all cores")
    p.add_argument("--compile", action="store_true", help="vllm with torch.compile (default: eager on CPU, as "
                                                          "generator.enforce_eager's auto)")
    p.add_argument("--kv-cache-gb", type=float, default=0.5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default="")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads or len(os.sched_getaffinity(0)))
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, load {os.getloadavg()[0]:.1f}, "
          f"batch {args.batch} x {args.new_tokens} tokens, {args.steps} timed steps", flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_vllm_") as tmp:
        for name in args.models.split(","):
            rows += bench_model(args, name, Path(tmp))
    print_table(rows, [("model", "model", "<22"), ("backend", "backend", "<8"), ("init s", "init_s", ">8.1f"),
                       ("gen tok/s", "gen_tokens_per_s", ">11.1f"), ("RL samples/s", "rl_samples_per_s", ">14.2f"),
                       ("sync s", "sync_s_mean", ">9.3f")])
    write_json(args.json, vars(args), rows)
    return rows


if __name__ == "__main__":
    main()
