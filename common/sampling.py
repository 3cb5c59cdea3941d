"""The reproducibility contract: which prompts step t trains on and with which sampling seed.

Every runner (local loop, Ray pipeline, benches) draws its batches and seeds here, so a resumed run, a Ray run
with one generator and a local run sample exactly the same prompts with exactly the same seeds.
"""

from __future__ import annotations

import torch


class PromptSampler:
    """Prompt indices for step t: epoch-wise seeded permutations, a pure function of (seed, t), so a resumed
    run draws exactly the batches it would have drawn."""

    def __init__(self, num_prompts: int, batch_size: int, seed: int) -> None:
        self.n, self.batch_size, self.seed = num_prompts, batch_size, seed
        self._perms: dict[int, list[int]] = {}

    def _perm(self, epoch: int) -> list[int]:
        if epoch not in self._perms:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perms = {epoch: torch.randperm(self.n, generator=g).tolist()}
        return self._perms[epoch]

    def batch(self, step: int) -> list[int]:
        start = step * self.batch_size
        return [self._perm(k // self.n)[k % self.n] for k in range(start, start + self.batch_size)]


def generation_seed(seed: int, step: int) -> int:
    """The sampling seed of step t's batch."""
    return seed * 1_000_003 + step


def shard_seed(seed: int, step: int, shard: int) -> int:
    """Shard k of step t (Ray mode, one shard per generator). Shard 0 uses the local runner's seed, so one
    generator samples exactly what local mode samples."""
    return generation_seed(seed, step) + shard * (1 << 40)
