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
from learner.compile import compile_layers
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
    `compile_bucket` > 0 compiles the decoder layers of policy and reference and pads each batch's width to a
    multiple of it (learner/compile.py); 0 = eager.
    """

    def __init__(self, policy: PreTrainedModel, reference: PreTrainedModel | None, cfg: RLConfig,
                 device: torch.device, dtype: torch.dtype = torch.float32, offpolicy_correction: str = "none",
                 compile_bucket: int = 0) -> None:
        """`offpolicy_correction`: rl.offpolicy_correction resolved for the run's mode (common.config.
        offpolicy_correction): none, the paper's update, or tis (weights from the batch's generator log-probs)."""
        if reference is None and not hasattr(policy, "disable_adapter"):
            raise ValueError("a reference model is required unless the policy is a LoRA (peft) model")
        if offpolicy_correction not in ("none", "tis"):
            raise ValueError(f"offpolicy_correction={offpolicy_correction!r}: resolve rl.offpolicy_correction first")
        self.policy, self.reference, self.cfg, self.device, self.dtype = policy, reference, cfg, device, dtype
        self.offpolicy_correction = offpolicy_correction
        self.policy.eval()  # no dropout: the log-probs must be those of the policy that sampled
        for model in (policy, reference):  # the same implementation in both: the KL is 0 before the first update
            if model is not None:
                use_attention(model, device, dtype)
                if compile_bucket:
                    compile_layers(model)
        self.compile_bucket = compile_bucket
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
        its share of the batch mean, so the accumulated gradient is the full batch's. With several micro-batches
        the samples are sorted by length first and each micro-batch drops the columns that are padding in all of
        its rows: the padding-free batches that packing would give, without a block-diagonal attention mask
        (packing measured slower on CPU, bench/README.md).
        """
        if batch.rewards is None:
            raise ValueError("the batch has no rewards: score it before the learner step")
        batch = batch.to(self.device)
        if (self.cfg.micro_batch_size or batch.batch_size) < batch.batch_size:
            batch = batch.sorted_by_length()  # micro-batches of similar lengths, each trimmed to its own width
        # a history baseline is read from the whole batch's rewards (step 1: their mean), on every rank alike
        history = None if self.baseline.needs_batch else self.baseline.value(batch.rewards)
        local = self.local_rows(batch)  # all of them in one process; a rank's share in a learner group
        behaviour = self.behaviour_logprobs(local)  # [b] or None (no correction)
        with autocast(self.dtype, self.device):
            rows, loss = self._accumulate_gradients(local, behaviour, history)
        rows, loss = self.gather_rows(rows, loss)  # [B] each, the batch's, in its row order
        logprobs, ref_lp, shaped, baseline, *tis = rows
        advantages = shaped - baseline  # [B], before any importance weight
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
            "baseline/value": baseline.mean().item(), "baseline/advantage_mean": advantages.mean().item(),
            "baseline/advantage_std": advantages.std(unbiased=False).item(),
            "losses/policy": loss.item(), "losses/grad_norm": grad_norm,
            "losses/skipped_steps": float(self.update.skips.total),
            "sync/staleness": float(self.version - 1 - batch.version),
        }
        if tis:  # the importance weights' mean and the share cut at rl.tis_cap
            metrics.update({"sync/tis_weight_mean": tis[0].mean().item(),
                            "sync/tis_capped_fraction": tis[1].float().mean().item()})
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

    def behaviour_logprobs(self, batch: RolloutBatch) -> torch.Tensor | None:
        """log mu(y|x) [B] of the policy that sampled the batch (the generator's, extras["generator_logprob"]) when
        the update is corrected for staleness (rl.offpolicy_correction=tis); None for the paper's update."""
        if self.offpolicy_correction == "none":
            return None
        if "generator_logprob" not in batch.extras:
            raise ValueError("rl.offpolicy_correction=tis needs the generator's log-probs of what it sampled "
                             "(extras['generator_logprob']): build the generator with behaviour_logprobs=True, or "
                             "set rl.offpolicy_correction=none")
        return batch.extras["generator_logprob"].float()

    def local_rows(self, batch: RolloutBatch) -> RolloutBatch:
        """The rows this process trains on: all of them (a rank of the learner group: its share, learner/sharded.py)."""
        return batch

    def gather_rows(self, rows: list[torch.Tensor], loss: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The local rows' [b] tensors and loss -> the batch's (one process: they are the batch's already)."""
        return rows, loss

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

    def _accumulate_gradients(self, batch: RolloutBatch, behaviour: torch.Tensor | None,
                              history: float | None = None):
        """Forward and backward over micro-batches; returns ([B] logprobs, ref_logprobs, shaped rewards, baseline
        (detached), and with a behaviour policy [B] importance weights and [B] capped), and the batch loss.

        The baseline: a history one (the paper's moving average, ema, none) is known before any forward; a batch one
        (batch_mean, rloo) needs every sample's shaped reward, hence its KL term, before the first backward: on one
        micro-batch the gradient forward gives them, over several a no-grad forward of the policy comes first."""
        b, micro, kl_coef = batch.batch_size, self.cfg.micro_batch_size or batch.batch_size, self.cfg.kl_coef
        spans = [(start, min(b, start + micro)) for start in range(0, b, micro)]
        self.optimizer.zero_grad(set_to_none=True)
        ref_lp = torch.cat([losses.sequence_logprobs(self.reference_logprobs(mb), mb.response_mask.float())
                            for mb in (self.micro_batch(batch, *span) for span in spans)])  # [B]
        baseline = None  # [B]
        if not self.baseline.needs_batch:  # earlier batches only (step 1: its own mean reward, baseline.py)
            value = self.baseline.value(batch.rewards) if history is None else history
            baseline = torch.full((b,), value, device=ref_lp.device)
        elif len(spans) > 1:
            with torch.no_grad():
                early = torch.cat([self._policy_logprobs(self.micro_batch(batch, *span)) for span in spans])  # [B]
            baseline = self.baseline.values(losses.shaped_rewards(batch.rewards, early, ref_lp, kl_coef),
                                            batch.prompt_index)
        parts = []
        for start, stop in spans:
            mb = self.micro_batch(batch, start, stop)
            logprobs = self._policy_logprobs(mb)  # [b], with grad
            shaped = losses.shaped_rewards(mb.rewards, logprobs, ref_lp[start:stop], kl_coef)  # [b]
            if baseline is None:  # a batch baseline on one micro-batch, which is the whole batch
                baseline = self.baseline.values(shaped, batch.prompt_index)
            advantages = shaped - baseline[start:stop]  # [b]
            weights, capped = (None, None) if behaviour is None else losses.tis_weights(
                logprobs, behaviour[start:stop], self.cfg.tis_cap)
            loss = losses.reinforce_loss(logprobs, advantages if weights is None else weights * advantages)
            loss = loss * (mb.batch_size / b)  # share of the mean
            self.update.backward(loss)
            parts.append((logprobs.detach(), shaped, weights, capped, loss.detach()))
        logprobs, shaped = (torch.cat([part[i] for part in parts]) for i in range(2))  # [B] each
        tis = [] if behaviour is None else [torch.cat([part[i] for part in parts]) for i in (2, 3)]
        return [logprobs, ref_lp, shaped, baseline, *tis], torch.stack([part[4] for part in parts]).sum()

    def micro_batch(self, batch: RolloutBatch, start: int, stop: int) -> RolloutBatch:
        """Samples start..stop-1 without the columns that are padding in all of them, then padded on the left to
        model.compile_bucket's multiple when the layers are compiled."""
        return batch.rows(start, stop).trimmed().left_padded_to(self.compile_bucket)

    def _policy_logprobs(self, mb: RolloutBatch) -> torch.Tensor:
        """log pi(y|x) [b] of a micro-batch under the policy (with gradient unless under no_grad)."""
        with checkpointed_layers(self.policy, self.cfg.gradient_checkpointing and torch.is_grad_enabled()):
            token_lp = response_token_logprobs(self.policy, mb)  # [b, R]
        return losses.sequence_logprobs(token_lp, mb.response_mask.float())

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

