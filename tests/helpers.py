"""Helpers the test files share: constants, tiny-model builders, the failure contract. Every test file imports them
as `from helpers import ...` (tests/ is on sys.path: pytest puts a rootdir-less test directory there). Fixtures
live in conftest.py, where pytest finds them."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import torch

import launch
from actors.generator import Generator
from common import data
from common.config import GeneratorConfig, TinyModelConfig
from common.models import load_tokenizer
from common.paths import RunPaths
from tasks import sandbox
from tasks.files import read_rows
from tasks.preference import parse_pairs
from tasks.registry import load_task

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs" / "tiny.yaml")
CPU = torch.device("cpu")
TINY = TinyModelConfig(hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1, intermediate_size=64)
# The tiny demo (configs/tiny.yaml), shrunk to seconds: fewer pairs, a smaller model, small RL batches. A test that
# needs more adds its overrides after it, where it is used (test_launch.py, test_notebook.py).
FAST = ["sandbox.num_pairs=240", "sandbox.num_sft_examples=256", "sft.epochs=1", "reward.epochs=1",
        "model.tiny.hidden_size=32", "model.tiny.intermediate_size=64", "rl.batch_size=4",
        "generator.max_new_tokens=4", "eval.num_prompts=8", "eval.bootstrap_samples=200", "rl.eval_prompts=8",
        "torch_threads=1"]
# five preference pairs in the schema of HelpSteer2_binarized (tests/fixtures/data/)
PAIRS = ROOT / "tests" / "fixtures" / "data" / "pairs.jsonl"
SPLIT = "average_rating_split"
# the environment of a launch.py (or other project) subprocess
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false", "TQDM_DISABLE": "1"}


def default_sigint() -> None:
    """Popen's preexec_fn for a child that is sent SIGINT: a shell starts background jobs with SIGINT ignored, which
    children inherit, and Python then never raises KeyboardInterrupt; the child gets the default disposition back
    (what a user's terminal gives launch.py), however the suite itself was started."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


# ------------------------------------------------------------------------------------- prompts and rollouts


def train_prompts(cfg):
    """The RL stage's training prompt pool of a config: (prompts, prompt_tokens); writes the sandbox data once."""
    tokenizer = load_tokenizer(RunPaths(cfg).sft_policy, cfg.model.tokenizer)
    return load_task(cfg).prompt_pool(tokenizer, "train", "rl")


def fixture_pairs():
    """The parsed PAIRS."""
    rows, origin = read_rows(str(PAIRS), SPLIT)
    return parse_pairs(rows, origin, "error", data.DataStats())


def prompt_pool(tokenizer, n, seed=0):
    rng = random.Random(seed)
    messages = [({"role": "user", "content": sandbox.sample_prompt(rng)},) for _ in range(n)]
    tokens = [data.encode_prompt(tokenizer, m, 64, "truncate_left", data.DataStats()) for m in messages]
    return messages, tokens


def make_generator(policy, tokenizer, n=8, max_new_tokens=6, **kw):
    _, tokens = prompt_pool(tokenizer, n)
    return Generator(policy, tokenizer, GeneratorConfig(max_new_tokens=max_new_tokens, **kw), tokens, CPU)


def scored_batch(policy, tokenizer, n=8, temperature=1.0, seed=0):
    gen = make_generator(policy, tokenizer, n=n, max_new_tokens=6, temperature=temperature)
    batch = gen.generate(list(range(n)), seed=seed)
    return batch.with_rewards(torch.linspace(-1.0, 1.0, n))


def target_fraction(batch, target: int) -> torch.Tensor:
    """Reward: share of response tokens below `target` (token ids; ~10% under a random policy)."""
    hits = ((batch.response_ids < target) & batch.response_mask.bool()).sum(-1).float()
    return hits / batch.response_mask.sum(-1).clamp(min=1)


# ------------------------------------------------------------------------------------------------ Ray runs


def tiny_overrides(run_dir, steps=3, **cluster):
    """A seconds-long RL run on the tiny models: 1 torch thread everywhere so floats match across processes; the hf
    backend, as auto would import vLLM in every generator actor only to find head size 16 unsupported (test_vllm
    covers a vLLM generator actor)."""
    base = [f"run_dir={run_dir}", "torch_threads=1", "generator.backend=hf", "sandbox.num_pairs=120",
            "data.max_prompt_tokens=64",
            f"rl.steps={steps}", "rl.batch_size=4", "rl.lr=1e-2", "rl.save_every=0", "generator.max_new_tokens=6",
            "eval.batch_size=8", "cluster.generator_cpus=0.5", "cluster.scorer_cpus=0.5",
            "cluster.data_timeout_s=60", "cluster.placement_timeout_s=120"]
    return base + [f"cluster.{k}={v}" for k, v in cluster.items()]


def read_metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics_rl.jsonl").read_text().splitlines()]


# ---------------------------------------------------------------------------------------- run directories

HOLD = ("import sys, time; from common import runlock; runlock.acquire(sys.argv[1], what=sys.argv[2]); "
        "print('locked', flush=True); time.sleep(60)")


def hold_lock(run_dir: Path, what: str = "run") -> subprocess.Popen:
    """Another process holding run_dir's lock (it prints 'locked' once it does); what="a sweep" is a sweep holding
    its root (experiments/runner.claim)."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir), what], env=ENV, stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


# ----------------------------------------------------------------------------------------- model cards


def comparison(mean: float, low: float, high: float) -> dict:
    return {"diff_mean": mean, "diff_ci_low": low, "diff_ci_high": high}


def eval_result(gold: bool = True) -> dict:
    """An eval.json (stages/eval.py summarize) with the fields a model card reads: 204 in- and 281
    out-of-distribution prompts, reward (and gold) differences with their intervals, the KL."""
    def pool(n, shift):
        comps = {"reward": comparison(0.5 + shift, 0.1 + shift, 0.9 + shift)}
        if gold:
            comps["gold"] = comparison(1.25 + shift, 0.75 + shift, 1.75 + shift)
        return {"num_prompts": n, "confidence": 0.95, "comparisons": comps,
                "policies": {"trained": {"kl_to_ref": 1.5 + shift}, "sft": {"kl_to_ref": 0.0}}}
    return {**pool(204, 0.0), "ood": pool(281, 0.25)}


# ---------------------------------------------------------------------- the failure contract (test_failures_*)
# Every expected failure ends with a non-zero exit and exactly one stderr line `error: ...`, the last one, naming
# the problem; no traceback anywhere in the output.


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
    """launch.main in-process, checked against the failure contract."""
    rc = launch.main(argv)
    out = capsys.readouterr()
    return check_one_line(rc, out.out, out.err, *needles, code=code)


def stage(run_dir: Path, name: str, *overrides: str) -> list[str]:
    """launch.py arguments for one stage of the FAST tiny demo in run_dir."""
    return ["--config", CONFIG, "--stage", name, "--no-report", f"run_dir={run_dir}", *FAST, *overrides]


def snapshot(run: Path) -> dict[str, bytes]:
    """The bytes of every file under `run` (symlinks and TensorBoard logs left out), to compare before and after."""
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*"))
            if p.is_file() and not p.is_symlink() and "tensorboard" not in p.parts}


def unchanged(before: dict[str, bytes], after: dict[str, bytes]) -> bool:
    """Whether every file of `before` is still there with the same bytes (new files allowed)."""
    return all(after.get(name) == data for name, data in before.items())


def run_with_sft(tmp_path: Path, stand_ins: Path) -> Path:
    """tmp_path/run with the stand_ins fixture's SFT model linked in."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "sft_model").symlink_to(stand_ins / "sft_model")
    return run
