"""Memory knobs change memory, not the algorithm: micro-batches and gradient checkpointing give the full-batch
update (gradients equal to float tolerance, the baseline unchanged)."""

import pytest
import torch

from common.config import RLConfig
from common.models import build_tiny_policy, frozen_copy
from helpers import TINY, scored_batch
from learner.learner import Learner

CPU = torch.device("cpu")


def one_step(tokenizer, batch, **rl):
    """Gradients (before the optimizer's update) and the baseline after one step from the same start."""
    policy = build_tiny_policy(TINY, tokenizer, seed=0).eval()
    learner = Learner(policy, frozen_copy(policy), RLConfig(lr=1e-3, kl_coef=0.1, **rl), CPU)
    learner.baseline.update(torch.tensor([0.3, -0.1]))  # a nonzero baseline from "earlier" batches
    grads = {}
    step = learner.optimizer.step

    def keep_grads(*args, **kwargs):  # read the accumulated gradients at the moment the update uses them
        grads.update({n: p.grad.clone() for n, p in policy.named_parameters() if p.grad is not None})
        return step(*args, **kwargs)

    learner.optimizer.step = keep_grads
    metrics = learner.step(batch)
    return grads, learner.baseline.state_dict(), metrics


@pytest.mark.parametrize("rl", [{"micro_batch_size": 3}, {"micro_batch_size": 1}, {"gradient_checkpointing": True},
                                {"micro_batch_size": 4, "gradient_checkpointing": True}])
def test_memory_knobs_give_the_full_batch_update(tokenizer, policy, rl):
    batch = scored_batch(policy, tokenizer, n=8)  # micro-batches of 3: 3 + 3 + 2, unequal on purpose
    full_grads, full_baseline, full = one_step(tokenizer, batch)
    grads, baseline, metrics = one_step(tokenizer, batch, **rl)
    assert grads.keys() == full_grads.keys() and grads
    for name, g in grads.items():
        assert torch.allclose(g, full_grads[name], rtol=1e-4, atol=1e-6), name
    assert baseline == full_baseline
    for key in ("losses/policy", "losses/grad_norm", "rollout/kl", "baseline/advantage_std"):
        assert metrics[key] == pytest.approx(full[key], rel=1e-4, abs=1e-6), key


def bench_line(capsys, tmp_path, tokenizer, *overrides):
    """bench/bench_memory.py on configs/tiny.yaml with conftest's tiny shape; returns (rm GiB, rl GiB, output)."""
    import json
    import re
    from pathlib import Path

    from bench.bench_memory import main
    from common.models import tiny_llama_config

    shape = tmp_path / "shape.json"
    shape.write_text(json.dumps(tiny_llama_config(TINY, tokenizer).to_dict()))
    root = Path(__file__).resolve().parents[1]
    assert main(["--config", str(root / "configs" / "tiny.yaml"), "--model-config", str(shape), "device=cpu",
                 "data.max_length=64", "data.max_prompt_tokens=48", "generator.max_new_tokens=32", *overrides]) == 0
    out = capsys.readouterr().out
    last = out.strip().splitlines()[-1]
    m = re.fullmatch(r"peak rm step: ([\d.]+) GiB; peak rl step: ([\d.]+) GiB; fits 16 GiB: (yes|no)", last)
    assert m, last
    return float(m[1]), float(m[2]), out


def activations(out, step):
    import re
    return float(re.search(rf"{step} step[^:]*: .*activations ([\d.]+) GiB", out)[1])


def test_bench_memory_counts_what_the_knobs_save(capsys, tmp_path, tokenizer):
    """Fewer sequences per forward and checkpointing lower the counted activations; the last line is the verdict."""
    rm_full, rl_full, full = bench_line(capsys, tmp_path, tokenizer, "rl.micro_batch_size=0")
    _, _, micro = bench_line(capsys, tmp_path, tokenizer, "rl.micro_batch_size=4", "reward.batch_size=4",
                             "reward.grad_accum=4")
    _, _, ckpt = bench_line(capsys, tmp_path, tokenizer, "rl.gradient_checkpointing=true",
                            "reward.gradient_checkpointing=true")
    for step in ("rm", "rl"):
        assert activations(micro, step) < activations(full, step) / 2, step
        assert activations(ckpt, step) < activations(full, step), step


def phase_total(out, phase):
    import re
    return float(re.search(rf"rl step, {phase} phase: .* = ([\d.]+) GiB", out)[1])


def test_bench_memory_counts_backend_auto_as_vllm_on_a_gpu(capsys, tmp_path, tokenizer):
    """The CPU count is for a 16 GiB GPU: auto counts vLLM's reservation (0.3 x 16 GiB) while the learner runs, as
    backend=vllm does; a sized KV cache shrinks it; vllm_sleep moves it out of the learner phase."""
    _, auto_peak, auto = bench_line(capsys, tmp_path, tokenizer)
    _, hf_peak, hf = bench_line(capsys, tmp_path, tokenizer, "generator.backend=hf")
    _, sized_peak, sized = bench_line(capsys, tmp_path, tokenizer, "generator.kv_cache_gb=1")
    _, _, asleep = bench_line(capsys, tmp_path, tokenizer, "generator.vllm_sleep=true")
    assert "generator: vllm (auto" in auto and "generator: hf (generator.backend=hf)" in hf
    assert "generator (vllm) 4.80 GiB" in auto and "generator (vllm)" not in hf
    assert auto_peak == pytest.approx(hf_peak + 4.80, abs=0.011)
    assert sized_peak == pytest.approx(hf_peak + 1.0, abs=0.011)  # 1 GiB + the tiny model's 16-bit weights
    assert phase_total(asleep, "learner") == phase_total(hf, "learner")
    assert phase_total(asleep, "generation") == phase_total(auto, "generation")


def test_bench_memory_counts_lora_adapters_and_no_reference(tokenizer):
    """With model.lora the bench's policy carries the adapters: gradients and AdamW moments of the adapters only, the
    frozen base in fp32, no reference copy; without it, all of the policy's and a reference."""
    from bench.bench_memory import build, rl_step_cpu
    from common.config import load_config
    from common.models import tiny_llama_config
    from helpers import CONFIG

    small = ["device=cpu", "data.max_prompt_tokens=8", "generator.max_new_tokens=4", "rl.micro_batch_size=2"]
    phases = {}
    for lora in (False, True):
        cfg = load_config(CONFIG, [*small, f"model.lora.enabled={str(lora).lower()}"])
        policy, rm = build(cfg, tiny_llama_config(TINY, tokenizer), CPU)
        phases[lora] = rl_step_cpu(cfg, policy, rm, torch.float32, "hf")["learner phase"]
        adapters = sum(p.numel() * 4 for n, p in policy.named_parameters() if "lora_" in n)
        base = sum(p.numel() * 4 for n, p in policy.named_parameters() if "lora_" not in n)
        assert bool(adapters) == lora
        trained = adapters if lora else base
        assert phases[lora]["policy weights"] == base + adapters
        assert phases[lora]["policy grads"] == trained and phases[lora]["policy adam"] == 2 * trained
        assert phases[lora]["reference weights"] == (0 if lora else base)
        assert phases[lora]["reward model weights"] == rm.num_parameters() * 4


def test_memory_per_learner_rank_counts_the_shards_by_hand():
    """bench/memory_ranks.py: SmolLM2-1.7B's parameters from its shape, and a rank's shards of the fp32 state (policy,
    reference, gradients: 4P/N each; AdamW 8P/N) and FSDP2's gathered units, against hand-computed values."""
    from bench.bench_memory import model_config
    from bench.memory_ranks import parameters, rank_parts
    from common.config import load_config
    from common.models import ASSETS

    shape = model_config(ASSETS / "smollm2-1.7b-config.json")
    h, i, v, layers = 2048, 8192, 49152, 24
    layer = 4 * h * h + 3 * h * i + 2 * h  # q, k, v, o (32 kv heads of 64 = h) + gate, up, down + 2 norms
    assert parameters(shape) == (layers * layer + v * h + h, layer, v * h + h)  # tied head: the embedding once
    small = model_config(ASSETS / "smollm2-135m-config.json")
    small.num_hidden_layers = 2
    cfg = load_config(None, ["cluster.learner_ranks=4", "rl.batch_size=8", "rl.micro_batch_size=1",
                             "generator.max_new_tokens=4", "data.max_prompt_tokens=8"])
    p, lay, root = parameters(small)
    parts = rank_parts(cfg, small)
    assert [parts[k] for k in ("policy shards", "reference shards", "gradient shards", "AdamW shards")] == [
        4 * p // 4, 4 * p // 4, 4 * p // 4, 8 * p // 4]
    assert parts["FSDP2 gathered (root, 2 layers, 1 layer's grads)"] == 4 * (root + 3 * lay)
    assert parts["logits gradient"] == 1 * 4 * 49152 * 4 and parts["activations"] > 0
