"""--stage temperature: the SFT policy's held-out answers per sampling temperature, judged as eval judges them."""

import json

import pytest
import torch

import launch
from common.config import ConfigError, load_config
from common.models import save_untrained_stand_ins
from helpers import CONFIG, FAST, TINY
from stages.temperature import distinct_2


def test_distinct_2_counts_repeated_word_bigrams():
    assert distinct_2("a b a b") == pytest.approx(2 / 3)  # (a,b) (b,a) (a,b): 2 distinct of 3
    assert distinct_2("x y z") == 1.0 and distinct_2("one") == 1.0 and distinct_2("") == 1.0


def test_temperatures_are_validated_at_load():
    assert load_config(CONFIG, ["eval.temperatures=0,0.5"]).eval.temperatures == (0.0, 0.5)
    with pytest.raises(ConfigError, match=r"eval.temperatures=\[0.0, -1.0\].*>= 0"):
        load_config(CONFIG, ["eval.temperatures=0,-1"])


def test_stage_writes_every_pool_and_temperature_reproducibly(tmp_path, tokenizer):
    save_untrained_stand_ins(tmp_path, TINY, tokenizer)
    argv = ["--config", CONFIG, "--stage", "temperature", f"run_dir={tmp_path}", *FAST, "eval.num_prompts=6",
            "eval.batch_size=4", "eval.temperatures=0,1", "generator.max_new_tokens=6"]
    assert launch.main(argv) == 0
    first = json.loads((tmp_path / "temperature.json").read_text())
    assert set(first["pools"]) == {"dev", "dev_ood"}  # the sandbox's validation pools, in and out of distribution
    for pool in first["pools"].values():
        assert pool["num_prompts"] == 6 and set(pool["by_temperature"]) == {"0", "1"}
        for row in pool["by_temperature"].values():
            assert {"gold", "rm", "eos_rate", "length", "distinct_2"} <= set(row)  # the sandbox has a gold judge
            assert 0.0 <= row["eos_rate"] <= 1.0 and 0.0 < row["length"] <= 6 and 0.0 < row["distinct_2"] <= 1.0
    assert launch.main(argv) == 0
    assert json.loads((tmp_path / "temperature.json").read_text()) == first, "seeded: the same answers again"


def test_greedy_row_is_the_argmax_answer(tmp_path, tokenizer):
    """T = 0 is greedy decoding: the first held-out answer equals transformers' own greedy generate."""
    from actors.heldout import heldout_pool
    from common.models import load_causal_lm
    from stages.temperature import answers_at
    from tasks.registry import load_task
    save_untrained_stand_ins(tmp_path, TINY, tokenizer)
    cfg = load_config(CONFIG, [f"run_dir={tmp_path}", *FAST, "eval.num_prompts=2", "generator.max_new_tokens=5"])
    cpu = torch.device("cpu")
    pool = heldout_pool(cfg, load_task(cfg), str(tmp_path / "reward_model"), tokenizer, cpu, torch.float32, "val", 2,
                        "temperature")
    model = load_causal_lm(str(tmp_path / "sft_model"), cpu, torch.float32).eval()
    row = answers_at(pool, model, 0.0)
    ids = torch.tensor([pool.prompt_tokens[0]])
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=5, do_sample=False,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    assert row["examples"][0] == tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()
