"""Learner: owns the policy, the frozen reference, the optimizer and the baseline; one update per batch."""

from __future__ import annotations

import torch
from transformers import PreTrainedModel

from common.config import RLConfig
from common.models import merged_state_dict
from common.rollout import RolloutBatch
from learner import losses
from learner.baseline import make_baseline


def response_token_logprobs(model: torch.nn.Module, batch: RolloutBatch) -> torch.Tensor:
    """log pi(y_t | x, y_<t) for every response column: [B, R] (padding columns are masked later).

    Only the R positions that predict response tokens go through the LM head (`logits_to_keep` as indices):
    with a 49k vocabulary the prompt's logits would cost more than the rest of the model.
    """
    p, r = batch.prompt_len, batch.response_ids.shape[1]
    keep = torch.arange(p - 1, p + r - 1, device=batch.prompt_ids.device)  # position p-1+t predicts token t
    out = model(input_ids=batch.input_ids(), attention_mask=batch.attention_mask(),
                position_ids=batch.position_ids(), logits_to_keep=keep, use_cache=False)
    return losses.token_logprobs(out.logits, batch.response_ids)  # logits: [B, R, V]


class Learner:
    """REINFORCE with a moving-average baseline (Ahmadian et al. 2024), fully on-policy by default.

    With LoRA the reference is the same network with its adapters disabled, so no second copy is held.
    """

    def __init__(self, policy: PreTrainedModel, reference: PreTrainedModel | None, cfg: RLConfig,
                 device: torch.device) -> None:
        if reference is None and not hasattr(policy, "disable_adapter"):
            raise ValueError("a reference model is required unless the policy is a LoRA (peft) model")
        self.policy, self.reference, self.cfg, self.device = policy, reference, cfg, device
        self.policy.eval()  # no dropout: the log-probs must be those of the policy that sampled
        params = [p for p in policy.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.baseline = make_baseline(cfg.baseline, cfg.ema_decay, cfg.baseline_start)
        self.version = 0  # optimizer steps taken; generators tag batches with the version they sampled from

    @torch.no_grad()
    def reference_logprobs(self, batch: RolloutBatch) -> torch.Tensor:  # [B, R]
        if self.reference is not None:
            return response_token_logprobs(self.reference, batch)
        with self.policy.disable_adapter():
            return response_token_logprobs(self.policy, batch)

    def step(self, batch: RolloutBatch) -> dict[str, float]:
        """One REINFORCE update on a scored batch; returns metrics for logging."""
        if batch.rewards is None:
            raise ValueError("the batch has no rewards: score it before the learner step")
        batch = batch.to(self.device)
        mask = batch.response_mask.float()  # [B, R]
        ref_lp = losses.sequence_logprobs(self.reference_logprobs(batch), mask)  # [B]
        token_lp = response_token_logprobs(self.policy, batch)  # [B, R], with grad
        logprobs = losses.sequence_logprobs(token_lp, mask)  # [B]

        shaped = losses.shaped_rewards(batch.rewards, logprobs, ref_lp, self.cfg.kl_coef)  # [B]
        baseline = self.baseline.value(shaped.detach())  # earlier batches only (step 1: see baseline.py)
        advantages = shaped - baseline  # [B]
        loss = losses.reinforce_loss(logprobs, advantages)

        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = self._clip_gradients()
        self.optimizer.step()
        self.baseline.update(shaped)
        self.version += 1

        kl = (logprobs.detach() - ref_lp)  # [B] sequence-level log-ratio, a KL estimate on samples
        metrics = {
            "rollout/reward": batch.rewards.mean().item(), "rollout/shaped_reward": shaped.mean().item(),
            "rollout/kl": kl.mean().item(), "rollout/response_len": mask.sum(-1).mean().item(),
            "rollout/logprob": logprobs.detach().mean().item(),
            "baseline/value": baseline, "baseline/advantage_mean": advantages.mean().item(),
            "baseline/advantage_std": advantages.std(unbiased=False).item(),
            "losses/policy": loss.item(), "losses/grad_norm": grad_norm,
            "sync/staleness": float(self.version - 1 - batch.version),
        }
        metrics.update({f"rollout/{k}": v.float().mean().item() for k, v in batch.extras.items()})
        if "generator_logprob" in batch.extras:  # the sampler's own log pi(y|x): ~0 gap when weights match
            gap = (logprobs.detach() - batch.extras["generator_logprob"]).abs() / mask.sum(-1).clamp(min=1)
            metrics["perf/logprob_mismatch"] = gap.mean().item()  # mean per-token |log-prob difference|
        return metrics

    def _clip_gradients(self) -> float:
        params = [p for p in self.policy.parameters() if p.grad is not None]
        max_norm = self.cfg.max_grad_norm if self.cfg.max_grad_norm > 0 else float("inf")
        return float(torch.nn.utils.clip_grad_norm_(params, max_norm))

    def policy_state(self) -> dict[str, torch.Tensor]:
        """Full policy weights (LoRA merged) for the generators."""
        return merged_state_dict(self.policy)

    def state_dict(self) -> dict:
        return {"policy": self.policy.state_dict(), "optimizer": self.optimizer.state_dict(),
                "baseline": self.baseline.state_dict(), "version": self.version}

    def load_state_dict(self, state: dict) -> None:
        self.policy.load_state_dict(state["policy"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.baseline.load_state_dict(state["baseline"])
        self.version = int(state["version"])

