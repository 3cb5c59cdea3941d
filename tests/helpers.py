"""Helpers the test files share."""

from common.models import load_tokenizer
from common.paths import RunPaths
from tasks import load_task


def train_prompts(cfg):
    """The RL stage's training prompt pool of a config: (prompts, prompt_tokens); writes the sandbox data once."""
    tokenizer = load_tokenizer(RunPaths(cfg).sft_policy, cfg.model.tokenizer)
    return load_task(cfg).prompt_pool(tokenizer, "train", "rl")
