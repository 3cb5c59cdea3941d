"""The learner on N ranks: data parallel over the batch, parameters sharded with FSDP2 (`fully_shard`).

Pure torch.distributed; the Ray shell that starts the ranks is cluster/learner_group.py. Every rank holds a
`ShardedLearner` and receives the step's whole batch; it trains on its rows only (`rank_rows`). The update equals
the one-process Learner's (tests/test_learner_group.py measures how closely):
- the loss is -(1/B) sum_i A_i log pi(y_i|x_i) (Ahmadian et al. 2024, Eq. 6 with the baseline of Eq. 8). A rank's
  loss is the mean over its B/N rows and FSDP2 averages the gradients over the N ranks (its reduce-scatter
  divides by N), so the gradient is (1/N) sum_r (N/B) sum_{i in r} = the full batch mean. That needs equal shares:
  rl.batch_size must divide by cluster.learner_ranks (checked when the config loads);
- the baseline b is read from the full batch (its rewards are on every rank) and updated with the full batch's
  shaped rewards, all-gathered: every rank holds the same baseline, as the one process does;
- gradient clipping uses the global norm: FSDP2's gradients are DTensors, so clip_grad_norm_ reduces over ranks;
- the metrics are computed from the gathered [B] tensors, identical on every rank.
Checkpoints are sharded (torch.distributed.checkpoint, DCP): each rank writes its shards of the policy and the
optimizer's moments; the reference is the SFT model, rebuilt, never saved. `policy_state` gathers the weights one
tensor at a time (`DTensor.full_tensor`) in the generators' dtype, so no rank ever holds a full fp32 copy beside
its shards unless the generators want fp32 (hf generators).
"""

from __future__ import annotations

import datetime

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor
from transformers.modeling_layers import GradientCheckpointingLayer

from common.config import RLConfig
from common.numerics import is_finite
from common.rollout import RolloutBatch
from learner.learner import Learner


def init_ranks(rank: int, world: int, address: str, port: int, device: torch.device, timeout_s: float) -> None:
    """Join the group: gloo on CPU, NCCL on GPU. `timeout_s` bounds every collective, so a rank whose peer died
    does not wait forever (the driver names the dead rank first; this is the backstop)."""
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", init_method=f"tcp://{address}:{port}",
                            rank=rank, world_size=world, timeout=datetime.timedelta(seconds=timeout_s))


def shard_model(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """FSDP2 over all ranks: each decoder layer is one unit (its weights are gathered just before its forward and
    freed after), the rest (embeddings, tied LM head, final norm) the root unit. In place; returns the model."""
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    for module in model.modules():
        if isinstance(module, GradientCheckpointingLayer):  # transformers' decoder layers
            fully_shard(module, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def rank_rows(batch_size: int, rank: int, world: int) -> tuple[int, int]:
    """Rows [start, stop) of a batch that `rank` of `world` trains on: contiguous, equal shares."""
    if batch_size % world:
        raise ValueError(f"a batch of {batch_size} does not split into {world} equal shares")
    share = batch_size // world
    return rank * share, (rank + 1) * share


class ShardedLearner(Learner):
    """One rank of the learner group: the Learner's own step on this rank's rows, with the policy and reference
    sharded (`shard_model` before construction, so the optimizer holds the shards). Every method that touches the
    weights is collective: all ranks call it, in the same order."""

    def __init__(self, policy: torch.nn.Module, reference: torch.nn.Module, cfg: RLConfig, device: torch.device,
                 dtype: torch.dtype = torch.float32, offpolicy_correction: str = "none") -> None:
        super().__init__(policy, reference, cfg, device, dtype, offpolicy_correction)
        self.rank, self.world = dist.get_rank(), dist.get_world_size()

    @torch.no_grad()
    def reference_logprobs(self, batch: RolloutBatch) -> torch.Tensor:  # [b, R]
        """FSDP2 keeps the root unit (embeddings, tied head) gathered after the root's forward, for the backward
        that follows; the reference has none, so its root is resharded here (else it stays whole, 1/N saved)."""
        out = super().reference_logprobs(batch)
        self.reference.reshard()
        return out

    def local_rows(self, batch: RolloutBatch) -> RolloutBatch:
        return batch.rows(*rank_rows(batch.batch_size, self.rank, self.world))

    def gather_rows(self, rows: list[torch.Tensor], loss: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """[B/N] per rank -> [B] in rank order (the batch's row order) on every rank; the loss: the mean of the
        ranks' means, which is the batch mean (equal shares)."""
        local = torch.stack([r.detach().float() for r in rows])  # [K, B/N]
        parts = [torch.empty_like(local) for _ in range(self.world)]
        dist.all_gather(parts, local)
        full = torch.cat(parts, dim=1)  # [K, B]
        loss = loss.detach().float().clone()
        dist.all_reduce(loss)
        # one rank's non-finite loss is every rank's (the sum is): all skip the update together, or none does
        self.update.loss_finite = is_finite(loss)
        return list(full.unbind(0)), loss / self.world

    @torch.no_grad()
    def policy_state(self, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
        """The full weights on rank 0 (on CPU, in `dtype`; None keeps fp32), {} on the others. Gathered one tensor
        at a time: a rank's extra memory on the device is one full tensor, never the whole model. A weight tied to
        another (embeddings and LM head) is gathered once and appears under both names, as in state_dict()."""
        out, seen = {}, {}
        for name, value in self.policy.state_dict().items():
            key = (value.to_local() if isinstance(value, DTensor) else value).data_ptr()  # tied: one storage
            if key not in seen:
                full = value.full_tensor() if isinstance(value, DTensor) else value
                if dtype is not None and full.is_floating_point():
                    full = full.to(dtype)
                seen[key] = full.detach().cpu() if self.rank == 0 else None
            if self.rank == 0:
                out[name] = seen[key]
        return out

    def shard_bytes(self) -> int:
        """Bytes of this rank's shards: policy, reference, the policy's gradients (held from backward to the
        optimizer step) and AdamW's moments."""
        def local(t: torch.Tensor) -> int:
            t = t.to_local() if isinstance(t, DTensor) else t
            return t.numel() * t.element_size()
        params = sum(local(p) for p in self.policy.parameters())
        trained = sum(local(p) for p in self.policy.parameters() if p.requires_grad)
        moments = sum(local(v) for state in self.optimizer.state.values() for v in state.values()
                      if isinstance(v, torch.Tensor) and v.dim() > 0)
        return params + sum(local(p) for p in self.reference.parameters()) + trained + moments

    def save_shards(self, path: str) -> None:
        """This rank's shards of the policy and the optimizer state into the DCP directory `path` (collective)."""
        model, optim = get_state_dict(self.policy, self.optimizer)
        dcp.save({"policy": model, "optimizer": optim}, checkpoint_id=path)

    def load_shards(self, path: str) -> None:
        """The policy and optimizer state from a DCP directory, resharded to this group's ranks (collective); lr and
        weight decay are rl's, as in Learner.load_state_dict."""
        model, optim = get_state_dict(self.policy, self.optimizer)
        state = {"policy": model, "optimizer": optim}
        dcp.load(state, checkpoint_id=path)
        set_state_dict(self.policy, self.optimizer, model_state_dict=state["policy"],
                       optim_state_dict=state["optimizer"])
        for group in self.optimizer.param_groups:
            group["lr"], group["weight_decay"] = self.cfg.lr, self.cfg.weight_decay

    def state_dict(self) -> dict:
        """What is not sharded (baseline, version, skip counts): the same on every rank, saved from rank 0."""
        return {"baseline": self.baseline.state_dict(), "version": self.version, **self.update.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        kind = self.baseline.state_dict()["kind"]
        if state["baseline"].get("kind", kind) == kind:
            self.baseline.load_state_dict(state["baseline"])
        self.version = int(state["version"])
        self.update.load_state_dict(state)
