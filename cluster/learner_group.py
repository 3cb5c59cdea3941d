"""The learner group of Ray mode (cluster.learner_ranks > 1): N Ray actors in a placement group of their own, each a
rank of one torch.distributed group (gloo on CPU, NCCL on GPU) holding a `ShardedLearner` (learner/sharded.py,
where the math and the sharding are). The driver holds a `LearnerGroup`, which the one RL loop (stages/rl.py) uses
as it uses the Learner: `step(batch)`, `version`, the weights for the generators, checkpoints.

    driver: batch --ray.put--> every rank: step on its B/N rows (FSDP2 all-gathers weights, reduce-scatters grads)
    rank 0: weights gathered tensor by tensor in the generators' dtype --ray.put--> generators (an ObjectRef via
            the driver: the driver never holds the weights)

A rank that dies (its node lost, killed) ends the run with one line naming it; the survivors, blocked in a
collective, are ended with the placement group, and `--resume` continues from the last sharded checkpoint.
"""

from __future__ import annotations

import os
import shutil
import socket
import time
from collections.abc import Callable
from pathlib import Path

import ray
import torch
from ray.util.placement_group import remove_placement_group
from transformers import AutoModelForCausalLM

from cluster import placement
from cluster.ray_actors import actor_info
from common.config import Config, offpolicy_correction
from common.errors import UserError, brief
from common.models import frozen_copy, load_causal_lm, load_tokenizer
from common.numerics import SkipCounter
from common.rollout import RolloutBatch
from learner.precision import resolve_dtype
from learner.sharded import ShardedLearner, init_ranks, shard_model


class LearnerGroupError(UserError, RuntimeError):
    """A learner rank died, failed to start, or did not finish a step in time."""


class LearnerRank:
    """One rank: loads the SFT policy (fp32 master weights) and its frozen copy, shards both, builds the learner."""

    def __init__(self, cfg: Config, model_path: str, rank: int, world: int) -> None:
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        if cfg.cluster.learner_threads:
            torch.set_num_threads(cfg.cluster.learner_threads)
        self.cfg, self.model_path, self.rank, self.world = cfg, model_path, rank, world
        self.device = torch.device("cuda" if cfg.cluster.learner_gpus > 0 else "cpu")  # Ray sets CUDA_VISIBLE_DEVICES
        self.learner: ShardedLearner | None = None

    def rendezvous(self) -> tuple[str, int]:
        """Rank 0's address and a free port on its node, where the other ranks join."""
        with socket.socket() as s:
            s.bind(("", 0))
            return ray.util.get_node_ip_address(), s.getsockname()[1]

    def setup(self, address: str, port: int) -> dict:
        init_ranks(self.rank, self.world, address, port, self.device, self.cfg.cluster.data_timeout_s)
        tokenizer = load_tokenizer(self.model_path, self.cfg.model.tokenizer)
        policy = load_causal_lm(self.model_path, torch.device("cpu"), torch.float32, tokenizer)
        reference = frozen_copy(policy)
        # sharded from CPU (fully_shard moves each shard to the mesh's device): a GPU holds 1/N of each model
        policy, reference = (shard_model(m, self.device) for m in (policy, reference))
        self.learner = ShardedLearner(policy, reference, self.cfg.rl, self.device,
                                      resolve_dtype(self.cfg.model.dtype, self.device),
                                      offpolicy_correction(self.cfg, "ray"))  # a group runs in Ray mode
        return self.info()

    def info(self) -> dict:
        return {**actor_info(), "rank": self.rank, "device": str(self.device)}

    def step(self, batch: RolloutBatch) -> tuple[dict[str, float], dict]:
        metrics = self.learner.step(batch)
        metrics["perf/learner_shard_mib"] = self.learner.shard_bytes() / 2 ** 20  # this rank's share of the state
        metrics["perf/learner_peak_mib"] = peak_bytes(self.device) / 2 ** 20
        return metrics, self.learner.state_dict()

    def publish(self, dtype: str | None) -> tuple[list[ray.ObjectRef], int] | None:
        """Rank 0: the full weights put in the object store (a ref in a list, so Ray hands it on unresolved) and
        their bytes; the other ranks take part in the gathering and return None."""
        state = self.learner.policy_state(None if dtype is None else getattr(torch, dtype))
        if self.rank:
            return None
        return [ray.put(state)], sum(v.numel() * v.element_size() for v in state.values())

    def save_shards(self, path: str) -> dict:
        self.learner.save_shards(path)
        return self.learner.state_dict()

    def load(self, path: str, state: dict) -> None:
        self.learner.load_shards(path)
        self.learner.load_state_dict(state)

    def save_policy(self, save: Callable, path: str, record: dict) -> None:
        """Rank 0 writes the policy as a Hugging Face directory with `save` (stages/export.save_trained): a CPU model
        built on the gathered fp32 weights (`assign`: no second copy)."""
        state = self.learner.policy_state(None)
        if self.rank:
            return
        config = self.learner.policy.config
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
        model.load_state_dict(state, assign=True)
        model.tie_weights()
        save(model.eval(), load_tokenizer(self.model_path, self.cfg.model.tokenizer), path, record)


def peak_bytes(device: torch.device) -> int:
    """The rank's peak memory: CUDA's allocated peak on a GPU, the process's peak resident memory on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    status = Path("/proc/self/status")
    fields = dict(line.split(":", 1) for line in status.read_text().splitlines()) if status.exists() else {}
    return int(fields.get("VmHWM", "0 kB").split()[0]) * 1024


RemoteLearnerRank = ray.remote(LearnerRank)


class LearnerGroup:
    """The driver's handle on the ranks, with the Learner's interface as the RL loop uses it. A context manager:
    entering places and starts the ranks (bounded by cluster.placement_timeout_s), leaving ends them."""

    sharded = True  # stages/rl.py: checkpoints and saved policies go through the ranks

    def __init__(self, cfg: Config, model_path: str) -> None:
        self.cfg, self.model_path = cfg, model_path
        self.version = 0
        self.update = _Skips()
        self.ranks: list = []
        self.where: dict = {}
        self._pg = None

    def __enter__(self) -> LearnerGroup:
        c = self.cfg.cluster
        self._pg, bundles = placement.reserve(c, placement.learner_bundles(c))
        try:
            self.ranks = [RemoteLearnerRank.options(**placement.actor_options(self._pg, i, b, 0)).remote(
                self.cfg, self.model_path, i, c.learner_ranks) for i, b in enumerate(bundles)]
            address, port = self._wait({0: self.ranks[0].rendezvous.remote()}, "start", c.placement_timeout_s)[0]
            infos = self._wait({i: r.setup.remote(address, port) for i, r in enumerate(self.ranks)}, "start",
                               c.placement_timeout_s)
            self.where = {f"learner {i}": info for i, info in infos.items()}
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        if self._pg is not None:
            remove_placement_group(self._pg)  # ends the ranks, those blocked in a collective too
            self._pg = None

    def _wait(self, refs: dict[int, ray.ObjectRef], what: str, timeout_s: float) -> dict[int, object]:
        """Every rank's answer; the first rank that died or failed stops the wait with one line naming it (its
        peers would wait in a collective until their own timeout)."""
        pending, out = dict(refs), {}
        deadline = time.monotonic() + timeout_s
        while pending:
            ready, _ = ray.wait(list(pending.values()), num_returns=1, timeout=max(0.0, deadline - time.monotonic()))
            if not ready:
                late = ", ".join(str(i) for i in pending)
                raise LearnerGroupError(f"learner rank {late} did not {what} within {timeout_s:g}s "
                                        f"(cluster.placement_timeout_s / data_timeout_s); {RESUME}")
            rank = next(i for i, r in pending.items() if r == ready[0])
            del pending[rank]
            try:
                out[rank] = ray.get(ready[0])
            except ray.exceptions.RayActorError as e:
                raise LearnerGroupError(f"learner rank {rank} died ({brief(e)[:200]}) during {what}; {RESUME}") \
                    from None
            except ray.exceptions.RayTaskError as e:
                if isinstance(e.cause, UserError) or type(e.cause).__module__.startswith("common"):
                    raise e.cause from None  # an expected failure (a collapsed policy, ...): its own line
                raise LearnerGroupError(f"learner rank {rank} failed during {what}: {brief(e)}") from e
        return out

    def step(self, batch: RolloutBatch) -> dict[str, float]:
        ref = ray.put(batch)
        out = self._wait({i: r.step.remote(ref) for i, r in enumerate(self.ranks)}, "step",
                         self.cfg.cluster.data_timeout_s)
        metrics, state = out[0]
        self.version = int(state["version"])
        self.update.skips.load_state_dict(state["skips"])
        return metrics

    def weights_ref(self, dtype: torch.dtype | None) -> tuple[ray.ObjectRef, int]:
        """The published weights' ObjectRef (in rank 0's object store) and their bytes."""
        name = None if dtype is None else str(dtype).removeprefix("torch.")
        out = self._wait({i: r.publish.remote(name) for i, r in enumerate(self.ranks)}, "weight sync",
                         self.cfg.cluster.data_timeout_s)
        refs, nbytes = out[0]
        return refs[0], nbytes

    def save_checkpoint(self, ckpt_dir: Path, step: int) -> dict:
        """Every rank's shards into checkpoints/step_<step>.dcp/ (written as .tmp, renamed when all are done);
        returns the learner state for common/checkpoint.save (the unsharded rest and the shards' directory name)."""
        name = f"step_{step:06d}.dcp"
        final, tmp = Path(ckpt_dir) / name, Path(ckpt_dir) / f"{name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        out = self._wait({i: r.save_shards.remote(str(tmp)) for i, r in enumerate(self.ranks)}, "checkpoint",
                         self.cfg.cluster.data_timeout_s)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        return {"sharded": name, "unsharded": out[0]}

    def load_checkpoint(self, ckpt_dir: Path, state: dict) -> None:
        """--resume: the shards of `state["sharded"]` (resharded to this group's ranks by DCP) and the rest."""
        path = Path(ckpt_dir) / state["sharded"]
        if not path.is_dir():
            raise LearnerGroupError(f"--resume: the checkpoint's shards {path} are missing; resume from an earlier "
                                    f"checkpoint (move this one away) or start fresh")
        self._wait({i: r.load.remote(str(path), state["unsharded"]) for i, r in enumerate(self.ranks)}, "resume",
                   self.cfg.cluster.data_timeout_s)
        self.version = int(state["unsharded"]["version"])
        self.update.skips.load_state_dict(state["unsharded"]["skips"])

    def save_policy(self, save: Callable, path: Path, record: dict) -> None:
        self._wait({i: r.save_policy.remote(save, str(path), record) for i, r in enumerate(self.ranks)},
                   "save the policy", self.cfg.cluster.data_timeout_s)


RESUME = "the run stopped: continue it from its last checkpoint with --resume"


class _Skips:
    """The skipped-update count of the ranks (the same on each), as `Learner.update.skips` holds it."""

    def __init__(self) -> None:
        self.skips = SkipCounter("rl learner", "check the rewards (rollout/reward) and rl.kl_coef, lower rl.lr")
