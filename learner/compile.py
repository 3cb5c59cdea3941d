"""torch.compile for the policy, reference and reward-model passes (`model.compile`, off by default).

Regional compilation: each decoder layer is compiled, not the whole model. The layers of a model share one code
object and torch.compile passes their weights in as inputs, so one compiled graph serves every layer of the
policy, the reference and the reward model alike: on SmolLM2-135M (CPU, bf16, one thread) a new width compiles in
7-20 s against ~80 s for the whole model, then the learner's forward + backward runs about a third faster, the
reference and reward-model forwards too (bench/README.md). What it fuses is the layer's
elementwise work (RMSNorm, rotary, SiLU-gate, the autocast casts); the matrix multiplies are the same kernels.

Shapes are static (dynamic-shape kernels measured slower than eager on CPU), so every new width compiles once:
the callers pad their batches to a multiple of `model.compile_bucket` tokens (`RolloutBatch.left_padded_to` in
the learner, `pad_right(..., multiple)` in the scorer), so a run sees a
few widths, not one per step. `perf/compile_s` reports the seconds spent compiling in each step, so the start-up
cost is counted, not hidden in the first steps' timings.

Generation never runs the compiled layers: the hf generator's decode steps (one new token, a growing cache)
would compile a graph per length; `eager()` switches compilation off around them.
"""

from __future__ import annotations

import time

import torch
import torch._dynamo
import torch._dynamo.callback
from transformers.modeling_layers import GradientCheckpointingLayer

RECOMPILE_LIMIT = 64  # widths x {grad, no-grad, adapters on/off} per run; past it torch falls back to eager
_seconds = {"total": 0.0, "since": None, "counting": False}


def _on_start(*_) -> None:
    _seconds["since"] = time.perf_counter()


def _on_end(*_) -> None:
    if _seconds["since"] is not None:
        _seconds["total"] += time.perf_counter() - _seconds["since"]
        _seconds["since"] = None


def compile_layers(model: torch.nn.Module) -> int:
    """Compile each decoder layer of `model` in place (static shapes); returns how many were compiled."""
    layers = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]
    if not layers:
        raise ValueError(f"model.compile: {type(model).__name__} has no transformers decoder layers to compile; "
                         "set model.compile=false")
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
    if not _seconds["counting"]:  # once per process, however many models are compiled
        torch._dynamo.callback.on_compile_start(_on_start)
        torch._dynamo.callback.on_compile_end(_on_end)
        _seconds["counting"] = True
    for layer in layers:
        layer.compile(dynamic=False)
    return len(layers)


def compile_seconds() -> float:
    """Seconds this process has spent compiling (every compiled model), for perf/compile_s."""
    return _seconds["total"]


def compile_bucket(model_cfg) -> int:
    """The `compile_bucket` argument of Learner and Scorer from the config's model section: 0 = eager."""
    return model_cfg.compile_bucket if model_cfg.compile else 0


def eager():
    """A context in which compiled layers run eagerly (generation: its shapes change every token)."""
    return torch.compiler.set_stance("force_eager")
