"""One precision policy for every training loop (the RL learner, reward-model training, the SFT warm-up) and the
forwards that run beside them (generation, the reference).

Which dtype. `model.dtype` and `reward.precision` are resolved by the same rule: auto = bf16 on a GPU that computes
it natively (compute capability >= 8.0: A100, L4, H100), fp16 on an older GPU (a T4: bf16 is emulated there and
vLLM refuses it); on CPU bf16 where it has AMX tiles (oneDNN's bf16 matrix multiply runs at ~8x the fp32 rate
there, bench/README.md), fp32 elsewhere (bf16 without AMX is no faster than fp32 and less exact). An explicit
16-bit dtype on CPU runs under CPU autocast (it is how the fp16 paths are tested). Weights stay fp32: the
optimizer's master copy; the dtype is the autocast's. `precision_line` says which, and why, in one log line.

How fast. Where the learner trains in bf16 on CPU, attention runs transformers' eager implementation: SDPA's bf16
backward on CPU is several times eager's for the same formula (forward and fp32 equal; `attention_for`). AdamW is
the fused implementation where torch has one for the device (`adamw`: one kernel over all parameters). Measured on
the real SmolLM2-135M weights, bf16, one thread (bench/README.md, each switched off alone): policy forward +
backward 2.82 -> 2.10 s a step, AdamW 0.90 -> 0.63 s.

How an update is applied (`GuardedUpdate`). Under fp16 the loss is scaled (fp16 gradients underflow without it;
bf16 and fp32 have fp32's exponent range), the gradient is unscaled and clipped, and an update whose loss or
gradient is not finite is skipped: the weights and the optimizer are untouched, the skip is counted, and
MAX_CONSECUTIVE_SKIPS in a row stop the run (common/numerics.py). After every applied update one fused check (the
largest |weight| of each tensor) confirms the weights are still finite; an update that overflowed them (a learning
rate near float32's range) stops the run at once, before the weights are used, published or saved.
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path

import torch

from common.config import ConfigError
from common.models import unwrap
from common.numerics import NonFiniteError, SkipCounter, first_non_finite, is_finite

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}  # the settings' values
# fp16 loss scale: 2**12 leaves room below fp16's maximum for gradients of order 1 (2**16, torch's default,
# overflows on the first step of a typical run); it doubles after 100 finite steps and halves on an overflow
INIT_SCALE, GROWTH_INTERVAL = 2.0 ** 12, 100


def gpu_has_bf16(device: torch.device) -> bool:
    """Native bf16 (compute capability >= 8.0); a T4 (7.5) only emulates it, slowly, and vLLM refuses it there."""
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 0)


def cpu_has_amx() -> bool:
    """AMX tiles with bf16 (Intel Sapphire Rapids and later). torch asks the kernel for the tiles (and says no
    where the CPU or the OS lacks them); a torch without that call reads the CPU's flags."""
    init = getattr(torch._C._cpu, "_init_amx", None)
    if init is not None:
        return bool(init())
    try:
        return "amx_bf16" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


def resolve_dtype(name: str, device: torch.device, key: str = "model.dtype") -> torch.dtype:
    """A precision setting (`key`: model.dtype or reward.precision) -> the autocast dtype on `device`."""
    if name == "auto":
        if device.type != "cuda":
            return torch.bfloat16 if device.type == "cpu" and cpu_has_amx() else torch.float32
        return torch.bfloat16 if gpu_has_bf16(device) else torch.float16
    dtype = DTYPES[name]
    if dtype == torch.bfloat16 and device.type == "cuda" and not gpu_has_bf16(device):
        major, minor = torch.cuda.get_device_capability(device)
        raise ConfigError(f"{key}={name}: {torch.cuda.get_device_name(device)} (compute capability {major}.{minor}) "
                          f"has no native bf16; use {key}=auto or float16")
    return dtype


def precision_line(name: str, device: torch.device, dtype: torch.dtype, key: str = "model.dtype") -> str:
    """One log line: the dtype a setting resolved to on this device, and why."""
    short = str(dtype).removeprefix("torch.")
    if name != "auto":
        why = "as set"
    elif device.type == "cuda":
        why = "this GPU computes bf16 natively" if dtype == torch.bfloat16 else "this GPU has no native bf16"
    else:
        why = ("this CPU has AMX: bf16 matrix multiplies at several times fp32's rate" if dtype == torch.bfloat16
               else "this CPU has no AMX, where bf16 is no faster than float32")
    master = "" if dtype == torch.float32 else ", fp32 master weights"
    return f"{key}={name}: {short} autocast on {device.type}{master} ({why})"


def attention_for(device: torch.device, dtype: torch.dtype) -> str:
    """transformers' attention implementation for a model trained under `dtype` on `device`: eager for bf16 on
    CPU, where SDPA's bf16 backward is the slow path (the real weights' forward + backward: 2.82 s with SDPA, 2.10 s
    eager, bench/README.md); SDPA elsewhere (its fused kernels win on GPU and equal eager in fp32 on CPU)."""
    return "eager" if device.type == "cpu" and dtype == torch.bfloat16 else "sdpa"


def use_attention(model: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> None:
    """Switch a transformers model (or a peft model around one) to `attention_for(device, dtype)`."""
    inner = unwrap(model)
    if hasattr(inner, "set_attn_implementation") and inner.config._attn_implementation != attention_for(device, dtype):
        inner.set_attn_implementation(attention_for(device, dtype))


def adamw(params: list[torch.nn.Parameter], lr: float, weight_decay: float,
          device: torch.device) -> torch.optim.AdamW:
    """AdamW, fused into one kernel where torch has it for the device (CPU and CUDA): 0.63 s against the for-loop's
    0.90 s a step at 135M parameters on one CPU core (with clipping). The same update up to rounding."""
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=device.type in ("cpu", "cuda"))


def autocast(dtype: torch.dtype, device: torch.device) -> contextlib.AbstractContextManager:
    """Autocast to `dtype` on `device`; nothing for fp32. Policy and reference always run under the same one, so
    the KL is zero before the first update."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


class GuardedUpdate:
    """Loss scaling (fp16 only), gradient clipping and skipped non-finite updates around one optimizer.

    A loop calls `backward(loss)` for each (micro-)batch and `step()` once per update; `step` returns the
    gradient norm (before clipping) and whether the update was applied. `where` and `hint` name the loop and the
    knob to turn in the error that stops a run after too many skips in a row."""

    def __init__(self, optimizer: torch.optim.Optimizer, params: list[torch.nn.Parameter], dtype: torch.dtype,
                 device: torch.device, max_grad_norm: float, where: str, hint: str) -> None:
        self.optimizer, self.params, self.max_grad_norm = optimizer, params, max_grad_norm
        self.scaler = (torch.amp.GradScaler(device.type, init_scale=INIT_SCALE, growth_interval=GROWTH_INTERVAL)
                       if dtype == torch.float16 else None)
        self.skips = SkipCounter(where, hint)
        self.where = where
        self.loss_finite = True

    def backward(self, loss: torch.Tensor) -> None:
        self.loss_finite = self.loss_finite and is_finite(loss.detach())
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def step(self, after_step=None) -> tuple[float, bool]:
        """Unscale, clip, then apply the accumulated gradient (and call `after_step`, e.g. a scheduler's step) or
        skip it when the loss or the gradient is not finite; zero the gradients."""
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        params = [p for p in self.params if p.grad is not None]
        max_norm = self.max_grad_norm if self.max_grad_norm > 0 else math.inf
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
        finite = self.loss_finite and is_finite(grad_norm)
        if finite:
            if self.scaler is not None:
                self.scaler.step(self.optimizer)
            else:
                self.optimizer.step()
            if after_step is not None:
                after_step()
            self.check_weights()
        if self.scaler is not None:
            self.scaler.update()  # a non-finite gradient halves the scale
        self.optimizer.zero_grad(set_to_none=True)
        self.skips.record(not finite, "loss" if not self.loss_finite else "gradient")
        self.loss_finite = True
        return grad_norm, finite

    def check_weights(self) -> None:
        """Stop when the update just applied left a weight NaN or inf. Undoing it would need a copy of every weight
        before each step (as much memory again as the policy); stopping costs nothing and loses nothing that was
        saved: the checkpoints written before are intact and these weights are never used."""
        if not self.params:
            return
        largest = torch.stack(torch._foreach_norm([p.detach() for p in self.params], math.inf))  # max |w|, one sync
        if is_finite(largest):
            return
        name, bad = first_non_finite((str(i), p) for i, p in enumerate(self.params))
        tensors = int((~torch.isfinite(largest)).sum())
        raise NonFiniteError(f"{self.where}: the update just applied made weights non-finite (NaN/inf) in {tensors} "
                             f"of {len(self.params)} weight tensors (tensor #{name}: {bad} values); stopped before "
                             f"they were used or saved (earlier checkpoints are intact); {self.skips.hint}")

    @property
    def loss_scale(self) -> float | None:
        return None if self.scaler is None else float(self.scaler.get_scale())

    def state_dict(self) -> dict:
        return {"skips": self.skips.state_dict(), "scaler": None if self.scaler is None else self.scaler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if state.get("skips"):  # checkpoints from before skips were counted have none
            self.skips.load_state_dict(state["skips"])
        if state.get("scaler") and self.scaler is not None:
            self.scaler.load_state_dict(state["scaler"])
