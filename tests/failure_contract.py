"""Shared by the failure batteries (tests/test_failures_*.py): run launch.main in-process and check the contract.

Every expected failure ends with a non-zero exit and exactly one stderr line `error: ...`, the last one, naming
the problem; no traceback anywhere in the output.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import launch

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs" / "tiny.yaml")
# the tiny demo, shrunk to seconds (as in test_launch.py)
FAST = ["sandbox.num_pairs=240", "sandbox.num_sft_examples=256", "sft.epochs=1", "reward.epochs=1",
        "model.tiny.hidden_size=32", "model.tiny.intermediate_size=64", "rl.batch_size=4",
        "generator.max_new_tokens=4", "eval.num_prompts=8", "eval.bootstrap_samples=200", "rl.eval_prompts=8", "torch_threads=1"]


def check_one_line(rc: int, out: str, err: str, *needles: str, code: int | None = None) -> str:
    """The failure contract; returns the error line."""
    assert rc != 0, f"exit 0 for an expected failure; stderr: {err[-2000:]}"
    if code is not None:
        assert rc == code, (rc, err[-2000:])
    assert "Traceback" not in out + err, err[-4000:]
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, errors
    assert err.rstrip().splitlines()[-1] == errors[0], "the error line is the last line"
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])
    return errors[0]


def expect_error(capsys, argv: list[str], *needles: str, code: int | None = None) -> str:
    rc = launch.main(argv)
    out = capsys.readouterr()
    return check_one_line(rc, out.out, out.err, *needles, code=code)


def stage(run_dir: Path, name: str, *overrides: str) -> list[str]:
    return ["--config", CONFIG, "--stage", name, "--no-report", f"run_dir={run_dir}", *FAST, *overrides]


@pytest.fixture(scope="session")
def stand_ins(tmp_path_factory):
    """Untrained tiny sft_model/ and reward_model/ (what the sft and rm stages leave)."""
    from transformers import AutoTokenizer

    from common.models import BUNDLED_TOKENIZER, save_untrained_stand_ins
    from conftest import TINY
    path = tmp_path_factory.mktemp("stand_ins")
    save_untrained_stand_ins(path, TINY, AutoTokenizer.from_pretrained(BUNDLED_TOKENIZER))
    return path


def run_with_sft(tmp_path: Path, stand_ins: Path) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    (run / "sft_model").symlink_to(stand_ins / "sft_model")
    return run
