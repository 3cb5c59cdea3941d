"""A small supervised training loop shared by reward-model training and the sandbox SFT warm-up.

AdamW, linear warm-up then linear decay, gradient clipping, and the RL learner's precision policy
(learner/precision.py: the same autocast dtypes, fp16 loss scaling and skipped non-finite updates). Plain
PyTorch rather than Trainer: the reward model needs a pairwise loss on a custom pooled head, and the loop stays
readable on one screen.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Iterable
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from learner.precision import GuardedUpdate, adamw, autocast, use_attention

LossFn = Callable[[torch.nn.Module, Any], tuple[torch.Tensor, dict[str, float]]]


def fit(model: torch.nn.Module, batches: Callable[[int], Iterable[Any]], num_batches: int, loss_fn: LossFn, *,
        epochs: int, lr: float, device: torch.device, warmup_ratio: float = 0.0, weight_decay: float = 0.0,
        max_grad_norm: float = 1.0, grad_accum: int = 1, dtype: torch.dtype = torch.float32,
        log: Callable[[int, dict[str, float]], None] | None = None, desc: str = "train",
        gradient_checkpointing: bool = False, hint: str = "lower the learning rate, or train in float32"
        ) -> dict[str, float]:
    """Train `model` on `batches(epoch)` (each yields `num_batches` items) under autocast to `dtype`; returns the
    last metrics. `hint` says what to change when non-finite updates stop the run.

    `grad_accum` micro-batches make one update (the loss of each is divided by grad_accum: with equal
    micro-batches the update is the one of their concatenation), so batch_size is the memory knob and
    batch_size * grad_accum the algorithm's batch."""
    params = [p for p in model.parameters() if p.requires_grad]
    use_attention(model, device, dtype)
    optimizer = adamw(params, lr, weight_decay, device)
    total = math.ceil(num_batches / grad_accum) * epochs
    scheduler = get_linear_schedule_with_warmup(optimizer, int(warmup_ratio * total), total)
    update = GuardedUpdate(optimizer, params, dtype, device, max_grad_norm, desc, hint)
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    step, metrics = 0, {}
    for epoch in range(epochs):
        # each epoch's bar stays with its last loss (leave=True); the loss refreshes with the bar, not every step
        bar = tqdm(batches(epoch), total=num_batches, desc=f"{desc} epoch {epoch + 1}/{epochs}")
        for i, batch in enumerate(bar):
            with autocast(dtype, device):
                loss, metrics = loss_fn(model, batch)
            update.backward(loss / grad_accum)
            if (i + 1) % grad_accum and i + 1 != num_batches:
                continue
            grad_norm, _ = update.step(after_step=scheduler.step)
            step += 1
            metrics = {**metrics, "grad_norm": grad_norm, "lr": scheduler.get_last_lr()[0],
                       "skipped_steps": float(update.skips.total)}
            if update.loss_scale is not None:
                metrics["loss_scale"] = update.loss_scale
            bar.set_postfix(loss=f"{metrics.get('loss', float('nan')):.4f}", refresh=False)
            if log is not None:
                log(step, metrics)
    model.eval()
    if update.skips.summary(step):
        tqdm.write(update.skips.summary(step), file=sys.stderr)
    return metrics
