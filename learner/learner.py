"""Learner: owns the policy, the frozen reference, the optimizer and the baseline; one update per batch."""

from __future__ import annotations

import contextlib

import torch
from transformers import PreTrainedModel
from transformers.modeling_layers import GradientCheckpointingLayer

from common.config import RLConfig
from common.models import merged_state_dict, unwrap
from common.numerics import PolicyCollapsed, is_finite
from common.rollout import RolloutBatch
from learner import losses
from learner.baseline import make_baseline
from learner.precision import GuardedUpdate, adamw, autocast, use_attention


def response_token_logprobs(model: torch.nn.Module, batch: RolloutBatch) -> torch.Tensor:
    """log pi_T(y_t | x, y_<t) for every response column: [B, R] (padding columns are masked later).

    pi_T = softmax(logits / T) at the batch's sampling temperature T: the distribution that was sampled is the
    policy, so the update stays on-policy and the KL compares like with like (the reference uses the same T).
    Only the R positions that predict response tokens go through the LM head (`logits_to_keep` as indices):
    with a 49k vocabulary the prompt's logits would cost more than the rest of the model.
    """
    p, r = batch.prompt_len, batch.response_ids.shape[1]
    keep = torch.arange(p - 1, p + r - 1, device=batch.prompt_ids.device)  # position p-1+t predicts token t
    out = model(input_ids=batch.input_ids(), attention_mask=batch.attention_mask(),
                position_ids=batch.position_ids(), logits_to_keep=keep, use_cache=False)
    return losses.token_logprobs(out.logits, batch.response_ids, batch.temperature)  # logits: [B, R, V]


@contextlib.contextmanager
def checkpointed_layers(model: torch.nn.Module, enabled: bool):
    """Gradient checkpointing for one forward: transformers recomputes a decoder layer only when that layer is
    in training mode, and full train mode would switch dropout on (the log-probs must be the sampler's). So
    only the checkpointed layers' own flag is set, for the duration of the forward."""
    layers = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)] if enabled else []
    before = [m.training for m in layers]
    for m in layers:
        m.training = True
    try:
        yield
    finally:
        for m, flag in zip(layers, before):
            m.training = flag


COLLAPSE_STEPS = 3  # steps in a row above rl.max_kl that stop the run (one noisy batch does not)


class Learner:
    """REINFORCE with a moving-average baseline (Ahmadian et al. 2024), fully on-policy by default.

    With LoRA the reference is the same network with its adapters disabled, so no second copy is held.
    Precision (learner/precision.py): policy and reference forwards run under autocast to `dtype` (fp32 master
    weights); under fp16 the loss is scaled; an update whose loss or gradient is not finite is skipped and counted
    (`losses/skipped_steps`); MAX_CONSECUTIVE_SKIPS in a row raise NonFiniteError.
    """

    def __init__(self, policy: PreTrainedModel, reference: PreTrainedModel | None, cfg: RLConfig,
                 device: torch.device, dtype: torch.dtype = torch.float32) -> None:
        if reference is None and not hasattr(policy, "disable_adapter"):
            raise ValueError("a reference model is required unless the policy is a LoRA (peft) model")
        self.policy, self.reference, self.cfg, self.device, self.dtype = policy, reference, cfg, device, dtype
        self.policy.eval()  # no dropout: the log-probs must be those of the policy that sampled
        for model in (policy, reference):  # the same implementation in both: the KL is 0 before the first update
            if model is not None:
                use_attention(model, device, dtype)
        if cfg.gradient_checkpointing:
            unwrap(policy).gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            if hasattr(policy, "enable_input_require_grads"):  # LoRA: frozen embeddings would cut the graph
                policy.enable_input_require_grads()
        params = [p for p in policy.parameters() if p.requires_grad]
        self.optimizer = adamw(params, cfg.lr, cfg.weight_decay, device)
        self.baseline = make_baseline(cfg.baseline, cfg.ema_decay, cfg.baseline_start)
        self.update = GuardedUpdate(self.optimizer, params, dtype, device, cfg.max_grad_norm, "rl learner",
                                    "check the rewards (rollout/reward) and rl.kl_coef, lower rl.lr, or run in "
                                    "float32/bfloat16 (model.dtype)")
        self.version = 0  # learner steps taken (skipped ones too); generators tag batches with the version
        self.kl_over = 0  # steps in a row whose mean KL was above rl.max_kl (or not finite)

    @torch.no_grad()
    def reference_logprobs(self, batch: RolloutBatch) -> torch.Tensor:  # [B, R]
        if self.reference is not None:
            return response_token_logprobs(self.reference, batch)
        with self.policy.disable_adapter():
            return response_token_logprobs(self.policy, batch)

    def step(self, batch: RolloutBatch) -> dict[str, float]:
        """One REINFORCE update on a scored batch; returns metrics for logging.

        The batch goes through the policy in micro-batches of rl.micro_batch_size sequences; each one's loss is
        its share of the batch mean, so the accumulated gradient is the full batch's.
        """
        if batch.rewards is None:
            raise ValueError("the batch has no rewards: score it before the learner step")
        batch = batch.to(self.device)
        baseline = self.baseline.value(batch.rewards)  # earlier batches only (step 1: its own mean, baseline.py)
        with autocast(self.dtype, self.device):
            logprobs, ref_lp, shaped, loss = self._accumulate_gradients(self.local_rows(batch), baseline)
        logprobs, ref_lp, shaped, loss = self.gather_rows(logprobs, ref_lp, shaped, loss)  # [B] each, the batch's
        advantages = shaped - baseline  # [B]
        grad_norm, _ = self.update.step()
        if is_finite(shaped):  # the rewards seen are data even when the update is skipped
            self.baseline.update(shaped)
        self.version += 1

        kl = (logprobs - ref_lp)  # [B] sequence-level log-ratio, a KL estimate on samples
        mask = batch.response_mask.float()
        metrics = {
            "rollout/reward": batch.rewards.mean().item(), "rollout/shaped_reward": shaped.mean().item(),
            "rollout/kl": kl.mean().item(), "rollout/response_len": mask.sum(-1).mean().item(),
            "rollout/logprob": logprobs.mean().item(),
            "baseline/value": baseline, "baseline/advantage_mean": advantages.mean().item(),
            "baseline/advantage_std": advantages.std(unbiased=False).item(),
            "losses/policy": loss.item(), "losses/grad_norm": grad_norm,
            "losses/skipped_steps": float(self.update.skips.total),
            "sync/staleness": float(self.version - 1 - batch.version),
        }
        if self.update.loss_scale is not None:
            metrics["losses/loss_scale"] = self.update.loss_scale
        self.check_collapse(metrics["rollout/kl"])
        # a reward function's None is NaN in its reward_fn/<name> scores: left out of its mean, as TRL logs it
        metrics.update({f"rollout/{k}": (v.float().nanmean() if k.startswith("reward_fn/") else v.float().mean()).item()
                        for k, v in batch.extras.items()})
        if "generator_logprob" in batch.extras:  # the sampler's own log pi_T(y|x): ~0 gap when weights match
            gap = (logprobs - batch.extras["generator_logprob"]).abs() / mask.sum(-1).clamp(min=1)
            metrics["perf/logprob_mismatch"] = gap.mean().item()  # mean per-token |log-prob difference|
        return metrics

    def local_rows(self, batch: RolloutBatch) -> RolloutBatch:
        """The rows this process trains on: all of them (a rank of the learner group: its share, learner/sharded.py)."""
        return batch

    def gather_rows(self, logprobs: torch.Tensor, ref_logprobs: torch.Tensor, shaped: torch.Tensor,
                    loss: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The local rows' [b] tensors and loss -> the batch's (one process: they are the batch's already)."""
        return logprobs, ref_logprobs, shaped, loss

    def check_collapse(self, kl: float) -> None:
        """Stop when the policy has collapsed: its mean KL to the reference above rl.max_kl (a NaN KL too) for
        COLLAPSE_STEPS steps in a row. A collapsed policy samples nearly one answer, its gradient is ~0 and nothing
        brings it back; without this the run would end with exit 0 and save it (rl.lr=10: KL ~256 nats)."""
        limit = self.cfg.max_kl
        self.kl_over = self.kl_over + 1 if limit and not kl <= limit else 0
        if self.kl_over >= COLLAPSE_STEPS:
            value = f"{kl:.1f} nats" if is_finite(kl) else f"{kl} (not finite)"
            raise PolicyCollapsed(f"rl step {self.version}: the policy has collapsed: its mean KL to the SFT policy "
                                  f"is {value}, above rl.max_kl={limit:g} for {self.kl_over} steps in a row "
                                  f"(rl.lr={self.cfg.lr:g}, rl.kl_coef={self.cfg.kl_coef:g}); lower rl.lr (or raise "
                                  f"rl.kl_coef) and rerun; rl.max_kl=0 lets it run on")

    def _accumulate_gradients(self, batch: RolloutBatch, baseline: float
                              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Forward and backward over micro-batches; returns [B] logprobs, ref_logprobs, shaped rewards (detached)
        and the batch loss."""
        b, micro = batch.batch_size, self.cfg.micro_batch_size or batch.batch_size
        self.optimizer.zero_grad(set_to_none=True)
        parts = []
        for start in range(0, b, micro):
            mb = batch.rows(start, min(b, start + micro))
            mask = mb.response_mask.float()  # [b, R]
            ref_lp = losses.sequence_logprobs(self.reference_logprobs(mb), mask)  # [b]
            with checkpointed_layers(self.policy, self.cfg.gradient_checkpointing):
                token_lp = response_token_logprobs(self.policy, mb)  # [b, R], with grad
            logprobs = losses.sequence_logprobs(token_lp, mask)  # [b]
            shaped = losses.shaped_rewards(mb.rewards, logprobs, ref_lp, self.cfg.kl_coef)  # [b]
            loss = losses.reinforce_loss(logprobs, shaped - baseline) * (mb.batch_size / b)  # share of the mean
            self.update.backward(loss)
            parts.append((logprobs.detach(), ref_lp, shaped, loss.detach()))
        logprobs, ref_lp, shaped = (torch.cat([part[i] for part in parts]) for i in range(3))  # [B] each
        return logprobs, ref_lp, shaped, torch.stack([part[3] for part in parts]).sum()

    def policy_state(self, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
        """Full policy weights for the generators, base-model names: with LoRA the adapted weights merged into new
        tensors, the policy itself untouched (common/models.merged_state_dict). `dtype` (a vLLM generator's 16-bit
        weights) casts them here, so the sync moves half the bytes; None keeps fp32 (an hf generator's copy)."""
        state = merged_state_dict(self.policy)
        if dtype is None or dtype == torch.float32:
            return state
        return {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}

    def state_dict(self) -> dict:
        return {"policy": self.policy.state_dict(), "optimizer": self.optimizer.state_dict(),
                "baseline": self.baseline.state_dict(), "version": self.version, **self.update.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        """Continue from a checkpoint's state under this learner's config: the optimizer's moments come back, but
        its lr and weight decay are rl's (the optimizer's saved ones would silently undo a change that --resume
        --allow-config-change let through); a baseline of another kind (rl.baseline changed) starts afresh."""
        self.policy.load_state_dict(state["policy"])
        self.optimizer.load_state_dict(state["optimizer"])
        for group in self.optimizer.param_groups:
            group["lr"], group["weight_decay"] = self.cfg.lr, self.cfg.weight_decay
        kind = self.baseline.state_dict()["kind"]
        if state["baseline"].get("kind", kind) == kind:
            self.baseline.load_state_dict(state["baseline"])
        self.version = int(state["version"])
        self.update.load_state_dict(state)

