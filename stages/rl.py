"""`--stage rl` in local mode, and the kit both RL runners share.

Local mode runs generator, scorer and learner in one process, in sequence (CPU or one GPU): `local_step` is the
whole on-policy step (sync -> generate -> score -> learn) and the benches time exactly that function. The Ray
runner (cluster/ray_runner.py) builds the prompt pool, policy and learner with the same functions, learns each
collected batch with the same `learn`, records with the same `RLRecorder` and ends with the same `finish_rl`.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from tqdm.auto import tqdm

from actors.generator import Generator, build_generator
from actors.scorer import Scorer, build_scorer, reference_sampler
from common import checkpoint
from common.config import Config
from common.metrics import RunLogger, read_log
from common.models import apply_lora, frozen_copy, load_causal_lm, load_tokenizer, save_model, sft_policy_path
from common.rollout import RolloutBatch, eos_rate
from common.runtime import amp, prepare
from common.sampling import PromptSampler, generation_seed
from common.splits import prompt_pool
from learner.learner import Learner
from stages.eval import HeldoutPool, compare_on_pool, overoptimisation_check, probe_metrics


def build_prompts(cfg: Config) -> tuple[object, list[tuple[dict, ...]], list[list[int]]]:
    """The policy tokenizer and the training prompt pool (messages and their chat-templated ids)."""
    tokenizer = load_tokenizer(cfg, sft_policy_path(cfg))
    prompts, prompt_tokens = prompt_pool(cfg, tokenizer, "train", "rl")
    return tokenizer, prompts, prompt_tokens


def build_policy(cfg: Config, device: torch.device) -> tuple[torch.nn.Module, torch.nn.Module | None]:
    """The trainable policy (LoRA-wrapped when enabled) and the frozen reference (None with LoRA)."""
    policy = load_causal_lm(sft_policy_path(cfg), device, torch.float32)  # fp32 master weights; autocast on GPU
    reference = None if cfg.model.lora.enabled else frozen_copy(policy)
    return apply_lora(policy, cfg.model.lora, "CAUSAL_LM"), reference


def local_generator(cfg: Config, policy: torch.nn.Module, tokenizer, prompt_tokens: list[list[int]],
                    device: torch.device):
    """Local mode's generator on the learner's device: hf samples from the learner's own module (no copy, no
    sync); vllm holds its own copy and receives the learner's weights before every step."""
    return build_generator(cfg, sft_policy_path(cfg), tokenizer, prompt_tokens, device, shared_policy=policy)


def sync_local_generator(generator, learner: Learner) -> dict[str, float]:
    """Give the generator the weights the learner is about to update (on-policy, `max_staleness = 0`); returns
    the sync metrics. Both start from the SFT checkpoint at version 0 (LoRA adapters start as a no-op), so the
    first sync happens after the first update, or at once when a resumed learner is ahead."""
    if isinstance(generator, Generator) and generator.model is learner.policy:
        generator.version = learner.version  # the same module: the sync is the version
        return {}
    if generator.version == learner.version:
        return {}
    start = time.perf_counter()
    generator.load_weights(learner.policy_state(), learner.version)  # full weights, LoRA merged
    return {"perf/sync_s": time.perf_counter() - start, "perf/sync_load_s": generator.last_sync_s}


def learn(cfg: Config, learner: Learner, batch: RolloutBatch, tokenizer) -> dict[str, float]:
    """The learner's part of every step, in both runners: one REINFORCE update on a scored batch, with the
    batch's rollout metrics."""
    with amp(cfg, learner.device):
        metrics = learner.step(batch)
    eos = eos_rate(batch, tokenizer.eos_token_id)  # truncated = cut at max_new_tokens, scored as unfinished
    metrics.update({"rollout/eos_rate": eos, "rollout/truncation_rate": 1.0 - eos, "sync/version": learner.version})
    return metrics


def local_step(cfg: Config, generator, scorer: Scorer, learner: Learner, sampler: PromptSampler, tokenizer,
               step: int) -> dict[str, float]:
    """One on-policy step of local mode: sample step `step`'s prompts with the weights about to be updated,
    score them, learn. Returns the step's metrics, phase timings included."""
    sync = sync_local_generator(generator, learner)
    t0 = time.perf_counter()
    with amp(cfg, learner.device):
        batch = generator.generate(sampler.batch(step), generation_seed(cfg.seed, step))
    t1 = time.perf_counter()
    if cfg.generator.vllm_sleep and not isinstance(generator, Generator):  # vLLM frees its GPU memory meanwhile
        generator.sleep()
    batch = scorer.score(batch)
    t2 = time.perf_counter()
    metrics = learn(cfg, learner, batch, tokenizer)
    t3 = time.perf_counter()
    return {**metrics, **perf_metrics(batch, t1 - t0, t2 - t1, t3 - t2), **sync}


def perf_metrics(batch: RolloutBatch, t_gen: float, t_score: float, t_learn: float) -> dict[str, float]:
    tokens = float(batch.response_mask.sum())
    total = t_gen + t_score + t_learn
    return {"perf/generate_s": t_gen, "perf/score_s": t_score, "perf/learner_s": t_learn, "perf/step_s": total,
            "perf/tokens_per_s": tokens / total, "perf/samples_per_s": batch.batch_size / total,
            "perf/generate_tokens_per_s": tokens / max(t_gen, 1e-9)}


@contextlib.contextmanager
def reference_policy(learner: Learner) -> Iterator[torch.nn.Module]:
    """The frozen SFT policy as a module: the reference, or with LoRA the policy with its adapters disabled."""
    if learner.reference is not None:
        yield learner.reference
        return
    with learner.policy.disable_adapter():
        yield learner.policy


class HeldoutProbe:
    """Over-optimisation measured during training (rl.eval_every): the policy answers a fixed held-out subset, the
    first rl.eval_prompts prompts of each held-out pool with eval.seed, scored by the reward model and, in the
    sandbox, the gold judge, with stages/eval.py's functions. Tags: eval/ (in-distribution) and eval_ood/
    (out-of-distribution). The SFT answers are sampled once, from the reference. Sampling forks the RNG, so a
    probe does not change the training run."""

    def __init__(self, cfg: Config, learner: Learner, tokenizer) -> None:
        self.learner = learner
        pools = [(prefix, HeldoutPool(cfg, tokenizer, learner.device, split, cfg.rl.eval_prompts, stage))
                 for split, prefix, stage in (("val", "eval/", "probe"), ("ood", "eval_ood/", "probe_ood"))]
        self.pools = [(prefix, pool) for prefix, pool in pools if pool.n]
        with reference_policy(learner) as sft:
            self.sft = {prefix: pool.describe(pool.answers(sft)) for prefix, pool in self.pools}

    def __call__(self) -> dict[str, float]:
        t0, out = time.perf_counter(), {}
        for prefix, pool in self.pools:
            d, kl = compare_on_pool(pool, self.sft[prefix], self.learner.policy, self.learner.reference_logprobs)
            out.update(probe_metrics(d, kl, prefix))
        return {**out, "perf/probe_s": time.perf_counter() - t0}


class RLRecorder:
    """TensorBoard / jsonl logging, the held-out probe (when rl.eval_every > 0 and the learner is given) and
    periodic checkpoints after each learner step (both runners)."""

    def __init__(self, cfg: Config, start: int, learner: Learner | None = None, tokenizer=None) -> None:
        self.cfg, self.ckpt_dir = cfg, checkpoint_dir(cfg)
        self.logger = RunLogger(cfg.run_dir, "rl", resume_step=start)
        if start == 0:
            self.logger.hparams(cfg)
        self.probe = HeldoutProbe(cfg, learner, tokenizer) if cfg.rl.eval_every and learner is not None else None
        if self.probe is not None and start == 0:
            self.logger.log(0, self.probe())  # step 0: the SFT policy itself

    def record(self, step: int, metrics: dict[str, float], learner: Learner) -> None:
        rl = self.cfg.rl
        probe = self.probe is not None and ((step + 1) % rl.eval_every == 0 or step + 1 == rl.steps)
        if probe:
            metrics.update(self.probe())
        if probe or (step + 1) % rl.log_every == 0 or step + 1 == rl.steps:
            self.logger.log(step + 1, metrics)
        if rl.save_every and (step + 1) % rl.save_every == 0:
            checkpoint.save(self.ckpt_dir, step + 1, learner.state_dict())

    def close(self) -> None:
        self.logger.close()


def checkpoint_dir(cfg: Config) -> Path:
    return Path(cfg.run_dir) / "checkpoints"


def resume_checkpoint(cfg: Config) -> tuple[Path, dict]:
    """The checkpoint `--resume` continues from, read before anything is written: an unreadable latest one is
    skipped for the previous, and rl.steps at or below its step is refused (a finished run is never rewritten,
    unless it stopped after its last checkpoint and before writing its results)."""
    return checkpoint.resume_state(checkpoint_dir(cfg), cfg.rl.steps,
                                   finished=(Path(cfg.run_dir) / "rl_metrics.json").is_file())


def resume_learner(learner: Learner, resumed: tuple[Path, dict]) -> int:
    """Load a checkpoint (resume_checkpoint's) into the learner (weights, optimizer, baseline, RNG); returns
    its step."""
    path, state = resumed
    learner.load_state_dict(state["learner"])
    checkpoint.set_rng_state(state["rng"])
    tqdm.write(f"resumed from {path} (step {state['step']})")
    return int(state["step"])


def finish_rl(cfg: Config, learner: Learner, tokenizer, metrics: dict[str, float], **extra) -> dict:
    """Final checkpoint, the trained policy and rl_metrics.json (both runners)."""
    checkpoint.save(checkpoint_dir(cfg), cfg.rl.steps, learner.state_dict())
    save_model(learner.policy, tokenizer, Path(cfg.run_dir) / "policy")
    if not metrics:  # resumed at the last step (stopped before writing results): the last logged ones
        metrics = {k: v for k, v in json.loads(read_log(Path(cfg.run_dir) / "metrics_rl.jsonl")[-1]).items()
                   if k != "step"}
    rows = [json.loads(line) for line in read_log(Path(cfg.run_dir) / "metrics_rl.jsonl")]
    result = {"steps": cfg.rl.steps, "final": metrics, "overoptimisation": overoptimisation_check(rows), **extra}
    (Path(cfg.run_dir) / "rl_metrics.json").write_text(json.dumps(result, indent=2))
    return result


def run_rl_local(cfg: Config, resume: bool = False) -> dict:
    resumed = resume_checkpoint(cfg) if resume else None  # refuses before anything is written
    device = prepare(cfg)
    tokenizer, prompts, prompt_tokens = build_prompts(cfg)
    policy, reference = build_policy(cfg, device)
    scorer = build_scorer(cfg, device, prompts, prompt_tokens, tokenizer, reference_sampler(cfg, device, reference))
    generator = local_generator(cfg, policy, tokenizer, prompt_tokens, device)
    learner = Learner(policy, reference, cfg.rl, device)
    sampler = PromptSampler(len(prompts), cfg.rl.batch_size, cfg.seed)
    start = resume_learner(learner, resumed) if resumed else 0
    recorder = RLRecorder(cfg, start, learner, tokenizer)
    metrics: dict[str, float] = {}
    for step in tqdm(range(start, cfg.rl.steps), initial=start, total=cfg.rl.steps, desc="rl"):
        metrics = local_step(cfg, generator, scorer, learner, sampler, tokenizer, step)
        recorder.record(step, metrics, learner)
    recorder.close()
    return finish_rl(cfg, learner, tokenizer, metrics)
