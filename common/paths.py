"""Where a run's files are: every path a stage reads or writes, resolved once from the config.

`RunPaths(cfg)` is built once per stage; the models it points to (the SFT policy, the reward model, the reward
model's starting point) are resolved on first use (a GGUF file is de-quantised into a plain directory then) and
checked, so a missing or incomplete one fails in one line naming the key that points to it.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

from common.config import Config
from common.errors import ModelPathError
from common.gguf import resolve_model_path
from common.models import TINY, check_model_path


class RunPaths:
    def __init__(self, cfg: Config) -> None:
        self.run_dir = Path(cfg.run_dir)
        self._policy, self._reward_path, self._reward_init = cfg.model.policy, cfg.reward.path, cfg.reward.init
        self._uses_reward_model = cfg.reward.model_weight > 0
        self.checkpoints = self.run_dir / "checkpoints"  # the rl stage's learner checkpoints
        self.latest_policy = self.checkpoints / "latest_policy"  # the policy at the latest one, for from_pretrained
        self.trained_policy = self.run_dir / "policy"  # the rl stage's output
        self.sft_out = self.run_dir / "sft_model"  # what the sft stage writes (the sandbox's tiny policy)
        self.reward_out = self.run_dir / "reward_model"  # what the rm stage writes

    def file(self, name: str) -> Path:
        """A file of the run directory: config.yaml, rl_metrics.json, metrics_rl.jsonl, ..."""
        return self.run_dir / name

    @cached_property
    def sft_policy(self) -> str:
        """Where the SFT policy (and the frozen reference) comes from (a GGUF file: its de-quantised directory)."""
        if self._policy != TINY:
            path = resolve_model_path(self._policy)
            check_model_path(path, "model.policy")
            return path
        if not (self.sft_out / "config.json").is_file():
            raise ModelPathError(f"model.policy=tiny needs the sandbox SFT model at {self.sft_out}: run --stage sft "
                                 f"first")
        check_model_path(str(self.sft_out), "model.policy=tiny")
        return str(self.sft_out)

    @cached_property
    def reward_model(self) -> str:
        """The trained reward model rl and eval read: reward.path, else the rm stage's output."""
        path = self._reward_path or str(self.reward_out)
        if not Path(path).exists() and self._reward_path == "":
            raise ModelPathError(f"no reward model at {path}: run --stage rm first, set reward.path to a trained "
                                 f"reward model, or reward with functions alone (reward.functions=FILE.py:NAME "
                                 f"reward.model_weight=0; a prompt-only data set has no pairs to train one on)")
        check_model_path(path, "reward.path" if self._reward_path else "the rm stage's reward_model")
        return path

    @property
    def scoring_reward_model(self) -> str | None:
        """The reward model rl and eval score with: `reward_model`, or None with reward.model_weight=0 (the reward is
        reward.functions' alone; nothing loads a reward model)."""
        return self.reward_model if self._uses_reward_model else None

    @cached_property
    def reward_init(self) -> str:
        """Where reward-model training starts from: reward.init, else the SFT policy."""
        if self._reward_init:
            path = resolve_model_path(self._reward_init)
            check_model_path(path, "reward.init")
            return path
        return self.sft_policy
