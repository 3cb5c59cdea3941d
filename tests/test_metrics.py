"""common/metrics.py: the run's metrics log (RunLogger): a fresh run replaces it, a resumed run trims it to the
checkpoint's step, a torn last line is dropped with a warning, a damaged line before the end is named."""

import json

import pytest

from common.config import Config
from common.metrics import RunLogger


def test_run_logger_replaces_a_fresh_run_and_trims_a_resumed_one(tmp_path):
    def steps():
        return [json.loads(line)["step"] for line in (tmp_path / "metrics_rl.jsonl").read_text().splitlines()]

    for resume_step, logged in ((0, [1, 2, 3, 4]), (0, [1, 2]), (1, [2, 3])):
        logger = RunLogger(Config(run_dir=str(tmp_path)), "rl", resume_step=resume_step)
        for step in logged:
            logger.log(step, {"rollout/reward": float(step)})
        logger.close()
    # run 2 replaced run 1; run 3 resumed at step 1: it kept step 1 and logged 2 and 3 again
    assert steps() == [1, 2, 3]


def test_torn_last_metrics_line_is_dropped_with_a_warning(tmp_path, capsys):
    log = tmp_path / "metrics_rl.jsonl"
    log.write_text('{"step": 1, "a": 1}\n{"step": 2, "a": 2}\n{"step": 3, "a"')
    RunLogger(Config(run_dir=str(tmp_path)), "rl", resume_step=2).close()
    assert log.read_text() == '{"step": 1, "a": 1}\n{"step": 2, "a": 2}\n'
    assert "dropping its torn last line 3" in capsys.readouterr().err


def test_damaged_metrics_line_before_the_end_is_named(tmp_path):
    log = tmp_path / "metrics_rl.jsonl"
    log.write_text('{"step": 1}\nnot json\n{"step": 3}\n')
    with pytest.raises(Exception, match="metrics_rl.jsonl: line 2 is not a metrics record"):
        RunLogger(Config(run_dir=str(tmp_path)), "rl", resume_step=3)
