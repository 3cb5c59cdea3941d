"""The run's data: preference pairs split by prompt into train and validation (in-distribution held-out), plus,
in the sandbox, an out-of-distribution held-out split (requests no training prompt uses), and the prompt pools."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from common import data, sandbox
from common.config import Config


SPLITS = ("train", "val", "ood")  # ood: out-of-distribution held-out (sandbox); empty for other sources


@dataclass
class Splits:
    train: list[data.PreferencePair]
    val: list[data.PreferencePair]  # in-distribution held-out: new prompts on requests training also asks
    stats: data.DataStats
    ood: list[data.PreferencePair] = dataclasses.field(default_factory=list)  # held-out templates / topics

    @property
    def train_prompts(self) -> list[tuple[dict, ...]]:
        return data.unique_prompts(self.train)

    @property
    def val_prompts(self) -> list[tuple[dict, ...]]:
        return data.unique_prompts(self.val)

    @property
    def ood_prompts(self) -> list[tuple[dict, ...]]:
        return data.unique_prompts(self.ood)

    def prompts(self, split: str) -> list[tuple[dict, ...]]:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; choose from {', '.join(SPLITS)}")
        return data.unique_prompts(getattr(self, split))


def data_source(cfg: Config) -> str:
    """The configured source; for the sandbox, its generated files (written once, seeded by data.split_seed)."""
    if cfg.data.source != "sandbox":
        return cfg.data.source
    out = Path(cfg.run_dir) / "data"
    if not (out / "average_rating_split.jsonl").is_file():
        sandbox.write_sandbox_data(out, cfg.sandbox, seed=cfg.data.split_seed)
    return str(out)


def ood_kind(cfg: Config, pair: data.PreferencePair) -> str:
    """'' for an in-distribution pair, else its out-of-distribution kind (sandbox only: common/sandbox.py)."""
    if cfg.data.source != "sandbox":
        return ""
    return sandbox.ood_kind(pair.prompt[-1]["content"], cfg.sandbox)


def load_splits(cfg: Config) -> Splits:
    """Load, validate, split by prompt (a prompt is never on both sides), cap, and record the counts.

    Out-of-distribution pairs (sandbox: a held-out template or topic) all go to the `ood` split, never to
    training; the rest is split by a hash of the prompt as before. `data.max_val_pairs` caps both held-out splits."""
    data_cfg = dataclasses.replace(cfg.data, source=data_source(cfg))
    pairs, stats = data.load_pairs(data_cfg)
    if not pairs:
        skipped = f", all {stats.skipped_bad} skipped as malformed (data.bad_rows=skip)" if stats.skipped_bad else ""
        raise data.DataError(f"{stats.origin}: no preference pairs ({stats.rows} rows read{skipped}); point "
                             f"data.source at rows in the HelpSteer2_binarized schema")
    kinds = [ood_kind(cfg, p) for p in pairs]
    ood = [p for p, k in zip(pairs, kinds) if k]
    train, val = data.split_by_prompt([p for p, k in zip(pairs, kinds) if not k], cfg.data.val_fraction,
                                      cfg.data.split_seed)
    if not train or not val:
        raise data.DataError(f"{stats.origin}: {len(pairs)} pairs with {len(data.unique_prompts(pairs))} distinct "
                             f"prompt(s) give {len(train)} train and {len(val)} validation pairs; a split by prompt "
                             f"needs at least 2 distinct prompts: add rows")
    if cfg.data.max_train_pairs:
        train = train[:cfg.data.max_train_pairs]
    if cfg.data.max_val_pairs:
        val, ood = val[:cfg.data.max_val_pairs], ood[:cfg.data.max_val_pairs]
    return Splits(train=train, val=val, stats=stats, ood=ood)


def encode_prompts(tokenizer, prompts: list[tuple[dict, ...]], cfg: Config,
                   stats: data.DataStats) -> tuple[list[tuple[dict, ...]], list[list[int]]]:
    """Chat-templated prompt ids under the over-length policy; dropped prompts are left out of both lists."""
    kept, tokens = [], []
    for messages in prompts:
        ids = data.encode_prompt(tokenizer, messages, cfg.data.max_prompt_tokens, cfg.data.overlong, stats)
        if ids is not None:
            kept.append(messages)
            tokens.append(ids)
    if prompts and not kept:  # an empty split (e.g. no out-of-distribution pool) gives empty lists
        raise data.DataError(f"data.source={cfg.data.source}: all {len(prompts)} prompts are longer than "
                             f"data.max_prompt_tokens={cfg.data.max_prompt_tokens} and were dropped "
                             f"(data.overlong={cfg.data.overlong}); raise data.max_prompt_tokens or use "
                             f"data.overlong=truncate_left")
    return kept, tokens


def prompt_pool(cfg: Config, tokenizer, split: str, stage: str) -> tuple[list[tuple[dict, ...]], list[list[int]]]:
    """The prompts of `split` ("train" for RL, "val" / "ood" for eval) with their chat-templated ids (both empty
    for an empty split, e.g. "ood" outside the sandbox); the stage's data counts go to
    <run_dir>/data_<stage>.json. Every prompt pool (rl, eval, the benches) is built here."""
    splits = load_splits(cfg)
    stats = data.DataStats()
    prompts, prompt_tokens = encode_prompts(tokenizer, splits.prompts(split), cfg, stats)
    write_data_report(cfg.run_dir, stage, splits, stats)
    return prompts, prompt_tokens


def write_data_report(run_dir: str | Path, name: str, splits: Splits, extra: data.DataStats | None = None) -> dict:
    """Save the data counts of a stage to <run_dir>/data_<name>.json and return them."""
    report = {"train_pairs": len(splits.train), "val_pairs": len(splits.val),
              "train_prompts": len(splits.train_prompts), "val_prompts": len(splits.val_prompts),
              "ood_pairs": len(splits.ood), "ood_prompts": len(splits.ood_prompts),
              "load": splits.stats.as_dict(), **({"encode": extra.as_dict()} if extra is not None else {})}
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    (Path(run_dir) / f"data_{name}.json").write_text(json.dumps(report, indent=2))
    return report
