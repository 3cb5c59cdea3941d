"""The RL step's floor on the machine the bench runs on: the step's matrix-multiply FLOPs at this machine's measured
matrix-multiply rate, plus generation's weight reads at its measured memory bandwidth. A step's share of the floor
(floor / measured seconds) says how much of what the hardware allows the step realises.

Counted (a decoder-only model, no attention FLOPs: at these lengths they are a few percent): a forward costs
2 x (non-embedding parameters) FLOPs a token plus 2 x hidden x vocab for each position that goes through the LM
head. Per step of B prompts of P tokens and R new tokens:
- generation: the prefill (B x P tokens, the head at the last one) and R decode steps (B tokens each, the head at
  every one); each decode step also reads every weight once (the bytes term);
- score: the reward model's forward over B x (P + R) tokens (a scalar head: no vocabulary);
- reference: one forward over B x (P + R) tokens, the head at the R response positions only (logits_to_keep);
- policy: forward + backward, 3x the reference.
Written here rather than taken from a library: the profilers that count FLOPs do not know our step's phases.
"""

from __future__ import annotations

import time

import torch


def timed(fn, repeats: int) -> float:
    fn()  # warm-up (oneDNN builds its kernels on the first call)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def matmul_rate(hidden: int, intermediate: int, vocab: int, tokens: int, dtype: torch.dtype) -> float:
    """FLOP/s of `dtype` matrix multiplies at the model's own shapes (attention and MLP projections, the LM head),
    operands already in `dtype` (the hardware's rate, not autocast's casts), with the torch threads the bench set."""
    shapes = [(tokens, hidden, hidden), (tokens, hidden, intermediate), (tokens, intermediate, hidden),
              (max(1, tokens // 2), hidden, vocab)]
    flops = seconds = 0.0
    for m, k, n in shapes:
        a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
        seconds += timed(lambda a=a, b=b: a @ b, repeats=3)
        flops += 2.0 * m * k * n
    return flops / seconds


def bandwidth(megabytes: int = 256) -> float:
    """Bytes/s of a streaming copy (read + write) of a buffer far larger than the caches."""
    src = torch.ones(megabytes * 2**20 // 4)
    dst = torch.empty_like(src)
    return 2 * src.numel() * 4 / timed(lambda: dst.copy_(src), repeats=3)


def body_parameters(config) -> float:
    """Weights of the decoder layers' projections: q and o full, k and v shrunk by grouped-query attention; the
    MLP's gate, up and down (norms are negligible)."""
    h = config.hidden_size
    layer = 2 * h * h * (1 + config.num_key_value_heads / config.num_attention_heads) + 3 * h * config.intermediate_size
    return float(config.num_hidden_layers * layer)


def parameters(config) -> float:
    """Every weight a decode step reads: the layers, the embedding and, when not tied to it, the LM head."""
    embed = config.hidden_size * config.vocab_size
    return body_parameters(config) + embed * (1 if getattr(config, "tie_word_embeddings", False) else 2)


def step_flops(config, batch: int, prompt_len: float, new_tokens: int) -> dict[str, float]:
    """The step's FLOPs by phase for a model of transformers `config` (see the module's docstring)."""
    h, v = config.hidden_size, config.vocab_size
    body = 2.0 * body_parameters(config)  # FLOPs a token through the decoder layers
    head = 2.0 * h * v  # FLOPs a position through the LM head
    full = batch * (prompt_len + new_tokens)
    reference = body * full + head * batch * new_tokens
    return {"prefill": body * batch * prompt_len + head * batch, "decode": (body + head) * batch * new_tokens,
            "score": body * full, "reference": reference, "policy": 3 * reference}


def floor(config, batch: int, prompt_len: float, new_tokens: int, dtype: torch.dtype, weight_bytes: float) -> dict:
    """The step's floor in seconds with what it is made of; `weight_bytes`: the generator's weights in its dtype."""
    flops = step_flops(config, batch, prompt_len, new_tokens)
    rate = matmul_rate(config.hidden_size, config.intermediate_size, config.vocab_size,
                       int(batch * (prompt_len + new_tokens)), dtype)
    bw = bandwidth()
    total = sum(flops.values())
    reads = weight_bytes * new_tokens
    return {"floor_s": total / rate + reads / bw, "flops": total, "flops_by_phase": flops, "matmul_flops_per_s": rate,
            "decode_bytes": reads, "bandwidth_bytes_per_s": bw}
