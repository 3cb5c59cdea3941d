"""Scorer: runs the reward model and the reward functions on prompt + response and fills the batch's rewards;
`build_scorer` builds it from a config for every caller (local loop, eval, Ray scorer actor)."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from actors.generator import Generator
from actors.reward_functions import RewardFunctions
from actors.reward_functions import load as load_reward_functions
from common import data
from common.config import Config
from common.config_data import DataConfig
from common.models import load_causal_lm, load_tokenizer, reward_head_logits
from common.reward_head import RewardHead, load_trained_reward_model, read_reward_stats
from common.rollout import RolloutBatch, pad_right
from learner import distributional as dist
from learner.compile import compile_bucket, compile_layers
from learner.precision import autocast, resolve_dtype
from tasks.base import GoldFn, Task  # GoldFn: the task's gold judge, (last user message, response) -> score(s)

SCALAR = RewardHead("scalar", 1)


class Scorer:
    """Scores responses with the reward model, formatting them exactly as in reward-model training, and with the
    reward functions: reward = model_weight * r_RM + sum_f weight_f * r_f (a function's None adds 0, as in TRL).
    `model` None = no reward model (reward.model_weight=0): the reward is the functions' alone.

    The response text is re-templated with the reward model's own tokenizer (it may differ from the policy's),
    so what the model sees at scoring time is what it saw in training: chat template, left-truncated prompt,
    score read at the last real token.

    A response cut at max_new_tokens (no EOS) is scored as truncated: without the template's end-of-turn tokens,
    so the reward model does not read it as a complete answer; in RL (`score`) it also loses
    `missing_eos_penalty` (rl.missing_eos_penalty, 0 = off).

    A distributional head's p(score) becomes the scalar reward by `reduction` (learner/distributional.py);
    `win_prob_vs_ref` compares with the reference policy's response to the same prompt, sampled once per prompt
    by `reference_generator` (the frozen SFT weights) and cached as its score distribution.
    """

    def __init__(self, model: PreTrainedModel | None, tokenizer: PreTrainedTokenizerBase,
                 prompts: list[tuple[dict, ...]], data_cfg: DataConfig, device: torch.device, batch_size: int = 32,
                 gold_fn: GoldFn | None = None, head: RewardHead = SCALAR, reduction: str = "expected",
                 risk_lambda: float = 1.0, reference_generator: Generator | None = None,
                 reference_seed: int = 0, missing_eos_penalty: float = 0.0,
                 functions: RewardFunctions | None = None, model_weight: float = 1.0,
                 dtype: torch.dtype = torch.float32, compile_bucket: int = 0,
                 normalize: tuple[float, float] | None = None) -> None:
        if model is None and not functions:
            raise ValueError("a Scorer needs a reward model or reward functions")
        self.model, self.tokenizer, self.prompts = None if model is None else model.eval(), tokenizer, prompts
        self.functions, self.model_weight = functions, model_weight
        self.data_cfg, self.device, self.batch_size, self.gold_fn = data_cfg, device, batch_size, gold_fn
        if reduction != "expected" and not head.distributional:
            raise ValueError(f"reward_reduction={reduction} needs a distributional reward model, not a {head.kind} one")
        self.head, self.reduction, self.risk_lambda = head, reduction, risk_lambda
        self.reference_generator, self.reference_seed = reference_generator, reference_seed
        self.missing_eos_penalty = missing_eos_penalty
        self.normalize = normalize  # (mean, std) of the scalar head on training answers: rl.normalize_reward
        self.dtype = dtype  # the reward model's forward runs under model.dtype's autocast, as policy and reference do
        self.compile_bucket = compile_bucket  # > 0: compiled layers, inputs padded to a multiple (learner/compile.py)
        if compile_bucket and model is not None:
            compile_layers(model)
        self.reference_logp: dict[int, torch.Tensor] = {}  # prompt index -> [K] log p of the reference response
        self.reference_texts: dict[int, str] = {}

    def _encode(self, prompt_index: int, response: str, finished: bool = True) -> list[int]:
        cfg, stats, messages = self.data_cfg, data.DataStats(), self.prompts[prompt_index]
        ids = data.encode_conversation(self.tokenizer, messages, response, cfg.max_length, cfg.max_prompt_tokens,
                                       "truncate_left", stats, finished)
        if ids is None:  # response alone nearly fills max_length: keep its end, where the score is read
            text = (data.conversation_text(self.tokenizer, messages, response) if finished
                    else data.prompt_text(self.tokenizer, messages) + response)
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"][-cfg.max_length:]
        return ids

    @torch.no_grad()
    def head_logits(self, prompt_indices: list[int], responses: list[str],
                    finished: list[bool] | None = None) -> torch.Tensor:
        """[N, L] reward-head outputs in float32 (L = 1 for the scalar head, num_bins for the distributional);
        `finished[k]` False scores response k as truncated (default: all finished)."""
        finished = [True] * len(responses) if finished is None else list(finished)
        out = []
        for start in range(0, len(responses), self.batch_size):
            rows = slice(start, start + self.batch_size)
            seqs = [self._encode(i, r, f) for i, r, f in zip(prompt_indices[rows], responses[rows], finished[rows])]
            ids, mask = pad_right(seqs, self.tokenizer.pad_token_id, self.compile_bucket)
            with autocast(self.dtype, self.device):
                logits = reward_head_logits(self.model, ids.to(self.device), mask.to(self.device))  # [b, L]
            out.append(logits.float().cpu())
        return torch.cat(out)

    def rewards_from_logits(self, logits: torch.Tensor, ref_logp: torch.Tensor | None = None) -> torch.Tensor:
        """[N, L] head outputs -> [N] scalar rewards (the scalar head's output, standardised with rl.normalize_reward,
        or the distribution's reduction)."""
        if not self.head.distributional:
            return logits[:, 0] if self.normalize is None else (logits[:, 0] - self.normalize[0]) / self.normalize[1]
        return dist.reduce_scores(dist.score_logprobs(logits), self.reduction, self.risk_lambda, ref_logp)

    def win_prob(self, logits_a: torch.Tensor, logits_b: torch.Tensor) -> torch.Tensor:
        """[N, L], [N, L] head outputs -> [N] the model's P(a preferred over b), ties half: Bradley-Terry
        sigmoid(r_a - r_b) for the scalar head, P(s_a > s_b) + P(s_a = s_b) / 2 for the distributional one."""
        if not self.head.distributional:
            return torch.sigmoid(logits_a[:, 0] - logits_b[:, 0])
        return dist.win_prob(dist.score_logprobs(logits_a), dist.score_logprobs(logits_b))

    def score_texts(self, prompt_indices: list[int], responses: list[str]) -> torch.Tensor:
        """[N] rewards of finished text responses (e.g. a peer trainer's completions)."""
        return self.rewards(prompt_indices, responses)[0]

    @torch.no_grad()
    def reference_distributions(self, prompt_indices: list[int]) -> torch.Tensor:
        """[N, K] log p(score) of the reference policy's response to each prompt, sampled on first use.

        The missing prompts are sampled in one batch seeded by (reference_seed, cache size), so a run is
        reproducible; each prompt keeps its first reference response for the whole run.
        """
        missing = list(dict.fromkeys(i for i in prompt_indices if i not in self.reference_logp))
        if missing and self.reference_generator is None:
            raise ValueError("reward_reduction=win_prob_vs_ref needs a reference_generator (the SFT policy)")
        if missing:
            seed = self.reference_seed * 1_000_003 + len(self.reference_logp)
            batch = self.reference_generator.generate(missing, seed)
            finished = batch.finished(self.reference_generator.tokenizer.eos_token_id).tolist()
            logp = dist.score_logprobs(self.head_logits(missing, batch.response_texts, finished))  # [M, K]
            for row, (i, text) in enumerate(zip(missing, batch.response_texts)):
                self.reference_logp[i], self.reference_texts[i] = logp[row], text
        return torch.stack([self.reference_logp[i] for i in prompt_indices])

    def gold_scores(self, prompt_indices: list[int], responses: list[str]) -> dict[str, torch.Tensor] | None:
        """The gold judge's [N] scores by name ("gold", and e.g. "gold_loose"); None without a judge."""
        if self.gold_fn is None:
            return None
        rows = [self.gold_fn(self.prompts[i][-1]["content"], r) for i, r in zip(prompt_indices, responses)]
        rows = [r if isinstance(r, Mapping) else {"gold": float(r)} for r in rows]
        names = list(rows[0]) if rows else ["gold"]
        return {k: torch.tensor([r[k] for r in rows], dtype=torch.float32) for k in names}

    def gold(self, prompt_indices: list[int], responses: list[str]) -> torch.Tensor | None:
        scores = self.gold_scores(prompt_indices, responses)
        return None if scores is None else scores["gold"]

    def function_scores(self, prompt_indices: list[int], responses: list[str],
                        completion_ids: list[list[int]] | None = None) -> dict[str, torch.Tensor]:
        """Each reward function's [N] scores by name (NaN where it returned None); {} without functions."""
        return self.functions(prompt_indices, responses, completion_ids) if self.functions else {}

    def combine(self, rm: torch.Tensor | None, scores: dict[str, torch.Tensor]) -> torch.Tensor:
        """[N] reward = model_weight * rm (None: no reward model) + the functions' weighted sum."""
        if not self.functions:
            return self.model_weight * rm
        total = self.functions.weighted_sum(scores, alone=rm is None)
        return total if rm is None else self.model_weight * rm + total

    def rewards(self, prompt_indices: list[int], responses: list[str], finished: list[bool] | None = None,
                completion_ids: list[list[int]] | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The one path from responses to rewards: [N] rewards and [N] per-sample extras (the gold judge's scores;
        with reward functions each one's scores as reward_fn/<name>, and the reward model's own as rm_reward; for a
        distributional head rm_mean / rm_std / rm_entropy, and ref_rm_mean for win_prob_vs_ref). `finished` as in
        head_logits; `completion_ids` (the sampled ids, no padding) go to the reward functions."""
        extras, rm = {}, None
        if self.model is not None:
            logits = self.head_logits(prompt_indices, responses, finished)
            ref = None
            if self.head.distributional:
                extras.update(dist.distribution_stats(dist.score_logprobs(logits)))
                if self.reduction == "win_prob_vs_ref":
                    ref = self.reference_distributions(prompt_indices)
                    extras["ref_rm_mean"] = dist.expected_score(ref)
            rm = self.rewards_from_logits(logits, ref)
        scores = self.function_scores(prompt_indices, responses, completion_ids)
        extras.update({f"reward_fn/{k}": v for k, v in scores.items()})
        if rm is not None and scores:
            extras["rm_reward"] = rm
        extras.update(self.gold_scores(prompt_indices, responses) or {})
        return self.combine(rm, scores), extras

    def score(self, batch: RolloutBatch, eos_token_id: int | None = None) -> RolloutBatch:
        """The batch with its rewards ([B]) and extras filled (see `rewards`); a response without EOS is scored
        as truncated and loses missing_eos_penalty (from the sum of the reward model and the functions).
        `eos_token_id` defaults to the reward tokenizer's (the policy generated with its own tokenizer; they are the
        same unless model.tokenizer says otherwise)."""
        eos = self.tokenizer.eos_token_id if eos_token_id is None else eos_token_id
        finished = batch.finished(eos)  # [B] bool
        rewards, extras = self.rewards(batch.prompt_index.tolist(), batch.response_texts, finished.tolist(),
                                       batch.response_tokens())
        rewards = rewards - self.missing_eos_penalty * (~finished).float()
        return batch.with_rewards(rewards, **extras)


def reference_sampler(cfg: Config, sft_path: str, device: torch.device,
                      reference: torch.nn.Module | None = None) -> torch.nn.Module | None:
    """The frozen SFT policy (at `sft_path`) that answers each prompt once for `win_prob_vs_ref` (None for other
    reductions); `reference` is reused when the caller already holds one (no copy with LoRA, or in a scorer
    actor: load it)."""
    if cfg.rl.reward_reduction != "win_prob_vs_ref":
        return None
    return reference if reference is not None else load_causal_lm(sft_path, device, torch.float32).eval()


def build_scorer(cfg: Config, reward_path: str | None, task: Task | None, device: torch.device,
                 prompts: list[tuple[dict, ...]], prompt_tokens: list[list[int]], tokenizer,
                 reference: torch.nn.Module | None = None) -> Scorer:
    """The trained reward model at `reward_path` (head read from its directory; None = no reward model,
    reward.model_weight=0) and cfg's reward functions behind a Scorer with the configured reduction and the gold
    judge of `task` (None: no judge, no built-in reward functions, no data columns); win_prob_vs_ref samples its
    reference responses from `reference` (the frozen SFT policy). Local mode, eval and the Ray scorer actor all build
    their scorer here (the functions are loaded in the calling process)."""
    functions = RewardFunctions(load_reward_functions(cfg.reward, task), prompts,
                                task.prompt_columns(prompts) if task is not None else [{} for _ in prompts], tokenizer)
    gold = task.gold_judge() if task is not None else None
    common = dict(gold_fn=gold, reference_seed=cfg.seed, missing_eos_penalty=cfg.rl.missing_eos_penalty,
                  functions=functions, model_weight=cfg.reward.model_weight,
                  dtype=resolve_dtype(cfg.model.dtype, device), compile_bucket=compile_bucket(cfg.model))
    if reward_path is None:
        return Scorer(None, tokenizer, prompts, cfg.data, device, cfg.eval.batch_size, **common)
    rm_tokenizer = load_tokenizer(reward_path) if not cfg.model.tokenizer else tokenizer
    rm, head = load_trained_reward_model(reward_path, cfg.reward, rm_tokenizer, device, torch.float32)  # as validated
    common["normalize"] = read_reward_stats(reward_path) if cfg.rl.normalize_reward else None
    ref_gen = None if reference is None else Generator(reference, tokenizer, cfg.generator, prompt_tokens, device)
    return Scorer(rm, rm_tokenizer, prompts, cfg.data, device, cfg.eval.batch_size, head=head,
                  reduction=cfg.rl.reward_reduction, risk_lambda=cfg.rl.risk_lambda, reference_generator=ref_gen,
                  **common)
