"""`--stage sft`: warm up the tiny random policy on sandbox demonstrations (offline sandbox only)."""

from __future__ import annotations

import json
import random

import torch

from common import data
from common.config import Config, ConfigError
from common.files import write_text_atomic
from common.metrics import RunLogger
from common.models import TINY, build_tiny_policy, load_tokenizer
from common.paths import RunPaths
from common.rollout import RolloutBatch, pad_left, pad_right
from common.runtime import begin_outputs, prepare
from learner.learner import response_token_logprobs
from learner.train_loop import fit
from stages.export import save_trained
from stages.model_card import training_record
from tasks.registry import load_task


def encode_sft_example(tokenizer, prompt: str, response: str, cfg: Config,
                       stats: data.DataStats) -> tuple[list[int], list[int]] | None:
    """(prompt ids, response ids) under the over-length policy; the response ends with <|im_end|>."""
    messages = ({"role": "user", "content": prompt},)
    return data.encode_conversation_parts(tokenizer, messages, response, cfg.data.max_length,
                                          cfg.data.max_prompt_tokens, cfg.data.overlong, stats)


def as_batch(rows: list[tuple[list[int], list[int]]], pad_id: int) -> RolloutBatch:
    """Demonstrations in the rollout layout (prompts left-, responses right-padded): the LM head then runs on
    response positions only, as in the learner."""
    prompt_ids, prompt_mask = pad_left([p for p, _ in rows], pad_id)
    response_ids, response_mask = pad_right([r for _, r in rows], pad_id)
    return RolloutBatch(prompt_ids, prompt_mask, response_ids, response_mask,
                        prompt_index=torch.zeros(len(rows), dtype=torch.long), version=0)


def sft_loss(model: torch.nn.Module, batch: RolloutBatch) -> torch.Tensor:
    """Mean negative log-likelihood of the response tokens (prompt tokens carry no loss)."""
    mask = batch.response_mask.float()
    return -(response_token_logprobs(model, batch) * mask).sum() / mask.sum()


def run_sft(cfg: Config, overwrite: bool = False) -> dict:
    """`overwrite`: replace another run's sft files in run_dir (common/ownership.py)."""
    task = load_task(cfg)
    if "sft" not in task.stages():
        raise ConfigError("--stage sft exists only for the offline sandbox (model.policy=tiny, data.source=sandbox)")
    paths = RunPaths(cfg)
    device = prepare(cfg)
    splits = task.splits()
    tokenizer = load_tokenizer(TINY, cfg.model.tokenizer)
    model = build_tiny_policy(cfg.model.tiny, tokenizer, cfg.seed).to(device)
    prompts = [p[-1]["content"] for p in splits.train_prompts]  # validation prompts stay unseen
    stats = data.DataStats()
    encoded = [e for e in (encode_sft_example(tokenizer, p, r, cfg, stats)
                           for p, r in task.sft_examples(prompts, cfg.seed)) if e is not None]
    bs = cfg.sft.batch_size

    def batches(epoch: int):
        order = list(range(len(encoded)))
        random.Random(cfg.seed + epoch).shuffle(order)
        for start in range(0, len(order), bs):
            yield as_batch([encoded[i] for i in order[start:start + bs]], tokenizer.pad_token_id).to(device)

    def loss_fn(model, batch):
        loss = sft_loss(model, batch)
        return loss, {"loss": loss.item()}

    begin_outputs(cfg, "sft", overwrite)  # the inputs have loaded: the run's files start here
    logger = RunLogger(cfg, "sft")
    metrics = fit(model, batches, -(-len(encoded) // bs), loss_fn, epochs=cfg.sft.epochs, lr=cfg.sft.lr,
                  device=device, warmup_ratio=0.05, desc="sft",
                  log=lambda s, m: logger.log(s, {f"sft/{k}": v for k, v in m.items()}))
    logger.close()
    result = {"examples": len(encoded), "final_loss": metrics.get("loss"), "encode": stats.as_dict()}
    figures = {"demonstrations": len(encoded), "final training loss": metrics.get("loss")}
    save_trained(model, tokenizer, paths.sft_out, training_record("sft", cfg, paths.run_dir, figures))
    write_text_atomic(paths.file("sft_metrics.json"), json.dumps(result, indent=2))
    return result
