"""`--stage rm`: train the reward model on preference pairs and report validation accuracy."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import NamedTuple

import torch
from tqdm.auto import tqdm

from actors.degenerate import negative_pairs
from common import data
from common.config import Config, RewardConfig
from common.files import write_text_atomic
from common.metrics import RunLogger
from common.models import apply_lora, load_reward_model, load_tokenizer, reward_head_logits
from common.paths import RunPaths
from common.reward_head import REWARD_STATS, head_from_config, save_head
from common.rollout import pad_right
from common.runtime import begin_outputs, prepare
from learner import distributional as dist
from learner.precision import precision_line, resolve_dtype
from learner.reward_losses import bradley_terry_loss, pairwise_accuracy
from learner.reward_metrics import pair_metrics
from learner.train_loop import fit
from stages.export import save_trained
from stages.model_card import training_record
from tasks.base import Splits, write_data_report
from tasks.registry import load_task


class EncodedPair(NamedTuple):
    chosen: list[int]  # token ids of prompt + chosen response
    rejected: list[int]
    chosen_rating: float | None  # the data set's ratings (the distributional head's optional rating term); None
    rejected_rating: float | None  # for a data set without ratings


def encode_pairs(tokenizer, pairs: list[data.PreferencePair], cfg: Config, stats: data.DataStats) -> list[EncodedPair]:
    """Both conversations under the over-length policy; a pair is kept only when both sides are."""
    out = []
    for p in pairs:
        enc = [data.encode_conversation(tokenizer, p.prompt, r, cfg.data.max_length, cfg.data.max_prompt_tokens,
                                        cfg.data.overlong, stats) for r in (p.chosen, p.rejected)]
        if enc[0] is not None and enc[1] is not None:
            out.append(EncodedPair(enc[0], enc[1], p.chosen_rating, p.rejected_rating))
        else:
            stats.dropped_overlong_pairs += 1
    return out


def encode_negatives(tokenizer, pairs: list[data.PreferencePair], cfg: Config,
                     stats: data.DataStats) -> list[EncodedPair]:
    """reward.degenerate_negatives: extra training pairs, a pair's chosen answer against a degenerate answer to the
    same prompt (actors/degenerate.py; reward.degenerate_kinds in turn) encoded as unfinished (no end-of-turn), as
    the scorer encodes a response cut at generator.max_new_tokens, or, the empty answer, as finished. The rejected
    side's rating is the scale's bottom (0). A practitioner's fix for a reward model that has never seen such
    answers (issue 25), not in the paper."""
    out = []
    for p, chosen, bad, bad_finished in negative_pairs(pairs, cfg.reward.degenerate_negatives, tokenizer,
                                                       cfg.generator.max_new_tokens, cfg.seed,
                                                       cfg.reward.degenerate_kinds):
        enc = [data.encode_conversation(tokenizer, p.prompt, r, cfg.data.max_length, cfg.data.max_prompt_tokens,
                                        cfg.data.overlong, stats, finished) for r, finished in ((chosen, True),
                                                                                                (bad, bad_finished))]
        if enc[0] is not None and enc[1] is not None:
            out.append(EncodedPair(enc[0], enc[1], p.chosen_rating, 0.0 if p.rated else None))
    return out


@torch.no_grad()
def score_stats(model: torch.nn.Module, pairs: list[EncodedPair], pad_id: int, device: torch.device,
                batch_size: int) -> dict[str, float]:
    """Mean and std of the scalar head's scores on the answers (both sides) of up to 1024 training pairs: what
    rl.normalize_reward standardises the reward with (reward_model/reward_stats.json)."""
    model.eval()
    pairs, scores = pairs[:1024], []
    for start in range(0, len(pairs), batch_size):
        lw, ll = pair_logits(model, pairs[start:start + batch_size], pad_id, device)
        scores.append(torch.cat([lw[:, 0], ll[:, 0]]).cpu())
    s = torch.cat(scores).double()
    return {"mean": float(s.mean()), "std": float(s.std()), "answers": len(s)}


# (DataStats field, what it counts) for the one line per kind the rm stage prints when the count is not 0
DATA_NOTES = (("identical_responses", "pairs dropped: chosen and rejected are the same text (no preference)"),
              ("duplicate_pairs", "pairs dropped: repeats of an earlier pair (same prompt, chosen and rejected)"),
              ("equal_ratings", "pairs kept with equal ratings (ties; the data set's chosen side is the label)"),
              ("system_prompts", "pairs kept whose prompt starts with a system message (the chat template renders "
                                 "it)"),
              ("skipped_bad", "malformed rows skipped (data.bad_rows=skip)"))


def report_data_notes(stats: data.DataStats) -> None:
    """One line per kind of row the data held that the user should know of, with its count (also in
    rm_metrics.json's data.load)."""
    for name, what in DATA_NOTES:
        if getattr(stats, name):
            print(f"[rm] data: {getattr(stats, name)} {what}", flush=True)


def check_overlong_share(origin: str, total: int, dropped: int, cfg: Config) -> None:
    """Stop when more than half of the pairs were dropped for length: a reward model trained on the few short
    ones would be a poor (biased) proxy, and the run would otherwise end with exit 0."""
    if 2 * dropped <= total:
        return
    fix = "raise data.max_length (and data.max_prompt_tokens below it)"
    if cfg.data.overlong == "drop":
        fix += ", or use data.overlong=truncate_left"
    raise data.DataError(f"{origin}: {dropped} of {total} pairs were dropped as longer than data.max_length="
                         f"{cfg.data.max_length} (data.max_prompt_tokens={cfg.data.max_prompt_tokens}, "
                         f"data.overlong={cfg.data.overlong}), more than half: {fix}")


def pair_logits(model: torch.nn.Module, pairs: list[EncodedPair], pad_id: int,
                device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward over chosen and rejected together: [B, L], [B, L] head outputs (L = 1 for the scalar head)."""
    ids, mask = pad_right([p.chosen for p in pairs] + [p.rejected for p in pairs], pad_id)
    logits = reward_head_logits(model, ids.to(device), mask.to(device)).float()  # [2B, L]
    return logits[:len(pairs)], logits[len(pairs):]


def pair_loss(reward: RewardConfig, logits_w: torch.Tensor, logits_l: torch.Tensor,
              pairs: list[EncodedPair]) -> tuple[torch.Tensor, dict[str, float]]:
    """The head's training loss on [B, L] chosen and rejected outputs, with its logged parts."""
    if reward.head == "scalar":
        rc, rr = logits_w[:, 0], logits_l[:, 0]
        loss = bradley_terry_loss(rc, rr)
        return loss, {"loss": loss.item(), "accuracy": pairwise_accuracy(rc.detach(), rr.detach()).item()}
    ratings = [torch.tensor([getattr(p, f) for p in pairs], device=logits_w.device) if reward.rating_coef else None
               for f in ("chosen_rating", "rejected_rating")]
    loss, parts = dist.distributional_loss(logits_w, logits_l, reward.ties, reward.entropy_coef,
                                           reward.rating_coef, *ratings, max_rating=reward.max_rating)
    return loss, {"loss": loss.item(), **{k: v.item() for k, v in parts.items()}}


@torch.no_grad()
def evaluate_pairs(model: torch.nn.Module, pairs: list[EncodedPair], pad_id: int, device: torch.device,
                   batch_size: int, reward: RewardConfig) -> dict:
    """Validation metrics of either head (learner/reward_metrics.py): loss, accuracy, mean P_win, calibration."""
    model.eval()
    order = sorted(range(len(pairs)), key=lambda i: len(pairs[i].chosen) + len(pairs[i].rejected))  # less padding
    chosen, rejected = [], []
    for start in range(0, len(order), batch_size):
        lw, ll = pair_logits(model, [pairs[i] for i in order[start:start + batch_size]], pad_id, device)
        chosen.append(lw.cpu())
        rejected.append(ll.cpu())
    return pair_metrics(reward.head == "distributional", torch.cat(chosen), torch.cat(rejected), reward.ties)


def require_ratings(reward: RewardConfig, splits: Splits) -> None:
    """The distributional head's rating term needs every pair's ratings: a data set without them is one error."""
    if reward.head != "distributional" or not reward.rating_coef:
        return
    unrated = sum(not p.rated for p in splits.train + splits.val + splits.ood)
    if unrated:
        raise data.DataError(f"{splits.stats.origin}: reward.rating_coef={reward.rating_coef} needs each pair's "
                             f"ratings, and {unrated} pairs have none: set reward.rating_coef=0, or name the data "
                             f"set's rating columns with data.columns (chosen_rating=COLUMN,rejected_rating=COLUMN)")


def run_rm(cfg: Config, overwrite: bool = False) -> dict:
    """`overwrite`: replace another run's rm files in run_dir (common/ownership.py)."""
    paths = RunPaths(cfg)
    device = prepare(cfg)
    task = load_task(cfg)
    task.require_pairs("rm")
    splits = task.splits()
    require_ratings(cfg.reward, splits)
    init = paths.reward_init
    tokenizer = load_tokenizer(init, cfg.model.tokenizer)
    stats = data.DataStats()
    train, val = encode_pairs(tokenizer, splits.train, cfg, stats), encode_pairs(tokenizer, splits.val, cfg, stats)
    ood = encode_pairs(tokenizer, splits.ood, cfg, stats)  # held-out templates / topics (sandbox)
    data_train = train  # the data's own pairs (reward_stats.json is measured on them)
    negatives = encode_negatives(tokenizer, splits.train, cfg, stats) if cfg.reward.degenerate_negatives else []
    train = train + negatives
    report_data_notes(splits.stats)
    if not train or not val:
        raise data.DataError(f"{splits.stats.origin}: {len(train)} of {len(splits.train)} train and {len(val)} of "
                             f"{len(splits.val)} validation pairs fit data.max_length={cfg.data.max_length} "
                             f"(data.overlong={cfg.data.overlong}); reward-model training needs both: raise "
                             f"data.max_length or use data.overlong=truncate_left")
    encode_pairs(tokenizer, splits.dev + splits.dev_ood, cfg, stats)  # the validation pools' pairs count too
    check_overlong_share(splits.stats.origin, len(splits.train) + len(splits.val) + len(splits.ood) + len(splits.dev)
                         + len(splits.dev_ood), stats.dropped_overlong_pairs, cfg)
    head = head_from_config(cfg.reward)
    model = load_reward_model(init, head.num_labels, tokenizer, device,
                              key="reward.init" if cfg.reward.init else "model.policy")
    model.config.id2label, model.config.label2id = head.id2label(), {v: k for k, v in head.id2label().items()}
    model = apply_lora(model, cfg.reward.lora, "SEQ_CLS")
    begin_outputs(cfg, "rm", overwrite)  # the data and the starting model have loaded: the run's files start here
    report = write_data_report(cfg.run_dir, "rm", splits, stats)
    pad, bs = tokenizer.pad_token_id, cfg.reward.batch_size

    def batches(epoch: int):
        order = list(range(len(train)))
        random.Random(cfg.seed + epoch).shuffle(order)
        for start in range(0, len(order), bs):
            yield [train[i] for i in order[start:start + bs]]

    def loss_fn(model, batch):
        return pair_loss(cfg.reward, *pair_logits(model, batch, pad, device), batch)

    logger = RunLogger(cfg, "rm")
    dtype = resolve_dtype(cfg.reward.precision, device, "reward.precision")
    tqdm.write(precision_line(cfg.reward.precision, device, dtype, "reward.precision"))
    before = evaluate_pairs(model, val, pad, device, 2 * bs, cfg.reward)
    fit(model, batches, -(-len(train) // bs), loss_fn, epochs=cfg.reward.epochs, lr=cfg.reward.lr, device=device,
        warmup_ratio=cfg.reward.warmup_ratio, weight_decay=cfg.reward.weight_decay, grad_accum=cfg.reward.grad_accum,
        dtype=dtype,
        log=lambda s, m: logger.log(s, {f"rm/train_{k}": v for k, v in m.items()}), desc="reward model",
        gradient_checkpointing=cfg.reward.gradient_checkpointing,
        hint="lower reward.lr, or train in float32 (reward.precision=float32)")
    val_metrics = evaluate_pairs(model, val, pad, device, 2 * bs, cfg.reward)
    logger.log(len(train), {f"rm/val_{k}": v for k, v in val_metrics.items() if isinstance(v, (int, float))}
               | {"rm/val_ece": val_metrics["calibration"]["ece"]})
    logger.close()
    result = {"head": head.kind, "num_bins": head.num_bins, "val": val_metrics, "val_before_training": before,
              "data": report, "degenerate_negatives": len(negatives)}
    stats_file = None
    if head.kind == "scalar":
        result["score_stats"] = score_stats(model, data_train, pad, device, 2 * bs)
        stats_file = json.dumps(result["score_stats"], indent=2)
    if ood:  # the same metrics on pairs whose requests no training pair uses
        result["val_ood"] = evaluate_pairs(model, ood, pad, device, 2 * bs, cfg.reward)
    record = training_record("reward", cfg, paths.run_dir, card_figures(result))
    def extra(tmp):
        save_head(head, tmp)
        if stats_file is not None:
            (Path(tmp) / REWARD_STATS).write_text(stats_file)

    save_trained(model, tokenizer, paths.reward_out, record, extra=extra)
    write_text_atomic(paths.file("rm_metrics.json"), json.dumps(result, indent=2))
    return result


def card_figures(result: dict) -> dict:
    """The validation figures the reward model's card shows."""
    figures = {"validation pairs": result["val"]["pairs"], "validation accuracy": result["val"]["accuracy"],
               "validation loss": result["val"]["loss"]}
    if "val_ood" in result:  # pairs whose requests no training pair uses
        figures["out-of-distribution validation accuracy"] = result["val_ood"]["accuracy"]
    return figures
