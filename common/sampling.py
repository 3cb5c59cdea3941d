"""The reproducibility contract: which prompts step t trains on and with which sampling seed.

Every runner (local loop, Ray pipeline, benches) draws its batches and seeds here, so a resumed run, a Ray run
with one generator and a local run sample exactly the same prompts with exactly the same seeds.
"""

from __future__ import annotations

import torch


class PromptSampler:
    """Prompt indices for step t: epoch-wise seeded permutations, a pure function of (seed, t), so a resumed
    run draws exactly the batches it would have drawn.

    `batch_size` counts sequences (rl.batch_size); with `samples_per_prompt` = k > 1 (rl.rloo_k) a step draws
    batch_size / k prompts and lists each k times in a row, [p0] * k + [p1] * k + ...: every generator backend
    samples a listed prompt independently (its own row, or its own request seed in vLLM), and the learner groups
    the k samples by prompt index (learner/baseline.rloo_baseline). With k = 1 the batches are unchanged."""

    def __init__(self, num_prompts: int, batch_size: int, seed: int, samples_per_prompt: int = 1) -> None:
        if batch_size % samples_per_prompt:
            raise ValueError(f"batch_size {batch_size} is not a multiple of samples_per_prompt {samples_per_prompt}")
        self.n, self.seed, self.k = num_prompts, seed, samples_per_prompt
        self.prompts_per_step = batch_size // samples_per_prompt
        self._perms: dict[int, list[int]] = {}

    def _perm(self, epoch: int) -> list[int]:
        if epoch not in self._perms:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perms = {epoch: torch.randperm(self.n, generator=g).tolist()}
        return self._perms[epoch]

    def batch(self, step: int) -> list[int]:
        start = step * self.prompts_per_step
        return [self._perm(j // self.n)[j % self.n] for j in range(start, start + self.prompts_per_step)
                for _ in range(self.k)]


def generation_seed(seed: int, step: int) -> int:
    """The sampling seed of step t's batch."""
    return seed * 1_000_003 + step


def shard_seed(seed: int, step: int, shard: int) -> int:
    """Shard k of step t (Ray mode, one shard per generator). Shard 0 uses the local runner's seed, so one
    generator samples exactly what local mode samples."""
    return generation_seed(seed, step) + shard * (1 << 40)
