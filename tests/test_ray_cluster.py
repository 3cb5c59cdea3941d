"""A real two-node Ray cluster on this machine (`ray start --head` + `ray start --address`), and a short RL run
through `launch.py --mode ray cluster.address=...` with the generator forced onto the second node and the learner
on 2 ranks (cluster.learner_ranks=2, FSDP2 over gloo) on the head node.

Teardown ends exactly the process groups this test started (SIGTERM, then SIGKILL): `ray stop` would also stop
every other Ray instance on the machine (other tests', other users')."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

pytest.importorskip("ray")

from cluster.ray_rollouts import ROOT  # noqa: E402
from common.models import save_untrained_stand_ins  # noqa: E402
from helpers import TINY, read_metrics, tiny_overrides  # noqa: E402

RAY = [sys.executable, "-m", "ray.scripts.scripts"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_node(args: list[str], log, env: dict) -> subprocess.Popen:
    """`ray start ... --block` in its own process group; returns once the node reports it is up."""
    proc = subprocess.Popen(RAY + ["start", "--block", "--disable-usage-stats", *args], env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if "Ray runtime started" in open(log.name).read():
            return proc
        if proc.poll() is not None:
            break
        time.sleep(0.5)
    stop_node(proc)
    raise RuntimeError(f"ray start {' '.join(args)} did not come up:\n{open(log.name).read()[-3000:]}")


def stop_node(proc: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, 3), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


@pytest.fixture
def two_node_cluster(tmp_path):
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
           "TOKENIZERS_PARALLELISM": "false"}
    temp_dir = f"/tmp/ray_{port}"  # short: Ray's socket paths must fit in 107 characters
    nodes = []
    try:
        nodes.append(start_node([f"--port={port}", f"--temp-dir={temp_dir}", "--num-cpus=1",
                                 '--resources={"head_node": 1}', "--include-dashboard=false", "--head"],
                                (tmp_path / "head.log").open("w"), env))
        nodes.append(start_node([f"--address=127.0.0.1:{port}", "--num-cpus=1", '--resources={"node2": 1}'],
                                (tmp_path / "node2.log").open("w"), env))
        yield f"127.0.0.1:{port}", env
    finally:
        for proc in reversed(nodes):
            stop_node(proc)


@pytest.mark.slow
def test_two_node_cluster_run_through_launch(two_node_cluster, tmp_path, tokenizer):
    address, env = two_node_cluster
    run_dir = tmp_path / "run"
    save_untrained_stand_ins(run_dir, TINY, tokenizer)
    cmd = [sys.executable, str(ROOT / "launch.py"), "--mode", "ray", "--stage", "rl",
           *tiny_overrides(run_dir, steps=2, generator_cpus=1, scorer_cpus=0.5, learner_ranks=2, learner_cpus=0.25),
           f"cluster.address={address}", "cluster.generator_resources=node2:1",
           "cluster.scorer_resources=head_node:0.5", "cluster.learner_resources=head_node:0.25", "rl.eval_every=0",
           "rl.save_every=1"]
    out = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    where = json.loads((run_dir / "ray_placement.json").read_text())
    assert where["generator 0"]["node_id"] != where["scorer 0"]["node_id"], "generator must run on node 2"
    assert where["learner 0"]["node_id"] == where["learner 1"]["node_id"] == where["scorer 0"]["node_id"]
    assert where["learner 0"]["pid"] != where["learner 1"]["pid"]
    metrics = read_metrics(run_dir)
    assert [m["step"] for m in metrics] == [1, 2] and metrics[0]["perf/sync_bytes"] > 0  # synced after step 1
    assert metrics[-1]["sync/staleness"] == 0  # the generator sampled step 2 with the weights the ranks published
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("step_*")) == [
        "step_000001.dcp", "step_000001.pt", "step_000002.dcp", "step_000002.pt"]
    assert (run_dir / "policy" / "config.json").is_file()


def test_ray_up_yaml_is_a_valid_cluster_config():
    """`ray up` would accept cluster/ray_gpu_cluster.yaml (Ray's own schema check, no cloud calls)."""
    import yaml
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = prepare_config(yaml.safe_load((ROOT / "cluster" / "ray_gpu_cluster.yaml").read_text()))
    validate_config(config)
    assert config["available_node_types"]["gpu_worker"]["node_config"]["InstanceType"].startswith("g")
    # the project is installed by scripts/install.py, which picks the GPU build (extra `gpu`) from nvidia-smi
    assert any('scripts/install.py' in cmd for cmd in config["setup_commands"])
