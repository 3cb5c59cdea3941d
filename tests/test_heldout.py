"""actors/heldout.py: the held-out probe's metrics (probe_metrics) and the over-optimisation check on the rows
the probe logs. The probe during a run is checked end to end in test_launch.py; the out-of-distribution split is
in test_tasks.py, truncated answers in test_data.py and test_scorer.py, the flag itself in test_stats.py."""

import numpy as np
import pytest
import torch

from actors.heldout import load_answers, probe_metrics, save_answers
from common.rollout import RolloutBatch
from common.stats import overoptimisation_check
from stages.eval import per_prompt_means


def test_probe_metrics_and_the_check_on_logged_rows():
    d = {"sft": {"reward": np.array([0.0, 1.0]), "gold": np.array([-2.0, 0.0]), "length": np.array([4.0, 6.0]),
                 "eos": 1.0},
         "trained": {"reward": np.array([1.0, 2.0]), "gold": np.array([-1.0, 3.0]), "length": np.array([2.0, 2.0]),
                     "eos": 0.5}}
    m = probe_metrics(d, np.array([0.5, 1.5]), "eval/")
    assert m["eval/reward_gain"] == 1.0 and m["eval/gold"] == 1.0 and m["eval/gold_gain"] == 2.0
    assert m["eval/kl"] == 1.0 and m["eval/truncation_rate"] == 0.5 and m["eval/length"] == 2.0
    assert m["eval/gold_se"] == pytest.approx(np.std([-1.0, 3.0], ddof=1) / np.sqrt(2))
    rows = [{"step": s, "rollout/reward": 0.0} for s in range(1, 4)]
    assert overoptimisation_check(rows) is None
    rows += [{"step": s, "eval/reward": r, "eval/gold": g, "eval/gold_se": 0.01}
             for s, r, g in ((0, 0.0, -3.0), (10, 1.0, -1.0), (20, 2.0, -2.5))]
    assert overoptimisation_check(rows)["flagged"]


def test_eval_figures_are_per_prompt_means_over_its_answers():
    """eval.samples_per_prompt = k: answers i*k .. i*k+k-1 are prompt i's; each prompt's figures are their mean."""
    d = {"sft": {"gold": np.array([1.0, 0.0, 0.0, 0.0]), "length": np.array([2.0, 4.0, 6.0, 8.0]), "eos": 0.5,
                 "texts": ["a", "b", "c", "d"], "logits": None},
         "trained": {"gold": np.array([1.0, 1.0, 0.0, 1.0]), "length": np.ones(4), "eos": 1.0,
                     "texts": ["e", "f", "g", "h"], "logits": None}}
    out, kl = per_prompt_means(d, np.array([1.0, 3.0, 0.0, 2.0]), 2)
    assert out["sft"]["gold"].tolist() == [0.5, 0.0] and out["trained"]["gold"].tolist() == [1.0, 0.5]
    assert out["sft"]["length"].tolist() == [3.0, 7.0] and kl.tolist() == [2.0, 1.0]
    assert out["sft"]["texts"] == ["a", "c"] and out["trained"]["eos"] == 1.0
    assert per_prompt_means(d, kl, 1) == (d, kl)


def test_kept_answers_read_back_as_the_batches_that_were_sampled(tmp_path):
    b = RolloutBatch(prompt_ids=torch.tensor([[0, 5], [6, 7]]), prompt_mask=torch.tensor([[0, 1], [1, 1]]),
                     response_ids=torch.tensor([[8, 2, 0], [9, 9, 9]]),
                     response_mask=torch.tensor([[1, 1, 0], [1, 1, 1]]),
                     prompt_index=torch.tensor([0, 1]), version=0, response_texts=["x", "y z"], temperature=0.7,
                     extras={"generator_logprob": torch.zeros(2)})
    save_answers(tmp_path / "a" / "answers.pt", [b])
    (back,) = load_answers(tmp_path / "a" / "answers.pt")
    assert torch.equal(back.response_ids, b.response_ids) and back.response_texts == b.response_texts
    assert back.finished(2).tolist() == [True, False] and back.temperature == 0.7
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["answers.pt"], "no temporary file left"
