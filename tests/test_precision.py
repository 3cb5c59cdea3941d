"""The precision policy on CPU (learner/precision.py, common/numerics.py): model.dtype resolution, the fp16 learner
(loss scaling under CPU autocast), non-finite losses and gradients skipped then stopping the run, in the learner
and in fit (learner/train_loop.py). That no stage saves non-finite weights is in test_checkpoint.py."""

from pathlib import Path

import pytest
import torch

from common.config import ConfigError, RLConfig
from common.models import frozen_copy, unwrap
from common.numerics import MAX_CONSECUTIVE_SKIPS, NonFiniteError
from helpers import scored_batch
from learner import precision
from learner.learner import Learner
from learner.precision import attention_for, precision_line, resolve_dtype
from learner.train_loop import fit

CPU = torch.device("cpu")
CUDA = torch.device("cuda")


def fake_gpu(monkeypatch, capability):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla T4")


def test_auto_dtype_is_bf16_only_where_the_gpu_or_the_cpu_has_it(monkeypatch):
    """One rule for every precision setting: model.dtype and reward.precision resolve alike; on CPU bf16 only
    where AMX makes it fast, with one line saying which and why."""
    monkeypatch.setattr(precision, "cpu_has_amx", lambda: False)
    assert resolve_dtype("auto", CPU) == torch.float32
    assert precision_line("auto", CPU, torch.float32) == ("model.dtype=auto: float32 autocast on cpu (this CPU has "
                                                          "no AMX, where bf16 is no faster than float32)")
    monkeypatch.setattr(precision, "cpu_has_amx", lambda: True)
    assert resolve_dtype("auto", CPU) == torch.bfloat16
    assert resolve_dtype("auto", CPU, "reward.precision") == torch.bfloat16
    assert "bfloat16 autocast on cpu, fp32 master weights (this CPU has AMX" in precision_line(
        "auto", CPU, torch.bfloat16)
    assert resolve_dtype("float32", CPU) == torch.float32
    fake_gpu(monkeypatch, (7, 5))  # T4
    assert resolve_dtype("auto", CUDA) == torch.float16
    with pytest.raises(ConfigError, match=r"model.dtype=bfloat16: Tesla T4 \(compute capability 7.5\).*float16"):
        resolve_dtype("bfloat16", CUDA)
    with pytest.raises(ConfigError, match=r"^reward.precision=bfloat16: Tesla T4 .*reward.precision=auto"):
        resolve_dtype("bfloat16", CUDA, "reward.precision")
    fake_gpu(monkeypatch, (8, 0))  # A100
    assert resolve_dtype("auto", CUDA) == torch.bfloat16
    assert resolve_dtype("auto", CUDA, "reward.precision") == torch.bfloat16
    assert resolve_dtype("float16", CUDA) == torch.float16


def weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_fp16_learner_scales_the_loss_and_updates(policy, tokenizer):
    """Under fp16 autocast (CPU here) the learner scales the loss; the update is finite and changes weights."""
    batch = scored_batch(policy, tokenizer)
    learner = Learner(policy, frozen_copy(policy), RLConfig(lr=1e-3), CPU, torch.float16)
    before = weights(policy)
    m = learner.step(batch)
    assert learner.update.scaler is not None and m["losses/loss_scale"] == 2.0 ** 12
    assert m["losses/skipped_steps"] == 0.0
    after = weights(policy)
    assert all(torch.isfinite(v).all() for v in after.values())
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert learner.state_dict()["scaler"]["scale"] == 2.0 ** 12  # resumed runs keep their loss scale


def test_fp16_overflow_is_skipped_and_backs_off_the_scale(policy, tokenizer):
    batch = scored_batch(policy, tokenizer)
    learner = Learner(policy, frozen_copy(policy), RLConfig(lr=1e-3), CPU, torch.float16)
    learner.update.scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 60)  # every fp16 gradient overflows
    before = weights(policy)
    m = learner.step(batch)
    assert m["losses/skipped_steps"] == 1.0 and m["losses/loss_scale"] == 2.0 ** 59
    assert all(torch.equal(before[k], v) for k, v in weights(policy).items()), "a skipped step changed weights"
    assert learner.version == 1  # the version counts steps, so the Ray pipeline's bookkeeping is unchanged


def test_non_finite_loss_skips_then_stops_the_run(policy, tokenizer):
    """rl.kl_coef=inf: every loss is NaN. Updates are skipped (weights untouched, baseline untouched), counted,
    and MAX_CONSECUTIVE_SKIPS in a row raise NonFiniteError naming the learner and what to change."""
    batch = scored_batch(policy, tokenizer)
    learner = Learner(policy, frozen_copy(policy), RLConfig(lr=1e-3, kl_coef=float("inf")), CPU)
    before = weights(policy)
    for k in range(MAX_CONSECUTIVE_SKIPS - 1):
        m = learner.step(batch)
        assert m["losses/skipped_steps"] == k + 1
    assert all(torch.equal(before[k], v) for k, v in weights(policy).items())
    assert learner.baseline.count == 0, "non-finite shaped rewards reached the baseline"
    with pytest.raises(NonFiniteError, match=r"^rl learner: 8 updates in a row skipped for a non-finite loss .*"
                                             r"rl.kl_coef"):
        learner.step(batch)


def test_a_finite_step_resets_the_run_of_skips(policy, tokenizer):
    batch = scored_batch(policy, tokenizer)
    learner = Learner(policy, frozen_copy(policy), RLConfig(lr=1e-3), CPU)
    bad = batch.with_rewards(torch.full((batch.batch_size,), float("nan")))
    for _ in range(MAX_CONSECUTIVE_SKIPS - 1):
        learner.step(bad)
    learner.step(batch)
    for _ in range(MAX_CONSECUTIVE_SKIPS - 1):
        m = learner.step(bad)
    assert m["losses/skipped_steps"] == 2 * (MAX_CONSECUTIVE_SKIPS - 1)


def fit_model(loss_values, dtype=torch.float32):
    """A linear model trained by fit() on batches whose loss is scaled by `loss_values` (nan poisons one)."""
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    x = torch.randn(16, 4)

    def loss_fn(m, scale):
        loss = m(x).pow(2).mean() * scale
        return loss, {"loss": loss.item()}

    logged = []
    metrics = fit(model, lambda epoch: iter(loss_values), len(loss_values), loss_fn, epochs=1, lr=1e-2, device=CPU,
                  dtype=dtype, log=lambda s, m: logged.append(m))
    return model, metrics, logged


def test_fit_skips_a_non_finite_loss_and_counts_it():
    model, metrics, logged = fit_model([1.0, float("nan"), 1.0])
    assert [m["skipped_steps"] for m in logged] == [0.0, 1.0, 1.0]
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_fit_stops_after_consecutive_non_finite_losses():
    with pytest.raises(NonFiniteError, match=r"^train: 8 updates in a row skipped for a non-finite loss"):
        fit_model([float("inf")] * MAX_CONSECUTIVE_SKIPS)


def test_fit_fp16_on_cpu_uses_a_grad_scaler():
    """The learner's loss scaling in fit: the first scale (2**12) overflows the fp16 gradients of this loss (20x the
    plain one): that update is skipped and counted, the scale halves, and the next three update the weights."""
    model, metrics, logged = fit_model([20.0] * 4, dtype=torch.float16)
    assert [(m["skipped_steps"], m["loss_scale"]) for m in logged] == [(1.0, 2.0 ** 11)] * 4
    torch.manual_seed(0)
    init = torch.nn.Linear(4, 1)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert not torch.equal(model.weight, init.weight)


def test_cpu_has_amx_agrees_with_the_cpu_flags():
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    if "amx_bf16" not in flags:
        pytest.skip("no /proc/cpuinfo AMX flag to compare with")
    assert precision.cpu_has_amx()


def grads(policy, batch, dtype):
    """The learner's accumulated gradient of one batch under `dtype`, flattened (no update applied)."""
    learner = Learner(policy, frozen_copy(policy), RLConfig(lr=1e-3), CPU, dtype)
    with precision.autocast(dtype, CPU):
        learner._accumulate_gradients(batch, behaviour=None)  # step 1's baseline: the batch's mean reward
    return torch.cat([p.grad.flatten() for p in policy.parameters() if p.grad is not None]), learner


def test_bf16_learner_gradient_agrees_with_fp32(policy, tokenizer):
    """bf16 autocast (eager attention, fp32 master weights) against fp32 (SDPA) on the same batch: the gradient's
    direction agrees to cosine >= 0.999 and its norm to 2% (bf16 keeps 8 bits of mantissa: ~0.4% per element)."""
    batch = scored_batch(policy, tokenizer)
    g32, l32 = grads(policy, batch, torch.float32)
    policy.zero_grad(set_to_none=True)
    g16, l16 = grads(policy, batch, torch.bfloat16)
    assert unwrap(l32.policy).config._attn_implementation == "eager"  # the bf16 learner switched the same module
    assert torch.isfinite(g16).all()
    cos = torch.nn.functional.cosine_similarity(g32, g16, dim=0).item()
    assert cos >= 0.999, cos
    assert abs(g16.norm() / g32.norm() - 1) <= 0.02


def test_eager_and_sdpa_attention_give_the_same_fp32_gradient(policy, tokenizer):
    """The switch to eager attention changes speed, not the math: in fp32 both give the same gradient."""
    batch = scored_batch(policy, tokenizer)
    g_sdpa, learner = grads(policy, batch, torch.float32)
    assert unwrap(policy).config._attn_implementation == attention_for(CPU, torch.float32) == "sdpa"
    policy.zero_grad(set_to_none=True)
    unwrap(policy).set_attn_implementation("eager")
    learner.reference.set_attn_implementation("eager")
    with precision.autocast(torch.float32, CPU):
        learner._accumulate_gradients(batch, behaviour=None)  # step 1's baseline: the batch's mean reward
    g_eager = torch.cat([p.grad.flatten() for p in policy.parameters() if p.grad is not None])
    torch.testing.assert_close(g_eager, g_sdpa, rtol=1e-4, atol=1e-6)


def test_learner_and_fit_use_fused_adamw_on_cpu(policy):
    learner = Learner(policy, frozen_copy(policy), RLConfig(), CPU, torch.float32)
    assert learner.optimizer.defaults["fused"] is True
    assert precision.adamw([torch.nn.Parameter(torch.zeros(2))], 1e-3, 0.0, torch.device("meta")).defaults[
        "fused"] is False  # no fused kernel for that device: the for-loop


def test_policy_state_in_the_generators_dtype(policy):
    """A vLLM generator's 16-bit weights receive 16-bit tensors (half the bytes); None keeps fp32 exactly."""
    learner = Learner(policy, frozen_copy(policy), RLConfig(), CPU, torch.float32)
    full, half = learner.policy_state(), learner.policy_state(torch.bfloat16)
    assert full.keys() == half.keys()
    for k, v in full.items():
        assert v.dtype == torch.float32 and half[k].dtype == torch.bfloat16
        assert torch.equal(half[k], v.to(torch.bfloat16))
    assert all(torch.equal(v, policy.state_dict()[k]) for k, v in full.items())
