"""GPU memory per learner rank of a sharded learner (cluster.learner_ranks > 1, learner/sharded.py), counted on the
CPU for a model too large to build here (bench/bench_memory.py calls it for such a config):

    python bench/bench_memory.py --config configs/smollm2_1.7b_cluster.yaml --model-config <config.json>

The parameter count comes from the architecture (the model is built on the meta device: shapes, no memory).
Per rank, with N ranks and P parameters (fp32 master weights, as the Learner keeps them):
- policy shards 4P/N, reference shards 4P/N (frozen, never gathered whole), gradient shards 4P/N, AdamW's two
  moments 8P/N;
- FSDP2's unsharded transients: the root unit (embeddings, tied LM head, final norm) gathered in fp32 for the whole
  forward, two decoder layers gathered at once (the one running and the one prefetched) and one layer's unsharded
  fp32 gradient before its reduce-scatter;
- activations of one micro-batch (rl.micro_batch_size rows, each at data.max_prompt_tokens + max_new_tokens),
  MEASURED by autograd's saved-tensor hooks on a 1- and a 2-layer model of the real width under bf16 autocast,
  extrapolated to the real depth and rows; with gradient checkpointing, plus one layer recomputed in backward;
- the loss's logits gradient [rows, R, V] fp32, and a CUDA context + NCCL buffers estimate (CONTEXT_GIB).
Roles sharing a GPU with a rank (Ray's fractional GPUs: cluster.*_gpus < 1) add their share: a vLLM generator
what it reserves (gpu_memory_utilization of the card, or kv_cache_gb + its 16-bit weights), a scorer its reward
model's fp32 weights (forwards run under autocast; activations of a no-grad forward are transient).
"""

from __future__ import annotations

import copy

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from bench.bench_memory import GIB, per_rows, rollout, saved_bytes
from common.config import Config
from learner import losses
from learner.learner import checkpointed_layers, response_token_logprobs

CONTEXT_GIB = 0.75  # CUDA context (~0.3-0.5 GiB) + NCCL's buffers, per process; an estimate, not a measurement


def parameters(shape: LlamaConfig) -> tuple[int, int, int]:
    """(all parameters, one decoder layer's, the root unit's: embeddings + final norm, the tied head included)."""
    with torch.device("meta"):
        model = LlamaForCausalLM(shape)
    total = sum(p.numel() for p in model.parameters())  # a tied weight is counted once
    layer = sum(p.numel() for p in model.model.layers[0].parameters())
    return total, layer, total - shape.num_hidden_layers * layer


def activations(cfg: Config, shape: LlamaConfig, rows: int, layers: int, checkpointing: bool) -> int:
    """Bytes saved for backward by one micro-batch's policy forward at `layers` decoder layers (bf16 autocast)."""
    small = copy.deepcopy(shape)
    small.num_hidden_layers = layers
    torch.manual_seed(0)
    model = LlamaForCausalLM(small).eval()
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    def measure(n: int) -> int:
        batch = rollout(cfg, n, shape.vocab_size, torch.device("cpu"))

        def forward():
            with torch.autocast("cpu", dtype=torch.bfloat16), checkpointed_layers(model, checkpointing):
                lp = losses.sequence_logprobs(response_token_logprobs(model, batch), batch.response_mask.float())
                losses.reinforce_loss(lp, batch.rewards)
        return saved_bytes(model, forward)
    return per_rows(rows, measure)


def per_layer(cfg: Config, shape: LlamaConfig, rows: int, checkpointing: bool) -> tuple[int, int]:
    """(saved bytes of the whole depth, one layer's increment) from a 1- and a 2-layer model."""
    one, two = (activations(cfg, shape, rows, n, checkpointing) for n in (1, 2))
    return one + (shape.num_hidden_layers - 1) * (two - one), two - one


def rank_parts(cfg: Config, shape: LlamaConfig) -> dict[str, int]:
    """{part: bytes} of one learner rank at its peak (the backward of the last micro-batch)."""
    n, rl = cfg.cluster.learner_ranks, cfg.rl
    total, layer, root = parameters(shape)
    rows = rl.micro_batch_size or rl.batch_size // n  # a rank's micro-batch (its share is B/N rows)
    rows = min(rows, rl.batch_size // n)
    saved, _ = per_layer(cfg, shape, rows, rl.gradient_checkpointing)
    parts = {"policy shards": 4 * total // n, "reference shards": 4 * total // n, "gradient shards": 4 * total // n,
             "AdamW shards": 8 * total // n, "FSDP2 gathered (root, 2 layers, 1 layer's grads)": 4 * (root + 3 * layer),
             "activations": saved, "logits gradient": rows * cfg.generator.max_new_tokens * shape.vocab_size * 4,
             "CUDA context + NCCL (estimate)": int(CONTEXT_GIB * GIB)}
    if rl.gradient_checkpointing:  # backward recomputes one layer at a time and holds its activations
        parts["one layer recomputed"] = per_layer(cfg, shape, rows, False)[1]
    return parts


def shared_roles(cfg: Config, shape: LlamaConfig, gpu_gib: float, reward_params: int) -> dict[str, int]:
    """What a role placed beside a rank on the same GPU holds (fractional cluster.*_gpus only)."""
    c, gen, out = cfg.cluster, cfg.generator, {}
    if 0 < c.generator_gpus < 1:
        total, _, _ = parameters(shape)
        out["vLLM generator"] = (int(gen.kv_cache_gb * GIB) + 2 * total if gen.kv_cache_gb
                                 else int(gen.gpu_memory_utilization * gpu_gib * GIB))
    if 0 < c.scorer_gpus < 1:
        out["scorer (reward model fp32)"] = 4 * reward_params
    return out


def report(cfg: Config, shape: LlamaConfig, gpu_gib: float, usable_gib: float, spare: float,
           reward_shape: LlamaConfig | None) -> bool:
    """Print the per-rank count and the worst GPU (a rank plus the largest role beside it); True if it fits with
    `spare` of `usable_gib` left."""
    total, layer, root = parameters(shape)
    n = cfg.cluster.learner_ranks
    print(f"policy {total / 1e9:.3f}B parameters (one decoder layer {layer / 1e6:.1f}M, root unit {root / 1e6:.1f}M); "
          f"{n} learner ranks, {cfg.rl.batch_size // n} rows each")
    parts = rank_parts(cfg, shape)
    rank = sum(parts.values())
    print("per learner rank: " + ", ".join(f"{k} {v / GIB:.2f}" for k, v in parts.items()) + f" = {rank / GIB:.2f} GiB")
    reward_params = parameters(reward_shape or shape)[0] if cfg.reward.model_weight else 0
    beside = shared_roles(cfg, shape, gpu_gib, reward_params)
    for role, size in beside.items():
        print(f"beside a rank on its GPU: {role} {size / GIB:.2f} GiB")
    worst = rank + max(beside.values(), default=0)
    budget = (1 - spare) * usable_gib * GIB
    fits = worst <= budget
    print(f"worst GPU: {worst / GIB:.2f} GiB of {usable_gib:g} GiB usable ({gpu_gib:g} GiB card): "
          f"{100 * (1 - worst / (usable_gib * GIB)):.0f}% spare; fits with {100 * spare:.0f}% spare: "
          f"{'yes' if fits else 'no'}")
    return fits
