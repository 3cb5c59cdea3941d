"""Ray mode on a small local Ray instance (one per module): queue backpressure, staleness, weight sync,
actor failures, and step-by-step equivalence with local mode. Tiny random models; every wait is bounded."""

import dataclasses
import os
import shutil
import signal
import time

import pytest
import torch

ray = pytest.importorskip("ray")

from ray.util.queue import Full, Queue  # noqa: E402

from cluster.placement import PlacementError, reserve, role_bundles  # noqa: E402
from cluster.ray_actors import RemoteGenerator, RemoteScorer  # noqa: E402
from cluster.ray_pipeline import RolloutError, RolloutPipeline  # noqa: E402
from cluster.ray_rollouts import ROOT  # noqa: E402
from common.config import ConfigError, load_config  # noqa: E402
from common.models import build_tiny_policy, save_untrained_stand_ins  # noqa: E402
from common.sampling import PromptSampler  # noqa: E402
from helpers import TINY, make_generator, read_metrics, tiny_overrides, train_prompts  # noqa: E402
from stages.rl import run_rl  # noqa: E402

WAIT = 60  # seconds any single Ray wait in these tests may take


@pytest.fixture(scope="module")
def ray_instance():
    env = {"PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false"}
    ray.init(num_cpus=4, include_dashboard=False, runtime_env={"env_vars": env}, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def base_run(tmp_path_factory, tokenizer):
    run_dir = tmp_path_factory.mktemp("ray_base")
    save_untrained_stand_ins(run_dir, TINY, tokenizer)
    train_prompts(load_config(None, tiny_overrides(run_dir)))  # writes the sandbox data once
    return run_dir


@pytest.fixture
def run_copy(base_run, tmp_path):
    def make(name):
        shutil.copytree(base_run, tmp_path / name)
        return tmp_path / name
    return make


@pytest.fixture(scope="module")
def actors(ray_instance, base_run):
    """Two generators and a scorer shared by the component tests."""
    cfg = load_config(None, tiny_overrides(base_run))
    prompts, prompt_tokens = train_prompts(cfg)
    model = str(base_run / "sft_model")
    gens = [RemoteGenerator.options(num_cpus=0.5).remote(cfg, model, prompt_tokens, 1) for _ in range(2)]
    scorer = RemoteScorer.options(num_cpus=0.5).remote(cfg, model, str(base_run / "reward_model"), prompts, 1)
    ray.get([a.info.remote() for a in gens + [scorer]], timeout=WAIT)
    return cfg, gens, scorer, len(prompts)


def test_split_and_concat_shards_keep_every_row(policy, tokenizer):
    """Shards of different widths join into one batch whose rows are the shards' rows, re-padded."""
    from cluster.ray_pipeline import split
    from common.rollout import concat
    from common.sampling import shard_seed

    assert split(list(range(7)), 3) == [[0, 1, 2], [3, 4], [5, 6]] and split([4], 3) == [[4]]
    assert shard_seed(3, 5, 0) == 3 * 1_000_003 + 5 != shard_seed(3, 5, 1)
    gen = make_generator(policy, tokenizer, max_new_tokens=5)
    a = gen.generate([0, 1], seed=0).with_rewards(torch.tensor([1.0, 2.0]), gold=torch.tensor([0.0, 1.0]))
    b = gen.generate([5], seed=1).with_rewards(torch.tensor([3.0]), gold=torch.tensor([2.0]))
    ab = concat([a, b], tokenizer.pad_token_id)
    assert ab.prompt_index.tolist() == [0, 1, 5] and ab.rewards.tolist() == [1.0, 2.0, 3.0]
    assert ab.extras["gold"].tolist() == [0.0, 1.0, 2.0] and ab.response_texts == a.response_texts + b.response_texts
    for rows, part in ((slice(0, 2), a), (slice(2, 3), b)):
        for i, j in zip(range(rows.start, rows.stop), range(part.batch_size)):
            assert (ab.prompt_ids[i][ab.prompt_mask[i].bool()].tolist()
                    == part.prompt_ids[j][part.prompt_mask[j].bool()].tolist())
            assert (ab.response_ids[i][ab.response_mask[i].bool()].tolist()
                    == part.response_ids[j][part.response_mask[j].bool()].tolist())
    with pytest.raises(ValueError, match="different policy versions"):
        concat([a, dataclasses.replace(b, version=1)], tokenizer.pad_token_id)


def test_cluster_config_is_validated():
    with pytest.raises(ConfigError, match="cluster.sync_every=3 needs cluster.max_staleness >= 2"):
        load_config(None, ["cluster.sync_every=3"])
    with pytest.raises(ConfigError, match="cluster.generator_resources: 'node2' is not NAME:AMOUNT"):
        load_config(None, ["cluster.generator_resources=node2"])
    cfg = load_config(None, ["cluster.generator_resources=node2:1", "cluster.sync_every=2", "cluster.max_staleness=1"])
    assert role_bundles(cfg.cluster)[0].resources == {"CPU": 1.0, "node2": 1.0}


def test_unplaceable_actors_fail_fast_naming_the_bundles(ray_instance):
    cfg = load_config(None, ["cluster.generator_gpus=1", "cluster.placement_timeout_s=2"])
    t0 = time.monotonic()
    with pytest.raises(PlacementError, match=r"generator 0: \{'CPU': 1.0, 'GPU': 1.0\}"):
        reserve(cfg.cluster)
    assert time.monotonic() - t0 < 15


def test_queue_backpressure_blocks_the_scorer_and_never_drops(actors):
    cfg, gens, scorer, _ = actors
    weights = [ray.put(ray.get(gens[0].state_dict.remote(), timeout=WAIT))]
    queue = Queue(maxsize=1)
    items = [gens[0].generate.remote(step, 0, [step, step + 1], step, weights, 0) for step in range(3)]
    puts = [scorer.score_into.remote(item, queue, WAIT) for item in items]
    ray.get(puts[0], timeout=WAIT)
    blocked, _ = ray.wait(puts[1:], timeout=2.0)
    assert blocked == [] and queue.qsize() == 1, "a full queue must block the scorer's put"
    got = [queue.get(timeout=WAIT).step for _ in range(3)]  # each get frees a slot for the next put
    assert got == [0, 1, 2], "nothing dropped, order kept"
    ray.get(puts, timeout=WAIT)
    assert queue.empty()
    # A put that cannot finish within its timeout fails loudly instead of dropping the batch.
    queue.put("occupant")
    with pytest.raises(ray.exceptions.RayTaskError) as err:
        ray.get(scorer.score_into.remote(gens[0].generate.remote(9, 0, [0], 0, weights, 0), queue, 1.0),
                timeout=WAIT)
    assert isinstance(err.value.cause, Full)
    queue.shutdown()


def test_weight_sync_is_bitwise_and_versioned(actors, tokenizer):
    cfg, gens, scorer, n_prompts = actors
    learner_policy = build_tiny_policy(TINY, tokenizer, seed=0)
    with torch.no_grad():  # a learner a few steps in: weights that differ from the generators' SFT copy
        for p in learner_policy.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    queue = Queue(maxsize=4)
    pipeline = RolloutPipeline(gens, [scorer], queue, PromptSampler(n_prompts, 4, 0), 0, 0, WAIT)
    seconds, nbytes = pipeline.publish(learner_policy.state_dict(), version=7)
    assert nbytes == sum(v.numel() * v.element_size() for v in learner_policy.state_dict().values())
    pipeline.sync_all(WAIT)
    expected = learner_policy.state_dict()
    for gen in gens:
        got = ray.get(gen.state_dict.remote(), timeout=WAIT)
        assert got.keys() == expected.keys()
        assert all(torch.equal(got[k], expected[k]) for k in expected), "weights differ after sync"
        assert ray.get(gen.info.remote(), timeout=WAIT)["version"] == 7
    queue.shutdown()


def test_stale_shards_are_dropped_counted_and_regenerated(actors):
    cfg, gens, scorer, n_prompts = actors
    weights = ray.get(gens[0].state_dict.remote(), timeout=WAIT)
    queue = Queue(maxsize=4)
    pipeline = RolloutPipeline(gens, [scorer], queue, PromptSampler(n_prompts, 4, 0), 0, 1, WAIT)
    pipeline.publish(weights, version=0)
    pipeline.fill(total_steps=10)  # steps 0 and 1 (bound 1), two shards each, sampled with version 0
    assert pipeline.next_dispatch == 2
    first = pipeline.collect(0, learner_version=0)
    assert [it.batch.version for it in first] == [0, 0] and pipeline.counts["dropped"] == 0
    # The learner jumps ahead (as after a resume): step 1's version-0 shards are now 2 steps old > bound 1.
    pipeline.publish(weights, version=2)
    second = pipeline.collect(1, learner_version=2)
    assert pipeline.counts["dropped"] == 2, "both stale shards counted"
    assert [it.batch.version for it in second] == [2, 2], "regenerated with the newest weights"
    assert [it.shard for it in second] == [0, 1] and all(it.step == 1 for it in second)
    queue.put(first[0])  # a retried scorer call re-putting a learned shard: dropped as a duplicate
    pipeline.fill(total_steps=10)
    pipeline.collect(2, learner_version=2)
    assert pipeline.counts["duplicates"] == 1
    queue.shutdown()


def test_learner_timeout_names_a_hung_generator(actors):
    """A frozen generator (SIGSTOP) sends nothing and fails no task: after data_timeout_s the learner pings
    every role and stops with an error naming the one that does not answer."""
    cfg, gens, scorer, n_prompts = actors
    weights = ray.get(gens[0].state_dict.remote(), timeout=WAIT)
    queue = Queue(maxsize=4)
    pipeline = RolloutPipeline(gens, [scorer], queue, PromptSampler(n_prompts, 4, 0), 0, 0, data_timeout_s=3)
    pipeline.publish(weights, version=0)
    pid = ray.get(gens[0].info.remote(), timeout=WAIT)["pid"]
    os.kill(pid, signal.SIGSTOP)
    try:
        pipeline.fill(total_steps=3)
        t0 = time.monotonic()
        with pytest.raises(RolloutError, match="generator 0 did not answer a health check"):
            pipeline.collect(0, learner_version=0)
        assert time.monotonic() - t0 < 3 + 3 + 10
    finally:
        os.kill(pid, signal.SIGCONT)
    ray.get([g.info.remote() for g in gens], timeout=WAIT)  # alive again for the next test
    queue.shutdown()


def test_dead_generator_stops_the_learner_with_an_error_naming_it(actors):
    """Runs last among the tests sharing `actors`: it kills one of them for good."""
    cfg, gens, scorer, n_prompts = actors
    weights = ray.get(gens[0].state_dict.remote(), timeout=WAIT)
    queue = Queue(maxsize=4)
    pipeline = RolloutPipeline(gens, [scorer], queue, PromptSampler(n_prompts, 4, 0), 0, 0, data_timeout_s=5)
    pipeline.publish(weights, version=0)
    ray.kill(gens[1], no_restart=True)
    pipeline.fill(total_steps=3)
    t0 = time.monotonic()
    with pytest.raises(RolloutError, match="generator 1 is dead"):
        pipeline.collect(0, learner_version=0)
    assert time.monotonic() - t0 < 5 + 30, "the learner stops within its data timeout plus a health check"
    queue.shutdown()


@pytest.mark.slow
def test_ray_matches_local_step_by_step_through_a_generator_kill_and_resume(ray_instance, run_copy):
    """One generator, max_staleness 0, same seed: the same losses as local mode, step by step, although the
    generator's process is killed mid-run (Ray restarts it, it reloads the published weights and the retried
    request samples the same batch) and the run is stopped after step 2 and continued with --resume. The Ray run
    also probes held-out prompts (rl.eval_every) and the local one does not: the probe leaves training unchanged."""
    local_dir, ray_dir = run_copy("local"), run_copy("ray")
    run_rl(load_config(None, tiny_overrides(local_dir, steps=3)))
    pids = []

    def kill_generator(step, source):  # after step 0 (step 1 is already dispatched), look again after step 1
        pids.append(ray.get(source.pipeline.generators[0].info.remote(), timeout=WAIT)["pid"])
        if step == 0:
            os.kill(pids[0], signal.SIGKILL)

    probe = ["rl.eval_every=2", "rl.eval_prompts=4"]
    result = run_rl(load_config(None, tiny_overrides(ray_dir, steps=2) + probe), mode="ray", on_step=kill_generator)
    assert result["steps"] == 2 and len(pids) == 2 and pids[1] != pids[0], "generator 0 was restarted"
    run_rl(load_config(None, tiny_overrides(ray_dir, steps=3) + probe), resume=True, mode="ray")
    local, remote = read_metrics(local_dir), read_metrics(ray_dir)
    assert [m["step"] for m in remote if "eval/gold" in m and "eval_ood/gold" in m] == [0, 2, 3]
    remote = [m for m in remote if "losses/policy" in m]
    assert [m["step"] for m in remote] == [1, 2, 3]
    for a, b in zip(local, remote):
        for key in ("losses/policy", "rollout/reward", "rollout/kl", "rollout/logprob", "baseline/value"):
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-6), (a["step"], key)
        assert b["sync/staleness"] == 0 and b["sync/version"] == a["step"]
    tags = set(remote[-1])
    for group in ("rollout/", "perf/", "sync/"):
        assert any(t.startswith(group) for t in tags), group
    assert {"perf/sync_s", "perf/sync_bytes", "sync/staleness", "sync/dropped"} <= tags
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(ray_dir / "tensorboard" / "rl"))
    events.Reload()
    scalars = events.Tags()["scalars"]
    for tag in ("rollout/reward", "rollout/eos_rate", "perf/samples_per_s", "perf/sync_s", "sync/staleness"):
        assert tag in scalars, f"TensorBoard lacks {tag}"


@pytest.mark.slow
def test_generation_runs_ahead_with_staleness_one_and_two_generators(ray_instance, run_copy):
    """max_staleness 1, two generators: every batch is at most one version old, and the run completes. The stale
    batches are corrected by truncated importance sampling (rl.offpolicy_correction=auto), with the hf generator
    actors' own log-probs: weights 1 at staleness 0 (the same weights; up to bf16 autocast rounding where the CPU has
    it, over each shard's own padding: measured 0.9993), clearly not 1 after (measured 0.94, 1.47).
    RLOO with 2 samples per prompt rides along: each generator samples one prompt twice, the groups reach the learner
    whole and their advantages average to 0."""
    run_dir = run_copy("ahead")
    rloo = ["rl.baseline=rloo", "rl.rloo_k=2"]
    result = run_rl(load_config(None, tiny_overrides(run_dir, steps=3, max_staleness=1, num_generators=2) + rloo),
                    mode="ray")
    metrics = read_metrics(run_dir)
    assert result["steps"] == 3 and [m["step"] for m in metrics] == [1, 2, 3]
    assert [m["sync/staleness"] for m in metrics] == [0, 1, 1], "steps 1 and 2 were generated one version back"
    weights = [m["sync/tis_weight_mean"] for m in metrics]
    assert weights[0] == pytest.approx(1.0, abs=5e-3) and all(abs(w - 1.0) > 1e-2 for w in weights[1:]), weights
    assert all(m["baseline/advantage_mean"] == pytest.approx(0.0, abs=1e-5) for m in metrics)
    assert result["placement"]["generator 0"]["pid"] != result["placement"]["generator 1"]["pid"]


@pytest.mark.slow
def test_reward_functions_are_loaded_in_the_scorer_actor_without_a_reward_model(ray_instance, run_copy, monkeypatch):
    """reward.model_weight=0 and a relative FILE.py: the scorer actor, whose working directory is not the driver's,
    loads the function itself from the absolute path the driver passes, and no reward model exists."""
    run_dir = run_copy("functions")
    shutil.rmtree(run_dir / "reward_model")
    (run_dir / "ray_rewards.py").write_text("def length(completion_ids, **kwargs):\n"
                                            "    return [float(len(ids)) for ids in completion_ids]\n")
    monkeypatch.chdir(run_dir)
    functions = ["reward.model_weight=0", "reward.functions=ray_rewards.py:length"]
    result = run_rl(load_config(None, tiny_overrides(run_dir, steps=2) + functions), mode="ray")
    assert result["steps"] == 2 and result["reward_components"]["text"] == "1 x ray_rewards.py:length (no reward model)"
    for m in read_metrics(run_dir):
        assert m["rollout/reward"] == pytest.approx(m["rollout/reward_fn/length"]) and "rollout/rm_reward" not in m
