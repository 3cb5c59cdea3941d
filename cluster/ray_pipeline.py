"""Driver side of Ray mode: dispatch generation, collect scored shards from the queue, sync weights, and
handle failures. Pure bookkeeping around Ray calls; the learner math stays in learner/.

Staleness. Step t's batch is generated with the newest published weights once they are at most
`max_staleness` versions behind t (the learner's version before step t is t). `max_staleness = 0` therefore
waits for the weights of step t: the paper's on-policy algorithm, bit for bit the local runner's loop.
`max_staleness = k` lets generation run up to k steps ahead of learning. A shard older than the bound when
its step is learned (possible after a failure and retry) is dropped, counted, and generated again.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass

import ray
from ray.util.queue import Empty, Queue

from cluster.ray_actors import RolloutItem
from common.errors import UserError, brief
from common.sampling import PromptSampler, shard_seed

POLL_S = 0.5  # how often a waiting learner looks for failed tasks between queue reads
PING_S = 30.0  # longest a health check waits for an actor (a restarting one answers after its restart)


class RolloutError(UserError, RuntimeError):
    """An actor died (restarts exhausted) or failed, or no data came within cluster.data_timeout_s."""


def split(indices: list[int], n: int) -> list[list[int]]:
    """Contiguous, near-equal shards (empty ones are left out)."""
    size, extra = divmod(len(indices), n)
    out, start = [], 0
    for i in range(n):
        end = start + size + (1 if i < extra else 0)
        out.append(indices[start:end])
        start = end
    return [s for s in out if s]


@dataclass
class Flight:
    """One shard on its way: generate -> score_into -> queue."""
    step: int
    shard: int
    generator: int
    scorer: int
    generate_ref: ray.ObjectRef
    score_ref: ray.ObjectRef


def is_duplicate(item: RolloutItem, next_step: int, held: set[tuple[int, int]]) -> bool:
    """A shard already held or already learned: a retried scorer call that had put it before dying."""
    return item.step < next_step or (item.step, item.shard) in held


def staleness(batch_version: int, learner_version: int) -> int:
    """Learner steps between the weights that generated a batch and the weights it updates."""
    return learner_version - batch_version


class RolloutPipeline:
    def __init__(self, generators: list, scorers: list, queue: Queue, sampler: PromptSampler, seed: int,
                 max_staleness: int, data_timeout_s: float, pids: dict[str, int] | None = None) -> None:
        self.generators, self.scorers, self.queue, self.sampler = generators, scorers, queue, sampler
        self.seed, self.max_staleness, self.data_timeout_s = seed, max_staleness, data_timeout_s
        self.ping_timeout_s = min(PING_S, data_timeout_s)
        self.flights: dict[tuple[int, int], Flight] = {}
        self.buffer: dict[tuple[int, int], RolloutItem] = {}
        self.next_dispatch = 0
        self.weights_ref: ray.ObjectRef | None = None
        self.version = -1
        self.counts = {"dropped": 0, "duplicates": 0, "redispatched": 0, "restarts": 0}
        self.pids: dict[str, int] = dict(pids or {})  # role -> pid of the actor process last seen serving it

    # ------------------------------------------------------------------------------------ weight sync
    def publish(self, state: dict, version: int) -> tuple[float, int]:
        """Put the state dict in the object store once; every generator fetches that one copy (seconds, bytes)."""
        t0 = time.perf_counter()
        self.weights_ref = ray.put({k: v.detach().cpu() for k, v in state.items()})
        self.version = version
        return time.perf_counter() - t0, sum(v.numel() * v.element_size() for v in state.values())

    def publish_ref(self, ref: ray.ObjectRef, version: int) -> None:
        """Weights already in the object store (a learner group's rank 0 put them) become the published ones."""
        self.weights_ref, self.version = ref, version

    def sync_all(self, timeout_s: float) -> float:
        """Make every generator load the published weights now (tests; the loop syncs lazily per request)."""
        t0 = time.perf_counter()
        ray.get([g.load_weights.remote([self.weights_ref], self.version) for g in self.generators],
                timeout=timeout_s)
        return time.perf_counter() - t0

    # ------------------------------------------------------------------------------------ dispatch
    def fill(self, total_steps: int) -> None:
        """Dispatch every step the staleness bound allows with the published weights."""
        last = min(total_steps - 1, self.version + self.max_staleness)
        while self.next_dispatch <= last:
            for shard, indices in enumerate(split(self.sampler.batch(self.next_dispatch), len(self.generators))):
                self._dispatch(self.next_dispatch, shard, indices)
            self.next_dispatch += 1

    def start_at(self, step: int) -> None:
        self.next_dispatch = step

    def _dispatch(self, step: int, shard: int, indices: list[int] | None = None) -> None:
        if indices is None:
            indices = split(self.sampler.batch(step), len(self.generators))[shard]
        g, s = shard % len(self.generators), shard % len(self.scorers)
        gen_ref = self.generators[g].generate.remote(step, shard, indices, shard_seed(self.seed, step, shard),
                                                     [self.weights_ref], self.version)
        score_ref = self.scorers[s].score_into.remote(gen_ref, self.queue, self.data_timeout_s)
        self.flights[(step, shard)] = Flight(step, shard, g, s, gen_ref, score_ref)

    # ------------------------------------------------------------------------------------ collect
    def collect(self, step: int, learner_version: int) -> list[RolloutItem]:
        """All shards of `step`, in shard order, none staler than the bound; watches for failures and never
        waits longer than data_timeout_s without checking the actors' health."""
        n = len(split(self.sampler.batch(step), len(self.generators)))
        deadline = time.monotonic() + self.data_timeout_s
        while not self._complete(step, n, learner_version):
            try:
                item = self.queue.get(block=True, timeout=POLL_S)
            except Empty:
                item = None
            except ray.exceptions.RayActorError as e:
                raise RolloutError(f"the rollout queue actor died: {brief(e)}") from e
            if item is not None:
                self._take(item, step)
                deadline = time.monotonic() + self.data_timeout_s
            self._check_flights()
            if time.monotonic() > deadline:
                self._on_timeout(step, n)
                deadline = time.monotonic() + self.data_timeout_s
        return [self.buffer.pop((step, i)) for i in range(n)]

    def _complete(self, step: int, n: int, learner_version: int) -> bool:
        """Whether every shard of `step` is held; a held shard beyond the staleness bound is dropped,
        counted and generated again with the newest weights."""
        for shard in range(n):
            item = self.buffer.get((step, shard))
            if item is not None and staleness(item.batch.version, learner_version) > self.max_staleness:
                del self.buffer[(step, shard)]
                self.counts["dropped"] += 1
                self._dispatch(step, shard)
        return all((step, i) in self.buffer for i in range(n))

    def _take(self, item: RolloutItem, step: int) -> None:
        self._note_restarts(item)
        if is_duplicate(item, step, set(self.buffer)):
            self.counts["duplicates"] += 1
        else:
            self.buffer[(item.step, item.shard)] = item

    def _note_restarts(self, item: RolloutItem) -> None:
        """Ray restarts a dead actor and retries its call by itself, so no task fails and nothing else would
        tell: a shard made by another process than the role's previous one means a restart (counted, logged)."""
        g, s = item.shard % len(self.generators), item.shard % len(self.scorers)
        for role, pid in ((f"generator {g}", item.generator_pid), (f"scorer {s}", item.scorer_pid)):
            known = self.pids.setdefault(role, pid)
            if pid != known:
                self.pids[role] = pid
                self.counts["restarts"] += 1
                print(f"warning: {role} was restarted by Ray (pid {known} -> {pid}); its call was retried",
                      file=sys.stderr, flush=True)

    def _check_flights(self) -> None:
        """Retire finished flights; a failed one is re-dispatched if its actor is back, else the run stops."""
        if not self.flights:
            return
        refs = {f.score_ref: key for key, f in self.flights.items()}
        ready, _ = ray.wait(list(refs), num_returns=len(refs), timeout=0)
        for ref in ready:
            flight = self.flights.pop(refs[ref])
            try:
                ray.get(ref)
            except Exception as e:  # noqa: BLE001 - every failure is classified and reported below
                self._recover(flight, e)

    def _recover(self, flight: Flight, error: Exception) -> None:
        role, actor = self._failed_role(flight)
        if not isinstance(error, ray.exceptions.RayActorError) and not _caused_by_actor_death(error):
            raise RolloutError(f"{role} failed on step {flight.step} shard {flight.shard}: {brief(error)}") from error
        _, problem = self.health([(role, actor)]).get(role, (False, ""))
        if problem:
            raise RolloutError(f"{problem} (step {flight.step} shard {flight.shard} was lost: {brief(error)})") \
                from error
        self.counts["redispatched"] += 1
        self._dispatch(flight.step, flight.shard)

    def _failed_role(self, flight: Flight) -> tuple[str, object]:
        try:
            ray.get(flight.generate_ref, timeout=0)
        except Exception:  # noqa: BLE001 - the generator's task failed: it is the culprit
            return f"generator {flight.generator}", self.generators[flight.generator]
        return f"scorer {flight.scorer}", self.scorers[flight.scorer]

    def roles(self) -> list[tuple[str, object]]:
        return ([(f"generator {i}", g) for i, g in enumerate(self.generators)]
                + [(f"scorer {i}", s) for i, s in enumerate(self.scorers)])

    def health(self, roles: list[tuple[str, object]]) -> dict[str, tuple[bool, str]]:
        """Ping `roles` all at once (one timeout for all, not one each). For each that did not answer: (dead,
        a sentence naming it); dead = the actor is gone, else it is silent (hung, or waiting). A restarting
        actor answers after its restart."""
        refs = {role: actor.info.remote() for role, actor in roles}
        _, pending = ray.wait(list(refs.values()), num_returns=len(refs), timeout=self.ping_timeout_s)
        problems = {}
        for role, ref in refs.items():
            if ref in pending:
                problems[role] = (False, f"{role} did not answer a health check within {self.ping_timeout_s:g}s "
                                         f"(hung?)")
                continue
            try:
                ray.get(ref)
            except ray.exceptions.RayActorError as e:
                problems[role] = (True, f"{role} is dead and was not restarted (cluster.max_restarts exhausted?): "
                                        f"{brief(e)}")
        return problems

    def _on_timeout(self, step: int, n: int) -> None:
        """No data for data_timeout_s: name the roles that do not answer, or re-dispatch lost shards, or stop.

        A scorer runs its calls in order and a call waits for its generator's shard, so a health check sent to
        a scorer whose oldest call waits on a silent generator cannot be answered: that scorer is not named."""
        problems = self.health(self.roles())
        oldest: dict[str, str] = {}  # scorer -> generator of its oldest call in flight (flights keep dispatch order)
        for f in self.flights.values():
            oldest.setdefault(f"scorer {f.scorer}", f"generator {f.generator}")
        named = [text for role, (dead, text) in problems.items() if dead or oldest.get(role) not in problems]
        if named:
            raise RolloutError(f"no rollouts for step {step} within cluster.data_timeout_s="
                               f"{self.data_timeout_s:g}s; " + "; ".join(named))
        lost = [i for i in range(n) if (step, i) not in self.buffer and (step, i) not in self.flights]
        if not lost:
            raise RolloutError(f"no rollouts for step {step} within cluster.data_timeout_s="
                               f"{self.data_timeout_s:g}s although every actor answers; "
                               f"{len(self.flights)} shards still in flight")
        for shard in lost:
            self.counts["redispatched"] += 1
            self._dispatch(step, shard)


def _caused_by_actor_death(error: Exception) -> bool:
    """A scorer task fails with the generator's error when its input came from a dead generator."""
    cause = getattr(error, "cause", None)
    return isinstance(cause, ray.exceptions.RayActorError) or "RayActorError" in type(error).__name__
