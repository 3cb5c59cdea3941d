"""Local mode's generator on the learner's device: the `hf` backend shares the policy module, the `vllm` backend
holds its own copy and receives the learner's weights before every step (on-policy, `max_staleness = 0`)."""

from __future__ import annotations

import time

import torch

from actors.generator import Generator, build_generator
from common.config import Config
from common.models import sft_policy_path
from learner.learner import Learner


def local_generator(cfg: Config, parts, device: torch.device):
    """`parts` is cluster/local.py's RLParts. hf samples from the learner's own module (no copy, no sync)."""
    if cfg.generator.backend == "hf":
        return Generator(parts.policy, parts.tokenizer, cfg.generator, parts.prompt_tokens, device)
    return build_generator(cfg, sft_policy_path(cfg), parts.tokenizer, parts.prompt_tokens, device)


def sync_local_generator(generator, learner: Learner) -> dict[str, float]:
    """Give the generator the weights the learner is about to update; returns the sync metrics.

    Both start from the SFT checkpoint at version 0 (LoRA adapters start as a no-op), so the first sync happens
    after the first update, or at once when a resumed learner is ahead.
    """
    if isinstance(generator, Generator) and generator.model is learner.policy:
        generator.version = learner.version  # the same module: the sync is the version
        return {}
    if generator.version == learner.version:
        return {}
    start = time.perf_counter()
    generator.load_weights(learner.policy_state(), learner.version)  # full weights, LoRA merged
    return {"perf/sync_s": time.perf_counter() - start, "perf/sync_load_s": generator.last_sync_s}


def release_generator_memory(cfg: Config, generator) -> None:
    """With generator.vllm_sleep, vLLM frees its GPU memory while the scorer and learner run."""
    if cfg.generator.vllm_sleep:
        generator.sleep()
