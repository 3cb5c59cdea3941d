"""Scorer: runs the reward model on prompt + response and fills the batch's rewards."""

from __future__ import annotations

from collections.abc import Callable

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from common import data
from common.config import DataConfig
from common.models import reward_head_logits
from common.rollout import RolloutBatch, pad_right

GoldFn = Callable[[str, str], float]  # (last user message, response) -> gold score (offline sandbox only)


class Scorer:
    """Scores responses with the reward model, formatting them exactly as in reward-model training.

    The response text is re-templated with the reward model's own tokenizer (it may differ from the policy's),
    so what the model sees at scoring time is what it saw in training: chat template, left-truncated prompt,
    score read at the last real token.
    """

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: list[tuple[dict, ...]],
                 data_cfg: DataConfig, device: torch.device, batch_size: int = 32,
                 gold_fn: GoldFn | None = None) -> None:
        self.model, self.tokenizer, self.prompts = model.eval(), tokenizer, prompts
        self.data_cfg, self.device, self.batch_size, self.gold_fn = data_cfg, device, batch_size, gold_fn

    def _encode(self, prompt_index: int, response: str) -> list[int]:
        cfg, stats = self.data_cfg, data.DataStats()
        ids = data.encode_conversation(self.tokenizer, self.prompts[prompt_index], response, cfg.max_length,
                                       cfg.max_prompt_tokens, "truncate_left", stats)
        if ids is None:  # response alone nearly fills max_length: keep its end, where the score is read
            full = self.tokenizer(data.conversation_text(self.tokenizer, self.prompts[prompt_index], response),
                                  add_special_tokens=False)["input_ids"]
            ids = full[-cfg.max_length:]
        return ids

    @torch.no_grad()
    def score_texts(self, prompt_indices: list[int], responses: list[str]) -> torch.Tensor:
        """[N] reward-model scores (the head's single output)."""
        out = []
        for start in range(0, len(responses), self.batch_size):
            seqs = [self._encode(i, r) for i, r in zip(prompt_indices[start:start + self.batch_size],
                                                       responses[start:start + self.batch_size])]
            ids, mask = pad_right(seqs, self.tokenizer.pad_token_id)
            logits = reward_head_logits(self.model, ids.to(self.device), mask.to(self.device))  # [b, 1]
            out.append(logits[:, 0].float().cpu())
        return torch.cat(out)

    def gold(self, prompt_indices: list[int], responses: list[str]) -> torch.Tensor | None:
        if self.gold_fn is None:
            return None
        return torch.tensor([self.gold_fn(self.prompts[i][-1]["content"], r)
                             for i, r in zip(prompt_indices, responses)], dtype=torch.float32)

    def score(self, batch: RolloutBatch) -> RolloutBatch:
        indices = batch.prompt_index.tolist()
        rewards = self.score_texts(indices, batch.response_texts)
        gold = self.gold(indices, batch.response_texts)
        return batch.with_rewards(rewards, **({"gold": gold} if gold is not None else {}))
