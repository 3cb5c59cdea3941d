"""On one GPU: how close the RL step comes to generation alone, the weight sync's share, and the learner's MFU.

    python bench/gpu_throughput.py [--batch 256] [--new-tokens 256] [--dtype bfloat16] [--model DIR]
    python bench/gpu_throughput.py --cpu-smoke     # the same path on the CPU at toy sizes (a test runs it)

On one batch of `--batch` sandbox prompts (chat template applied) with up to `--new-tokens` new tokens (EOS allowed:
answers stop where the policy stops them), it times
- generation alone: the generator the rl stage would build (vLLM where it is installed, else hf), `generate` on
  the batch after one untimed call;
- the RL step: stages/rl.py's `rl_step` in local mode (sync -> generate -> score -> learner update), `--warmup`
  untimed and `--steps` timed steps, same batch size and generator;
and prints: RL step tokens/s / generation-alone tokens/s (1.0 = the learner, scorer and sync cost nothing), the
sync's share of the step, and the learner's MFU: its FLOPs (bench/floor.py: reference forward + policy forward and
backward, at the batch's mean prompt and response lengths) over its seconds, against the matrix-multiply rate
measured on this GPU at the model's shapes and, for the GPUs in PEAK_TFLOPS, against the datasheet's dense peak.

The policy is `--model` (a local directory) or SmolLM2-135M's shape with random weights (bench/random_model.py;
no hub needed); the reward model is that backbone with a fresh scalar head (the cost is the point, not the reward).
Never a test dependency: tests/test_gpu_check.py runs `--cpu-smoke` only.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch
from transformers import AutoConfig

from actors.scorer import Scorer
from bench import floor
from bench.random_model import write_model
from bench.shared import bench_generator, bench_learner, bench_prompts, timed_rl_steps
from common.config import load_config
from common.models import load_reward_model, load_tokenizer
from common.runtime import prepare
from learner.compile import compile_bucket
from learner.precision import resolve_dtype
from stages.rl import build_policy

# dense bf16/fp16 tensor-core peaks from NVIDIA's datasheets (SXM parts), TFLOP/s
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0, "A10": 125.0, "T4": 65.0}
SMOKE = ["model.dtype=float32", "reward.precision=float32"]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=256, help="prompts per step (one answer each)")
    p.add_argument("--new-tokens", type=int, default=256)
    p.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16"))
    p.add_argument("--micro-batch", type=int, default=32, help="rl.micro_batch_size")
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--model", default="", help="a local policy directory; '' = SmolLM2-135M's shape, random weights")
    p.add_argument("--cpu-smoke", action="store_true", help="2 layers, 4 x 8 tokens on the CPU: checks the path only")
    p.add_argument("--json", default="", help="also write the result here")
    p.add_argument("overrides", nargs="*", help="more key=value config overrides (e.g. generator.backend=hf)")
    args = p.parse_args(argv)
    if args.cpu_smoke:
        args.batch, args.new_tokens, args.micro_batch, args.steps, args.warmup = 4, 8, 2, 1, 1
    return args


def setup(args, work: Path):
    device = torch.device("cpu" if args.cpu_smoke else "cuda")
    if not args.cpu_smoke and not torch.cuda.is_available():
        raise SystemExit(f"gpu_throughput: torch {torch.__version__} sees no GPU (use --cpu-smoke on a CPU machine)")
    model = args.model
    if not model:
        model = str(work / "policy")
        write_model(Path(model), layers=2 if args.cpu_smoke else None)
    dtype = SMOKE if args.cpu_smoke else [f"model.dtype={args.dtype}", f"reward.precision={args.dtype}"]
    cfg = load_config(ROOT / "configs" / "tiny.yaml", [
        f"device={device.type}", *dtype, f"model.policy={model}", f"run_dir={work / 'run'}", "seed=0",
        f"rl.batch_size={args.batch}", f"rl.micro_batch_size={args.micro_batch}", "rl.lr=1e-6",
        f"generator.max_new_tokens={args.new_tokens}",
        f"sandbox.num_pairs={64 if args.cpu_smoke else max(400, 2 * args.batch)}",
        "generator.vllm_sleep=false", *args.overrides])
    prepare(cfg)
    tokenizer = load_tokenizer(model)
    prompts, prompt_tokens = bench_prompts(cfg, tokenizer)
    rm = load_reward_model(model, 1, tokenizer, device)  # the backbone with a fresh scalar head
    scorer = Scorer(rm, tokenizer, prompts, cfg.data, device, args.micro_batch,
                    dtype=resolve_dtype(cfg.model.dtype, device), compile_bucket=compile_bucket(cfg.model))
    return cfg, device, model, tokenizer, prompts, prompt_tokens, scorer


def generation_alone(generator, indices: list[int], device) -> tuple[float, float]:
    """(tokens/s, mean response length) of one `generate` on the batch after an untimed one."""
    generator.generate(indices, seed=1)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    batch = generator.generate(indices, seed=2)
    seconds = time.perf_counter() - start
    tokens = float(batch.response_mask.sum())
    return tokens / seconds, tokens / len(indices)


def main(argv=None) -> dict:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="gpu_throughput_") as tmp:
        cfg, device, model, tokenizer, prompts, prompt_tokens, scorer = setup(args, Path(tmp))
        policy, reference = build_policy(model, cfg.model.lora, device)
        generator = bench_generator(cfg, model, tokenizer, prompt_tokens, device, policy, force_length=False)
        learner = bench_learner(cfg, policy, reference, device)
        alone_tps, alone_len = generation_alone(generator, list(range(args.batch)), device)
        t = timed_rl_steps(cfg, generator, scorer, learner, tokenizer, len(prompts), args.warmup, args.steps)
        backend = type(generator).__name__
        config = AutoConfig.from_pretrained(model)
        prompt_len = sum(map(len, prompt_tokens)) / len(prompt_tokens)
        response_len = t["tokens"] / t["samples"]
        phases = floor.step_flops(config, args.batch, prompt_len, round(response_len))
        learner_flops = sum(phases["reference"]) + sum(phases["policy"])
        learner_s = t["learner_s"] / args.steps
        compute = resolve_dtype(cfg.model.dtype, device)
        rates = floor.matmul_rates(config.hidden_size, config.intermediate_size, config.vocab_size,
                                   int(args.micro_batch * (prompt_len + response_len)), compute, device)
    name = torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu"
    peak = next((v * 1e12 for k, v in PEAK_TFLOPS.items() if k in name), None)
    result = {
        "device": name, "generator": backend, "dtype": str(compute).removeprefix("torch."), "batch": args.batch,
        "new_tokens": args.new_tokens, "mean_response_len": response_len, "alone_mean_len": alone_len,
        "generate_alone_tokens_per_s": alone_tps, "rl_tokens_per_s": t["tokens"] / t["wall_s"],
        "rl_over_generation": t["tokens"] / t["wall_s"] / alone_tps, "s_per_step": t["wall_s"] / args.steps,
        "sync_share": sum(t["sync_s"]) / t["wall_s"], "learner_s": learner_s,
        "learner_tflops_per_s": learner_flops / learner_s / 1e12,
        "mfu_vs_measured_matmul": learner_flops / learner_s / rates["body"],
        "mfu_vs_datasheet": None if peak is None else learner_flops / learner_s / peak}
    print(f"gpu_throughput: {name}, {backend}, {result['dtype']}, {args.batch} prompts x up to {args.new_tokens} "
          f"tokens (mean {response_len:.0f})\n"
          f"  RL step {result['rl_tokens_per_s']:.0f} tokens/s / generation alone "
          f"{alone_tps:.0f} tokens/s = {result['rl_over_generation']:.2f}\n"
          f"  sync share of the step {100 * result['sync_share']:.1f}%\n"
          f"  learner {result['learner_tflops_per_s']:.1f} TFLOP/s: MFU {100 * result['mfu_vs_measured_matmul']:.0f}% "
          f"of the measured matmul rate ({rates['body'] / 1e12:.0f} TFLOP/s)"
          + ("" if peak is None else f", {100 * result['mfu_vs_datasheet']:.0f}% of the datasheet's "
                                     f"{peak / 1e12:.0f} TFLOP/s"))
    print("gpu_throughput: " + json.dumps(result), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
