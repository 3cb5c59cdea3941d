"""Throughput of the project's local RL loop vs TRL's RLOOTrainer on the same tiny model, batch and length.

What is compared (one process, one device, fp32, torch threads = all cores unless --threads):
- ours: stages/rl.py's `rl_step`, the step training runs: generate -> Scorer.score -> Learner.step (REINFORCE,
  moving-average baseline, frozen reference, AdamW, grad clipping), `--batch` prompts x 1 response per step, with
  the generator training builds: `generator.backend` (`auto` = vLLM where it runs, so vLLM here; `--backend hf`
  for transformers `generate`). vLLM receives the learner's weights before every step (timed as part of it);
  its engine start-up is reported apart (`startup_s`), as it is paid once per run.
- TRL: `trl.RLOOTrainer` (transformers `generate`: its vLLM modes need a GPU), num_generations=2, num_iterations=1,
  one optimizer step per generation batch; by default 8 prompts x 2 = 16 completions per step (the same samples per
  step as ours) and also 16 prompts x 2 = 32 (`--trl-prompts`).
Both start from the same random tiny Llama (configs/tiny.yaml `model.tiny`, bundled SmolLM2 tokenizer), on the
same chat-templated sandbox prompts, with temperature / top_p from the config, top_k off, beta = rl.kl_coef,
lr = rl.lr, max_grad_norm = rl.max_grad_norm. The reward is the SAME `Scorer` (a tiny random reward model) in
both: TRL gets it as a reward function, so tokenisation and pooling of the reward are identical.
A sample = one (prompt, completion) pair trained on; samples/s = samples / wall time of the timed steps (for
TRL from the end of the last warm-up step to the end of the last timed step, measured by a TrainerCallback).

Fairness caveats:
- Work per step differs by design: TRL runs three policy-sized forwards per batch (old log-probs under no_grad,
  reference, then the training forward) plus an entropy, and a PPO-style ratio/clip (a no-op at
  num_iterations=1); ours runs two (reference, training forward). TRL's fused LM head computes log-probs in
  chunks; ours keeps only the response positions' logits.
- Length: with --force-length (default) both forbid EOS until max_new_tokens (`min_new_tokens`), so every
  completion has exactly --new-tokens tokens; without it both stop at EOS (a random model almost never emits
  it). The measured mean completion lengths are printed for both.
- TRL adds Trainer overhead (dataloader, callbacks, metric gathering); logging, saving and tqdm are off.
- On CPU TRL 1.16 runs its chunked log-prob kernel (Triton on GPU) through a tiled pure-torch fallback,
  forward and backward over the full vocabulary (49k); with this tiny model that kernel dominates TRL's step.
- Ours runs first, then TRL in the same process; other load on the machine skews both (run it idle: with
  all cores busy elsewhere, several torch threads can be 10-20x slower than one; then pass --threads 1).
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

from actors.generator import Generator
from actors.scorer import Scorer
from bench.shared import bench_generator, bench_learner, bench_prompts, load_average, print_table, timed_rl_steps
from common.config import load_config
from common.models import build_tiny_policy, frozen_copy, load_reward_model, load_tokenizer
from common.runtime import prepare
from tasks import sandbox

NUM_GENERATIONS = 2


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default=str(ROOT / "configs" / "tiny.yaml"))
    p.add_argument("--batch", type=int, default=16, help="prompts per step of ours (one response each)")
    p.add_argument("--new-tokens", type=int, default=32, help="max_new_tokens / max_completion_length")
    p.add_argument("--no-force-length", dest="force_length", action="store_false",
                   help="let completions stop at EOS (default: exactly --new-tokens tokens, EOS suppressed)")
    p.add_argument("--steps", type=int, default=8, help="timed steps")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads; 0 = all cores")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--backend", default="", choices=("", "auto", "hf", "vllm"),
                   help="ours' generator.backend; '' = the config's (auto: vLLM where it runs)")
    p.add_argument("--trl-prompts", default="8,16", help="TRL variants: prompts per step (x2 generations); "
                                                         "the first one gives the ratio line; '' = skip TRL")
    p.add_argument("--json", default="", help="write the results to this path")
    return p.parse_args(argv)


def setup(args: argparse.Namespace, workdir: Path) -> dict:
    """Config, tokenizer, prompts, tiny policy (also saved to disk for TRL) and the tiny reward model."""
    overrides = [f"seed={args.seed}", f"device={args.device}", f"run_dir={workdir / 'run'}", "model.dtype=float32",
                 f"rl.batch_size={args.batch}", f"generator.max_new_tokens={args.new_tokens}",
                 *([f"generator.backend={args.backend}"] if args.backend else [])]
    cfg = load_config(args.config, overrides)
    device = prepare(cfg)  # seeds; threads are set by main
    tokenizer = load_tokenizer(cfg.model.policy, cfg.model.tokenizer)
    prompts, prompt_tokens = bench_prompts(cfg, tokenizer)
    policy = build_tiny_policy(cfg.model.tiny, tokenizer, args.seed)
    policy_dir = workdir / "policy"
    policy.save_pretrained(policy_dir)
    tokenizer.save_pretrained(policy_dir)
    rm = load_reward_model(str(policy_dir), 1, tokenizer, device, torch.float32)
    scorer = Scorer(rm, tokenizer, prompts, cfg.data, device, cfg.eval.batch_size, gold_fn=sandbox.gold_score)
    return {"cfg": cfg, "device": device, "tokenizer": tokenizer, "prompts": prompts,
            "prompt_tokens": prompt_tokens, "policy": policy.to(device), "policy_dir": policy_dir, "scorer": scorer}


def run_ours(args: argparse.Namespace, s: dict) -> dict:
    """stages/rl.py's rl_step with local mode's source (the training loop's step, without TensorBoard/checkpoint
    I/O), timed after --warmup steps."""
    cfg, device = s["cfg"], s["device"]
    start = time.perf_counter()
    generator = bench_generator(cfg, str(s["policy_dir"]), s["tokenizer"], s["prompt_tokens"], device, s["policy"],
                                args.force_length)
    startup = time.perf_counter() - start
    learner = bench_learner(cfg, s["policy"], frozen_copy(s["policy"]), device)
    t = timed_rl_steps(cfg, generator, s["scorer"], learner, s["tokenizer"], len(s["prompts"]), args.warmup,
                       args.steps)
    wall = t["wall_s"]
    backend = "hf" if isinstance(generator, Generator) else "vllm"
    del generator  # frees the vLLM engine's KV cache before TRL runs
    return {"system": f"ours REINFORCE {args.batch}x1 {backend}", "samples_per_step": args.batch,
            "samples_per_s": t["samples"] / wall, "tokens_per_s": t["tokens"] / wall, "s_per_step": wall / args.steps,
            "mean_completion_len": t["tokens"] / t["samples"], "wall_s": wall, "threads": torch.get_num_threads(),
            "startup_s": startup, "sync_s": sum(t["sync_s"]) / args.steps, "load": load_average(),
            **{k: t[k] / args.steps for k in ("generate_s", "score_s", "learner_s")}}


def trl_available() -> str | None:
    try:
        import trl
        return trl.__version__
    except ImportError:
        return None


def make_trl_trainer(args: argparse.Namespace, s: dict, n_prompts: int, timer, out_dir: Path):
    """An RLOOTrainer on the same weights, prompts, reward (our Scorer) and sampling settings."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import RLOOConfig, RLOOTrainer

    cfg, scorer = s["cfg"], s["scorer"]

    def scorer_reward(completions, prompt_index, **_):  # TRL reward-function signature
        return scorer.score_texts(list(prompt_index), [c[0]["content"].strip() for c in completions]).tolist()

    ds = Dataset.from_dict({"prompt": [list(m) for m in s["prompts"]],
                            "prompt_index": list(range(len(s["prompts"])))})
    targs = RLOOConfig(
        output_dir=str(out_dir), seed=args.seed, max_steps=args.warmup + args.steps,
        per_device_train_batch_size=n_prompts * NUM_GENERATIONS, gradient_accumulation_steps=1,
        num_generations=NUM_GENERATIONS, num_iterations=1, max_completion_length=args.new_tokens,
        generation_kwargs={"min_new_tokens": args.new_tokens} if args.force_length else None,
        temperature=cfg.generator.temperature, top_p=cfg.generator.top_p, top_k=0, beta=cfg.rl.kl_coef,
        learning_rate=cfg.rl.lr, lr_scheduler_type="constant", warmup_steps=0, weight_decay=cfg.rl.weight_decay,
        max_grad_norm=cfg.rl.max_grad_norm, use_vllm=False, use_cpu=args.device == "cpu",
        bf16=getattr(args, "bf16", False), fp16=False,
        gradient_checkpointing=False, disable_dropout=True, logging_strategy="no", save_strategy="no",
        report_to="none", disable_tqdm=True, dataloader_num_workers=0)
    model = AutoModelForCausalLM.from_pretrained(s["policy_dir"], dtype=torch.float32)  # ref is loaded from here
    trainer = RLOOTrainer(model=model, reward_funcs=scorer_reward, args=targs, train_dataset=ds,
                          processing_class=s["tokenizer"], callbacks=[timer])
    timer.trainer = trainer
    return trainer


def step_timer_class():
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        """Wall-clock times of each optimizer step and the mean completion length TRL logged for it."""

        def __init__(self) -> None:
            self.begin, self.end, self.lengths, self.trainer = [], [], [], None

        def on_step_begin(self, args, state, control, **kwargs):
            self.begin.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kwargs):
            self.end.append(time.perf_counter())
            self.lengths.append(self.trainer._metrics["train"]["completions/mean_length"][-1])

    return StepTimer


def run_trl(args: argparse.Namespace, s: dict, n_prompts: int, workdir: Path) -> dict:
    timer = step_timer_class()()
    trainer = make_trl_trainer(args, s, n_prompts, timer, workdir / f"trl_{n_prompts}")
    trainer.train()
    if len(timer.end) != args.warmup + args.steps:
        raise RuntimeError(f"TRL ran {len(timer.end)} steps, expected {args.warmup + args.steps}")
    t0 = timer.end[args.warmup - 1] if args.warmup else timer.begin[0]
    wall = timer.end[-1] - t0
    per_step = n_prompts * NUM_GENERATIONS
    mean_len = sum(timer.lengths[args.warmup:]) / args.steps
    return {"system": f"TRL RLOO {n_prompts}x{NUM_GENERATIONS}", "samples_per_step": per_step,
            "samples_per_s": per_step * args.steps / wall, "tokens_per_s": per_step * args.steps * mean_len / wall,
            "s_per_step": wall / args.steps, "mean_completion_len": mean_len, "wall_s": wall,
            "threads": torch.get_num_threads(), "load": load_average(),
            "step_body_s": sum(e - b for b, e in list(zip(timer.begin, timer.end))[args.warmup:]) / args.steps}


def print_results(rows: list[dict]) -> None:
    print_table(rows, [("system", "system", "<29"), ("samples/step", "samples_per_step", ">13"),
                       ("samples/s", "samples_per_s", ">11.2f"), ("tokens/s", "tokens_per_s", ">10.1f"),
                       ("s/step", "s_per_step", ">9.3f"), ("mean len", "mean_completion_len", ">10.1f"),
                       ("load", "load", ">7.1f")])
    ours = rows[0]
    print(f"ours phases per step: generate {ours['generate_s']:.3f} s, score {ours['score_s']:.3f} s, "
          f"learner {ours['learner_s']:.3f} s, weight sync {ours['sync_s']:.3f} s; "
          f"generator start-up {ours['startup_s']:.1f} s (once per run, not in s/step)")


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.steps < 1 or args.warmup < 0:
        raise SystemExit("--steps must be >= 1 and --warmup >= 0")
    torch.set_num_threads(args.threads or len(os.sched_getaffinity(0)))
    variants = [int(v) for v in args.trl_prompts.split(",") if v.strip()]
    trl_version = trl_available() if variants else None
    length = (f"exactly {args.new_tokens} new tokens (EOS suppressed via min_new_tokens)" if args.force_length
              else f"at most {args.new_tokens} new tokens (stop at EOS)")
    trl_text = trl_version or ("not installed" if variants else "skipped")
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, device {args.device}, fp32, "
          f"seed {args.seed}, load {load_average():.1f}; TRL {trl_text}")
    print(f"{args.warmup} warm-up + {args.steps} timed steps; {length}; temperature/top_p from {args.config}")
    with tempfile.TemporaryDirectory(prefix="bench_rl_") as tmp:
        workdir = Path(tmp)
        s = setup(args, workdir)
        rows = [run_ours(args, s)]
        print(f"ours done: {rows[0]['samples_per_s']:.2f} samples/s", flush=True)
        if variants and trl_version is None:
            print("TRL is not installed: `pip install trl` (the project's `bench` extra); only ours was timed.")
        elif variants:
            for n_prompts in variants:
                torch.manual_seed(args.seed)
                rows.append(run_trl(args, s, n_prompts, workdir))
                print(f"{rows[-1]['system']} done: {rows[-1]['samples_per_s']:.2f} samples/s", flush=True)
    print_results(rows)
    for i, r in enumerate(rows[1:]):
        ratio = rows[0]["samples_per_s"] / r["samples_per_s"]
        label = "ours/TRL samples/s ratio" if i == 0 else f"  (vs {r['system']})"
        print(f"{label}: {ratio:.2f}x")
    result = {"settings": {**vars(args), "threads": torch.get_num_threads(), "torch": torch.__version__,
                           "trl": trl_version, "length": length}, "results": rows}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
