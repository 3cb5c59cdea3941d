"""Failure battery, Ray: unreachable clusters, silent and dead actors, unplaceable bundles, actor restarts,
signals to the driver, and every expected error class through launch.py's boundary."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

ray = pytest.importorskip("ray")
from ray.util.queue import Queue  # noqa: E402

import launch  # noqa: E402
from cluster.placement import PlacementError  # noqa: E402
from cluster.ray_actors import RemoteGenerator, RemoteScorer  # noqa: E402
from cluster.ray_pipeline import RolloutError, RolloutPipeline  # noqa: E402
from common import checkpoint  # noqa: E402
from common.checkpoint import CheckpointError  # noqa: E402
from common.config import ConfigError, load_config  # noqa: E402
from common.data import DataError  # noqa: E402
from common.errors import ModelPathError, UserError  # noqa: E402
from common.runlock import RunDirBusy  # noqa: E402
from common.sampling import PromptSampler  # noqa: E402
from helpers import ENV, ROOT, check_one_line, default_sigint, expect_error, stage, train_prompts  # noqa: E402

WAIT = 60
RAY_FAST = ["data.max_prompt_tokens=64", "rl.lr=1e-2", "cluster.generator_cpus=0.5", "cluster.scorer_cpus=0.5",
            "cluster.placement_timeout_s=120", "cluster.local_cpus=2"]


@pytest.fixture(scope="module")
def ray_run(tmp_path_factory, stand_ins):
    """A run directory with the tiny stand-in models and the sandbox data written."""
    run = tmp_path_factory.mktemp("ray_fail")
    for name in ("sft_model", "reward_model"):
        (run / name).symlink_to(stand_ins / name)
    train_prompts(load_config(None, [f"run_dir={run}", *stage(run, "rl")[6:], *RAY_FAST]))
    return run


@pytest.fixture(scope="module")
def ray_instance():
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false"}})
    yield
    ray.shutdown()


# --------------------------------------------------------------------------------------- the boundary

ERRORS = [ConfigError("rl.kl_coef: bad"), DataError("d.jsonl: row 3: bad"), RolloutError("generator 0 is dead"),
          PlacementError("could not place generator 0"), CheckpointError("checkpoint x is unreadable"),
          RunDirBusy("run_dir r is in use by pid 1"), ModelPathError("not found: ./m (model.policy)"),
          RolloutError("scorer 0 failed:\n  Traceback (most recent call last):\n  ValueError: boom")]


@pytest.mark.parametrize("error", ERRORS, ids=[f"{type(e).__name__}{i}" for i, e in enumerate(ERRORS)])
def test_every_expected_error_class_is_one_line(error, tmp_path, capsys, monkeypatch):
    assert isinstance(error, UserError)

    def raise_it(*args, **kwargs):
        raise error
    monkeypatch.setattr(launch, "run_stage", raise_it)
    line = check_one_line(launch.main(stage(tmp_path, "rl")), *capsys.readouterr(), str(error).split("\n")[0],
                          code=error.exit_code)
    assert "\n" not in line


# --------------------------------------------------------------------------------------- connecting


def test_unreachable_cluster_address_fails_fast_naming_it(tmp_path, capsys):
    with socket.socket() as s:  # a port where nothing listens
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.monotonic()
    expect_error(capsys, stage(tmp_path, "rl", f"cluster.address=127.0.0.1:{port}", "--mode", "ray"),
                 f"cannot reach the Ray cluster at 127.0.0.1:{port}", "cluster.address")
    assert time.monotonic() - t0 < 10


def test_an_address_that_is_not_ray_is_bounded(tmp_path):
    """Something answers TCP there, but no Ray GCS: ray.init would retry forever; the watchdog ends it."""
    server = socket.socket()
    server.bind(("0.0.0.0", 0))
    server.listen(16)
    port = server.getsockname()[1]
    cmd = [sys.executable, str(ROOT / "launch.py"), "--mode", "ray",
           *stage(tmp_path, "rl", f"cluster.address=127.0.0.1:{port}", "cluster.connect_timeout_s=3")]
    try:
        out = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=120)
    finally:
        server.close()
    check_one_line(out.returncode, out.stdout, out.stderr, f"127.0.0.1:{port}", "did not accept a connection")


# ------------------------------------------------------------------------------------------ actors


@pytest.fixture(scope="module")
def actors(ray_instance, ray_run):
    cfg = load_config(None, stage(ray_run, "rl")[5:] + RAY_FAST)
    prompts, prompt_tokens = train_prompts(cfg)
    model = str(ray_run / "sft_model")
    gens = [RemoteGenerator.options(num_cpus=0.5).remote(cfg, model, prompt_tokens, 1) for _ in range(2)]
    scorer = RemoteScorer.options(num_cpus=0.5).remote(cfg, model, str(ray_run / "reward_model"), prompts, 1)
    ray.get([a.info.remote() for a in gens + [scorer]], timeout=WAIT)
    return gens, scorer, len(prompts)


def test_health_checks_run_in_parallel_and_name_only_the_silent_actor(actors):
    """Generator 0 frozen (SIGSTOP): named after one data timeout plus one health check, not one per actor;
    the scorer, whose calls wait on generator 0's shards, and generator 1 are not named."""
    gens, scorer, n_prompts = actors
    queue = Queue(maxsize=4)
    pipeline = RolloutPipeline(gens, [scorer], queue, PromptSampler(n_prompts, 4, 0), 0, 0, data_timeout_s=3)
    pipeline.ping_timeout_s = 4
    pipeline.publish(ray.get(gens[0].state_dict.remote(), timeout=WAIT), version=0)
    pid = ray.get(gens[0].info.remote(), timeout=WAIT)["pid"]
    os.kill(pid, signal.SIGSTOP)
    try:
        pipeline.fill(total_steps=3)
        t0 = time.monotonic()
        with pytest.raises(RolloutError) as err:
            pipeline.collect(0, learner_version=0)
        elapsed = time.monotonic() - t0
    finally:
        os.kill(pid, signal.SIGCONT)
    msg = str(err.value)
    assert "generator 0 did not answer a health check within 4s" in msg
    assert "scorer 0" not in msg and "generator 1" not in msg, msg
    assert elapsed < 3 + 4 + 4, f"one health-check timeout for all actors, not one each ({elapsed:.1f}s)"
    ray.get([a.info.remote() for a in gens + [scorer]], timeout=WAIT)
    queue.shutdown()


def test_unplaceable_actors_are_one_line_naming_the_bundles(ray_instance, ray_run, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    for name in ("sft_model", "reward_model", "data"):
        (run / name).symlink_to(ray_run / name)
    expect_error(capsys, ["--mode", "ray", *stage(run, "rl", *RAY_FAST, "cluster.generator_gpus=1",
                                                  "cluster.placement_timeout_s=2")],
                 "could not place the actors within cluster.placement_timeout_s=2s", "generator 0", "'GPU': 1.0")


# -------------------------------------------------------------------------------------- restarts, signals


@pytest.mark.slow
def test_actor_restart_is_counted_and_logged(ray_instance, ray_run, tmp_path, capfd):
    """Ray restarts a killed generator and retries its call by itself; the run says so (sync/restarts)."""
    from stages.rl import run_rl
    run = tmp_path / "run"
    run.mkdir()
    for name in ("sft_model", "reward_model", "data"):
        (run / name).symlink_to(ray_run / name)
    cfg = load_config(None, stage(run, "rl")[5:] + RAY_FAST + ["rl.steps=3"])

    def kill_generator(step, source):
        if step == 0:
            os.kill(ray.get(source.pipeline.generators[0].info.remote(), timeout=WAIT)["pid"], signal.SIGKILL)
    result = run_rl(cfg, mode="ray", on_step=kill_generator)
    rows = [json.loads(line) for line in (run / "metrics_rl.jsonl").read_text().splitlines()]
    assert result["ray"]["restarts"] == 1 and rows[-1]["sync/restarts"] == 1.0
    assert "generator 0 was restarted by Ray" in capfd.readouterr().err


@pytest.mark.slow
def test_signal_to_the_ray_driver_stops_cleanly(ray_run, tmp_path):
    """SIGTERM (exit 143) and SIGINT (exit 130) to a Ray run's driver, two runs side by side (one Ray start-up's
    wait for both): one line each, and the last checkpoint written is intact."""
    runs = {}
    for sig, code in ((signal.SIGTERM, 143), (signal.SIGINT, 130)):
        run = tmp_path / sig.name
        run.mkdir()
        for name in ("sft_model", "reward_model", "data"):
            (run / name).symlink_to(ray_run / name)
        cmd = [sys.executable, str(ROOT / "launch.py"), "--mode", "ray",
               *stage(run, "rl", *RAY_FAST, "rl.steps=200", "rl.save_every=1", "rl.eval_every=0")]
        runs[sig] = (run, code, subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                                 text=True, preexec_fn=default_sigint))

    def trained(run) -> int:  # logged learner steps; the log's first row is step 0, the SFT policy's probe
        log = run / "metrics_rl.jsonl"
        return sum(json.loads(line)["step"] > 0 for line in log.read_text().splitlines()) if log.is_file() else 0
    deadline = time.monotonic() + 300
    logged = {}
    for sig, (run, _, proc) in runs.items():
        while trained(run) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        logged[sig] = trained(run)
        assert logged[sig] >= 2, f"{sig.name}: two steps were logged before the signal"
        proc.send_signal(sig)
    for sig, (run, code, proc) in runs.items():
        out, err = proc.communicate(timeout=120)
        check_one_line(proc.returncode, out, err, f"interrupted by {sig.name}", code=code)
        found = checkpoint.load_latest(run / "checkpoints")  # raises if the latest is not readable
        assert found is not None, f"{sig.name}: the checkpoint of the first logged step is on disk"
        # a step logs, then checkpoints: the signal may have stopped the checkpoint of the step it logged last
        assert found[1]["step"] >= logged[sig] - 1, f"{sig.name}: the last checkpoint written is intact"
        assert not list((run / "checkpoints").glob("*.tmp"))
