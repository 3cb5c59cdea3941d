"""common/trackers.py behind RunLogger: TensorBoard, wandb (offline) and trackio (its local store, under the temporary
directory tests/conftest.py gives it) get the same tags and values, the hyperparameters and the sample table; a
resumed stage continues its tracker runs, a fresh one starts new ones; a tracker that is not installed stops the run
in one line. Nothing here reaches the network."""

import json
import struct
import sys

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import launch
from common import trackers
from common.config import ConfigError, load_config
from common.metrics import RunLogger
from helpers import expect_error, run_with_sft, stage

ALL = "tracking.report_to=[tensorboard,wandb,trackio]"
# values exact in float32 (TensorBoard's precision), so that every tracker's copy compares equal
STEPS = {1: {"rollout/reward": 0.5, "rollout/kl": 0.015625, "losses/policy": -1.0},
         2: {"rollout/reward": 0.75, "rollout/kl": 0.03125, "losses/policy": -0.5, "eval/gold": 1.25}}
ROWS = [{"reward": 0.5, "gold": 2.0, "prompt": "list | fruits", "response": "apple\nbanana"},
        {"reward": -0.25, "gold": 0.0, "prompt": "list tools", "response": ""}]


def log_steps(cfg, steps, resume_step=0):
    logger = RunLogger(cfg, "rl", resume_step=resume_step)
    for step in steps:
        logger.log(step, STEPS[step])
    logger.samples(max(steps), ROWS)
    logger.close()


def tensorboard_scalars(run_dir):
    acc = EventAccumulator(str(run_dir / "tensorboard" / "rl")).Reload()
    return {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}, acc


def wandb_records(path):
    """The records of a .wandb file (wandb's LevelDB-style log of protobuf records: a 7-byte file header, then
    32 KiB blocks of chunks with a 7-byte header: crc32, length, type; a record spans FIRST..LAST or is FULL)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, records, pos, chunk = path.read_bytes(), [], 7, b""
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # a block's tail too short for a header is padding
            pos += 32768 - pos % 32768
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk, pos = chunk + data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind in (1, 4):  # FULL or LAST
            records.append(pb.Record.FromString(chunk))
            chunk = b""
    return records


def wandb_runs(run_dir):
    """Each offline run directory's (run record, history rows) in start order; values JSON-decoded."""
    out = []
    for path in sorted((run_dir / "wandb").glob("offline-run-*/run-*.wandb")):
        records = wandb_records(path)
        run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
        rows = [{i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
                for r in records if r.WhichOneof("record_type") == "history"]
        out.append((run, rows))
    return out


def trackio_logs(project, name):
    from trackio.sqlite_storage import SQLiteStorage
    return SQLiteStorage.get_logs(project, name), SQLiteStorage.get_run_config(project, name)


def test_every_tracker_gets_the_same_tags_values_hyperparameters_and_samples(tmp_path):
    cfg = load_config(None, [f"run_dir={tmp_path / 'run'}", ALL, "tracking.project=t-same", "rl.kl_coef=0.125"])
    log_steps(cfg, [1, 2])
    expected = {tag: {s: m[tag] for s, m in STEPS.items() if tag in m} for tag in set().union(*STEPS.values())}

    scalars, acc = tensorboard_scalars(tmp_path / "run")
    assert scalars == expected
    text = acc.Tensors("rollout/samples/text_summary")[0]
    assert text.step == 2 and "list \\| fruits" in text.tensor_proto.string_val[0].decode()
    assert "rl.kl_coef | 0.125" in acc.Tensors("hparams/text_summary")[0].tensor_proto.string_val[0].decode()

    [(run, rows)] = wandb_runs(tmp_path / "run")
    assert (run.project, run.display_name, run.run_group, run.job_type) == ("t-same", "run-rl", "run", "rl")
    config = {i.key: json.loads(i.value_json) for i in run.config.update}
    assert config["rl.kl_coef"] == 0.125 and config["tracking.project"] == "t-same"
    logged = {tag: {r["step"]: r[tag] for r in rows if tag in r} for tag in expected}
    assert logged == expected, "the same tags, each at its stage step (wandb's x axis is the logged step)"
    table = next(r for r in rows if "rollout/samples/path" in r)
    content = json.loads(next((tmp_path / "run" / "wandb").glob("offline-run-*/files/" + table["rollout/samples/path"]))
                         .read_text())
    assert table["step"] == 2 and content["columns"] == list(ROWS[0]) and content["data"][0][2] == "list | fruits"

    logs, config = trackio_logs("t-same", "run-rl")
    assert {tag: {r["step"]: r[tag] for r in logs if tag in r} for tag in expected} == expected
    assert config["rl.kl_coef"] == 0.125 and config["_Group"] == "run"
    [samples] = [r for r in logs if "rollout/samples" in r]
    assert samples["step"] == 2 and samples["rollout/samples"]["_value"][1]["reward"] == -0.25


def test_a_resumed_stage_continues_its_tracker_runs_and_a_fresh_one_starts_new_ones(tmp_path):
    run_dir = tmp_path / "run"
    cfg = load_config(None, [f"run_dir={run_dir}", ALL, "tracking.project=t-resume", "tracking.run_name=r1"])
    log_steps(cfg, [1, 2])
    first_id = (run_dir / "wandb" / "rl.id").read_text()
    log_steps(cfg, [2], resume_step=1)  # the interrupted run had logged step 2 after its checkpoint at 1
    assert (run_dir / "wandb" / "rl.id").read_text() == first_id
    assert [run.run_id for run, _ in wandb_runs(run_dir)] == [first_id] * 2, "offline: `wandb sync` joins both"
    scalars, _ = tensorboard_scalars(run_dir)
    assert scalars["rollout/reward"] == {1: 0.5, 2: 0.75}, "TensorBoard purges the interrupted run's step 2"
    from trackio.sqlite_storage import SQLiteStorage
    assert SQLiteStorage.get_runs("t-resume") == ["r1-rl"], "trackio resumed the run of that name"

    log_steps(cfg, [1])  # a fresh run of the stage in the same directory
    assert (run_dir / "wandb" / "rl.id").read_text() != first_id
    assert SQLiteStorage.get_runs("t-resume") == ["r1-rl", "r1-rl"]
    assert [r["step"] for r in trackio_logs("t-resume", "r1-rl")[0]] == [1, 1], "the latest run: step 1 and samples"


def test_wandb_mode_auto_is_online_only_with_an_api_key(tmp_path, monkeypatch):
    for name in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    netrc = tmp_path / "netrc"
    netrc.write_text("machine example.com login user password secret\n")
    monkeypatch.setenv("NETRC", str(netrc))
    assert trackers.wandb_mode("auto") == "offline" and trackers.wandb_mode("online") == "online"
    netrc.write_text("machine api.wandb.ai login user password 0123456789abcdef\n")
    netrc.chmod(0o600)
    assert trackers.wandb_mode("auto") == "online", "`wandb login` keeps the key in ~/.netrc"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert trackers.wandb_mode("auto") == "disabled" and trackers.wandb_mode("offline") == "offline"


@pytest.mark.parametrize("override,needle", [
    ("tracking.report_to=[tensorboard,mlflow]", "tracking.report_to: 'mlflow' is not a tracker; name any of "
                                                "tensorboard, wandb, trackio once"),
    ("tracking.report_to=[wandb,wandb]", "tracking.report_to: 'wandb' is named twice"),
    ("tracking.project=team/rlhf", "tracking.project='team/rlhf': expected a non-empty name without any of /"),
])
def test_bad_tracking_values_fail_at_load_naming_the_key(override, needle):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert str(e.value).startswith(needle), str(e.value)


def test_a_tracker_that_is_not_installed_stops_the_run_at_its_start(tmp_path, stand_ins, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "trackio", None)  # what find_spec reports for a package that is not installed
    run = run_with_sft(tmp_path, stand_ins)
    expect_error(capsys, stage(run, "rl", "tracking.report_to=[tensorboard,trackio]"),
                 "tracking.report_to names trackio, which is not installed: pip install trackio", code=2)
    assert not (run / "tensorboard").exists() and not (run / "config.yaml").exists(), "stopped before the stage"


@pytest.mark.slow
def test_the_rl_stage_sends_the_same_tags_to_every_tracker_and_resume_continues_its_runs(tmp_path, stand_ins, capsys):
    run = run_with_sft(tmp_path, stand_ins)
    (run / "reward_model").symlink_to(stand_ins / "reward_model")
    args = [ALL, "tracking.project=t-launch", "rl.save_every=1", "rl.sample_every=2", "generator.backend=hf"]
    assert launch.main(stage(run, "rl", "rl.steps=2", *args)) == 0
    assert "[rl step 1] best, median and worst response of the batch by reward:" in capsys.readouterr().out
    wandb_id = (run / "wandb" / "rl.id").read_text()
    assert launch.main(["--resume", *stage(run, "rl", "rl.steps=3", *args)]) == 0

    logged = [json.loads(line) for line in (run / "metrics_rl.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged] == [0, 1, 2, 3], "step 0: the held-out probe of the SFT policy"
    tags = set().union(*logged) - {"step"}
    assert {"rollout/reward", "rollout/kl", "baseline/value", "losses/policy", "perf/step_s", "sync/version",
            "eval/reward"} <= tags
    scalars, acc = tensorboard_scalars(run)
    assert set(scalars) == tags
    assert [e.step for e in acc.Tensors("rollout/samples/text_summary")] == [1, 2, 3], "first step of each process"
    runs = wandb_runs(run)
    assert [r.run_id for r, _ in runs] == [wandb_id] * 2, "--resume continued the wandb run"
    rows = [row for _, history in runs for row in history]
    assert {k for row in rows for k in row if not k.startswith(("_", "rollout/samples/"))} - {"step"} == tags
    assert sorted(r["step"] for r in rows if "rollout/reward" in r) == [1, 2, 3]
    logs, _ = trackio_logs("t-launch", "run-rl")
    assert set().union(*logs) - {"step", "timestamp", "rollout/samples"} == tags
    assert [r["step"] for r in logs if "rollout/reward" in r] == [1, 2, 3], "trackio resumed the run of that name"
