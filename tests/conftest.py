"""Fixtures shared by the test files: the bundled tokenizer and tiny models (CPU, seconds). Plain helpers and
constants are in helpers.py."""

import atexit
import os
import shutil
import tempfile

import pytest
import torch
from transformers import AutoTokenizer

from common.config import load_config
from common.models import BUNDLED_TOKENIZER, build_tiny_policy, load_reward_model, save_untrained_stand_ins
from helpers import TINY

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TQDM_DISABLE", "1")
# Trackers (common/trackers.py) never go online in a test and write only under a temporary directory: wandb's cache,
# config and artifact staging, and trackio's store (which trackio reads when first imported, hence here).
TRACKERS_HOME = tempfile.mkdtemp(prefix="trackers-")
atexit.register(shutil.rmtree, TRACKERS_HOME, ignore_errors=True)
os.environ.pop("WANDB_API_KEY", None)
os.environ.update({"WANDB_MODE": "offline", "WANDB_CACHE_DIR": f"{TRACKERS_HOME}/wandb_cache",
                   "WANDB_CONFIG_DIR": f"{TRACKERS_HOME}/wandb_config", "WANDB_DATA_DIR": f"{TRACKERS_HOME}/wandb_data",
                   "TRACKIO_DIR": f"{TRACKERS_HOME}/trackio"})


@pytest.fixture(scope="session")
def tokenizer():
    return AutoTokenizer.from_pretrained(BUNDLED_TOKENIZER)


@pytest.fixture
def policy(tokenizer):
    return build_tiny_policy(TINY, tokenizer, seed=0).eval()


@pytest.fixture(scope="session")
def reward_model(tokenizer, tmp_path_factory):
    path = tmp_path_factory.mktemp("rm")
    build_tiny_policy(TINY, tokenizer, seed=1).save_pretrained(path)
    torch.manual_seed(0)
    return load_reward_model(str(path), 1, tokenizer, torch.device("cpu")).eval()


@pytest.fixture(scope="session")
def tiny_cfg():
    return load_config(None)


@pytest.fixture(scope="session")
def stand_ins(tmp_path_factory):
    """Untrained tiny sft_model/ and reward_model/ (what the sft and rm stages leave)."""
    path = tmp_path_factory.mktemp("stand_ins")
    save_untrained_stand_ins(path, TINY, AutoTokenizer.from_pretrained(BUNDLED_TOKENIZER))
    return path
