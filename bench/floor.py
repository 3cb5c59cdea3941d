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

CPU = torch.device("cpu")


def timed(fn, repeats: int, device: torch.device = CPU) -> float:
    """The fastest of `repeats` calls after a warm-up (oneDNN builds its kernels on the first call): a rate the
    machine reaches, not one diluted by another process's moment on the core. On a GPU each call is waited for."""
    if device.type == "cuda":
        fn = (lambda f: lambda: (f(), torch.cuda.synchronize()))(fn)
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def matmul_rates(hidden: int, intermediate: int, vocab: int, tokens: int, dtype: torch.dtype,
                 device: torch.device = CPU) -> dict[str, float]:
    """FLOP/s of `dtype` matrix multiplies at the model's own shapes, operands already in `dtype` (the hardware's
    rate, not autocast's casts), with the torch threads the bench set: the decoder layers' projections ("body")
    and the LM head ("head", a 49k-wide output that runs at about half the rate on this CPU), apart."""
    groups = {"body": [(tokens, hidden, hidden), (tokens, hidden, intermediate), (tokens, intermediate, hidden)],
              "head": [(max(1, tokens // 2), hidden, vocab)]}
    rates = {}
    for name, shapes in groups.items():
        flops = seconds = 0.0
        for m, k, n in shapes:
            a, b = torch.randn(m, k, dtype=dtype, device=device), torch.randn(k, n, dtype=dtype, device=device)
            seconds += timed(lambda a=a, b=b: a @ b, repeats=10, device=device)
            flops += 2.0 * m * k * n
        rates[name] = flops / seconds
    return rates


def bandwidth(megabytes: int = 256) -> float:
    """Bytes/s of a streaming copy (read + write) of a buffer far larger than the caches."""
    src = torch.ones(megabytes * 2**20 // 4)
    dst = torch.empty_like(src)
    return 2 * src.numel() * 4 / timed(lambda: dst.copy_(src), repeats=5)


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


def step_flops(config, batch: int, prompt_len: float, new_tokens: int) -> dict[str, tuple[float, float]]:
    """The step's FLOPs by phase for a model of transformers `config`, as (decoder layers, LM head) (see the
    module's docstring)."""
    body = 2.0 * body_parameters(config)  # FLOPs a token through the decoder layers
    head = 2.0 * config.hidden_size * config.vocab_size  # FLOPs a position through the LM head
    full = batch * (prompt_len + new_tokens)
    reference = (body * full, head * batch * new_tokens)
    return {"prefill": (body * batch * prompt_len, head * batch), "decode": (body * batch * new_tokens,
                                                                             head * batch * new_tokens),
            "score": (body * full, 0.0), "reference": reference, "policy": (3 * reference[0], 3 * reference[1])}


def floor(config, batch: int, prompt_len: float, new_tokens: int, dtype: torch.dtype, weight_bytes: float) -> dict:
    """The step's floor in seconds with what it is made of; `weight_bytes`: the generator's weights in its dtype."""
    flops = step_flops(config, batch, prompt_len, new_tokens)
    rates = matmul_rates(config.hidden_size, config.intermediate_size, config.vocab_size,
                         int(batch * (prompt_len + new_tokens)), dtype)
    bw = bandwidth()
    body, head = (sum(f[i] for f in flops.values()) for i in (0, 1))
    reads = weight_bytes * new_tokens
    return {"floor_s": body / rates["body"] + head / rates["head"] + reads / bw, "flops": body + head,
            "flops_by_phase": {k: sum(v) for k, v in flops.items()}, "body_flops_per_s": rates["body"],
            "head_flops_per_s": rates["head"], "decode_bytes": reads, "bandwidth_bytes_per_s": bw}
