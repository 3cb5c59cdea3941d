"""Peak memory of one reward-model step and one RL step at a config's sizes (worst case: every sequence at its
maximum length), on a random model of the real shape, so it runs offline:

    python bench/bench_memory.py --config configs/smollm2_helpsteer2.yaml [key=value ...]

Ends with one line: `peak rm step: X GiB; peak rl step: Y GiB; fits 16 GiB: yes|no`.

On CUDA it runs the steps (autocast in model.dtype / reward.precision, GradScaler, AdamW, every micro-batch)
and reads `torch.cuda.max_memory_allocated`. On CPU it counts the same quantities:
- parameters of every resident model (policy, reference, reward model; fp32 master weights); with LoRA
  (model.lora.enabled) the policy is the frozen base plus its adapters and there is no reference copy (the
  reference is the policy with its adapters off),
- gradients and AdamW state (2 fp32 tensors) of the trained parameters (with LoRA: the adapters' only),
- activations saved for backward by ONE micro-batch's forward, counted with
  `torch.autograd.graph.saved_tensors_hooks` (unique storages; the fp32 parameters themselves excluded, their
  16-bit autocast copies included) under CPU autocast in the GPU's 16-bit dtype (bf16 and fp16 have the same
  size); measured on 1 and 2 rows at full length and extrapolated linearly to the micro-batch's rows,
- the loss's backward transient: the gradient of the fp32 response logits [b, R, V],
- the generator's share: hf = its KV cache at (prompt + response) tokens while it samples (a phase of its own:
  the learner's activations and gradients are freed by then); vllm = what vLLM reserves (gpu_memory_utilization
  of 16 GiB, or kv_cache_gb + its 16-bit weights), in the generation phase and, unless generator.vllm_sleep, in
  the learner phase too. generator.backend=auto is counted as what it resolves to for the target: on CUDA what
  actors/generator.choose_backend picks on this GPU; on the CPU count of a 16 GiB GPU as vllm, what auto picks on
  a GPU where vLLM is installed (scripts/install.py installs it for a driver >= 580 and compute capability
  >= 7.5; vLLM implements the Llama counted here); without vLLM there (a T4 on a CUDA 12 driver) a run samples
  with hf: count that with generator.backend=hf.
The rl step's peak is the larger of its two phases; both are printed.
The CPU count omits the CUDA allocator's fragmentation and kernel workspaces (typically a few hundred MiB), and
vLLM's activation workspace and CUDA graphs.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from actors.generator import choose_backend
from bench.random_model import REAL_SHAPE
from common.config import Config, load_config
from common.models import apply_lora, frozen_copy, resolve_device, reward_head_logits, unwrap
from common.reward_head import head_from_config
from common.rollout import RolloutBatch
from learner import losses
from learner.learner import Learner, checkpointed_layers, response_token_logprobs
from learner.precision import resolve_dtype
from learner.reward_losses import bradley_terry_loss

GIB = 2 ** 30
GPU_GIB = 16
T4_USABLE_GIB = 15  # what a 16 GB T4 leaves usable


def model_config(path: Path) -> LlamaConfig:
    raw = json.loads(path.read_text())
    return LlamaConfig(**{k: v for k, v in raw.items() if k not in ("architectures", "dtype", "torch_dtype")})


def nbytes(params) -> int:
    return sum(p.numel() * p.element_size() for p in params)


def saved_bytes(model: torch.nn.Module, forward) -> int:
    """Bytes of the distinct storages autograd saves for backward during `forward()` (parameters excluded)."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        if s.data_ptr() not in params:
            seen[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        forward()
    return sum(seen.values())


def per_rows(rows: int, measure) -> int:
    """measure(r) at r = 1 and 2 rows, extrapolated linearly (saved activations are per row plus a constant)."""
    one, two = measure(1), measure(2)
    return max(one + (rows - 1) * (two - one), 0) if rows > 1 else one


def training_state(model: torch.nn.Module) -> int:
    """fp32 weights + gradients + AdamW's two moments of the trained parameters."""
    return nbytes(model.parameters()) + 3 * trained_bytes(model)


def trained_bytes(model: torch.nn.Module) -> int:
    return nbytes(p for p in model.parameters() if p.requires_grad)


def base_bytes(model: torch.nn.Module) -> int:
    """The weights a generator holds: the model's without LoRA's adapters (it gets them merged)."""
    return nbytes(p for n, p in model.named_parameters() if ".lora_" not in n)


def rollout(cfg: Config, rows: int, vocab: int, device: torch.device) -> RolloutBatch:
    """Random prompts of max_prompt_tokens and responses of max_new_tokens (no EOS): the longest batch."""
    p, r = cfg.data.max_prompt_tokens, cfg.generator.max_new_tokens
    g = torch.Generator().manual_seed(0)
    ones = lambda n: torch.ones(rows, n, dtype=torch.long)  # noqa: E731
    return RolloutBatch(prompt_ids=torch.randint(3, vocab, (rows, p), generator=g), prompt_mask=ones(p),
                        response_ids=torch.randint(3, vocab, (rows, r), generator=g), response_mask=ones(r),
                        prompt_index=torch.arange(rows), version=0, rewards=torch.randn(rows, generator=g),
                        temperature=cfg.generator.temperature).to(device)


def build(cfg: Config, shape: LlamaConfig, device: torch.device):
    """The policy (with LoRA adapters when model.lora.enabled) and the reward model as the rl stage holds it."""
    torch.manual_seed(0)
    policy = apply_lora(LlamaForCausalLM(shape).to(device).eval(), cfg.model.lora, "CAUSAL_LM")
    rm_shape = copy.deepcopy(shape)
    rm_shape.num_labels = head_from_config(cfg.reward).num_labels
    reward_model = LlamaForSequenceClassification(rm_shape).to(device)
    return policy, reward_model


def rm_step_cpu(cfg: Config, rm: torch.nn.Module, dtype: torch.dtype | None) -> dict[str, float]:
    length, seqs = cfg.data.max_length, 2 * cfg.reward.batch_size  # chosen and rejected of each pair
    rm = apply_lora(rm, cfg.reward.lora, "SEQ_CLS")
    if cfg.reward.gradient_checkpointing:
        unwrap(rm).gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if hasattr(rm, "enable_input_require_grads"):  # LoRA: frozen embeddings would cut the graph
            rm.enable_input_require_grads()
    rm.train()

    def measure(rows: int) -> int:
        ids = torch.randint(3, rm.config.vocab_size, (rows, length))
        mask = torch.ones_like(ids)

        def forward():
            with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
                logits = reward_head_logits(rm, ids, mask).float()
                n = max(rows // 2, 1)
                bradley_terry_loss(logits[:n, 0], logits[-n:, 0])
        return saved_bytes(rm, forward)

    return {"weights+grads+adam": training_state(rm), "activations": per_rows(seqs, measure)}


def rl_step_cpu(cfg: Config, policy, reward_model, dtype: torch.dtype, backend: str) -> dict[str, dict[str, int]]:
    """The rl step's two phases, each {part: bytes}: the learner's update, and generation (the generator samples
    while the policy's gradients are freed: zero_grad(set_to_none=True))."""
    micro = cfg.rl.micro_batch_size or cfg.rl.batch_size
    shape = policy.config
    r, v = cfg.generator.max_new_tokens, shape.vocab_size
    if cfg.rl.gradient_checkpointing:  # as the Learner turns it on
        unwrap(policy).gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if hasattr(policy, "enable_input_require_grads"):
            policy.enable_input_require_grads()

    def measure(rows: int) -> int:
        batch = rollout(cfg, rows, v, torch.device("cpu"))

        def forward():
            with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32), \
                    checkpointed_layers(policy, cfg.rl.gradient_checkpointing):
                lp = losses.sequence_logprobs(response_token_logprobs(policy, batch), batch.response_mask.float())
                losses.reinforce_loss(lp, batch.rewards)
        return saved_bytes(policy, forward)

    half = 2 if dtype != torch.float32 else 4
    tokens = cfg.data.max_prompt_tokens + r
    kv = 2 * shape.num_hidden_layers * shape.num_key_value_heads * (shape.hidden_size // shape.num_attention_heads)
    resident = {"policy weights": nbytes(policy.parameters()), "policy adam": 2 * trained_bytes(policy),
                "reference weights": 0 if cfg.model.lora.enabled else nbytes(policy.parameters()),
                "reward model weights": base_bytes(reward_model)}
    learner = {**resident, "policy grads": trained_bytes(policy), "activations": per_rows(micro, measure),
               "logits gradient": micro * r * v * 4}
    if backend == "vllm":  # vLLM's reservation: while it samples, and while the learner runs unless it sleeps
        awake = vllm_share(cfg, policy, half)
        learner["generator (vllm)"] = 0 if cfg.generator.vllm_sleep else awake
        generation = {**resident, "generator (vllm)": awake}
    else:
        generation = {**resident, "generator (hf KV cache)": kv * tokens * cfg.rl.batch_size * half}
    return {"learner phase": learner, "generation phase": generation}


def vllm_share(cfg: Config, policy, half: int) -> int:
    """What vLLM reserves on the GPU while awake: kv_cache_gb + its 16-bit weights, or gpu_memory_utilization of
    the card."""
    gen = cfg.generator
    if gen.kv_cache_gb:
        return int(gen.kv_cache_gb * GIB) + base_bytes(policy) // 4 * half
    return int(gen.gpu_memory_utilization * GPU_GIB * GIB)


def counted_backend(cfg: Config, shape: LlamaConfig, device: torch.device) -> tuple[str, str]:
    """(backend, why): the generator the count includes; generator.backend=auto as it resolves for the target."""
    if cfg.generator.backend != "auto":
        return cfg.generator.backend, f"generator.backend={cfg.generator.backend}"
    if device.type == "cuda":  # what a run on this GPU picks
        with tempfile.TemporaryDirectory() as model_dir:
            saved = copy.deepcopy(shape)
            saved.architectures = ["LlamaForCausalLM"]
            saved.save_pretrained(model_dir)
            return choose_backend(cfg, model_dir, device)
    return "vllm", ("auto, counted for a 16 GiB GPU with vLLM installed, where auto picks it for this Llama "
                    "(without vLLM a run samples with hf: count it with generator.backend=hf)")


def cuda_peak(step) -> int:
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated()


def rm_step_cuda(cfg: Config, rm, dtype: torch.dtype | None, device: torch.device) -> int:
    """One reward-model update: grad_accum micro-batches of batch_size pairs at max_length, AdamW, GradScaler."""
    rm = apply_lora(rm, cfg.reward.lora, "SEQ_CLS")
    if cfg.reward.gradient_checkpointing:
        unwrap(rm).gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if hasattr(rm, "enable_input_require_grads"):
            rm.enable_input_require_grads()
    rm.train()
    opt = torch.optim.AdamW([p for p in rm.parameters() if p.requires_grad], lr=1e-6)
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    b = cfg.reward.batch_size

    def step():
        for _ in range(cfg.reward.grad_accum):
            ids = torch.randint(3, rm.config.vocab_size, (2 * b, cfg.data.max_length), device=device)
            with torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
                logits = reward_head_logits(rm, ids, torch.ones_like(ids)).float()
                loss = bradley_terry_loss(logits[:b, 0], logits[b:, 0])
            scaler.scale(loss / cfg.reward.grad_accum).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
    return cuda_peak(step)


def rl_step_cuda(cfg: Config, policy, reward_model, dtype: torch.dtype, device: torch.device, backend: str) -> int:
    """One Learner.step (all micro-batches) with the reward model resident, plus vLLM's reservation when it stays
    awake (the generation phase holds less: no activations or gradients)."""
    learner = Learner(policy, None if cfg.model.lora.enabled else frozen_copy(policy), cfg.rl, device, dtype)
    batch = rollout(cfg, cfg.rl.batch_size, policy.config.vocab_size, device)

    def step():
        learner.step(batch)
    awake = backend == "vllm" and not cfg.generator.vllm_sleep
    return cuda_peak(step) + (vllm_share(cfg, policy, 2 if dtype != torch.float32 else 4) if awake else 0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--model-config", default=str(REAL_SHAPE), help="shape of the random model (config.json)")
    parser.add_argument("--gpu-dtype", default="float16", choices=("float16", "bfloat16"),
                        help="CPU count: the 16-bit dtype model.dtype=auto and reward.precision=auto resolve to on "
                             "the target GPU")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--reward-model-config", default=str(REAL_SHAPE), help="cluster.learner_ranks > 1: shape "
                        "of the reward model a scorer holds (reward.init's)")
    parser.add_argument("--gpu-gib", type=float, default=24.0, help="cluster.learner_ranks > 1: the card's size")
    parser.add_argument("--usable-gib", type=float, default=22.0, help="cluster.learner_ranks > 1: what it leaves "
                        "usable (an L4 or A10G reports 22.5 GiB)")
    parser.add_argument("--spare", type=float, default=0.15, help="cluster.learner_ranks > 1: share to keep free")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    if args.threads:
        torch.set_num_threads(args.threads)
    if cfg.cluster.learner_ranks > 1:  # a sharded learner on a GPU cluster: counted per rank (bench/memory_ranks.py)
        from bench.memory_ranks import report
        fits = report(cfg, model_config(Path(args.model_config)), args.gpu_gib, args.usable_gib, args.spare,
                      model_config(Path(args.reward_model_config)))
        return 0 if fits else 1
    device = resolve_device(cfg.device if cfg.device != "auto" else "auto")
    shape = model_config(Path(args.model_config))
    policy, rm = build(cfg, shape, device)
    backend, why = counted_backend(cfg, shape, device)
    print(f"generator: {backend} ({why})")
    trainable = sum(p.numel() for p in policy.parameters() if p.requires_grad)
    print(f"policy: {trainable / 1e6:.2f}M of {sum(p.numel() for p in policy.parameters()) / 1e6:.2f}M parameters "
          f"trained{' (LoRA adapters)' if cfg.model.lora.enabled else ''}")
    if device.type == "cuda":
        dtype = resolve_dtype(cfg.model.dtype, device)
        rm_peak = rm_step_cuda(cfg, rm, resolve_dtype(cfg.reward.precision, device, "reward.precision"), device)
        del rm
        rl_peak = rl_step_cuda(cfg, policy, build(cfg, shape, device)[1], dtype, device, backend)
        print(f"measured on {torch.cuda.get_device_name(device)} (max_memory_allocated)")
    else:
        gpu = getattr(torch, args.gpu_dtype)
        dtype = gpu if cfg.model.dtype == "auto" else resolve_dtype(cfg.model.dtype, torch.device("cpu"))
        rm_dtype = {"auto": gpu, "float16": torch.float16, "bfloat16": torch.bfloat16, "float32": None}[
            cfg.reward.precision]
        rm_parts = rm_step_cpu(cfg, rm, rm_dtype)
        phases = rl_step_cpu(cfg, policy, rm, dtype, backend)
        for name, parts in (("rm step", rm_parts), *((f"rl step, {k}", v) for k, v in phases.items())):
            print(f"{name}: " + ", ".join(f"{k} {v / GIB:.2f} GiB" for k, v in parts.items()) +
                  f" = {sum(parts.values()) / GIB:.2f} GiB")
        rm_peak, rl_peak = sum(rm_parts.values()), max(sum(parts.values()) for parts in phases.values())
    peak = max(rm_peak, rl_peak)
    print(f"headroom: {100 * (1 - peak / (GPU_GIB * GIB)):.0f}% of {GPU_GIB} GiB, "
          f"{100 * (1 - peak / (T4_USABLE_GIB * GIB)):.0f}% of a T4's {T4_USABLE_GIB} GiB usable")
    print(f"peak rm step: {rm_peak / GIB:.2f} GiB; peak rl step: {rl_peak / GIB:.2f} GiB; "
          f"fits {GPU_GIB} GiB: {'yes' if peak <= GPU_GIB * GIB else 'no'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
