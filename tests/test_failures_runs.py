"""Failure battery, runs, through launch.py: run-directory contention, full disks, the error boundary itself
(--debug, unexpected errors, SIGTERM/SIGINT), --resume from damaged checkpoints and metrics logs, and run ownership
(a fresh run never overwrites another's files, --resume never continues another run or splices in other settings).

The units below it have their own files: common/checkpoint.py in test_checkpoint.py, common/metrics.py in
test_metrics.py, common/runlock.py in test_runlock.py."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

import launch
from common import checkpoint, runlock
from common.config import load_config
from helpers import (
    CONFIG,
    ENV,
    ROOT,
    check_one_line,
    default_sigint,
    expect_error,
    hold_lock,
    run_with_sft,
    snapshot,
    stage,
)

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


def test_stale_lock_is_taken_over_by_a_stage(tmp_path, capsys):
    (tmp_path / runlock.LOCK_NAME).write_text(json.dumps({"pid": 4_000_000, "host": "elsewhere", "since": 0}))
    rc = launch.main(stage(tmp_path, "rl"))
    out, err = capsys.readouterr()
    check_one_line(rc, out, err, "run --stage sft first")  # got past the lock, to the next problem
    assert "taking over the lock left by pid 4000000 on host elsewhere" in out


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


# Files replaced whole (common/files.py) are written under .<name>.tmp first: that name is the one linked to it.
@pytest.mark.parametrize("name,stage_name", [("config.yaml", "rm"), (".data_rm.json.tmp", "rm"),
                                             ("metrics_sft.jsonl", "sft"), (".sft_metrics.json.tmp", "sft")])
def test_full_disk_writing_run_files_says_no_space(name, stage_name, tmp_path, capsys, stand_ins):
    run = run_with_sft(tmp_path, stand_ins)
    (run / name).symlink_to("/dev/full")
    expect_error(capsys, stage(run, stage_name), "no space left on device", str(run))


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
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=default_sigint)
    log = tmp_path / "metrics_sft.jsonl"
    deadline = time.monotonic() + 120
    while not (log.is_file() and log.read_text().count("\n") >= 2) and time.monotonic() < deadline:
        time.sleep(0.1)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    # the sft stage keeps no checkpoints: the message says so instead of promising a --resume
    check_one_line(proc.returncode, out, err, f"interrupted by {sig.name} in the sft stage",
                   "rerunning it (--stage sft) starts it over", code=code)
    assert (tmp_path / runlock.LOCK_NAME).read_text() == "", "the lock was released"
    for line in log.read_text().splitlines():
        json.loads(line)  # every logged line is whole


def test_interruption_of_the_rl_stage_names_the_checkpoint_resume_continues_from(tmp_path):
    assert "before its first checkpoint (rl.save_every): rerunning it (--stage rl) starts it over" in \
        launch.interrupted_text(signal.SIGTERM, "rl", str(tmp_path))
    (tmp_path / "checkpoints").mkdir()
    for step in (2, 4):
        (tmp_path / "checkpoints" / f"step_00000{step}.pt").write_bytes(b"")
    text = launch.interrupted_text(signal.SIGINT, "rl", str(tmp_path))
    assert text == (f"interrupted by SIGINT in the rl stage; its checkpoints are intact: --stage rl --resume "
                    f"continues from the latest, {tmp_path / 'checkpoints' / 'step_000004.pt'}")
    assert "rerunning it (--stage rm) starts it over" in launch.interrupted_text(signal.SIGINT, "rm", str(tmp_path))


# ----------------------------------------------------------------------------------- resume through launch


@pytest.mark.parametrize("stage_name,extra,needle", [("rm", [], "--stage rm would run stages that keep no checkpoints"),
                                                     ("sft", [], "--stage sft would run"),
                                                     ("all", [], "--stage all would run"),
                                                     ("rl", ["--seeds", "0,1"], "does not apply to --seeds"),
                                                     ("rl", ["--overwrite"], "does not combine with --resume")])
def test_resume_outside_the_rl_stage_is_refused_before_anything_runs(stage_name, extra, needle, tmp_path, capsys):
    """Only the rl stage keeps checkpoints: --resume elsewhere would silently start over, so it is refused."""
    expect_error(capsys, [*stage(tmp_path, stage_name), "--resume", *extra], "--resume", needle, code=2)
    assert list(tmp_path.iterdir()) == [], "nothing was written"


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


# ----------------------------------------------------------------------------------------------- run ownership
# One run per training stage and run directory (common/ownership.py): the measured failures of the issue "runs that
# overwrite each other, resumes that mix configs", each on a copy of the finished 4-step run.


def rl_run_id(run: Path) -> str:
    return json.loads((run / "stage_runs.json").read_text())["rl"]["run_id"]


def logged_steps(run: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run / "metrics_rl.jsonl").read_text().splitlines()]


def test_fresh_run_over_another_runs_files_is_refused(finished_run, tmp_path, capsys):
    """A fresh run with other settings would wipe metrics_rl.jsonl, and retention would delete its own checkpoints
    beside the old run's higher steps: refused, naming the run, its files and the ways on; nothing changes."""
    run = copy_run(finished_run, tmp_path / "run")
    before = snapshot(run)
    expect_error(capsys, stage(run, "rl", "rl.steps=2", "rl.save_every=1"),
                 f"run_dir {run} holds the rl stage of run {rl_run_id(run)}", "metrics_rl.jsonl",
                 "checkpoints/step_000004.pt", "continue it with --stage rl --resume", "pass --overwrite", code=1)
    assert snapshot(run) == before


def test_overwrite_replaces_the_old_run_resume_continues_it_and_the_same_command_redoes_it(finished_run, tmp_path,
                                                                                          capsys):
    """--overwrite: the old run's files go (one line names them) and the new run keeps checkpoints of its own, which
    --resume continues. The same command again (a rerun of --stage all, an experiment's interrupted stage) is not
    another run's settings: it redoes the run in place, as it always did, and says what it replaced."""
    run = copy_run(finished_run, tmp_path / "run")
    old = rl_run_id(run)
    assert launch.main(["--overwrite", *stage(run, "rl", "rl.steps=2", "rl.save_every=1")]) == 0
    assert (f"[rl] replacing the earlier rl run {old} in {run}: removed metrics_rl.jsonl, rl_metrics.json, "
            f"checkpoints/step_000002.pt, checkpoints/step_000004.pt") in capsys.readouterr().out
    new = rl_run_id(run)
    ckpts = checkpoint.checkpoints(run / "checkpoints")
    assert new != old and [p.name for p in ckpts] == ["step_000001.pt", "step_000002.pt"]
    assert {checkpoint.run_id_of(p) for p in ckpts} == {new}, "the new run keeps checkpoints of its own"
    assert launch.main(["--resume", *stage(run, "rl", "rl.steps=3", "rl.save_every=1")]) == 0
    assert f"resumed from {run / 'checkpoints' / 'step_000002.pt'} (step 2)" in capsys.readouterr().out
    assert logged_steps(run) == [0, 1, 2, 3] and rl_run_id(run) == new, "the new run continued, not the old one"
    first = json.loads((run / "rl_metrics.json").read_text())["final"]
    assert launch.main(stage(run, "rl", "rl.steps=3", "rl.save_every=1")) == 0  # the resumed run's config, fresh
    assert f"[rl] replacing the earlier rl run {new} in {run}" in capsys.readouterr().out
    assert {checkpoint.run_id_of(p) for p in checkpoint.checkpoints(run / "checkpoints")} == {rl_run_id(run)} != {new}
    again = json.loads((run / "rl_metrics.json").read_text())["final"]
    assert again["rollout/reward"] == pytest.approx(first["rollout/reward"]) and logged_steps(run) == [0, 1, 2, 3]


@pytest.mark.parametrize("flags,needle", [([], "holds the rl stage of run"),
                                          (["--overwrite"], "reward.path")])
def test_failed_rerun_leaves_config_and_data_report_untouched(flags, needle, finished_run, tmp_path, capsys):
    """A rerun with other settings and a missing input used to rewrite config.yaml (which the report reads) and
    data_rl.json before its inputs were checked; with --overwrite, the old run's files are not removed either."""
    run = copy_run(finished_run, tmp_path / "run")
    before = snapshot(run)
    missing = tmp_path / "missing"
    expect_error(capsys, [*flags, *stage(run, "rl", "rl.kl_coef=0.5", f"reward.path={missing}")], needle)
    assert snapshot(run) == before
    assert yaml.safe_load((run / "config.yaml").read_text())["rl"]["kl_coef"] != 0.5


@pytest.mark.parametrize("flags,name,overrides", [([], "all", []), (["--resume"], "rl", ["rl.steps=6"])])
def test_second_writer_changes_nothing_and_is_told_who_holds_the_lock(flags, name, overrides, finished_run, tmp_path,
                                                                      capsys):
    """--stage all used to write invocation.json before the lock refused it; --resume was told "no checkpoint"
    (or read the checkpoint) before the lock named the writer."""
    run = copy_run(finished_run, tmp_path / "run")
    (run / "invocation.json").write_text('{"command": "the first run"}')
    holder = hold_lock(run)
    try:
        before = snapshot(run)
        expect_error(capsys, [*flags, *stage(run, name, *overrides)], f"run_dir {run} is in use by pid {holder.pid}",
                     code=1)
        assert snapshot(run) == before
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.parametrize("change,needle", [("rl.lr=0.05", "rl.lr 0.0003 -> 0.05"), ("seed=5", "seed 0 -> 5")])
def test_resume_refuses_a_changed_algorithm_setting(change, needle, finished_run, tmp_path, capsys):
    """The optimizer state used to bring the old lr back while config.yaml said the new one; a new seed changed the
    trajectory mid-run. Refused, naming the key and both values; extending rl.steps alone is not a change."""
    run = copy_run(finished_run, tmp_path / "run")
    before = snapshot(run)
    expect_error(capsys, ["--resume", *stage(run, "rl", "rl.steps=6", change)], "--resume:", needle,
                 "step_000004.pt (step 4)", "pass --allow-config-change", code=2)
    assert snapshot(run) == before


def test_allow_config_change_applies_the_change_and_records_it(finished_run, tmp_path, capsys):
    from stages.report import write_report
    run = copy_run(finished_run, tmp_path / "run")
    old_lr, run_id = load_config(CONFIG).rl.lr, rl_run_id(run)
    argv = ["--resume", "--allow-config-change", *stage(run, "rl", "rl.steps=5", "rl.lr=0.05", "rl.save_every=0")]
    assert launch.main(argv) == 0
    assert f"(step 4, rl.lr {old_lr!r} -> 0.05)" in capsys.readouterr().out
    final = checkpoint.load(run / "checkpoints" / "step_000005.pt")
    assert {g["lr"] for g in final["learner"]["optimizer"]["param_groups"]} == {0.05}, "not the optimizer state's"
    assert final["run"]["config"]["rl.lr"] == 0.05 and final["run"]["run_id"] == run_id == rl_run_id(run)
    assert yaml.safe_load((run / "config.yaml").read_text())["rl"]["lr"] == 0.05
    changes = [json.loads(line) for line in (run / "resume_changes.jsonl").read_text().splitlines()]
    assert [(c["step"], c["changes"]) for c in changes] == [(4, {"rl.lr": {"old": old_lr, "new": 0.05}})]
    report = write_report([run], tmp_path / "report").read_text()
    assert f"at step 4: `rl.lr` {old_lr} -> 0.05" in report


def test_resume_refuses_a_checkpoint_of_another_run(finished_run, tmp_path, capsys):
    """A checkpoint that is not the directory's rl run (copied in, or left by another run) is not continued."""
    run = copy_run(finished_run, tmp_path / "run")
    record = json.loads((run / "stage_runs.json").read_text())
    theirs, record["rl"]["run_id"] = record["rl"]["run_id"], "0123456789ab"
    (run / "stage_runs.json").write_text(json.dumps(record))
    before = snapshot(run)
    expect_error(capsys, ["--resume", *stage(run, "rl", "rl.steps=6")],
                 f"--resume: {run / 'checkpoints' / 'step_000004.pt'} belongs to run {theirs}, not to this "
                 f"directory's rl run 0123456789ab", "--overwrite", code=1)
    assert snapshot(run) == before


def test_allow_config_change_without_resume_is_refused(tmp_path, capsys):
    expect_error(capsys, [*stage(tmp_path, "rl"), "--allow-config-change"], "--allow-config-change applies to "
                 "--resume", code=2)
    assert list(tmp_path.iterdir()) == []


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

    read_bytes = Path.read_bytes

    def refuse(self):  # the data file only: the config file is read as bytes too (its encoding is checked)
        if self == data:
            raise PermissionError(13, "Permission denied", str(self))
        return read_bytes(self)
    monkeypatch.setattr(Path, "read_bytes", refuse)
    expect_error(capsys, stage(tmp_path / "run", "rm", f"data.source={data}"), f"{data}: Permission denied")


def test_eval_with_other_settings_keeps_the_trained_runs_config(finished_run, tmp_path, capsys):
    """A measuring stage run with settings other than the trained models' (here rl.kl_coef) saves them as
    config_eval.yaml and says so: config.yaml, which the report quotes, still holds the training settings."""
    run = copy_run(finished_run, tmp_path / "run")
    before = (run / "config.yaml").read_bytes()
    assert launch.main(stage(run, "eval", "rl.kl_coef=0.5")) == 0
    out = capsys.readouterr().out
    assert "[eval] settings differ from" in out and "rl.kl_coef: 0.05 -> 0.5" in out, out
    assert (run / "config.yaml").read_bytes() == before
    assert load_config(run / "config_eval.yaml").rl.kl_coef == 0.5
    assert (run / "eval.json").is_file()
