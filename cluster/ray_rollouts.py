"""Ray mode's rollout source (actors/rollouts.py's interface): generator and scorer actors on a Ray cluster feed a
bounded queue that the one RL loop (stages/rl.py) reads in the driver, where the learner runs. The actors host the
same Generator and Scorer classes as local mode; only the plumbing differs.

    driver (learner) --publish(state, version)--> object store --> generator actors --ObjectRef--> scorer
    actors --put (blocks when full)--> rollout queue --get--> driver (learner)

`RayRollouts` is a context manager: entering connects to (or starts) Ray, places the actors and waits until they
are up; leaving ends them (the placement group is removed) and disconnects. Dispatch, staleness and faults are
cluster/ray_pipeline.py's.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import ray
import torch
from ray.util.placement_group import remove_placement_group
from ray.util.queue import Queue

from actors.reward_functions import with_absolute_files
from cluster import placement
from cluster.ray_actors import RemoteGenerator, RemoteScorer
from cluster.ray_pipeline import RolloutError, RolloutPipeline
from common import runlock
from common.config import ClusterConfig, Config
from common.errors import UserError, brief, raise_on_sigterm
from common.rollout import RolloutBatch, concat
from common.sampling import PromptSampler
from learner.learner import Learner

ROOT = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def ray_session(cfg: ClusterConfig) -> Iterator[None]:
    """Connect to `cluster.address` / $RAY_ADDRESS, or start a local instance (stopped at the end). A caller
    that already initialised Ray keeps its connection."""
    if ray.is_initialized():
        yield
        return
    address = cfg.address or os.environ.get("RAY_ADDRESS") or None
    # Workers import the project from this checkout (on a real cluster it is also pip-installed on every node).
    paths = [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    env = {"PYTHONPATH": os.pathsep.join(dict.fromkeys(paths)), "TOKENIZERS_PARALLELISM": "false"}
    if address:
        check_reachable(address, cfg.connect_timeout_s)
        # Under `ray job submit` the job's own runtime env (its --working-dir) already ships the code.
        in_job = "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ
        try:
            with connect_watchdog(address, cfg.connect_timeout_s):
                ray.init(address=address, **({} if in_job else {"runtime_env": {"env_vars": env}}))
        except ConnectionError as e:
            raise UserError(f"cannot connect to the Ray cluster at {address} (cluster.address or $RAY_ADDRESS): "
                            f"{brief(e)}") from e
    else:
        ray.init(num_cpus=cfg.local_cpus or None, include_dashboard=False, runtime_env={"env_vars": env})
    raise_on_sigterm()  # ray.init installs a SIGTERM handler that aborts; stop cleanly instead
    try:
        yield
    finally:
        ray.shutdown()


def check_reachable(address: str, timeout_s: float) -> None:
    """ray.init retries an address where nothing answers forever; a TCP connect bounded by cluster.connect_timeout_s
    fails first, naming the address. ('auto' is found or refused by ray.init at once.)"""
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit():
        return
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as e:
        reason = (f"no answer within cluster.connect_timeout_s={timeout_s:g}s" if isinstance(e, TimeoutError)
                  else e.strerror or brief(e))
        raise UserError(f"cannot reach the Ray cluster at {address} (cluster.address or $RAY_ADDRESS): {reason}; "
                        f"start it (ray start --head) or fix the address") from None


@contextlib.contextmanager
def connect_watchdog(address: str, timeout_s: float) -> Iterator[None]:
    """Bound ray.init. Where something answers at the address but not a Ray GCS, ray.init retries inside Ray's
    C++ client forever, where no Python exception or signal handler can reach it; after twice
    cluster.connect_timeout_s the process says why in one line and exits (nothing is written before connecting,
    and the run directory's lock is released)."""
    def give_up() -> None:
        print(f"error: the Ray cluster at {address} (cluster.address or $RAY_ADDRESS) did not accept a connection "
              f"within {2 * timeout_s:g}s (2 x cluster.connect_timeout_s); is it a Ray head node's GCS port?",
              file=sys.stderr, flush=True)
        runlock.release_all()
        os._exit(1)

    timer = threading.Timer(2 * timeout_s, give_up)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


def start_actors(cfg: Config, pg, bundles: list[placement.RoleBundle], prompts, prompt_tokens, model_path: str,
                 reward_path: str | None) -> tuple[list, list, dict]:
    """Create the generator and scorer actors in their bundles; wait (bounded) until each is up. An actor whose
    constructor failed (a reward function file not readable on its node, say) is one RolloutError naming it."""
    c = cfg.cluster
    generators, scorers = [], []
    for i, b in enumerate(bundles):
        opts = placement.actor_options(pg, i, b, c.max_restarts)
        if b.role == "generator":
            generators.append(RemoteGenerator.options(**opts).remote(cfg, model_path, prompt_tokens,
                                                                    c.generator_threads))
        else:
            scorers.append(RemoteScorer.options(**opts).remote(cfg, model_path, reward_path, prompts,
                                                                  c.scorer_threads, prompt_tokens))
    names = [f"generator {i}" for i in range(len(generators))] + [f"scorer {i}" for i in range(len(scorers))]
    refs = [a.info.remote() for a in generators + scorers]
    ready, pending = ray.wait(refs, num_returns=len(refs), timeout=c.placement_timeout_s)
    if pending:
        slow = [n for n, r in zip(names, refs) if r in pending]
        raise placement.PlacementError(f"actors not up within cluster.placement_timeout_s={c.placement_timeout_s:g}s: "
                                       f"{', '.join(slow)}")
    infos = {}
    for name, ref in zip(names, refs):
        try:
            infos[name] = ray.get(ref)
        except ray.exceptions.RayActorError as e:
            raise RolloutError(f"{name} did not start: {brief(e)}") from e
    return generators, scorers, infos


class RayRollouts:
    """The rollout source of `--mode ray`: step t's shards come off the queue; after each update the learner's
    weights are published every cluster.sync_every steps and the steps the staleness bound allows are handed out.
    `summary()` adds the run's drop/retry counts and the actors' placement to rl_metrics.json."""

    def __init__(self, cfg: Config, model_path: str, reward_path: str | None, prompts, prompt_tokens,
                 tokenizer) -> None:
        # the scorer actors load reward.functions themselves: a FILE.py is passed as the absolute path it has here
        self.cfg, self.model_path, self.reward_path = with_absolute_files(cfg), model_path, reward_path
        self.prompts, self.prompt_tokens, self.pad_id = prompts, prompt_tokens, tokenizer.pad_token_id
        self.pipeline: RolloutPipeline | None = None
        self.where: dict = {}
        self.sync_dtype: torch.dtype | None = None
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> RayRollouts:
        cfg, stack = self.cfg, self._stack
        stack.enter_context(ray_session(cfg.cluster))
        try:
            pg, bundles = placement.reserve(cfg.cluster)
            stack.callback(remove_placement_group, pg)  # also ends the actors placed in it
            generators, scorers, self.where = start_actors(cfg, pg, bundles, self.prompts, self.prompt_tokens,
                                                           self.model_path, self.reward_path)
            (Path(cfg.run_dir) / "ray_placement.json").write_text(json.dumps(self.where, indent=2))
            # published weights travel in the generators' own dtype (vLLM in 16 bits: half the object-store bytes)
            dtypes = {info.get("weights_dtype") for name, info in self.where.items() if name.startswith("generator")}
            self.sync_dtype = getattr(torch, dtypes.pop()) if len(dtypes) == 1 and None not in dtypes else None
            queue = Queue(maxsize=cfg.cluster.queue_size)
            stack.callback(queue.shutdown)
            sampler = PromptSampler(len(self.prompts), cfg.rl.batch_size, cfg.seed, cfg.rl.rloo_k)
            self.pipeline = RolloutPipeline(generators, scorers, queue, sampler, cfg.seed, cfg.cluster.max_staleness,
                                            cfg.cluster.data_timeout_s,
                                            {role: info["pid"] for role, info in self.where.items()})
        except BaseException:
            stack.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self._stack.close()

    def start(self, step: int, learner: Learner) -> None:
        if getattr(learner, "where", None):  # a learner group: its ranks' placement beside the actors'
            self.where.update(learner.where)
            (Path(self.cfg.run_dir) / "ray_placement.json").write_text(json.dumps(self.where, indent=2))
        self.publish(learner)
        self.pipeline.start_at(step)

    def publish(self, learner: Learner) -> tuple[float, int]:
        """The learner's weights to the object store (seconds, bytes). A learner group's rank 0 gathers and puts
        them itself (cluster/learner_group.py): only their ObjectRef passes through the driver."""
        if not getattr(learner, "sharded", False):
            return self.pipeline.publish(learner.policy_state(self.sync_dtype), learner.version)
        t0 = time.perf_counter()
        ref, nbytes = learner.weights_ref(self.sync_dtype)
        self.pipeline.publish_ref(ref, learner.version)
        return time.perf_counter() - t0, nbytes

    def next_batch(self, step: int, learner: Learner) -> tuple[RolloutBatch, dict[str, float]]:
        """Step `step`'s shards, in shard order, joined. Shards run in parallel, so a phase's time is its slowest
        shard's."""
        self.pipeline.fill(self.cfg.rl.steps)
        items = self.pipeline.collect(step, learner.version)
        batch = concat([it.batch for it in items], self.pad_id)
        return batch, {"perf/generate_s": max(it.generate_s for it in items),
                       "perf/score_s": max(it.score_s for it in items),
                       "perf/weight_load_s": max(it.weight_load_s for it in items)}

    def after_update(self, step: int, learner: Learner) -> dict[str, float]:
        """Publish the new weights every cluster.sync_every steps and hand out the next steps at once, so the
        generators work while the loop logs and checkpoints."""
        pipeline, steps = self.pipeline, self.cfg.rl.steps
        sync_s, sync_bytes = 0.0, 0  # logged as 0 on steps without a sync
        if learner.version % self.cfg.cluster.sync_every == 0 and step + 1 < steps:
            sync_s, sync_bytes = self.publish(learner)
            pipeline.fill(steps)
        return {"perf/sync_s": sync_s, "perf/sync_bytes": float(sync_bytes),
                "sync/published_version": pipeline.version,
                **{f"sync/{k}": float(v) for k, v in pipeline.counts.items()}}

    def summary(self) -> dict:
        return {"ray": dict(self.pipeline.counts), "placement": self.where}
