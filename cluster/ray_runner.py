"""`--stage rl --mode ray`: generator and scorer actors on a Ray cluster, a bounded queue, the learner in the
driver. The same Generator / Scorer / Learner classes as local mode, built, stepped and recorded with the same
stages/rl.py functions; only the plumbing differs.

    driver (learner) --publish(state, version)--> object store --> generator actors --ObjectRef--> scorer
    actors --put (blocks when full)--> rollout queue --get--> driver (learner)
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import ray
from ray.util.placement_group import remove_placement_group
from ray.util.queue import Queue
from tqdm.auto import tqdm

from cluster import placement
from cluster.ray_actors import RemoteGenerator, RemoteScorer, RolloutItem
from cluster.ray_pipeline import RolloutPipeline
from common import runlock
from common.config import ClusterConfig, Config
from common.errors import UserError, brief, raise_on_sigterm
from common.models import sft_policy_path
from common.rollout import concat
from common.runtime import prepare
from common.sampling import PromptSampler
from learner.learner import Learner
from stages.rl import (RLRecorder, build_policy, build_prompts, finish_rl, learn, perf_metrics, resume_checkpoint,
                       resume_learner)

ROOT = Path(__file__).resolve().parents[1]
StepHook = Callable[[int, RolloutPipeline], None]


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


def start_actors(cfg: Config, pg, bundles: list[placement.RoleBundle], prompts, prompt_tokens,
                 model_path: str) -> tuple[list, list, dict]:
    """Create the generator and scorer actors in their bundles; wait (bounded) until each is up."""
    c = cfg.cluster
    generators, scorers = [], []
    for i, b in enumerate(bundles):
        opts = placement.actor_options(pg, i, b, c.max_restarts)
        if b.role == "generator":
            generators.append(RemoteGenerator.options(**opts).remote(cfg, model_path, prompt_tokens,
                                                                    c.generator_threads))
        else:
            scorers.append(RemoteScorer.options(**opts).remote(cfg, model_path, prompts, c.scorer_threads,
                                                                  prompt_tokens))
    names = [f"generator {i}" for i in range(len(generators))] + [f"scorer {i}" for i in range(len(scorers))]
    refs = [a.info.remote() for a in generators + scorers]
    ready, pending = ray.wait(refs, num_returns=len(refs), timeout=c.placement_timeout_s)
    if pending:
        slow = [n for n, r in zip(names, refs) if r in pending]
        raise placement.PlacementError(f"actors not up within cluster.placement_timeout_s={c.placement_timeout_s:g}s: "
                                       f"{', '.join(slow)}")
    return generators, scorers, dict(zip(names, ray.get(refs)))


def run_rl_ray(cfg: Config, resume: bool = False, on_step: StepHook | None = None) -> dict:
    """The RL stage on Ray; returns what run_rl_local returns, plus the run's drop/retry counts and placement.

    `on_step(step, pipeline)` runs after every learner step (tests use it to kill actors mid-run).
    """
    resumed = resume_checkpoint(cfg) if resume else None  # refuses before anything is written
    device = prepare(cfg)
    with ray_session(cfg.cluster):
        tokenizer, prompts, prompt_tokens = build_prompts(cfg)
        policy, reference = build_policy(cfg, device)
        learner = Learner(policy, reference, cfg.rl, device)
        start = resume_learner(learner, resumed) if resumed else 0
        pg, bundles = placement.reserve(cfg.cluster)
        queue = None
        try:
            generators, scorers, where = start_actors(cfg, pg, bundles, prompts, prompt_tokens,
                                                      sft_policy_path(cfg))
            (Path(cfg.run_dir) / "ray_placement.json").write_text(json.dumps(where, indent=2))
            queue = Queue(maxsize=cfg.cluster.queue_size)
            pipeline = RolloutPipeline(generators, scorers, queue, PromptSampler(len(prompts), cfg.rl.batch_size,
                                       cfg.seed), cfg.seed, cfg.cluster.max_staleness, cfg.cluster.data_timeout_s,
                                       {role: info["pid"] for role, info in where.items()})
            metrics = train(cfg, learner, pipeline, tokenizer, start, on_step)
        finally:
            if queue is not None:
                queue.shutdown()
            remove_placement_group(pg)  # also ends the actors placed in it
        return finish_rl(cfg, learner, tokenizer, metrics, ray=pipeline.counts, placement=where)


def train(cfg: Config, learner: Learner, pipeline: RolloutPipeline, tokenizer, start: int,
          on_step: StepHook | None) -> dict[str, float]:
    """The learner loop: take step t's batch off the queue, update, publish weights, log, checkpoint."""
    steps, c = cfg.rl.steps, cfg.cluster
    recorder = RLRecorder(cfg, start, learner, tokenizer)
    pipeline.publish(learner.policy_state(), learner.version)
    pipeline.start_at(start)
    metrics: dict[str, float] = {}
    t_prev = time.perf_counter()
    for step in tqdm(range(start, steps), initial=start, total=steps, desc="rl (ray)"):
        pipeline.fill(steps)
        t0 = time.perf_counter()
        items = pipeline.collect(step, learner.version)
        batch = concat([it.batch for it in items], tokenizer.pad_token_id)
        t1 = time.perf_counter()
        metrics = learn(cfg, learner, batch, tokenizer)
        t2 = time.perf_counter()
        sync_s, sync_bytes = 0.0, 0  # logged as 0 on steps without a sync
        if learner.version % c.sync_every == 0 and step + 1 < steps:
            sync_s, sync_bytes = pipeline.publish(learner.policy_state(), learner.version)
            pipeline.fill(steps)  # hand out the next steps before logging and checkpointing
        metrics.update(step_metrics(batch, items, t1 - t0, t2 - t1, time.perf_counter() - t_prev))
        metrics.update({"perf/sync_s": sync_s, "perf/sync_bytes": float(sync_bytes),
                        "sync/published_version": pipeline.version,
                        **{f"sync/{k}": float(v) for k, v in pipeline.counts.items()}})
        t_prev = time.perf_counter()
        recorder.record(step, metrics, learner)
        if on_step is not None:
            on_step(step, pipeline)
    recorder.close()
    return metrics


def step_metrics(batch, items: list[RolloutItem], t_wait: float, t_learn: float, t_step: float) -> dict[str, float]:
    """perf/ figures of one step. Shards run in parallel, so a phase's time is its slowest shard's; the
    rates use the wall time between learner steps (what overlap buys)."""
    t_gen = max(it.generate_s for it in items)
    out = perf_metrics(batch, t_gen, max(it.score_s for it in items), t_learn)
    tokens = float(batch.response_mask.sum())
    out.update({"perf/step_s": t_step, "perf/samples_per_s": batch.batch_size / t_step,
                "perf/tokens_per_s": tokens / t_step, "perf/wait_s": t_wait,
                "perf/weight_load_s": max(it.weight_load_s for it in items)})
    return out
