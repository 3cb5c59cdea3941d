"""Generator: prompts -> sampled responses as a `RolloutBatch`. `Generator` is the `hf` backend (transformers
`generate`); `build_generator` builds either backend (`actors/vllm_generator.py` is imported only when asked for)."""

from __future__ import annotations

import torch
from tqdm.auto import tqdm
from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase

from common.config import Config, GeneratorConfig
from common.models import load_causal_lm
from common.rollout import RolloutBatch, pad_left, rollout_batch
from learner.compile import eager

LOGPROB_ROWS = 8  # sequences per teacher-forced forward when the hf generator records its log-probs


class Generator:
    """Samples one response per listed prompt index from the current policy weights (a prompt listed k times gets
    k independent samples, each its own row: rl.baseline=rloo).

    `prompt_tokens[i]` holds the chat-templated, already length-checked token ids of prompt i; batches refer
    to prompts by index so only ids cross process boundaries. Sampling is pure temperature / top-p sampling
    (top_k off, no repetition penalty): REINFORCE needs samples from the policy it differentiates.
    """

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, cfg: GeneratorConfig,
                 prompt_tokens: list[list[int]], device: torch.device, behaviour_logprobs: bool = False) -> None:
        self.model, self.tokenizer, self.cfg = model, tokenizer, cfg
        self.prompt_tokens, self.device, self.behaviour_logprobs = prompt_tokens, device, behaviour_logprobs
        self.version = 0

    def generation_config(self, greedy: bool = False) -> GenerationConfig:
        sampling = {} if greedy else {"temperature": self.cfg.temperature, "top_p": self.cfg.top_p, "top_k": 0}
        return GenerationConfig(
            do_sample=not greedy, max_new_tokens=self.cfg.max_new_tokens, eos_token_id=self.tokenizer.eos_token_id,
            pad_token_id=self.tokenizer.pad_token_id, bos_token_id=self.tokenizer.bos_token_id, **sampling)

    @torch.no_grad()
    def generate(self, prompt_indices: list[int], seed: int, greedy: bool = False) -> RolloutBatch:
        """Sample responses for `prompt_indices`; `seed` makes the batch reproducible."""
        prompt_ids, prompt_mask = pad_left([self.prompt_tokens[i] for i in prompt_indices],
                                           self.tokenizer.pad_token_id)
        prompt_ids, prompt_mask = prompt_ids.to(self.device), prompt_mask.to(self.device)
        was_training = self.model.training
        self.model.eval()
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), eager():  # compiled layers (model.compile) run eagerly here
            torch.manual_seed(seed)
            out = self.model.generate(input_ids=prompt_ids, attention_mask=prompt_mask,
                                      generation_config=self.generation_config(greedy))
        self.model.train(was_training)
        batch = rollout_batch(prompt_ids.cpu(), prompt_mask.cpu(), out[:, prompt_ids.shape[1]:].cpu(),
                              prompt_indices, self.version, self.tokenizer,
                              temperature=1.0 if greedy else self.cfg.temperature)
        if self.behaviour_logprobs and not greedy:
            batch.extras["generator_logprob"] = self.sequence_logprobs(batch)  # [B]
        return batch

    @torch.no_grad()
    def sequence_logprobs(self, batch: RolloutBatch) -> torch.Tensor:
        """log mu(y|x) of each sampled response under these weights, at the sampling temperature: [B] float32. The
        behaviour policy's log-probs for rl.offpolicy_correction=tis (vLLM returns its own). transformers' generate
        does not return them without keeping [B, R, V] scores, so one teacher-forced forward over the sampled
        tokens computes them, LOGPROB_ROWS sequences at a time (the learner's function, so the numbers agree)."""
        from learner.learner import response_token_logprobs  # the learner's own computation of log pi_T
        parts = []
        for start in range(0, batch.batch_size, LOGPROB_ROWS):
            rows = batch.rows(start, min(batch.batch_size, start + LOGPROB_ROWS)).to(self.device)
            token_lp = response_token_logprobs(self.model, rows)  # [b, R]
            parts.append((token_lp * rows.response_mask).sum(-1).float().cpu())
        return torch.cat(parts)

    def load_weights(self, state_dict: dict[str, torch.Tensor], version: int) -> None:
        """Replace the weights with the learner's (full, LoRA-merged names) and record their version."""
        missing, unexpected = self.model.load_state_dict(state_dict, strict=False)
        missing = [k for k in missing if not k.endswith("lm_head.weight")]  # tied to the embeddings
        if missing or unexpected:
            raise ValueError(f"weight sync mismatch: missing {missing[:5]}, unexpected {unexpected[:5]}")
        self.version = version


def choose_backend(cfg: Config, model_path: str, device: torch.device) -> tuple[str, str]:
    """(backend, why): `generator.backend` when it names one; for `auto`, vllm where it is installed and supports
    the model and device (actors/vllm_generator.unsupported_reason), hf otherwise."""
    backend = cfg.generator.backend
    if backend != "auto":
        return backend, f"generator.backend={backend}"
    from actors.vllm_generator import unsupported_reason  # imports vLLM only if it is installed
    reason = unsupported_reason(cfg, model_path, device)
    return ("hf", f"auto: {reason}") if reason else ("vllm", f"auto: vLLM is installed and runs this model on "
                                                             f"{device.type}")


def build_generator(cfg: Config, model_path: str, tokenizer: PreTrainedTokenizerBase,
                    prompt_tokens: list[list[int]], device: torch.device,
                    shared_policy: PreTrainedModel | None = None, behaviour_logprobs: bool = False):
    """The generator of the backend `choose_backend` picks (one log line says which and why) for the policy at
    `model_path`; hf samples from `shared_policy` when given (local mode: the learner's own module, so no copy
    and no sync), else from its own fp32 copy (a Ray actor), so a weight sync from the learner is an exact copy.

    Both backends share one interface: `generate(prompt_indices, seed, greedy=False) -> RolloutBatch`,
    `load_weights(state_dict, version)` and `.version`. `behaviour_logprobs`: the hf backend also fills
    extras["generator_logprob"] (vLLM always does), which rl.offpolicy_correction=tis needs.
    """
    backend, why = choose_backend(cfg, model_path, device)
    tqdm.write(f"generator: {backend} ({why})")
    if backend == "hf":
        model = shared_policy if shared_policy is not None else load_causal_lm(model_path, device, torch.float32)
        return Generator(model, tokenizer, cfg.generator, prompt_tokens, device, behaviour_logprobs)
    from actors.vllm_generator import VLLMGenerator  # vLLM is optional: imported only when used
    return VLLMGenerator(cfg, model_path, tokenizer, prompt_tokens, device)
