"""Generator: prompts -> sampled responses as a `RolloutBatch`. `Generator` is the `hf` backend (transformers
`generate`); `build_generator` builds either backend (`actors/vllm_generator.py` is imported only when asked for)."""

from __future__ import annotations

import torch
from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase

from common.config import Config, GeneratorConfig
from common.models import load_causal_lm
from common.rollout import RolloutBatch, pad_left, rollout_batch


class Generator:
    """Samples one response per prompt from the current policy weights.

    `prompt_tokens[i]` holds the chat-templated, already length-checked token ids of prompt i; batches refer
    to prompts by index so only ids cross process boundaries. Sampling is pure temperature / top-p sampling
    (top_k off, no repetition penalty): REINFORCE needs samples from the policy it differentiates.
    """

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, cfg: GeneratorConfig,
                 prompt_tokens: list[list[int]], device: torch.device) -> None:
        if cfg.backend != "hf":
            raise ValueError(f"Generator is the hf backend; generator.backend={cfg.backend!r} goes through "
                             "build_generator")
        self.model, self.tokenizer, self.cfg = model, tokenizer, cfg
        self.prompt_tokens, self.device = prompt_tokens, device
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
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            out = self.model.generate(input_ids=prompt_ids, attention_mask=prompt_mask,
                                      generation_config=self.generation_config(greedy))
        self.model.train(was_training)
        return rollout_batch(prompt_ids.cpu(), prompt_mask.cpu(), out[:, prompt_ids.shape[1]:].cpu(),
                             prompt_indices, self.version, self.tokenizer,
                             temperature=1.0 if greedy else self.cfg.temperature)

    def load_weights(self, state_dict: dict[str, torch.Tensor], version: int) -> None:
        """Replace the weights with the learner's (full, LoRA-merged names) and record their version."""
        missing, unexpected = self.model.load_state_dict(state_dict, strict=False)
        missing = [k for k in missing if not k.endswith("lm_head.weight")]  # tied to the embeddings
        if missing or unexpected:
            raise ValueError(f"weight sync mismatch: missing {missing[:5]}, unexpected {unexpected[:5]}")
        self.version = version


def build_generator(cfg: Config, model_path: str, tokenizer: PreTrainedTokenizerBase,
                    prompt_tokens: list[list[int]], device: torch.device):
    """A generator of backend `cfg.generator.backend` holding its own copy of the policy at `model_path`.

    Both backends share one interface: `generate(prompt_indices, seed, greedy=False) -> RolloutBatch`,
    `load_weights(state_dict, version)` and `.version`. hf keeps fp32 weights like the local runner's shared
    policy (autocast on GPU comes from the caller), so a weight sync from the learner is an exact copy.
    """
    if cfg.generator.backend == "hf":
        model = load_causal_lm(model_path, device, torch.float32)
        return Generator(model, tokenizer, cfg.generator, prompt_tokens, device)
    if cfg.generator.backend == "vllm":
        from actors.vllm_generator import VLLMGenerator  # vLLM is optional: imported only when asked for
        return VLLMGenerator(cfg, model_path, tokenizer, prompt_tokens, device)
    raise ValueError(f"unknown generator.backend {cfg.generator.backend!r}; use hf or vllm")
