"""A small supervised training loop shared by reward-model training and the sandbox SFT warm-up.

AdamW, linear warm-up then linear decay, gradient clipping, and mixed precision on GPU (fp16 with a gradient
scaler, or bf16). Plain PyTorch rather than Trainer: the reward model needs a pairwise loss on a custom
pooled head, and the loop stays readable on one screen. An update whose loss or gradient is not finite is
skipped and counted (`skipped_steps`); `MAX_CONSECUTIVE_SKIPS` in a row raise NonFiniteError.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from common.config import ConfigError
from common.models import gpu_has_bf16
from common.numerics import SkipCounter, is_finite

LossFn = Callable[[torch.nn.Module, Any], tuple[torch.Tensor, dict[str, float]]]


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """auto = fp16 mixed precision on GPU (the assignment's setting; every GPU has it), full fp32 on CPU.
    An explicit fp16/bf16 on CPU runs under CPU autocast (slow; it is how the fp16 path is tested)."""
    if precision == "auto":
        return torch.float16 if device.type == "cuda" else None
    if precision == "bf16" and device.type == "cuda" and not gpu_has_bf16(device):
        raise ConfigError(f"reward.precision=bf16: {torch.cuda.get_device_name(device)} has no native bf16; use "
                          f"reward.precision=auto (fp16 with loss scaling) or fp32")
    return {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": None}[precision]


def fit(model: torch.nn.Module, batches: Callable[[int], Iterable[Any]], num_batches: int, loss_fn: LossFn, *,
        epochs: int, lr: float, device: torch.device, warmup_ratio: float = 0.0, weight_decay: float = 0.0,
        max_grad_norm: float = 1.0, grad_accum: int = 1, precision: str = "auto",
        log: Callable[[int, dict[str, float]], None] | None = None, desc: str = "train",
        gradient_checkpointing: bool = False) -> dict[str, float]:
    """Train `model` on `batches(epoch)` (each yields `num_batches` items); returns the last metrics.

    `grad_accum` micro-batches make one update (the loss of each is divided by grad_accum: with equal
    micro-batches the update is the one of their concatenation), so batch_size is the memory knob and
    batch_size * grad_accum the algorithm's batch."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    total = math.ceil(num_batches / grad_accum) * epochs
    scheduler = get_linear_schedule_with_warmup(optimizer, int(warmup_ratio * total), total)
    amp = autocast_dtype(precision, device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)
    skips = SkipCounter(desc, "lower the learning rate, or train in fp32 (reward.precision=fp32 for the reward model)")
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    step, metrics, losses_finite = 0, {}, True
    for epoch in range(epochs):
        bar = tqdm(batches(epoch), total=num_batches, desc=f"{desc} epoch {epoch + 1}/{epochs}", leave=False)
        for i, batch in enumerate(bar):
            ctx = torch.autocast(device.type, dtype=amp) if amp is not None else contextlib.nullcontext()
            with ctx:
                loss, metrics = loss_fn(model, batch)
            losses_finite = losses_finite and is_finite(loss.detach())
            scaler.scale(loss / grad_accum).backward()
            if (i + 1) % grad_accum and i + 1 != num_batches:
                continue
            scaler.unscale_(optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm if max_grad_norm > 0 else math.inf)
            finite = losses_finite and is_finite(grad_norm)
            if finite:
                scaler.step(optimizer)  # (fp16: the scaler would skip an inf gradient too)
                scheduler.step()
            scaler.update()  # fp16: a non-finite gradient halves the loss scale
            optimizer.zero_grad(set_to_none=True)
            skips.record(not finite, "loss" if not losses_finite else "gradient")
            losses_finite = True
            step += 1
            metrics = {**metrics, "grad_norm": float(grad_norm), "lr": scheduler.get_last_lr()[0],
                       "skipped_steps": float(skips.total)}
            if scaler.is_enabled():
                metrics["loss_scale"] = float(scaler.get_scale())
            bar.set_postfix(loss=f"{metrics.get('loss', float('nan')):.4f}")
            if log is not None:
                log(step, metrics)
    model.eval()
    return metrics
