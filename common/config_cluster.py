"""The config's cluster section (Ray mode) and what a sharded learner group refuses; re-exported by common/config.py."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from common.config_schema import ConfigError, flatten, opt, parse_resources, to_dict

if TYPE_CHECKING:
    from common.config import Config


@dataclass(frozen=True)
class ClusterConfig:
    """Ray mode (`launch.py --mode ray`, cluster/ray_rollouts.py); local mode ignores this section."""
    address: str = opt("", help="'' = $RAY_ADDRESS if set, else a local Ray instance started and stopped by "
                                "the run; 'auto' or host:port = an existing cluster")
    connect_timeout_s: float = opt(30.0, gt=0.0, help="fail (naming the address) if the cluster at "
                                                      "cluster.address does not answer within this time")
    local_cpus: int = opt(0, ge=0, help="logical CPUs of a self-started local instance; 0 = this machine's")
    num_generators: int = opt(1, ge=1, help="generator actors; each step's prompts are split across them")
    num_scorers: int = opt(1, ge=1)
    generator_cpus: float = opt(1.0, ge=0.0, help="CPUs reserved per generator (its placement bundle)")
    generator_gpus: float = opt(0.0, ge=0.0)
    generator_resources: tuple[str, ...] = opt((), help="extra custom resources per generator, NAME:AMOUNT")
    scorer_cpus: float = opt(1.0, ge=0.0)
    scorer_gpus: float = opt(0.0, ge=0.0)
    scorer_resources: tuple[str, ...] = opt((), help="extra custom resources per scorer, NAME:AMOUNT")
    generator_threads: int = opt(1, ge=0, help="torch threads in each generator actor; 0 = torch's default")
    scorer_threads: int = opt(1, ge=0, help="torch threads in each scorer actor; 0 = torch's default")
    placement_strategy: str = opt("PACK", choices=("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"))
    placement_timeout_s: float = opt(60.0, gt=0.0, help="fail (naming the bundles) if not placed by then")
    max_staleness: int = opt(0, ge=0, help="0 = on-policy (the paper); k = a batch may come from weights up "
                                           "to k learner steps old; older ones are dropped and counted")
    sync_every: int = opt(1, ge=1, help="publish the learner's weights every N steps (needs max_staleness "
                                        ">= sync_every - 1)")
    queue_size: int = opt(8, ge=1, help="scored shards the rollout queue holds; a full queue blocks scorers")
    data_timeout_s: float = opt(300.0, gt=0.0, help="learner waits this long for data, then checks actor health")
    max_restarts: int = opt(3, ge=0, help="Ray restarts of a dead generator/scorer actor (its task is retried)")
    learner_ranks: int = opt(1, ge=1, help="1 = the learner in the driver; N = N Ray actors, FSDP2-sharded, each "
                                           "training on B/N rows (learner/sharded.py)")
    learner_cpus: float = opt(1.0, ge=0.0, help="CPUs reserved per learner rank (learner_ranks > 1)")
    learner_gpus: float = opt(0.0, ge=0.0, help="GPUs per learner rank: > 0 trains on CUDA with NCCL, 0 on CPU "
                                                "with gloo")
    learner_resources: tuple[str, ...] = opt((), help="extra custom resources per learner rank, NAME:AMOUNT")
    learner_threads: int = opt(1, ge=0, help="torch threads in each learner rank; 0 = torch's default")

    def __post_init__(self) -> None:
        if self.sync_every - 1 > self.max_staleness:
            raise ConfigError(f"cluster.sync_every={self.sync_every} needs cluster.max_staleness >= "
                              f"{self.sync_every - 1} (weights published every {self.sync_every} steps are up "
                              f"to {self.sync_every - 1} steps old); got {self.max_staleness}")
        for key in ("generator_resources", "scorer_resources", "learner_resources"):
            parse_resources(getattr(self, key), f"cluster.{key}")


def check_learner_group(cfg: Config) -> None:
    """What a sharded learner (cluster.learner_ranks > 1, learner/sharded.py) does not do, refused at load."""
    n = cfg.cluster.learner_ranks
    refused = {"rl.batch_size": (cfg.rl.batch_size % n != 0, f"must divide into {n} equal shares (each rank's "
                                 f"loss is its share's mean; equal shares make their average the batch mean)"),
               "model.lora.enabled": (cfg.model.lora.enabled, "LoRA is trained in one process: set "
                                      "cluster.learner_ranks=1"),
               "model.dtype": (cfg.model.dtype == "float16", "fp16 loss scaling is not sharded: use bfloat16"),
               "rl.eval_every": (cfg.rl.eval_every > 0, "the held-out probe runs the policy in the driver; set "
                                 "rl.eval_every=0 and run --stage eval after training"),
               "rl.baseline": (cfg.rl.baseline in ("batch_mean", "rloo"), "a batch baseline needs every rank's shaped "
                               "rewards before the first backward, which the ranks do not exchange: use "
                               "moving_average, ema or none, or cluster.learner_ranks=1"),
               "model.compile": (cfg.model.compile, "the compiled layers are not sharded: set model.compile=false")}
    for key, (bad, why) in refused.items():
        if bad:
            raise ConfigError(f"cluster.learner_ranks={n} with {key}={flatten(to_dict(cfg))[key]}: {why}")
