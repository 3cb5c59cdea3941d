"""common/export.py: trained model directories written in one piece (a failed save leaves the previous one), the
eval stage's figures attached to the policy."""

import json

import pytest

from common.config import load_config
from common.export import RECORD_FILE, attach_evaluation, save_trained
from common.model_card import training_record
from common.models import build_tiny_policy
from helpers import TINY, eval_result, run_with_sft


def record(tmp_path, kind="policy", *overrides):
    return training_record(kind, load_config(None, list(overrides)), tmp_path)


def test_a_failed_save_leaves_the_previous_directory_intact(tmp_path, tokenizer):
    path = tmp_path / "policy"
    save_trained(build_tiny_policy(TINY, tokenizer, 0), tokenizer, path, record(tmp_path))
    before = {p.name: p.read_bytes() for p in path.iterdir()}

    def full_disk(tmp):
        raise OSError(28, "No space left on device")
    with pytest.raises(OSError, match="No space"):
        save_trained(build_tiny_policy(TINY, tokenizer, 1), tokenizer, path, record(tmp_path), extra=full_disk)
    assert {p.name: p.read_bytes() for p in path.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["policy"], "no temporary directory is left"


def test_a_symlinked_directory_is_replaced_not_written_through(tmp_path, tokenizer, stand_ins):
    """Tests link shared stand-in models into run directories; a save there must not rewrite the shared copy."""
    run = run_with_sft(tmp_path, stand_ins)
    before = (stand_ins / "sft_model" / "model.safetensors").read_bytes()
    save_trained(build_tiny_policy(TINY, tokenizer, 7), tokenizer, run / "sft_model", record(tmp_path, "sft"))
    assert not (run / "sft_model").is_symlink() and (run / "sft_model" / RECORD_FILE).is_file()
    assert (stand_ins / "sft_model" / "model.safetensors").read_bytes() == before
    assert not (stand_ins / "sft_model" / RECORD_FILE).exists()


def test_evaluation_goes_beside_the_policy_and_into_its_card(tmp_path, tokenizer):
    path = save_trained(build_tiny_policy(TINY, tokenizer, 0), tokenizer, tmp_path / "policy", record(tmp_path))
    assert "## Evaluation" not in (path / "README.md").read_text()
    assert attach_evaluation(path, eval_result())
    assert json.loads((path / "eval.json").read_text()) == eval_result()
    assert "| in-distribution | 204 |" in (path / "README.md").read_text()
    (tmp_path / "outside").mkdir()
    assert not attach_evaluation(tmp_path / "outside", eval_result()), "a directory this project did not save"
    assert list((tmp_path / "outside").iterdir()) == []
