"""Ray actors: thin shells around the plain `Generator` and `Scorer` classes (the math lives in actors/).

Data path: GeneratorActor.generate -> ObjectRef -> ScorerActor.score_into -> rollout queue -> learner. The
generate result is passed to the scorer as an ObjectRef, so rollouts go actor to actor, never via the driver.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import ray
import torch

from actors.generator import build_generator
from actors.scorer import build_scorer, reference_sampler
from common.config import Config, offpolicy_correction
from common.models import load_tokenizer, resolve_device
from common.rollout import RolloutBatch
from learner.precision import autocast, resolve_dtype
from tasks.registry import load_task


@dataclass
class RolloutItem:
    """What crosses the rollout queue: one scored shard of a learner step's batch, with its timings."""
    step: int  # the learner step whose batch this shard belongs to
    shard: int  # index of the shard (one per generator) within the step's batch
    batch: RolloutBatch  # carries `version`, the policy version that generated it
    generate_s: float = 0.0
    weight_load_s: float = 0.0  # time the generator spent loading newer weights before this shard
    score_s: float = 0.0
    generator_pid: int = 0  # the processes that made it: a new pid means Ray restarted that actor
    scorer_pid: int = 0


def _setup_process(threads: int) -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if threads:
        torch.set_num_threads(threads)


def actor_info() -> dict:
    """Where an actor runs: for health checks and the run's placement record."""
    ctx = ray.get_runtime_context()
    return {"pid": os.getpid(), "node_id": ctx.get_node_id(), "ip": ray.util.get_node_ip_address()}


class GeneratorActor:
    """Hosts one generator (`build_generator`); loads the published weights before a shard needs them.

    Every request names the weights version it must be sampled with and carries the published state dict as a
    nested ObjectRef (fetched only when the actor is behind). A restarted actor starts from the SFT weights,
    so a retried request reloads the latest weights before sampling: the batch's version is always right.
    """

    def __init__(self, cfg: Config, model_path: str, prompt_tokens: list[list[int]], threads: int) -> None:
        _setup_process(threads)
        self.device = resolve_device(cfg.device)
        self.dtype = resolve_dtype(cfg.model.dtype, self.device)
        tokenizer = load_tokenizer(model_path, cfg.model.tokenizer)
        # the hf backend records the log-probs of what it sampled when the learner corrects for staleness (vLLM always)
        self.generator = build_generator(cfg, model_path, tokenizer, prompt_tokens, self.device,
                                         behaviour_logprobs=offpolicy_correction(cfg, "ray") == "tis")

    def info(self) -> dict:
        weights_dtype = getattr(self.generator, "weights_dtype", None)  # vLLM's 16-bit weights; None: an hf copy
        return {**actor_info(), "version": self.generator.version,
                "weights_dtype": None if weights_dtype is None else str(weights_dtype).removeprefix("torch.")}

    def load_weights(self, weights: list[ray.ObjectRef], version: int) -> float:
        """Load `weights[0]` (a published state dict) unless already at `version`; returns seconds spent."""
        if self.generator.version == version:
            return 0.0
        t0 = time.perf_counter()
        self.generator.load_weights(ray.get(weights[0]), version)
        return time.perf_counter() - t0

    def generate(self, step: int, shard: int, prompt_indices: list[int], seed: int,
                 weights: list[ray.ObjectRef], version: int) -> RolloutItem:
        t_load = self.load_weights(weights, version)
        t0 = time.perf_counter()
        with autocast(self.dtype, self.device):
            batch = self.generator.generate(prompt_indices, seed)
        return RolloutItem(step, shard, batch, generate_s=time.perf_counter() - t0, weight_load_s=t_load,
                           generator_pid=os.getpid())

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The generator's current weights (tests compare them with the learner's)."""
        return {k: v.detach().cpu() for k, v in self.generator.model.state_dict().items()}


class ScorerActor:
    """Hosts one `Scorer`; scores a generated shard and puts it on the bounded rollout queue.

    `put` blocks while the queue is full (backpressure: this actor's later calls wait behind it); after
    `put_timeout_s` it raises instead of dropping the shard, and the learner reports the error.
    """

    def __init__(self, cfg: Config, model_path: str, reward_path: str | None, prompts: list[tuple[dict, ...]],
                 threads: int, prompt_tokens: list[list[int]] | None = None) -> None:
        _setup_process(threads)
        device = resolve_device(cfg.device)
        reference = reference_sampler(cfg, model_path, device)  # win_prob_vs_ref: the actor's own frozen SFT copy
        if reference is not None and prompt_tokens is None:
            raise ValueError("rl.reward_reduction=win_prob_vs_ref needs the prompt token ids in the scorer actor")
        # reward_path None: no reward model (reward.model_weight=0); reward.functions are loaded here, in the actor
        self.scorer = build_scorer(cfg, reward_path, load_task(cfg), device, prompts, prompt_tokens or [],
                                   load_tokenizer(model_path, cfg.model.tokenizer), reference)

    def info(self) -> dict:
        return actor_info()

    def score_into(self, item: RolloutItem, queue, put_timeout_s: float) -> int:
        t0 = time.perf_counter()
        item.batch = self.scorer.score(item.batch)
        item.score_s = time.perf_counter() - t0
        item.scorer_pid = os.getpid()
        queue.put(item, block=True, timeout=put_timeout_s)
        return item.step


RemoteGenerator = ray.remote(GeneratorActor)
RemoteScorer = ray.remote(ScorerActor)
