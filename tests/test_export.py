"""stages/export.py: trained model directories written in one piece (a failed save leaves the previous one), the
LoRA adapter saved alone beside the merged weights, the eval stage's figures attached to the policy; and the sft,
rm and rl stages' outputs with LoRA on, through launch.py."""

import json

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

import launch
from common.config import LoraConfig, load_config
from common.files import DiskFullError
from common.models import apply_lora, build_tiny_policy, load_reward_model
from helpers import CPU, TINY, eval_result, run_with_sft, stage
from stages.export import ADAPTER_DIR, RECORD_FILE, attach_evaluation, save_trained
from stages.model_card import training_record

IDS = torch.tensor([[1, 2, 3, 4, 5, 6]])


def record(tmp_path, kind="policy", *overrides):
    return training_record(kind, load_config(None, list(overrides)), tmp_path)


def trained_lora(model, task_type, seed=0):
    """A LoRA-wrapped model whose adapters changed the function (lora_B starts at zero: merged = base)."""
    model = apply_lora(model, LoraConfig(enabled=True, r=4, alpha=8), task_type)
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(seed)
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.5)
    return model.eval()


def test_a_failed_save_leaves_the_previous_directory_intact(tmp_path, tokenizer):
    path = tmp_path / "policy"
    save_trained(build_tiny_policy(TINY, tokenizer, 0), tokenizer, path, record(tmp_path))
    before = {p.name: p.read_bytes() for p in path.iterdir()}

    def full_disk(tmp):
        raise OSError(28, "No space left on device")
    with pytest.raises(DiskFullError, match=f"no space left on device writing {path}; free space and rerun: "
                                             f"nothing was replaced") as raised:
        save_trained(build_tiny_policy(TINY, tokenizer, 1), tokenizer, path, record(tmp_path), extra=full_disk)
    assert isinstance(raised.value, OSError)  # still an OSError, as the machine's own error was
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


def test_lora_policy_saves_the_merged_model_and_the_adapter_alone(tmp_path, tokenizer):
    policy = trained_lora(build_tiny_policy(TINY, tokenizer, 0), "CAUSAL_LM")
    with torch.no_grad():
        want = policy(input_ids=IDS).logits
    path = save_trained(policy, tokenizer, tmp_path / "policy", record(tmp_path, "policy", "model.lora.enabled=true"))
    with torch.no_grad():
        merged = AutoModelForCausalLM.from_pretrained(path)(input_ids=IDS).logits
        # as the card says: the directory (or repository) and subfolder="adapter"
        adapter = PeftModel.from_pretrained(build_tiny_policy(TINY, tokenizer, 0), str(path), subfolder=ADAPTER_DIR)
        adapter.eval()
        torch.testing.assert_close(adapter(input_ids=IDS).logits, want)
    torch.testing.assert_close(merged, want, rtol=1e-4, atol=1e-4)
    assert not (path / ADAPTER_DIR / "config.json").exists(), "the adapter alone, not a second full model"
    assert not (path / ADAPTER_DIR / "README.md").exists(), "peft's placeholder card is not kept"
    card = (path / "README.md").read_text()
    assert "lora" in card.split("---")[1] and '`adapter/` holds the adapter alone' in card
    assert f'PeftModel.from_pretrained(base, "{path}", subfolder="adapter")' in card
    assert "| `model.lora.r` | `16` |" in card


def test_lora_reward_model_saves_the_merged_model_and_the_adapter_alone(tmp_path, tokenizer, stand_ins):
    """As in the rm stage, the reward model starts from the SFT policy (a causal LM) with a new head; the adapter
    carries that trained head (peft's modules_to_save), so it loads onto a base whose head is another random one."""
    base = str(stand_ins / "sft_model")
    torch.manual_seed(0)
    rm = trained_lora(load_reward_model(base, 1, tokenizer, CPU), "SEQ_CLS")
    with torch.no_grad():
        want = rm(input_ids=IDS).logits
    card = record(tmp_path, "reward", "reward.lora.enabled=true")
    path = save_trained(rm, tokenizer, tmp_path / "reward_model", card)
    torch.manual_seed(1)
    other_head = load_reward_model(base, 1, tokenizer, CPU)
    with torch.no_grad():
        merged = AutoModelForSequenceClassification.from_pretrained(path).eval()(input_ids=IDS).logits
        adapter = PeftModel.from_pretrained(other_head, str(path), subfolder=ADAPTER_DIR).eval()
        torch.testing.assert_close(adapter(input_ids=IDS).logits, want)
    torch.testing.assert_close(merged, want, rtol=1e-4, atol=1e-4)


def test_evaluation_goes_beside_the_policy_and_into_its_card(tmp_path, tokenizer):
    path = save_trained(build_tiny_policy(TINY, tokenizer, 0), tokenizer, tmp_path / "policy", record(tmp_path))
    assert "## Evaluation" not in (path / "README.md").read_text()
    assert attach_evaluation(path, eval_result())
    assert json.loads((path / "eval.json").read_text()) == eval_result()
    assert "| in-distribution | 204 |" in (path / "README.md").read_text()
    (tmp_path / "outside").mkdir()
    assert not attach_evaluation(tmp_path / "outside", eval_result()), "a directory this project did not save"
    assert list((tmp_path / "outside").iterdir()) == []


@pytest.mark.slow
def test_lora_runs_save_adapters_beside_the_merged_models(tmp_path, stand_ins):
    """The rm and rl stages with LoRA on, through launch.py: each output loads with from_pretrained, carries its
    card, and holds its adapter in adapter/."""
    run = run_with_sft(tmp_path, stand_ins)
    lora = ["reward.lora.enabled=true", "model.lora.enabled=true", "rl.steps=2", "rl.save_every=1"]
    assert launch.main(stage(run, "rm", *lora)) == 0
    assert launch.main(stage(run, "rl", *lora)) == 0
    for name in ("reward_model", "policy", "checkpoints/latest_policy"):
        out = run / name
        assert (out / ADAPTER_DIR / "adapter_config.json").is_file() and (out / "README.md").is_file(), name
        assert json.loads((out / ADAPTER_DIR / "adapter_config.json").read_text())["r"] == 16
    AutoModelForCausalLM.from_pretrained(run / "policy")
    assert (run / "reward_model" / "reward_head.json").is_file()
    assert json.loads((run / "checkpoints" / "latest_policy" / RECORD_FILE).read_text())["step"] == 2
