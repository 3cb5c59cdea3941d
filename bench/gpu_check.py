"""One GPU check of the real run: reward-model and REINFORCE steps of a real config, memory capped at 16 GiB.

    python bench/gpu_check.py --dtype float16 [--config configs/smollm2_helpsteer2.yaml] [key=value ...]
    python bench/gpu_check.py --cpu-smoke      # the same path on the CPU at toy sizes (a test runs it)

bench/gpu_check.sh runs it for fp16 and bf16 on both real configs. What it runs is `launch.py --stage rm`
then `--stage rl` of the config, unchanged except for what a machine without the hub needs:

- the policy is SmolLM2-135M's shape (common/assets/smollm2-135m-config.json) with random weights, saved with
  the bundled tokenizer; random weights rarely emit EOS, so every response is `max_new_tokens` long (worst case);
- the data is generated in the HelpSteer2_binarized schema with prompts longer than `data.max_prompt_tokens`
  and responses that fill `data.max_length`, so every batch has the config's largest shape;
- `data.max_train_pairs` gives a few reward-model steps and `rl.steps` a few RL steps.

The process may use at most 16 GiB of the GPU (`torch.cuda.set_per_process_memory_fraction`), so a run that
fits here fits a 16 GB T4. ray, vllm, datasets, trl, matplotlib, pandas and pyarrow are made unimportable, as
on a machine with only torch, transformers, peft and tensorboard. Prints one JSON line per stage (peak memory,
median seconds per optimizer step) and exits 0; 3 if a stage ran out of the 16 GiB; anything else is an error.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
# Not installed on the GPU check's machine: an import of one of these fails as it would there.
ABSENT = ("ray", "vllm", "datasets", "trl", "matplotlib", "pandas", "pyarrow")
for _name in ABSENT:
    sys.modules[_name] = None  # `import ray` raises ModuleNotFoundError; importlib.util.find_spec gives None

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

import launch
from bench.random_model import write_model
from common.config import load_config

CAP_GIB = 16.0
OUT_OF_MEMORY = 3
WORDS = ("the river model answer question careful summary explain because water light energy history market "
         "city garden system example result number simple reason people language school music travel").split()
# CPU smoke: the same stages at toy sizes (fp32; the CPU has no fp16 autocast here)
SMOKE = ["device=cpu", "model.dtype=float32", "reward.precision=float32", "data.max_prompt_tokens=48",
         "data.max_length=96", "reward.batch_size=4", "reward.grad_accum=1", "rl.batch_size=4",
         "generator.max_new_tokens=8", "torch_threads=1"]


def write_pairs(path: Path, n: int, prompt_words: int, response_words: int) -> None:
    """Preference pairs in the HelpSteer2_binarized schema, every prompt distinct and longer than the limit."""
    rng = random.Random(0)

    def text(k: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(k))

    with path.open("w") as f:
        for i in range(n):
            prompt = f"Question {i}: {text(prompt_words)}"
            row = {"prompt": prompt, "chosen_rating": 3.0, "rejected_rating": 1.0}
            for side in ("chosen", "rejected"):
                row[side] = [{"role": "user", "content": prompt},
                             {"role": "assistant", "content": text(response_words)}]
            f.write(json.dumps(row) + "\n")


class StepClock:
    """Seconds between optimizer steps (any optimizer in the process), synchronised with the GPU."""

    def __init__(self) -> None:
        self.times: list[float] = []
        register_optimizer_step_post_hook(self._hook)

    def _hook(self, *_) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.times.append(time.perf_counter())

    def seconds_per_step(self, since: int) -> float | None:
        gaps = [b - a for a, b in zip(self.times[since:], self.times[since + 1:])]
        return round(statistics.median(gaps), 3) if gaps else None


def run_stage(stage: str, argv: list[str], run_dir: Path, clock: StepClock, cuda: bool) -> dict:
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    first, t0 = len(clock.times), time.perf_counter()
    try:
        code = launch.main(["--stage", stage, "--no-report", *argv])
    except torch.OutOfMemoryError as e:
        return {"stage": stage, "fits": False, "error": str(e).splitlines()[0]}
    if code != 0:
        raise RuntimeError(f"launch.py --stage {stage} exited with {code}")
    result = {"stage": stage, "fits": True, "steps": len(clock.times) - first,
              "s_per_step": clock.seconds_per_step(first), "stage_s": round(time.perf_counter() - t0, 1)}
    if stage == "rl":  # random weights: every response should be max_new_tokens long (the largest shape)
        steps = [json.loads(line) for line in (run_dir / "metrics_rl.jsonl").read_text().splitlines()]
        result["response_len"] = statistics.mean(s["rollout/response_len"] for s in steps)
    if cuda:
        result |= {"peak_allocated_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
                   "peak_reserved_gib": round(torch.cuda.max_memory_reserved() / 2**30, 2)}
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/smollm2_helpsteer2.yaml")
    parser.add_argument("--dtype", default="float16", choices=("float16", "bfloat16"))
    parser.add_argument("--rm-steps", type=int, default=6, help="reward-model optimizer steps")
    parser.add_argument("--rl-steps", type=int, default=4, help="REINFORCE steps (the first is not timed)")
    parser.add_argument("--cpu-smoke", action="store_true", help="toy sizes on the CPU: checks the path only")
    parser.add_argument("--work-dir", help="model, data and run directory (default: a temporary directory)")
    parser.add_argument("overrides", nargs="*", help="more key=value config overrides")
    args = parser.parse_args(argv)
    cuda = not args.cpu_smoke
    if cuda and not torch.cuda.is_available():
        raise SystemExit(f"gpu_check: torch {torch.__version__} sees no GPU (use --cpu-smoke on a CPU machine)")
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="gpu_check_"))
    work.mkdir(parents=True, exist_ok=True)
    cfg = load_config(ROOT / args.config, args.overrides + (SMOKE if args.cpu_smoke else []))
    pairs_per_step = cfg.reward.batch_size * cfg.reward.grad_accum
    write_model(work / "policy", layers=2 if args.cpu_smoke else None)
    # ~1.3 tokens a word: prompts longer than max_prompt_tokens, responses filling max_length with the prompt
    write_pairs(work / "pairs.jsonl", n=pairs_per_step * args.rm_steps + 64,
                prompt_words=cfg.data.max_prompt_tokens, response_words=int(0.5 * cfg.data.max_length))
    run = ["--config", str(ROOT / args.config), *args.overrides, f"run_dir={work / 'run'}",
           f"model.policy={work / 'policy'}", f"data.source={work / 'pairs.jsonl'}",
           f"data.max_train_pairs={pairs_per_step * args.rm_steps}", f"data.max_val_pairs={pairs_per_step}",
           f"rl.steps={args.rl_steps}", "rl.save_every=0", "generator.backend=hf"]
    run += SMOKE if args.cpu_smoke else [f"model.dtype={args.dtype}", f"reward.precision={args.dtype}"]
    if cuda:
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, CAP_GIB * 2**30 / total))
        print(f"gpu_check: {torch.cuda.get_device_name(0)}, {total / 2**30:.0f} GiB, capped at {CAP_GIB:.0f} GiB; "
              f"torch {torch.__version__}; {args.config} {args.dtype}", flush=True)
    clock = StepClock()
    rows = []
    for stage in ("rm", "rl"):
        row = run_stage(stage, run, work / "run", clock, cuda)
        rows.append(row | {"config": args.config, "dtype": "float32" if args.cpu_smoke else args.dtype})
        print("gpu_check: " + json.dumps(rows[-1]), flush=True)
        if not rows[-1]["fits"]:
            break  # rl needs the reward model the rm stage saves
    loaded = [m for m in ABSENT if sys.modules.get(m) is not None]
    if loaded:
        raise RuntimeError(f"the check imported {loaded}, which the GPU machine does not have")
    return 0 if all(r["fits"] for r in rows) else OUT_OF_MEMORY


if __name__ == "__main__":
    sys.exit(main())
