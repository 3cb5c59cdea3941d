"""bench/gpu_check.py on the CPU at toy sizes, so the GPU check cannot rot: the real config's rm and rl stages
run in a process where ray, vllm, datasets, matplotlib, pandas and pyarrow cannot be imported."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_runs_the_real_config_without_ray_or_vllm(tmp_path):
    out = subprocess.run([sys.executable, "bench/gpu_check.py", "--cpu-smoke", "--rm-steps", "2", "--rl-steps", "3",
                          "--config", "configs/smollm2_helpsteer2.yaml", "--work-dir", str(tmp_path)],
                         cwd=ROOT, capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [json.loads(line.removeprefix("gpu_check: ")) for line in out.stdout.splitlines()
            if line.startswith("gpu_check: {")]
    assert [(r["stage"], r["fits"], r["steps"]) for r in rows] == [("rm", True, 2), ("rl", True, 3)]
    assert all(r["s_per_step"] > 0 for r in rows)
    assert rows[1]["response_len"] == 8  # random weights: every response is max_new_tokens long (the smoke's 8)
    data = json.loads((tmp_path / "run" / "data_rm.json").read_text())
    assert data["encode"]["truncated"] > 0  # the generated prompts exceed data.max_prompt_tokens


@pytest.mark.slow
def test_gpu_throughput_measures_the_rl_step_against_generation_alone(tmp_path):
    """bench/gpu_throughput.py's path at toy sizes: both timings, the ratio, the sync share and the MFU."""
    from bench import gpu_throughput
    r = gpu_throughput.main(["--cpu-smoke", "--json", str(tmp_path / "r.json"), "generator.backend=hf",
                             "torch_threads=1"])
    assert json.loads((tmp_path / "r.json").read_text()) == pytest.approx(r)
    assert r["generator"] == "Generator" and r["batch"] == 4 and 0 < r["mean_response_len"] <= 8
    # an RL step does generation and more: its tokens/s is below generation alone's
    assert 0 < r["rl_over_generation"] < 1
    assert r["sync_share"] == 0.0  # hf in local mode samples from the learner's own module: no sync
    assert 0 < r["mfu_vs_measured_matmul"] < 1 and r["mfu_vs_datasheet"] is None  # no datasheet for a CPU
