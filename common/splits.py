"""The run's data: preference pairs split by prompt into train and validation (in-distribution held-out), plus,
in the sandbox and the ifeval task, an out-of-distribution held-out split (requests, or instruction types, no
training prompt uses), and the prompt pools.

The ifeval task (common/ifeval_task.py) has prompts without a pair (every sampled answer tied under the
verifiers): they carry no preference, but RL and eval still ask them, split by the same rule as the rest, so the
held-out pools are all held-out prompts, not only those the SFT policy sometimes gets right."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from common import data, ifeval_task, sandbox
from common.config import Config
from common.errors import PathNotFound


SPLITS = ("train", "val", "ood")  # ood: out-of-distribution held-out (sandbox, ifeval); empty for other sources


@dataclass
class Splits:
    train: list[data.PreferencePair]
    val: list[data.PreferencePair]  # in-distribution held-out: new prompts on requests training also asks
    stats: data.DataStats
    ood: list[data.PreferencePair] = dataclasses.field(default_factory=list)  # held-out templates / topics / types
    # ifeval: split -> all its prompts in the task's order, with or without a pair (see the module docstring)
    task_pools: dict[str, list[tuple[dict, ...]]] = dataclasses.field(default_factory=dict)

    @property
    def train_prompts(self) -> list[tuple[dict, ...]]:
        return self.prompts("train")

    @property
    def val_prompts(self) -> list[tuple[dict, ...]]:
        return self.prompts("val")

    @property
    def ood_prompts(self) -> list[tuple[dict, ...]]:
        return self.prompts("ood")

    def prompts(self, split: str) -> list[tuple[dict, ...]]:
        """The split's distinct prompts: those of its pairs in first-seen order; for the ifeval task, all its
        prompts in the task's order (round-robin over instruction types), so the first N are a fair sample
        of paired and unpaired ones."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; choose from {', '.join(SPLITS)}")
        if self.task_pools:
            return list(self.task_pools[split])
        return data.unique_prompts(getattr(self, split))


def task_dir(cfg: Config) -> Path:
    """Where the ifeval task's files are (ifeval.dir, '' = <run_dir>/data)."""
    return Path(cfg.ifeval.dir) if cfg.ifeval.dir else Path(cfg.run_dir) / "data"


def data_source(cfg: Config) -> str:
    """The configured source; for the sandbox, its generated files (written once, seeded by data.split_seed); for
    the ifeval task, the directory `--stage pairs` wrote."""
    if cfg.data.source == "ifeval":
        out = task_dir(cfg)
        if not (out / ifeval_task.TASK_FILE).is_file():
            raise PathNotFound(f"no ifeval task at {out} ({ifeval_task.TASK_FILE} missing): run `launch.py --stage "
                               f"pairs` with this config first (--stage all does)")
        return str(out)
    if cfg.data.source != "sandbox":
        return cfg.data.source
    out = Path(cfg.run_dir) / "data"
    if not (out / "average_rating_split.jsonl").is_file():
        sandbox.write_sandbox_data(out, cfg.sandbox, seed=cfg.data.split_seed)
    return str(out)


def ood_kind(cfg: Config, prompt_text: str) -> str:
    """'' for an in-distribution prompt (its last user message), else its out-of-distribution kind: the sandbox's
    new_topic / new_template (common/sandbox.py), or the ifeval task's held-out instruction type."""
    if cfg.data.source == "sandbox":
        return sandbox.ood_kind(prompt_text, cfg.sandbox)
    if cfg.data.source == "ifeval":
        return ifeval_task.ood_kind(prompt_text, task_dir(cfg), cfg.ifeval.heldout_instructions)
    return ""


def gold_judge(cfg: Config):
    """The gold judge of the data source, `(last user message, response) -> score or named scores`, or None: the
    sandbox's programmatic judge (sandbox.gold_judge), the ifeval task's IFEval verifiers keyed by prompt text
    (strict as "gold", loose as "gold_loose"); other sources have none."""
    if cfg.data.source == "sandbox":
        return sandbox.gold_score if cfg.sandbox.gold_judge else None
    if cfg.data.source == "ifeval":
        return ifeval_task.IFEvalJudge(task_dir(cfg))
    return None


def task_prompt_messages(cfg: Config) -> list[tuple[dict, ...]]:
    """The ifeval task's prompts (with or without a pair), in the task's order, as chat messages."""
    if cfg.data.source != "ifeval":
        return []
    rows = ifeval_task.read_prompts(task_dir(cfg) / ifeval_task.PROMPTS_FILE)
    return [tuple(data.parse_prompt(t.prompt)[0]) for t in rows]


def load_splits(cfg: Config) -> Splits:
    """Load, validate, split by prompt (a prompt is never on both sides), cap, and record the counts.

    Out-of-distribution pairs (sandbox: a held-out template or topic; ifeval: a held-out instruction type) all go
    to the `ood` split, never to training; the rest is split by a hash of the prompt (data.validation_keys), the
    ifeval task's prompts without a pair with them. `data.max_val_pairs` caps both held-out splits' pairs."""
    data_cfg = dataclasses.replace(cfg.data, source=data_source(cfg))
    pairs, stats = data.load_pairs(data_cfg)
    if not pairs:
        skipped = f", all {stats.skipped_bad} skipped as malformed (data.bad_rows=skip)" if stats.skipped_bad else ""
        raise data.DataError(f"{stats.origin}: no preference pairs ({stats.rows} rows read{skipped}); point "
                             f"data.source at rows in the HelpSteer2_binarized schema")
    kinds = [ood_kind(cfg, p.prompt[-1]["content"]) for p in pairs]
    ood = [p for p, k in zip(pairs, kinds) if k]
    in_dist = [p for p, k in zip(pairs, kinds) if not k]
    task = task_prompt_messages(cfg)  # ifeval: every prompt takes part in the split, paired or not
    task_in = [m for m in task if not ood_kind(cfg, m[-1]["content"])]
    val_keys = data.validation_keys([p.prompt_key for p in in_dist] + [data.messages_key(m) for m in task_in],
                                    cfg.data.val_fraction, cfg.data.split_seed)
    train = [p for p in in_dist if p.prompt_key not in val_keys]
    val = [p for p in in_dist if p.prompt_key in val_keys]
    pools = {} if not task else {
        "train": [m for m in task_in if data.messages_key(m) not in val_keys],
        "val": [m for m in task_in if data.messages_key(m) in val_keys],
        "ood": [m for m in task if ood_kind(cfg, m[-1]["content"])]}
    if not train or not val:
        raise data.DataError(f"{stats.origin}: {len(pairs)} pairs with {len(data.unique_prompts(pairs))} distinct "
                             f"prompt(s) give {len(train)} train and {len(val)} validation pairs; a split by prompt "
                             f"needs at least 2 distinct prompts: add rows")
    if cfg.data.max_train_pairs:
        train = train[:cfg.data.max_train_pairs]
    if cfg.data.max_val_pairs:
        val, ood = val[:cfg.data.max_val_pairs], ood[:cfg.data.max_val_pairs]
    return Splits(train=train, val=val, stats=stats, ood=ood, task_pools=pools)


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
              **({"unpaired_prompts": {k: len(v) - len(data.unique_prompts(getattr(splits, k)))
                                       for k, v in splits.task_pools.items()}} if splits.task_pools else {}),
              "load": splits.stats.as_dict(), **({"encode": extra.as_dict()} if extra is not None else {})}
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    (Path(run_dir) / f"data_{name}.json").write_text(json.dumps(report, indent=2))
    return report
