"""`RolloutBatch`: the one wire type that crosses the queue from generator and scorer to the learner."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch


@dataclass
class RolloutBatch:
    """B sequences: a prompt and one sampled response per row. With rl.rloo_k = k > 1 a prompt fills k rows, each its
    own sample, and `prompt_index` is what groups them (learner/baseline.rloo_baseline).

    Prompts are left-padded and responses right-padded, so `cat(prompt, response)` puts every response's first
    token at the same column P: the learner scores all responses with one forward pass.
    """

    prompt_ids: torch.Tensor  # [B, P] int64, left-padded prompt tokens (chat template applied)
    prompt_mask: torch.Tensor  # [B, P] int64, 1 = real prompt token
    response_ids: torch.Tensor  # [B, R] int64, right-padded sampled tokens, EOS included when produced
    response_mask: torch.Tensor  # [B, R] int64, 1 = response token up to and including the first EOS
    prompt_index: torch.Tensor  # [B] int64, index of the prompt in the run's prompt pool (repeated: same prompt)
    version: int  # policy version (learner steps taken) of the weights that generated the batch
    response_texts: list[str] = field(default_factory=list)  # B decoded responses, special tokens skipped
    rewards: torch.Tensor | None = None  # [B] float32 reward-model scores, set by the Scorer
    # name -> [B] per-sample statistics; "generator_logprob": log mu(y|x) of the weights that sampled the row (vLLM
    # always, hf when rl.offpolicy_correction=tis), the behaviour policy of the importance weights
    extras: dict[str, torch.Tensor] = field(default_factory=dict)
    temperature: float = 1.0  # the sampling temperature: the policy that sampled is softmax(logits / temperature)

    def __post_init__(self) -> None:
        b, p = self.prompt_ids.shape
        r = self.response_ids.shape[1]
        checks = {"prompt_mask": (self.prompt_mask, (b, p)), "response_mask": (self.response_mask, (b, r)),
                  "prompt_index": (self.prompt_index, (b,))}
        for name, (t, shape) in checks.items():
            if tuple(t.shape) != shape:
                raise ValueError(f"RolloutBatch.{name} has shape {tuple(t.shape)}, expected {shape}")
        if self.response_texts and len(self.response_texts) != b:
            raise ValueError(f"RolloutBatch.response_texts has {len(self.response_texts)} items, expected {b}")

    @property
    def batch_size(self) -> int:
        return self.prompt_ids.shape[0]

    @property
    def prompt_len(self) -> int:
        return self.prompt_ids.shape[1]

    @property
    def response_lengths(self) -> torch.Tensor:  # [B]
        return self.response_mask.sum(-1)

    def finished(self, eos_token_id: int) -> torch.Tensor:  # [B] bool
        """Which responses ended with EOS; the others were cut at max_new_tokens (truncated, not finished)."""
        return (self.response_ids == eos_token_id).logical_and(self.response_mask.bool()).any(-1)

    def response_tokens(self) -> list[list[int]]:
        """Each response's sampled token ids without padding (EOS included when produced): what TRL passes reward
        functions as completion_ids."""
        return [ids[mask.bool()].tolist() for ids, mask in zip(self.response_ids, self.response_mask)]

    def input_ids(self) -> torch.Tensor:  # [B, P+R]
        return torch.cat([self.prompt_ids, self.response_ids], dim=1)

    def attention_mask(self) -> torch.Tensor:  # [B, P+R]
        return torch.cat([self.prompt_mask, self.response_mask], dim=1)

    def position_ids(self) -> torch.Tensor:  # [B, P+R]
        # The positions `generate` used: left padding is skipped, then every column counts (generate extends
        # the mask with ones, so tokens after an EOS keep counting; they are masked out anyway).
        left_pads = (self.prompt_mask.cumsum(-1) == 0).sum(-1, keepdim=True)  # [B, 1]
        columns = torch.arange(self.prompt_len + self.response_ids.shape[1], device=self.prompt_ids.device)
        return (columns[None, :] - left_pads).clamp(min=0)

    def select(self, index: torch.Tensor) -> RolloutBatch:
        """The samples at `index` ([b] int64), in that order; the padded widths P and R are kept."""
        def take(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t[index.to(t.device)]

        return dataclasses.replace(
            self, prompt_ids=take(self.prompt_ids), prompt_mask=take(self.prompt_mask),
            response_ids=take(self.response_ids), response_mask=take(self.response_mask),
            prompt_index=take(self.prompt_index), rewards=take(self.rewards),
            response_texts=[self.response_texts[i] for i in index.tolist()] if self.response_texts else [],
            extras={k: take(v) for k, v in self.extras.items()})

    def sorted_by_length(self) -> RolloutBatch:
        """The samples from shortest to longest (prompt + response tokens): consecutive micro-batches then hold
        similar lengths, and `trimmed` drops more padding from each."""
        lengths = self.prompt_mask.sum(-1) + self.response_mask.sum(-1)  # [B]
        return self.select(torch.argsort(lengths, stable=True))

    def trimmed(self) -> RolloutBatch:
        """The same samples without the columns that are padding in every row (leading prompt columns, trailing
        response columns): a micro-batch of short answers costs its own width, not the batch's longest."""
        p0 = int((self.prompt_mask.sum(0) == 0).long().cumprod(0).sum())  # leading all-padding prompt columns
        r1 = int(self.response_mask.sum(0).nonzero().max()) + 1 if self.response_mask.any() else 1
        if p0 == 0 and r1 == self.response_ids.shape[1]:
            return self
        return dataclasses.replace(self, prompt_ids=self.prompt_ids[:, p0:], prompt_mask=self.prompt_mask[:, p0:],
                                   response_ids=self.response_ids[:, :r1], response_mask=self.response_mask[:, :r1])

    def left_padded_to(self, multiple: int) -> RolloutBatch:
        """The same batch with prompt padding added on the left so that P + R is a multiple of `multiple` (a
        compiled learner sees a few widths, learner/compile.py); the added columns are masked padding, so every
        log-prob, position and mask of the real tokens is unchanged."""
        width = self.prompt_len + self.response_ids.shape[1]
        extra = -width % multiple if multiple > 1 else 0
        if extra == 0:
            return self
        zeros = torch.zeros((self.batch_size, extra), dtype=self.prompt_ids.dtype, device=self.prompt_ids.device)
        return dataclasses.replace(self, prompt_ids=torch.cat([zeros, self.prompt_ids], 1),
                                   prompt_mask=torch.cat([zeros.to(self.prompt_mask.dtype), self.prompt_mask], 1))

    def with_rewards(self, rewards: torch.Tensor, **extras: torch.Tensor) -> RolloutBatch:
        if tuple(rewards.shape) != (self.batch_size,):
            raise ValueError(f"rewards has shape {tuple(rewards.shape)}, expected ({self.batch_size},)")
        return dataclasses.replace(self, rewards=rewards.float(), extras={**self.extras, **extras})

    def rows(self, start: int, stop: int) -> RolloutBatch:
        """Samples start..stop-1 (a learner micro-batch); the padded widths P and R are kept."""
        return self.select(torch.arange(start, min(stop, self.batch_size)))

    def to(self, device: torch.device | str) -> RolloutBatch:
        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device)

        return dataclasses.replace(
            self, prompt_ids=move(self.prompt_ids), prompt_mask=move(self.prompt_mask),
            response_ids=move(self.response_ids), response_mask=move(self.response_mask),
            prompt_index=move(self.prompt_index), rewards=move(self.rewards),
            extras={k: move(v) for k, v in self.extras.items()})


def rollout_batch(prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, response_ids: torch.Tensor,
                  prompt_indices: list[int], version: int, tokenizer, temperature: float = 1.0,
                  **extras: torch.Tensor) -> RolloutBatch:
    """The wire batch from left-padded prompts [B, P] and sampled tokens [B, R]: the response mask runs through
    the first EOS and everything after it becomes padding (every generator backend builds its batches here).
    The sampling `temperature` travels with it: the learner's log-probs are those of softmax(logits / T)."""
    response_mask = response_mask_from_ids(response_ids, tokenizer.eos_token_id)  # [B, R]
    response_ids = response_ids.masked_fill(response_mask == 0, tokenizer.pad_token_id)
    texts = tokenizer.batch_decode(response_ids.masked_fill(response_mask == 0, 0).tolist(), skip_special_tokens=True)
    return RolloutBatch(prompt_ids=prompt_ids, prompt_mask=prompt_mask, response_ids=response_ids,
                        response_mask=response_mask, prompt_index=torch.tensor(prompt_indices, dtype=torch.long),
                        version=version, response_texts=[t.strip() for t in texts], extras=extras,
                        temperature=temperature)


def eos_rate(batch: RolloutBatch, eos_token_id: int) -> float:
    """Share of responses that ended with EOS within max_new_tokens."""
    return float(batch.finished(eos_token_id).float().mean())


def response_mask_from_ids(response_ids: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """[B, R] -> [B, R] mask of the tokens up to and including the first EOS.

    Works when the pad token equals EOS (SmolLM2): everything after the first EOS is padding.
    """
    is_eos = (response_ids == eos_token_id).long()
    eos_before = is_eos.cumsum(-1) - is_eos  # EOS tokens strictly before each position
    return (eos_before == 0).long()


def pad(seqs: list[list[int]], pad_id: int, side: str, multiple: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Token lists -> ([B, L] ids, [B, L] mask, 1 = real token), padded on `side` ("left" or "right"); L is the
    longest list rounded up to a multiple of `multiple` (a compiled model sees a few widths)."""
    width = max(len(s) for s in seqs)
    width += -width % multiple if multiple > 1 else 0
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if s:
            cols = slice(width - len(s), width) if side == "left" else slice(0, len(s))
            ids[i, cols] = torch.tensor(s, dtype=torch.long)
            mask[i, cols] = 1
    return ids, mask


def pad_left(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts: left padding puts every response's first token in the same column."""
    return pad(seqs, pad_id, "left")


def pad_right(seqs: list[list[int]], pad_id: int, multiple: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Responses and reward-model inputs: right padding keeps position ids contiguous from 0."""
    return pad(seqs, pad_id, "right", multiple)


def concat(batches: list[RolloutBatch], pad_id: int) -> RolloutBatch:
    """Join shards of one step (e.g. one per generator) into one batch, re-padding prompts on the left and
    responses on the right to the widest shard; shards must share a policy version."""
    if len({b.version for b in batches}) != 1:
        raise ValueError(f"shards come from different policy versions {[b.version for b in batches]}")
    if len({b.temperature for b in batches}) != 1:
        raise ValueError(f"shards were sampled at different temperatures {[b.temperature for b in batches]}")
    if len(batches) == 1:
        return batches[0]
    p = max(b.prompt_len for b in batches)
    r = max(b.response_ids.shape[1] for b in batches)

    def widen(t: torch.Tensor, width: int, value: int, left: bool) -> torch.Tensor:  # [b, w] -> [b, width]
        pad = torch.full((t.shape[0], width - t.shape[1]), value, dtype=t.dtype)
        return torch.cat([pad, t] if left else [t, pad], dim=1)

    rewards = [b.rewards for b in batches]
    return RolloutBatch(
        prompt_ids=torch.cat([widen(b.prompt_ids, p, pad_id, True) for b in batches]),
        prompt_mask=torch.cat([widen(b.prompt_mask, p, 0, True) for b in batches]),
        response_ids=torch.cat([widen(b.response_ids, r, pad_id, False) for b in batches]),
        response_mask=torch.cat([widen(b.response_mask, r, 0, False) for b in batches]),
        prompt_index=torch.cat([b.prompt_index for b in batches]), version=batches[0].version,
        response_texts=[t for b in batches for t in b.response_texts],
        rewards=None if any(x is None for x in rewards) else torch.cat(rewards),
        extras={k: torch.cat([b.extras[k] for b in batches]) for k in batches[0].extras},
        temperature=batches[0].temperature)
