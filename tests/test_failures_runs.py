"""Failure battery, runs: run-directory contention, full disks, unreadable checkpoints and metrics logs, the
error boundary itself (--debug, unexpected errors, SIGTERM/SIGINT)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import launch
from common import checkpoint, runlock
from common.metrics import RunLogger
from helpers import ENV, ROOT, check_one_line, expect_error, hold_lock, run_with_sft, stage


# ------------------------------------------------------------------------------------------- run directory


@pytest.mark.parametrize("stage_name", ["sft", "rm", "rl", "eval"])
def test_second_writer_is_refused_naming_the_holder(stage_name, tmp_path, capsys):
    holder = hold_lock(tmp_path)
    try:
        expect_error(capsys, stage(tmp_path, stage_name), f"run_dir {tmp_path} is in use by pid {holder.pid}",
                     f"on host {socket.gethostname()}", "choose another run_dir")
        assert not (tmp_path / "config.yaml").exists(), "the refused run wrote nothing"
    finally:
        holder.kill()
        holder.wait()


def test_lock_of_a_killed_process_is_taken_over_with_a_message(tmp_path, capsys):
    holder = hold_lock(tmp_path)
    holder.kill()  # SIGKILL: no clean release, the lock file keeps its content
    holder.wait()
    assert json.loads((tmp_path / runlock.LOCK_NAME).read_text())["pid"] == holder.pid
    messages = []
    runlock.acquire(tmp_path, log=messages.append)
    try:
        assert len(messages) == 1 and f"pid {holder.pid}" in messages[0] and "no longer running" in messages[0]
        assert json.loads((tmp_path / runlock.LOCK_NAME).read_text())["pid"] == os.getpid()
    finally:
        runlock.release(tmp_path)
    assert (tmp_path / runlock.LOCK_NAME).read_text() == "", "a clean release leaves nothing stale"


def test_stale_lock_is_taken_over_by_a_stage(tmp_path, capsys):
    (tmp_path / runlock.LOCK_NAME).write_text(json.dumps({"pid": 4_000_000, "host": "elsewhere", "since": 0}))
    rc = launch.main(stage(tmp_path, "rl"))
    out, err = capsys.readouterr()
    check_one_line(rc, out, err, "run --stage sft first")  # got past the lock, to the next problem
    assert "taking over the lock left by pid 4000000 on host elsewhere" in out


def test_stages_of_one_run_share_the_lock_and_release_it(tmp_path, capsys):
    runlock.acquire(tmp_path)
    runlock.acquire(tmp_path)  # re-entrant within a process
    runlock.release_all()
    other = hold_lock(tmp_path)  # another process can take it now
    other.kill()
    other.wait()


def test_two_concurrent_runs_one_refused(tmp_path, capsys):
    """A real launch.py process writing to run_dir, and a second run started meanwhile: the second refuses at
    start, the first finishes alone (no interleaved metrics)."""
    cmd = [sys.executable, str(ROOT / "launch.py"), *stage(tmp_path, "sft")]
    first = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lock = tmp_path / runlock.LOCK_NAME
    deadline = time.monotonic() + 300
    while not (lock.is_file() and lock.read_text().strip()) and time.monotonic() < deadline:
        time.sleep(0.05)
    expect_error(capsys, stage(tmp_path, "sft"), f"in use by pid {first.pid}")
    out, err = first.communicate(timeout=600)
    assert first.returncode == 0, err[-3000:]
    steps = [json.loads(line)["step"] for line in (tmp_path / "metrics_sft.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)), "one writer: no interleaved steps"


@pytest.mark.parametrize("kind", ["is_file", "parent_is_file", "not_permitted"])
def test_unusable_run_dir_is_one_line(kind, tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    run_dir = {"is_file": tmp_path / "f", "parent_is_file": tmp_path / "f" / "run",
               "not_permitted": Path("/sys/reinforce_no_such_dir/run")}[kind]
    needle = {"is_file": "is a file, not a directory", "parent_is_file": "is a file, not a directory",
              "not_permitted": "cannot create it"}[kind]
    expect_error(capsys, stage(run_dir, "rm"), f"run_dir {run_dir}", needle)


# ----------------------------------------------------------------------------------------------- full disk
# /dev/full answers every write with ENOSPC: a file symlinked to it is a full disk for that one file (a real
# errno from the kernel, not a monkeypatch).


@pytest.mark.parametrize("name,stage_name", [("config.yaml", "rm"), ("data_rm.json", "rm"),
                                             ("metrics_sft.jsonl", "sft"), ("sft_metrics.json", "sft")])
def test_full_disk_writing_run_files_says_no_space(name, stage_name, tmp_path, capsys, stand_ins):
    run = run_with_sft(tmp_path, stand_ins)
    (run / name).symlink_to("/dev/full")
    expect_error(capsys, stage(run, stage_name), "no space left on device", str(run))


def test_full_disk_writing_a_checkpoint_removes_the_temporary_file(tmp_path):
    state = {"policy": {"w": torch.ones(1000)}, "baseline": {"mean": 0.5}}
    checkpoint.save(tmp_path, 2, state)
    (tmp_path / "step_000004.tmp").symlink_to("/dev/full")
    with pytest.raises(checkpoint.CheckpointError, match="no space left on device writing checkpoint .*step_000004"):
        checkpoint.save(tmp_path, 4, state)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_000002.pt"]
    assert checkpoint.load(tmp_path / "step_000002.pt")["step"] == 2, "the previous checkpoint is intact"


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
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
    monkeypatch.setattr(torch, "save", torn)
    with pytest.raises(Interrupted):
        checkpoint.save(tmp_path, 2, {})
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------- checkpoints

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


def test_torn_last_metrics_line_is_dropped_with_a_warning(tmp_path, capsys):
    log = tmp_path / "metrics_rl.jsonl"
    log.write_text('{"step": 1, "a": 1}\n{"step": 2, "a": 2}\n{"step": 3, "a"')
    RunLogger(tmp_path, "rl", resume_step=2).close()
    assert log.read_text() == '{"step": 1, "a": 1}\n{"step": 2, "a": 2}\n'
    assert "dropping its torn last line 3" in capsys.readouterr().err


def test_damaged_metrics_line_before_the_end_is_named(tmp_path):
    log = tmp_path / "metrics_rl.jsonl"
    log.write_text('{"step": 1}\nnot json\n{"step": 3}\n')
    with pytest.raises(Exception, match="metrics_rl.jsonl: line 2 is not a metrics record"):
        RunLogger(tmp_path, "rl", resume_step=3)


# ------------------------------------------------------------------------------------------- the boundary


@pytest.mark.parametrize("how", ["flag", "env"])
def test_debug_shows_the_traceback_then_the_line(how, tmp_path, capsys, monkeypatch):
    if how == "env":
        monkeypatch.setenv("REINFORCE_DEBUG", "1")
    rc = launch.main(stage(tmp_path, "rl", "--debug") if how == "flag" else stage(tmp_path, "rl"))
    err = capsys.readouterr().err
    assert rc == 1 and "Traceback" in err and err.rstrip().splitlines()[-1].startswith("error: model.policy=tiny")


def test_unexpected_errors_keep_their_traceback(tmp_path, monkeypatch):
    def bug(*args, **kwargs):
        raise KeyError("a bug")
    monkeypatch.setattr(launch, "run_stage", bug)
    with pytest.raises(KeyError, match="a bug"):
        launch.main(stage(tmp_path, "rm"))
    assert runlock._held == {}, "the lock is released however the run ends"


@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_stops_a_stage_cleanly(sig, code, tmp_path):
    cmd = [sys.executable, str(ROOT / "launch.py"), *stage(tmp_path, "sft", "sft.epochs=50")]
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = tmp_path / "metrics_sft.jsonl"
    deadline = time.monotonic() + 120
    while not (log.is_file() and log.read_text().count("\n") >= 2) and time.monotonic() < deadline:
        time.sleep(0.1)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    check_one_line(proc.returncode, out, err, f"interrupted by {sig.name}", code=code)
    assert (tmp_path / runlock.LOCK_NAME).read_text() == "", "the lock was released"
    for line in log.read_text().splitlines():
        json.loads(line)  # every logged line is whole


# ----------------------------------------------------------------------------------- resume through launch


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, stand_ins):
    """A 4-step rl run with checkpoints at steps 2 and 4."""
    run = tmp_path_factory.mktemp("finished")
    for name in ("sft_model", "reward_model"):
        (run / name).symlink_to(stand_ins / name)
    assert launch.main(stage(run, "rl", "rl.steps=4", "rl.save_every=2")) == 0
    return run


def copy_run(src: Path, dst: Path) -> Path:
    import shutil
    shutil.copytree(src, dst, symlinks=True)
    return dst


def snapshot(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*"))
            if p.is_file() and not p.is_symlink() and "tensorboard" not in p.parts}


@pytest.mark.parametrize("steps,needle", [(4, "end of a finished run (rl.steps=4)"), (3, "past rl.steps=3")])
def test_resume_at_or_below_the_checkpoint_changes_nothing(steps, needle, finished_run, tmp_path, capsys):
    run = copy_run(finished_run, tmp_path / "run")
    before = snapshot(run)
    argv = ["--resume", *stage(run, "rl", f"rl.steps={steps}", "rl.save_every=2")]
    expect_error(capsys, argv, "--resume:", needle)
    assert snapshot(run) == before, "rl_metrics.json, config.yaml, checkpoints and logs untouched"


def test_resume_skips_a_corrupt_latest_checkpoint(finished_run, tmp_path, capsys):
    run = copy_run(finished_run, tmp_path / "run")
    latest = run / "checkpoints" / "step_000004.pt"
    latest.write_bytes(latest.read_bytes()[:1000])
    assert launch.main(["--resume", *stage(run, "rl", "rl.steps=6", "rl.save_every=2")]) == 0
    err = capsys.readouterr().err
    assert f"checkpoint {latest} is unreadable" in err and "step_000002.pt (step 2)" in err
    steps = [json.loads(line)["step"] for line in (run / "metrics_rl.jsonl").read_text().splitlines()]
    # step 0 is the held-out probe of the SFT policy (rl.eval_every); every trained step is logged exactly once
    assert steps == [0, 1, 2, 3, 4, 5, 6], "steps 3-4 were trained again from the step-2 checkpoint"
    assert json.loads((run / "rl_metrics.json").read_text())["steps"] == 6


def test_resume_every_checkpoint_corrupt_is_one_line(finished_run, tmp_path, capsys):
    run = copy_run(finished_run, tmp_path / "run")
    for p in (run / "checkpoints").glob("*.pt"):
        p.write_bytes(b"")
    expect_error(capsys, ["--resume", *stage(run, "rl", "rl.steps=6")], "no readable checkpoint", "are corrupt")


def test_resume_after_a_torn_metrics_line(finished_run, tmp_path, capsys):
    run = copy_run(finished_run, tmp_path / "run")
    (run / "checkpoints" / "step_000004.pt").unlink()  # crashed after step 3's log line, mid-way through step 4's
    log = run / "metrics_rl.jsonl"
    # the log's first line is step 0, the held-out probe of the SFT policy (rl.eval_every)
    log.write_text("".join(log.read_text().splitlines(keepends=True)[:4]) + '{"step": 4, "rollout/rew')
    assert launch.main(["--resume", *stage(run, "rl", "rl.steps=4", "rl.save_every=2")]) == 0
    assert "dropping its torn last line" in capsys.readouterr().err
    assert [json.loads(line)["step"] for line in log.read_text().splitlines()] == [0, 1, 2, 3, 4]


def test_resume_of_a_run_stopped_before_its_results_only_writes_them(finished_run, tmp_path):
    """Killed after the final checkpoint but before policy/ and rl_metrics.json: --resume writes those from it."""
    import shutil
    run = copy_run(finished_run, tmp_path / "run")
    final = json.loads((run / "rl_metrics.json").read_text())["final"]
    (run / "rl_metrics.json").unlink()
    shutil.rmtree(run / "policy")
    assert launch.main(["--resume", *stage(run, "rl", "rl.steps=4", "rl.save_every=2")]) == 0
    assert json.loads((run / "rl_metrics.json").read_text())["final"] == pytest.approx(final)
    assert (run / "policy" / "config.json").is_file()


@pytest.mark.slow
def test_sigterm_to_a_sweep_stops_its_running_child_cleanly(tmp_path):
    cmd = [sys.executable, str(ROOT / "launch.py"), "--seeds", "0,1", *stage(tmp_path, "sft", "sft.epochs=50")]
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    child_log = tmp_path / "default" / "seed_0" / "metrics_sft.jsonl"
    deadline = time.monotonic() + 300
    while not (child_log.is_file() and child_log.read_text().count("\n") >= 2) and time.monotonic() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=200)
    check_one_line(proc.returncode, out, err, "interrupted by SIGTERM", code=143)
    child = tmp_path / "default" / "seed_0"
    assert (child / "log.txt").read_text().rstrip().splitlines()[-1].startswith("error: interrupted by SIGTERM")
    assert (child / runlock.LOCK_NAME).read_text() == "", "the child released its lock"
    assert not (tmp_path / "default" / "seed_1").exists(), "the sweep stopped"


def test_permission_error_names_the_path(tmp_path, capsys, monkeypatch):
    """Root reads every file, so the refusal is simulated where the data file is opened."""
    data = tmp_path / "d.jsonl"
    data.write_text("{}\n")

    def refuse(self):
        raise PermissionError(13, "Permission denied", str(self))
    monkeypatch.setattr(Path, "read_bytes", refuse)
    expect_error(capsys, stage(tmp_path / "run", "rm", f"data.source={data}"), f"{data}: Permission denied")
