"""Shared tiny models for the integration tests (CPU, seconds)."""

import os

import pytest
import torch

from common.config import TinyModelConfig, load_config
from common.models import BUNDLED_TOKENIZER, build_tiny_policy, load_reward_model
from transformers import AutoTokenizer

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TQDM_DISABLE", "1")

TINY = TinyModelConfig(hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1, intermediate_size=64)


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
