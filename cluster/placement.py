"""Placement of the Ray roles: one placement-group bundle per generator and per scorer, from `cluster:`.

A bundle the cluster cannot hold would leave Ray pending forever; here the wait is bounded by
`cluster.placement_timeout_s` and the error names what was asked for and what the cluster has.
"""

from __future__ import annotations

from dataclasses import dataclass

import ray
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from common.config import ClusterConfig, parse_resources
from common.errors import UserError


class PlacementError(UserError, RuntimeError):
    """The cluster cannot hold the requested bundles (within the timeout)."""


@dataclass(frozen=True)
class RoleBundle:
    role: str  # "generator", "scorer" or "learner"
    index: int  # actor index within the role
    resources: dict[str, float]  # e.g. {"CPU": 1.0, "GPU": 1.0, "node2": 1.0}


def resources(cpus: float, gpus: float, extra: tuple[str, ...], key: str) -> dict[str, float]:
    res = {"CPU": cpus, "GPU": gpus, **parse_resources(extra, key)}
    return {k: v for k, v in res.items() if v > 0}


def learner_bundles(cfg: ClusterConfig) -> list[RoleBundle]:
    """One bundle per learner rank (cluster.learner_ranks > 1), in a placement group of their own: the group
    lives as long as the run's learner, the rollout actors' group as long as the rollout source."""
    res = resources(cfg.learner_cpus, cfg.learner_gpus, cfg.learner_resources, "cluster.learner_resources")
    return [RoleBundle("learner", i, res) for i in range(cfg.learner_ranks)]


def role_bundles(cfg: ClusterConfig) -> list[RoleBundle]:
    """Generators first, then scorers; bundle i of the placement group is `role_bundles(cfg)[i]`."""
    gen = resources(cfg.generator_cpus, cfg.generator_gpus, cfg.generator_resources, "cluster.generator_resources")
    sco = resources(cfg.scorer_cpus, cfg.scorer_gpus, cfg.scorer_resources, "cluster.scorer_resources")
    return ([RoleBundle("generator", i, gen) for i in range(cfg.num_generators)]
            + [RoleBundle("scorer", i, sco) for i in range(cfg.num_scorers)])


def reserve(cfg: ClusterConfig, bundles: list[RoleBundle] | None = None) -> tuple[PlacementGroup, list[RoleBundle]]:
    """Create the placement group of `bundles` (default: the rollout actors') and wait until it is placed, or raise
    PlacementError."""
    bundles = role_bundles(cfg) if bundles is None else bundles
    # A bundle may not be empty: a role with no CPU/GPU/custom resource reserves a sliver of CPU.
    specs = [b.resources or {"CPU": 0.01} for b in bundles]
    pg = placement_group(specs, strategy=cfg.placement_strategy, name="")
    ready, _ = ray.wait([pg.ready()], timeout=cfg.placement_timeout_s)
    if not ready:
        remove_placement_group(pg)
        asked = "; ".join(f"{b.role} {b.index}: {s}" for b, s in zip(bundles, specs))
        raise PlacementError(
            f"the Ray cluster could not place the actors within cluster.placement_timeout_s="
            f"{cfg.placement_timeout_s:g}s (strategy {cfg.placement_strategy}). Asked for: {asked}. Cluster "
            f"total: {ray.cluster_resources()}, available now: {ray.available_resources()}. Lower "
            f"cluster.num_generators / learner_ranks / *_cpus / *_gpus, or add nodes.")
    return pg, bundles


def actor_options(pg: PlacementGroup, bundle_index: int, bundle: RoleBundle, max_restarts: int) -> dict:
    """`.options(...)` for the actor of `bundle`: its resources, inside its bundle, restartable."""
    res = dict(bundle.resources)
    return {"num_cpus": res.pop("CPU", 0.0), "num_gpus": res.pop("GPU", 0.0), "resources": res,
            "scheduling_strategy": PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=bundle_index),
            "max_restarts": max_restarts, "max_task_retries": max_restarts}
