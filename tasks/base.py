"""The Task interface, and the one split and prompt-pool logic every task shares.

A task is what a run learns and is judged on: its preference pairs (where they come from and how they are
prepared), its prompt pools and held-out splits, its gold judge, the reward functions it offers and the stages it
needs. `tasks.registry.load_task(cfg)` picks the task from `data.source`; no other code branches on it. Adding a
task is adding one file with a `Task` subclass, registered in tasks/registry.py.

Splits. Preference pairs are split by prompt into train and validation (in-distribution held-out); a task with an
out-of-distribution held-out set (the sandbox's held-out requests, the ifeval task's held-out instruction types)
names each such prompt's kind (`ood_kind`) and all of them go to the `ood` split, never to training. A task may
also have prompts without a pair (the ifeval task: every sampled answer tied under the verifiers): they carry no
preference, but RL and eval still ask them, split by the same rule as the rest, so the held-out pools are all
held-out prompts, not only those with a pair. A task whose data holds prompts only (`prompts_only`: a prompt-only
data set) has no pairs at all: its prompts are split by that rule alone, and no reward model can be trained on it.

Validation and test. Each held-out pool is split again by prompt (`data.dev_fraction`, a hash with another salt):
`dev` and `dev_ood` are the validation pools, which the RL probe reads and every choice (steps, lr, kl_coef) is made
on; what is left of `val` and `ood` are the test pools, which the eval stage reads once, at the end. No prompt is
in two of train, dev, val, dev_ood, ood (tests/test_tasks.py).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from common import data
from common.config import Config
from common.files import write_text_atomic

# val / ood: the in-distribution and out-of-distribution test pools (ood empty for a task without one); dev / dev_ood:
# the validation pools carved out of them (data.dev_fraction)
SPLITS = ("train", "val", "ood", "dev", "dev_ood")
DEV_SALT = 1_000_003  # added to data.split_seed for the dev/test split, so it is not the train/held-out hash again
Messages = tuple[dict, ...]  # a prompt: chat messages ending with a user turn
# (last user message, response) -> the gold judge's score, or named scores among which "gold" (the headline one;
# the ifeval task adds "gold_loose")
GoldFn = Callable[[str, str], "float | Mapping[str, float]"]
# TRL's reward-function convention (actors/reward_functions.py calls it): keyword arguments prompts, completions,
# completion_ids and the prompt's data columns -> one float (or None) per completion
RewardFn = Callable[..., list[float]]
RL_STAGES = ("rm", "rl", "eval")


@dataclass
class Splits:
    train: list[data.PreferencePair]
    val: list[data.PreferencePair]  # in-distribution held-out: new prompts on requests training also asks
    stats: data.DataStats
    ood: list[data.PreferencePair] = field(default_factory=list)  # held-out requests / instruction types
    dev: list[data.PreferencePair] = field(default_factory=list)  # validation pools (see the module docstring)
    dev_ood: list[data.PreferencePair] = field(default_factory=list)
    # a task with prompts without a pair: split -> all its prompts in the task's order (see the module docstring)
    task_pools: dict[str, list[Messages]] = field(default_factory=dict)

    @property
    def train_prompts(self) -> list[Messages]:
        return self.prompts("train")

    @property
    def val_prompts(self) -> list[Messages]:
        return self.prompts("val")

    @property
    def ood_prompts(self) -> list[Messages]:
        return self.prompts("ood")

    def prompts(self, split: str) -> list[Messages]:
        """The split's distinct prompts: those of its pairs in first-seen order; for a task with unpaired prompts,
        all its prompts in the task's order, so the first N are a fair sample of paired and unpaired ones."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; choose from {', '.join(SPLITS)}")
        if self.task_pools:
            return list(self.task_pools[split])
        return data.unique_prompts(getattr(self, split))


class Task:
    """What every stage asks of a task. Subclasses implement `load_pairs` and override what they have."""

    name = "task"
    # the report's sentence on the two held-out pools ({n_id}, {n_ood}: their prompt counts)
    heldout_text = ("ID: {n_id} held-out prompts (a split by prompt of the preference data). OOD: {n_ood} prompts "
                    "the task holds out from training.")
    gold_name = "gold"  # what the gold judge's headline score is called in printed lines (the ifeval task: strict)

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg

    # ------------------------------------------------------------------------------------------- the task
    def stages(self) -> tuple[str, ...]:
        """The stages this task needs, in order (then the report): without pairs, rl and eval only (the reward from
        reward.path or reward.functions); what `--stage all` runs is `planned_stages`."""
        return RL_STAGES[1:] if self.prompts_only() else RL_STAGES

    def planned_stages(self) -> tuple[str, ...]:
        """The stages `--stage all` runs (launch.py, experiments/runner.py): `stages()` without rm (and best_of_n,
        which picks by the reward model) when reward.model_weight=0, where the reward is reward.functions' alone and
        nothing trains or loads a reward model. The one place a run's stage list is filtered."""
        return tuple(s for s in self.stages() if s not in ("rm", "best_of_n") or self.cfg.reward.model_weight > 0)

    def experiment_overrides(self, root: Path) -> list[str]:  # noqa: ARG002 - a task built per run
        """Overrides an experiment under `root` gives every run, so that they share what the task builds once."""
        return []

    def load_pairs(self) -> tuple[list[data.PreferencePair], data.DataStats]:
        """The task's preference pairs, parsed and validated, with their counts."""
        raise NotImplementedError

    def unpaired_prompts(self) -> list[Messages]:
        """All the task's prompts when some have no pair (they take part in the split); else none."""
        return []

    def prompts_only(self) -> bool:
        """True when the task's data holds prompts without preference pairs (a prompt-only data set)."""
        return False

    def require_pairs(self, stage: str) -> None:
        """DataError naming the data when a stage that trains on preference pairs gets a prompt-only data set."""
        if self.prompts_only():
            raise data.DataError(f"{self.load_pairs()[1].origin}: holds prompts only (no chosen/rejected columns), "
                                 f"so --stage {stage} has no preference pairs to train on; give the rl stage a "
                                 f"trained reward model (reward.path) or reward functions (reward.functions) "
                                 f"instead, or point data.source at preference pairs")

    def prompt_columns(self, prompts: list[Messages]) -> list[dict]:
        """Each prompt's extra data columns (a dataset's `solution`, say), which reward functions receive as keyword
        arguments (TRL's convention); none by default."""
        return [{} for _ in prompts]

    def ood_kind(self, prompt_text: str) -> str:  # noqa: ARG002 - a task without an OOD pool
        """'' for an in-distribution prompt (its last user message), else its out-of-distribution kind."""
        return ""

    def gold_judge(self) -> GoldFn | None:
        """The task's gold judge, or None (a task whose answers only the reward model scores)."""
        return None

    def reward_functions(self) -> dict[str, RewardFn]:
        """Rewards the task offers, by name (reward.functions may name them), in TRL's calling convention: the gold
        judge's headline score."""
        judge = self.gold_judge()
        if judge is None:
            return {}

        def gold(prompts: list, completions: list, **kwargs) -> list[float]:  # noqa: ARG001 - completion_ids, columns
            scores = [judge(last_user_text(p), completion_text(c)) for p, c in zip(prompts, completions)]
            return [float(s["gold"] if isinstance(s, Mapping) else s) for s in scores]

        return {f"{self.name}_gold": gold}

    # ------------------------------------------------------------------------------------------- splits
    def splits(self) -> Splits:
        """Load, validate, split by prompt (a prompt is never on both sides), cap, and count.

        Out-of-distribution pairs all go to the `ood` split; the rest is split by a hash of the prompt
        (data.validation_keys), the task's unpaired prompts with them (a prompt-only task's prompts alone).
        `data.max_val_pairs` caps both held-out splits' pairs."""
        cfg = self.cfg.data
        pairs, stats = self.load_pairs()
        unpaired = self.unpaired_prompts()
        prompts_only = self.prompts_only()
        if not pairs and not (prompts_only and unpaired):
            skipped = (f", all {stats.skipped_bad} skipped as malformed (data.bad_rows=skip)" if stats.skipped_bad
                       else "") + "".join(f", {n} {what}" for n, what in (
                           (stats.identical_responses, "dropped with chosen and rejected identical"),
                           (stats.duplicate_pairs, "dropped as repeats of an earlier pair")) if n)
            raise data.DataError(f"{stats.origin}: no {'prompts' if prompts_only else 'preference pairs'} "
                                 f"({stats.rows} rows read{skipped}); point data.source at rows in one of the "
                                 f"formats of docs/data.md")
        kinds = [self.ood_kind(p.prompt[-1]["content"]) for p in pairs]
        ood = [p for p, k in zip(pairs, kinds) if k]
        in_dist = [p for p, k in zip(pairs, kinds) if not k]
        unpaired_in = [m for m in unpaired if not self.ood_kind(m[-1]["content"])]
        val_keys = data.validation_keys([p.prompt_key for p in in_dist] + [data.messages_key(m) for m in unpaired_in],
                                        cfg.val_fraction, cfg.split_seed)
        train = [p for p in in_dist if p.prompt_key not in val_keys]
        val = [p for p in in_dist if p.prompt_key in val_keys]
        pools = {} if not unpaired else {
            "train": [m for m in unpaired_in if data.messages_key(m) not in val_keys],
            "val": [m for m in unpaired_in if data.messages_key(m) in val_keys],
            "ood": [m for m in unpaired if self.ood_kind(m[-1]["content"])]}
        dev, val, dev_ood, ood = self.carve_dev(val, ood, pools)
        if prompts_only and (not pools["train"] or not pools["val"]):
            raise data.DataError(f"{stats.origin}: {len(unpaired)} distinct prompt(s) give {len(pools['train'])} "
                                 f"train and {len(pools['val'])} validation prompts; a split by prompt needs at least "
                                 f"2 distinct prompts: add rows")
        if not prompts_only and (not train or not val):
            raise data.DataError(f"{stats.origin}: {len(pairs)} pairs with {len(data.unique_prompts(pairs))} "
                                 f"distinct prompt(s) give {len(train)} train and {len(val)} validation pairs; a split "
                                 f"by prompt needs at least 2 distinct prompts: add rows")
        if cfg.max_train_pairs:
            train = train[:cfg.max_train_pairs]
        if cfg.max_val_pairs:
            val, ood = val[:cfg.max_val_pairs], ood[:cfg.max_val_pairs]
            dev, dev_ood = dev[:cfg.max_val_pairs], dev_ood[:cfg.max_val_pairs]
        return Splits(train=train, val=val, stats=stats, ood=ood, dev=dev, dev_ood=dev_ood, task_pools=pools)

    def carve_dev(self, val: list[data.PreferencePair], ood: list[data.PreferencePair],
                  pools: dict[str, list[Messages]]) -> tuple[list, list, list, list]:
        """(dev, val, dev_ood, ood): data.dev_fraction of each held-out pool's prompts (paired and unpaired alike,
        all pairs of a prompt on one side) become its validation pool; `pools` (unpaired prompts) is split in place."""
        fraction, seed = self.cfg.data.dev_fraction, self.cfg.data.split_seed + DEV_SALT
        out = []
        for test, name in ((val, "val"), (ood, "ood")):
            keys = [p.prompt_key for p in test] + [data.messages_key(m) for m in pools.get(name, [])]
            # two prompts at least, so that the test pool keeps one (validation_keys leaves both sides non-empty)
            dev_keys = data.validation_keys(keys, fraction, seed) if fraction and len(set(keys)) > 1 else set()
            out += [[p for p in test if p.prompt_key in dev_keys], [p for p in test if p.prompt_key not in dev_keys]]
            if pools:
                pools["dev" if name == "val" else "dev_ood"] = [m for m in pools[name]
                                                                if data.messages_key(m) in dev_keys]
                pools[name] = [m for m in pools[name] if data.messages_key(m) not in dev_keys]
        return out[0], out[1], out[2], out[3]

    def encode_prompts(self, tokenizer, prompts: list[Messages],
                       stats: data.DataStats) -> tuple[list[Messages], list[list[int]]]:
        """Chat-templated prompt ids under the over-length policy; dropped prompts are left out of both lists."""
        cfg = self.cfg.data
        kept, tokens = [], []
        for messages in prompts:
            ids = data.encode_prompt(tokenizer, messages, cfg.max_prompt_tokens, cfg.overlong, stats)
            if ids is not None:
                kept.append(messages)
                tokens.append(ids)
        if prompts and not kept:  # an empty split (e.g. no out-of-distribution pool) gives empty lists
            raise data.DataError(f"data.source={cfg.source}: all {len(prompts)} prompts are longer than "
                                 f"data.max_prompt_tokens={cfg.max_prompt_tokens} and were dropped "
                                 f"(data.overlong={cfg.overlong}); raise data.max_prompt_tokens or use "
                                 f"data.overlong=truncate_left")
        return kept, tokens

    def prompt_pool(self, tokenizer, split: str, stage: str,
                    before_report: Callable[[], object] | None = None) -> tuple[list[Messages], list[list[int]]]:
        """The prompts of `split` ("train" for RL, "dev" / "dev_ood" for the probe, "val" / "ood" for eval) with
        their chat-templated ids (both empty for an empty split); the stage's data counts go to
        <run_dir>/data_<stage>.json, after
        `before_report` (the stage's remaining input checks: a run that fails on one leaves no data report).
        Every prompt pool (rl, eval, the benches) is built here."""
        splits = self.splits()
        stats = data.DataStats()
        prompts, prompt_tokens = self.encode_prompts(tokenizer, splits.prompts(split), stats)
        if before_report is not None:
            before_report()
        write_data_report(self.cfg.run_dir, stage, splits, stats)
        return prompts, prompt_tokens


def last_user_text(prompt) -> str:
    """A prompt's last user message: the text itself, or the content of the last message of chat messages."""
    return prompt if isinstance(prompt, str) else prompt[-1]["content"]


def completion_text(completion) -> str:
    """A completion's text: TRL's conversational form (a list holding one assistant message), or the text itself
    (TRL's standard form)."""
    return completion if isinstance(completion, str) else completion[-1]["content"]


def write_data_report(run_dir: str | Path, name: str, splits: Splits, extra: data.DataStats | None = None) -> dict:
    """Save the data counts of a stage to <run_dir>/data_<name>.json and return them."""
    report = {"train_pairs": len(splits.train), "val_pairs": len(splits.val),
              "train_prompts": len(splits.train_prompts), "val_prompts": len(splits.val_prompts),
              "ood_pairs": len(splits.ood), "ood_prompts": len(splits.ood_prompts),
              "dev_pairs": len(splits.dev), "dev_prompts": len(splits.prompts("dev")),
              "dev_ood_pairs": len(splits.dev_ood), "dev_ood_prompts": len(splits.prompts("dev_ood")),
              **({"unpaired_prompts": {k: len(v) - len(data.unique_prompts(getattr(splits, k)))
                                       for k, v in splits.task_pools.items()}} if splits.task_pools else {}),
              "load": splits.stats.as_dict(), **({"encode": extra.as_dict()} if extra is not None else {})}
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    write_text_atomic(Path(run_dir) / f"data_{name}.json", json.dumps(report, indent=2))
    return report
