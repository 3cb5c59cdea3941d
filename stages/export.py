"""Trained model directories, as users load and push them: the full weights (LoRA merged) and the tokenizer, which
`from_pretrained` reads; the LoRA adapter alone in `adapter/` when the model trained one; training_run.json (what
trained it) and the model card README.md built from it (stages/model_card.py).

Every directory is written whole into a temporary directory beside its place and then renamed into it, so a
crash or a full disk mid-save leaves the previous directory intact and never half a model; single files inside it
(the card, eval.json) are replaced the same way (common/files.py; a full disk is one DiskFullError naming the path).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase

from common.files import replacing_dir, write_text_atomic
from common.models import save_model
from stages.model_card import build_card

RECORD_FILE = "training_run.json"  # stages/model_card.training_record: the card's inputs, kept beside the weights
EVAL_FILE = "eval.json"  # the policy's held-out evaluation, a copy of the run's eval.json
CARD_FILE = "README.md"
ADAPTER_DIR = "adapter"


def save_trained(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, path: str | Path, record: dict,
                 extra: Callable[[Path], None] | None = None) -> Path:
    """Write a trained model directory at `path` in one piece: full weights (LoRA merged, save_model) and
    tokenizer, the adapter alone in adapter/ when `model` has LoRA adapters, what `extra` writes into it (e.g.
    reward_head.json), `record` (training_run.json) and its card."""
    path = Path(path)
    with replacing_dir(path) as tmp:
        save_model(model, tokenizer, tmp)
        if hasattr(model, "merge_and_unload"):  # a peft model: its adapters, as common/models.save_model
            save_adapter(model, tmp / ADAPTER_DIR)
        if extra is not None:
            extra(tmp)
        (tmp / RECORD_FILE).write_text(json.dumps(record, indent=2))
        write_card(tmp, model_id=str(path))
    return path


def save_adapter(model: torch.nn.Module, path: Path) -> None:
    """peft's adapter-only save (adapter_config.json and the adapter weights), loadable with
    PeftModel.from_pretrained on the base model its config names. peft also writes a template README with
    placeholders in every field: removed, the directory's own card documents the adapter."""
    model.save_pretrained(path)
    (path / CARD_FILE).unlink(missing_ok=True)


def write_card(model_dir: str | Path, model_id: str | None = None) -> bool:
    """(Re)write the card of a model directory from its training_run.json and, when present, its eval.json;
    `model_id` (default: the directory) is what the card's usage code loads. False when the directory has no
    training record (a model this project did not save), whose card is left alone."""
    model_dir = Path(model_dir)
    record_file = model_dir / RECORD_FILE
    if not record_file.is_file():
        return False
    record = json.loads(record_file.read_text())
    evaluation = json.loads((model_dir / EVAL_FILE).read_text()) if (model_dir / EVAL_FILE).is_file() else None
    card = build_card(record, evaluation, model_id or str(model_dir), adapter=(model_dir / ADAPTER_DIR).is_dir())
    write_text_atomic(model_dir / CARD_FILE, str(card))
    return True


def attach_evaluation(model_dir: str | Path, evaluation: dict) -> bool:
    """The eval stage's figures for a policy this project saved: eval.json beside its weights, and its card
    rewritten with the table. False (nothing written) for a directory without a training record."""
    model_dir = Path(model_dir)
    if not (model_dir / RECORD_FILE).is_file():
        return False
    write_text_atomic(model_dir / EVAL_FILE, json.dumps(evaluation, indent=2))
    return write_card(model_dir)
