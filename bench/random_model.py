"""SmolLM2-135M's architecture with random weights and the bundled tokenizer: the GPU checks' policy (no hub)."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from common.models import ASSETS, BUNDLED_TOKENIZER

REAL_SHAPE = ASSETS / "smollm2-135m-config.json"


def write_model(path: Path, layers: int | None = None) -> None:
    """SmolLM2-135M's architecture with random weights and the bundled tokenizer (no hub)."""
    tokenizer = AutoTokenizer.from_pretrained(BUNDLED_TOKENIZER)
    config = LlamaConfig.from_json_file(str(REAL_SHAPE))
    config.bos_token_id, config.eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id
    config.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if layers:
        config.num_hidden_layers = layers
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
