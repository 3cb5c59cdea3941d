"""A small supervised training loop shared by reward-model training and the sandbox SFT warm-up.

AdamW, linear warm-up then linear decay, gradient clipping, and mixed precision on GPU (fp16 with a gradient
scaler, or bf16). Plain PyTorch rather than Trainer: the reward model needs a pairwise loss on a custom
pooled head, and the loop stays readable on one screen.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

LossFn = Callable[[torch.nn.Module, Any], tuple[torch.Tensor, dict[str, float]]]


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """auto = fp16 mixed precision on GPU (the assignment's setting), full fp32 on CPU."""
    if device.type != "cuda":
        if precision in ("fp16", "bf16"):
            raise ValueError(f"reward.precision={precision} needs a GPU; use auto or fp32 on CPU")
        return None
    return {"auto": torch.float16, "fp16": torch.float16, "bf16": torch.bfloat16, "fp32": None}[precision]


def fit(model: torch.nn.Module, batches: Callable[[int], Iterable[Any]], num_batches: int, loss_fn: LossFn, *,
        epochs: int, lr: float, device: torch.device, warmup_ratio: float = 0.0, weight_decay: float = 0.0,
        max_grad_norm: float = 1.0, grad_accum: int = 1, precision: str = "auto",
        log: Callable[[int, dict[str, float]], None] | None = None, desc: str = "train") -> dict[str, float]:
    """Train `model` on `batches(epoch)` (each yields `num_batches` items); returns the last metrics."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    total = math.ceil(num_batches / grad_accum) * epochs
    scheduler = get_linear_schedule_with_warmup(optimizer, int(warmup_ratio * total), total)
    amp = autocast_dtype(precision, device)
    scaler = torch.amp.GradScaler("cuda", enabled=amp == torch.float16)
    model.train()
    step, metrics = 0, {}
    for epoch in range(epochs):
        bar = tqdm(batches(epoch), total=num_batches, desc=f"{desc} epoch {epoch + 1}/{epochs}", leave=False)
        for i, batch in enumerate(bar):
            ctx = torch.autocast(device.type, dtype=amp) if amp is not None else contextlib.nullcontext()
            with ctx:
                loss, metrics = loss_fn(model, batch)
            scaler.scale(loss / grad_accum).backward()
            if (i + 1) % grad_accum and i + 1 != num_batches:
                continue
            scaler.unscale_(optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm if max_grad_norm > 0 else math.inf)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            step += 1
            metrics = {**metrics, "grad_norm": float(grad_norm), "lr": scheduler.get_last_lr()[0]}
            bar.set_postfix(loss=f"{metrics.get('loss', float('nan')):.4f}")
            if log is not None:
                log(step, metrics)
    model.eval()
    return metrics
