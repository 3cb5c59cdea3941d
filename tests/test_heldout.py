"""actors/heldout.py: the held-out probe's metrics (probe_metrics) and the over-optimisation check on the rows
the probe logs. The probe during a run is checked end to end in test_launch.py; the out-of-distribution split is
in test_tasks.py, truncated answers in test_data.py and test_scorer.py, the flag itself in test_stats.py."""

import numpy as np
import pytest

from actors.heldout import probe_metrics
from common.stats import overoptimisation_check


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
