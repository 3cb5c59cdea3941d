"""`--stage rm`: train the reward model on preference pairs and report validation accuracy."""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch

from common import data
from common.config import Config
from common.metrics import RunLogger
from common.models import (apply_lora, load_reward_model, load_tokenizer, reward_head_logits, save_model,
                           sft_policy_path)
from common.rollout import pad_right
from common.runtime import prepare
from common.splits import load_splits, write_data_report
from learner.reward_losses import bradley_terry_loss, pairwise_accuracy
from learner.train_loop import fit

EncodedPair = tuple[list[int], list[int]]  # (chosen ids, rejected ids)


def encode_pairs(tokenizer, pairs: list[data.PreferencePair], cfg: Config, stats: data.DataStats) -> list[EncodedPair]:
    """Both conversations under the over-length policy; a pair is kept only when both sides are."""
    out = []
    for p in pairs:
        enc = [data.encode_conversation(tokenizer, p.prompt, r, cfg.data.max_length, cfg.data.max_prompt_tokens,
                                        cfg.data.overlong, stats) for r in (p.chosen, p.rejected)]
        if enc[0] is not None and enc[1] is not None:
            out.append((enc[0], enc[1]))
    return out


def pair_rewards(model: torch.nn.Module, pairs: list[EncodedPair], pad_id: int,
                 device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward over chosen and rejected together: [B], [B] scalar rewards."""
    ids, mask = pad_right([c for c, _ in pairs] + [r for _, r in pairs], pad_id)
    scores = reward_head_logits(model, ids.to(device), mask.to(device))[:, 0].float()  # [2B]
    return scores[:len(pairs)], scores[len(pairs):]


@torch.no_grad()
def evaluate_pairs(model: torch.nn.Module, pairs: list[EncodedPair], pad_id: int, device: torch.device,
                   batch_size: int) -> dict[str, float]:
    """Validation loss, accuracy (ties half) and mean margin r_chosen - r_rejected."""
    model.eval()
    order = sorted(range(len(pairs)), key=lambda i: len(pairs[i][0]) + len(pairs[i][1]))  # less padding
    chosen, rejected = [], []
    for start in range(0, len(order), batch_size):
        rc, rr = pair_rewards(model, [pairs[i] for i in order[start:start + batch_size]], pad_id, device)
        chosen.append(rc.cpu())
        rejected.append(rr.cpu())
    rc, rr = torch.cat(chosen), torch.cat(rejected)
    return {"loss": bradley_terry_loss(rc, rr).item(), "accuracy": pairwise_accuracy(rc, rr).item(),
            "margin": (rc - rr).mean().item(), "pairs": len(pairs)}


def run_rm(cfg: Config) -> dict:
    device = prepare(cfg)
    splits = load_splits(cfg)
    init = cfg.reward.init or sft_policy_path(cfg)
    tokenizer = load_tokenizer(cfg, init)
    stats = data.DataStats()
    train, val = encode_pairs(tokenizer, splits.train, cfg, stats), encode_pairs(tokenizer, splits.val, cfg, stats)
    report = write_data_report(cfg.run_dir, "rm", splits, stats)
    if not train or not val:
        raise ValueError(f"reward-model training needs pairs on both sides, got {len(train)} train, {len(val)} val")
    model = apply_lora(load_reward_model(init, 1, tokenizer, device), cfg.reward.lora, "SEQ_CLS")
    pad, bs = tokenizer.pad_token_id, cfg.reward.batch_size

    def batches(epoch: int):
        order = list(range(len(train)))
        random.Random(cfg.seed + epoch).shuffle(order)
        for start in range(0, len(order), bs):
            yield [train[i] for i in order[start:start + bs]]

    def loss_fn(model, batch):
        rc, rr = pair_rewards(model, batch, pad, device)
        loss = bradley_terry_loss(rc, rr)
        return loss, {"loss": loss.item(), "accuracy": pairwise_accuracy(rc.detach(), rr.detach()).item()}

    logger = RunLogger(cfg.run_dir, "rm")
    logger.hparams(cfg)
    before = evaluate_pairs(model, val, pad, device, 2 * bs)
    fit(model, batches, -(-len(train) // bs), loss_fn, epochs=cfg.reward.epochs, lr=cfg.reward.lr, device=device,
        warmup_ratio=cfg.reward.warmup_ratio, weight_decay=cfg.reward.weight_decay, grad_accum=cfg.reward.grad_accum,
        precision=cfg.reward.precision, log=lambda s, m: logger.log(s, {f"rm/train_{k}": v for k, v in m.items()}),
        desc="reward model")
    val_metrics = evaluate_pairs(model, val, pad, device, 2 * bs)
    logger.log(len(train), {f"rm/val_{k}": v for k, v in val_metrics.items()})
    logger.close()
    save_model(model, tokenizer, Path(cfg.run_dir) / "reward_model")
    result = {"val": val_metrics, "val_before_training": before, "data": report}
    (Path(cfg.run_dir) / "rm_metrics.json").write_text(json.dumps(result, indent=2))
    return result
