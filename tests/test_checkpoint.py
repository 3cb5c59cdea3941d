"""common/checkpoint.py: writing is atomic (a full disk, an interruption or a signal leaves no partial file and
keeps the previous checkpoint), non-finite weights are never saved, reading falls back past a corrupt latest
checkpoint, loads weights only, and resume_state refuses steps at or below the checkpoint's.

--resume through launch.py (the same failures end to end) is in test_failures_runs.py."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import torch

from common import checkpoint
from common.models import save_model
from common.numerics import NonFiniteError

# ---------------------------------------------------------------------------------------------------- save


def test_full_disk_writing_a_checkpoint_removes_the_temporary_file(tmp_path):
    state = {"policy": {"w": torch.ones(1000)}, "baseline": {"mean": 0.5}}
    checkpoint.save(tmp_path, 2, state)
    (tmp_path / "step_000004.tmp").symlink_to("/dev/full")
    with pytest.raises(checkpoint.CheckpointError, match="no space left on device writing checkpoint .*step_000004"):
        checkpoint.save(tmp_path, 4, state)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_000002.pt"]
    assert checkpoint.load(tmp_path / "step_000002.pt")["step"] == 2, "the previous checkpoint is intact"


def test_retention_deletes_a_learner_groups_shards_with_their_checkpoint(tmp_path):
    """A learner group's step_N.dcp/ (cluster/learner_group.py) goes when its step_N.pt does."""
    for step in (1, 2, 3):
        (tmp_path / f"step_{step:06d}.dcp").mkdir()
        (tmp_path / f"step_{step:06d}.dcp" / "__0_0.distcp").write_bytes(b"x")
        checkpoint.save(tmp_path, step, {"sharded": f"step_{step:06d}.dcp", "unsharded": {"version": step}})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_000002.dcp", "step_000002.pt", "step_000003.dcp",
                                                         "step_000003.pt"]


def test_retention_deletes_only_the_same_runs_older_checkpoints(tmp_path):
    """Keeping the latest two counts one run's checkpoints: another run's (here at higher steps) are left alone, and
    the run's own older ones go."""
    state = {"policy": {"w": torch.ones(4)}}
    for step in (6, 8):
        checkpoint.save(tmp_path, step, state, run={"run_id": "old"})
    for step in (1, 3, 5):
        checkpoint.save(tmp_path, step, state, run={"run_id": "new"})
    kept = {p.name: checkpoint.run_id_of(p) for p in checkpoint.checkpoints(tmp_path)}
    assert kept == {"step_000003.pt": "new", "step_000005.pt": "new", "step_000006.pt": "old",
                    "step_000008.pt": "old"}


def test_interrupted_checkpoint_write_removes_the_temporary_file(tmp_path, monkeypatch):
    def interrupted(obj, f):
        f.write(b"partial")
        raise KeyboardInterrupt
    monkeypatch.setattr(torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save(tmp_path, 2, {})
    assert list(tmp_path.iterdir()) == []


def test_signal_during_a_checkpoint_write_stays_a_signal(tmp_path, monkeypatch):
    """torch's zip writer turns an exception raised inside it into RuntimeError('unexpected pos'): the
    interruption must still reach the boundary as one (exit 143), not as a crash."""
    from common.errors import Interrupted

    def torn(obj, f):
        try:
            raise Interrupted(signal.SIGTERM)
        except Interrupted:
            # as torch raises it: the interruption only as the context, not as a cause
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")  # noqa: B904
    monkeypatch.setattr(torch, "save", torn)
    with pytest.raises(Interrupted):
        checkpoint.save(tmp_path, 2, {})
    assert list(tmp_path.iterdir()) == []


def nan_weights(model):
    with torch.no_grad():
        next(model.parameters()).fill_(float("nan"))


def test_no_stage_saves_non_finite_weights(policy, tokenizer, tmp_path):
    nan_weights(policy)
    with pytest.raises(NonFiniteError, match=r"refusing to save .*policy: tensor model.embed_tokens.weight has"):
        save_model(policy, tokenizer, tmp_path / "policy")
    assert not (tmp_path / "policy").exists()
    with pytest.raises(NonFiniteError, match=r"step_000003.pt"):
        checkpoint.save(tmp_path / "ckpt", 3, {"policy": policy.state_dict()})
    assert list((tmp_path / "ckpt").iterdir()) == []


# ---------------------------------------------------------------------------------------------------- load

CORRUPTIONS = {"truncated": lambda b: b[:len(b) // 2], "empty": lambda b: b"", "garbage": lambda b: os.urandom(512),
               "zeroed_tail": lambda b: b[:-200] + bytes(200)}


def two_checkpoints(tmp_path: Path) -> Path:
    for step in (2, 4):
        checkpoint.save(tmp_path, step, {"policy": {"w": torch.full((64,), float(step))}, "baseline": {"mean": 1.0}})
    return tmp_path


@pytest.mark.parametrize("kind", sorted(CORRUPTIONS))
def test_corrupt_latest_checkpoint_is_named_and_the_previous_used(kind, tmp_path):
    latest = two_checkpoints(tmp_path) / "step_000004.pt"
    latest.write_bytes(CORRUPTIONS[kind](latest.read_bytes()))
    logged = []
    path, state = checkpoint.load_latest(tmp_path, log=logged.append)
    assert path.name == "step_000002.pt" and state["step"] == 2
    assert torch.equal(state["learner"]["policy"]["w"], torch.full((64,), 2.0))
    assert str(latest) in logged[0] and "unreadable" in logged[0] and "step 2" in logged[1]


@pytest.mark.parametrize("kind", sorted(CORRUPTIONS))
def test_every_checkpoint_corrupt_is_one_error_naming_them(kind, tmp_path):
    for p in two_checkpoints(tmp_path).glob("*.pt"):
        p.write_bytes(CORRUPTIONS[kind](p.read_bytes()))
    with pytest.raises(checkpoint.CheckpointError, match="step_000004.pt, step_000002.pt are corrupt"):
        checkpoint.load_latest(tmp_path, log=lambda m: None)


def test_not_a_learner_checkpoint_is_refused(tmp_path):
    torch.save({"w": torch.ones(2)}, tmp_path / "step_000001.pt")
    with pytest.raises(checkpoint.CheckpointError, match="not a learner checkpoint"):
        checkpoint.load(tmp_path / "step_000001.pt")


class Payload:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_checkpoints_load_weights_only(tmp_path):
    torch.save({"step": 1, "learner": Payload(), "rng": {}}, tmp_path / "step_000001.pt")
    with pytest.raises(checkpoint.CheckpointError, match="unreadable"):
        checkpoint.load(tmp_path / "step_000001.pt")


def test_legacy_checkpoint_with_numpy_rng_state_still_loads(tmp_path):
    import numpy as np
    state = {"step": 3, "learner": {}, "rng": {"numpy": np.random.get_state(), "python": None, "torch": None}}
    torch.save(state, tmp_path / "step_000003.pt")
    loaded = checkpoint.load(tmp_path / "step_000003.pt")
    assert np.array_equal(loaded["rng"]["numpy"][1], state["rng"]["numpy"][1])


@pytest.mark.parametrize("steps,needle", [(4, "end of a finished run"), (3, "past rl.steps=3")])
def test_resume_refuses_steps_at_or_below_the_checkpoint(steps, needle, tmp_path):
    with pytest.raises(checkpoint.CheckpointError, match=needle):
        checkpoint.resume_state(two_checkpoints(tmp_path), steps)
    assert checkpoint.resume_state(tmp_path, 5)[1]["step"] == 4
