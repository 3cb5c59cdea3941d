"""Which head a reward model has (scalar or distributional), recorded beside its weights.

The rm stage writes <reward_model>/reward_head.json; rl and eval read it back, so a model is always read the way
it was trained. A directory without the file (a Level 1 model, an outside reward model) is scalar when its
classifier has one output and distributional over 1..num_labels otherwise.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from transformers import AutoConfig, PreTrainedModel, PreTrainedTokenizerBase

from common.config import ConfigError, RewardConfig
from common.errors import PathNotFound
from common.models import load_reward_model

HEAD_FILE = "reward_head.json"


@dataclass(frozen=True)
class RewardHead:
    kind: str  # "scalar" | "distributional"
    num_bins: int  # distributional: scores 1..num_bins; scalar: 1

    @property
    def num_labels(self) -> int:
        return 1 if self.kind == "scalar" else self.num_bins

    @property
    def distributional(self) -> bool:
        return self.kind == "distributional"

    def id2label(self) -> dict[int, str]:
        """Readable labels for config.json: the score each output stands for."""
        return {0: "reward"} if self.kind == "scalar" else {i: f"score_{i + 1}" for i in range(self.num_bins)}


def head_from_config(reward: RewardConfig) -> RewardHead:
    return RewardHead(reward.head, 1 if reward.head == "scalar" else reward.num_bins)


REWARD_STATS = "reward_stats.json"  # the scalar head's score mean and std on training answers (rl.normalize_reward)


def read_reward_stats(path: str | Path) -> tuple[float, float]:
    """(mean, std) the rm stage measured for the reward model at `path`; one line naming the file if absent."""
    file = Path(path, REWARD_STATS)
    if not file.is_file():
        raise PathNotFound(f"rl.normalize_reward=true needs {file}, which the rm stage writes for a scalar head: "
                           f"train the reward model again with this version (--stage rm), or set "
                           f"rl.normalize_reward=false")
    raw = json.loads(file.read_text())
    return float(raw["mean"]), max(float(raw["std"]), 1e-6)


def save_head(head: RewardHead, path: str | Path) -> None:
    Path(path, HEAD_FILE).write_text(json.dumps(asdict(head), indent=2))


def read_head(path: str | Path) -> RewardHead | None:
    """The head a reward model was trained with; None for a checkpoint without one (e.g. a causal LM, whose
    config's default num_labels=2 says nothing about a head)."""
    file = Path(path, HEAD_FILE)
    if file.is_file():
        raw = json.loads(file.read_text())
        return RewardHead(str(raw["kind"]), int(raw["num_bins"]))
    config = AutoConfig.from_pretrained(str(path))
    if not any(a.endswith("ForSequenceClassification") for a in config.architectures or ()):
        return None
    return RewardHead("scalar", 1) if config.num_labels == 1 else RewardHead("distributional", config.num_labels)


def load_trained_reward_model(path: str, reward: RewardConfig, tokenizer: PreTrainedTokenizerBase,
                              device: torch.device, dtype: torch.dtype) -> tuple[PreTrainedModel, RewardHead]:
    """The trained reward model at `path` for rl/eval, with its head; a head other than reward.head's is an
    error."""
    head = read_head(path) or head_from_config(reward)  # no trained head: a new one, as reward.* says
    if head.kind != reward.head:
        raise ConfigError(f"reward.head={reward.head} but the reward model at {path} has a {head.kind} head "
                          f"({HEAD_FILE}); set reward.head={head.kind} or point reward.path at another model")
    return load_reward_model(path, head.num_labels, tokenizer, device, dtype), head
