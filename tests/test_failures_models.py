"""Failure battery, models: model files that cannot be loaded or used, each refused at load in one named line.

Every bad model is built in tmp_path from the tiny model (save_pretrained, then corrupted); the stage that loads it
stops with one `error:` line naming the key and path, and what the run directory already held is unchanged.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoTokenizer, LlamaForCausalLM, T5Config, T5ForConditionalGeneration

from common.models import BUNDLED_TOKENIZER, build_tiny_policy, tiny_llama_config
from helpers import TINY, expect_error, snapshot, stage, unchanged


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(BUNDLED_TOKENIZER)


@pytest.fixture(scope="module")
def good_model(tmp_path_factory, tokenizer) -> Path:
    """A tiny policy directory as the sft stage leaves it (weights, config, tokenizer)."""
    path = tmp_path_factory.mktemp("good") / "model"
    build_tiny_policy(TINY, tokenizer, 0).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def copy_model(good: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(good, tmp_path / "model"))


def truncated(model: Path, tokenizer) -> None:
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])


def pickled(model: Path, tokenizer) -> None:
    """pytorch_model.bin holding a pickled object besides tensors (what torch.load(weights_only=True) refuses)."""
    state = load_file(model / "model.safetensors")
    (model / "model.safetensors").unlink()
    torch.save({**state, "extra": argparse.Namespace(a=1)}, model / "pytorch_model.bin")  # not on the allow-list


def with_nan(model: Path, tokenizer) -> None:
    state = load_file(model / "model.safetensors")
    state["model.layers.0.mlp.up_proj.weight"][0, 0] = float("nan")
    save_file(state, model / "model.safetensors", metadata={"format": "pt"})


def small_vocab(model: Path, tokenizer) -> None:
    """A model with 1000 embedding rows beside the tokenizer's 49152 tokens."""
    config = tiny_llama_config(TINY, tokenizer)
    config.vocab_size = 1000
    LlamaForCausalLM(config).save_pretrained(model)


def t5(model: Path, tokenizer) -> None:
    (model / "model.safetensors").unlink()
    config = T5Config(vocab_size=len(tokenizer), d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2)
    T5ForConditionalGeneration(config).save_pretrained(model)


# (case, corruption, stage, key, needles besides the key=path)
CASES = [
    ("truncated_safetensors", truncated, "rl", "model.policy", ["model.safetensors", "truncated or corrupt"]),
    ("pickle_bin", pickled, "rl", "model.policy", ["pytorch_model.bin is a pickle", "convert it to safetensors"]),
    ("nan_weights", with_nan, "rl", "model.policy",
     ["holds non-finite weights (1 tensors, e.g. model.layers.0.mlp.up_proj.weight)", "the model file is corrupt"]),
    ("vocab_smaller_than_tokenizer", small_vocab, "rl", "model.policy",
     ["has 1000 embedding rows but the tokenizer", "49152 tokens"]),
    ("t5_policy", t5, "rl", "model.policy", ["is a t5 model (T5ForConditionalGeneration), an encoder-decoder",
                                             "supported: decoder-only causal LMs"]),
    ("t5_reward_init", t5, "rm", "reward.init", ["is a t5 model", "decoder-only causal LMs"]),
]


@pytest.mark.parametrize("case,corrupt,stage_name,key,needles", CASES, ids=[c[0] for c in CASES])
def test_unusable_model_is_one_line_naming_key_and_path(case, corrupt, stage_name, key, needles, good_model,
                                                        tokenizer, tmp_path, capsys, stand_ins):
    model = copy_model(good_model, tmp_path)
    corrupt(model, tokenizer)
    run = tmp_path / "run"
    run.mkdir()
    # an earlier result, to keep (eval.json: a measurement no stage's ownership guards, so the model check is reached)
    (run / "eval.json").write_text(json.dumps({"steps": 3}))
    if stage_name == "rm":
        shutil.copytree(good_model, run / "sft_model")
    else:  # the rl stage checks its reward model first: a usable one, so the policy is what fails
        shutil.copytree(stand_ins / "reward_model", run / "reward_model")
    before, model_before = snapshot(run), snapshot(model)
    line = expect_error(capsys, stage(run, stage_name, f"{key}={model}"), f"{key}={model}", *needles, code=1)
    assert "learning rate" not in line
    assert unchanged(before, snapshot(run)) and snapshot(model) == model_before


# ------------------------------------------------------------------------------------------------- GGUF files


@pytest.mark.parametrize("content", [b"\0" * 4096, b"<!DOCTYPE html><html>not found</html>"], ids=["zeros", "html"])
def test_file_named_gguf_that_is_not_gguf_is_one_line(content, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("GGUF_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "SmolLM2-135M-Instruct.Q4_1.gguf"
    path.write_bytes(content)
    expect_error(capsys, stage(tmp_path / "run", "rl", f"model.policy={path}"), f"{path} is not a GGUF file",
                 f"starts with {content[:4]!r}", "download it again", code=1)
    assert not (tmp_path / "cache").exists(), "nothing de-quantised, nothing cached"


def test_gguf_cache_is_keyed_by_contents_not_name_and_size(tmp_path, monkeypatch):
    """A file of the same name and size as one already de-quantised, with other bytes, is not served the cached
    weights: it is de-quantised itself (here: the attempt is what the test sees)."""
    import common.gguf as gguf
    monkeypatch.setenv("GGUF_CACHE", str(tmp_path / "cache"))
    first, second = tmp_path / "a" / "m.gguf", tmp_path / "b" / "m.gguf"
    for path, fill in ((first, b"\1"), (second, b"\2")):
        path.parent.mkdir()
        path.write_bytes(b"GGUF" + fill * 1000)
    cached = tmp_path / "cache" / f"m-{gguf.file_sha256(first)[:16]}"
    cached.mkdir(parents=True)
    (cached / "config.json").write_text("{}")  # as a finished de-quantisation of `first` leaves it
    assert gguf.dequantized_dir(first) == cached

    class Dequantising:
        @staticmethod
        def from_pretrained(*args, **kwargs):
            raise RuntimeError("de-quantising")
    monkeypatch.setattr(gguf, "AutoModelForCausalLM", Dequantising)
    with pytest.raises(RuntimeError, match="de-quantising"):
        gguf.dequantized_dir(second)


# ------------------------------------------------------------------------------------------------ full disk


def full_disk_after(nbytes: int):
    """A safetensors writer that writes `nbytes` of the file and then fails as safetensors' Rust writer does on a
    full disk (a SafetensorError whose text carries the OS error, not an OSError)."""
    from safetensors import SafetensorError

    def save_file(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"\0" * nbytes)
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
    return save_file


@pytest.mark.parametrize("stage_name,out,overrides", [
    ("sft", "sft_model", []),
    ("rm", "reward_model", []),
    ("rl", "policy", ["rl.steps=1", "rl.save_every=0", "rl.eval_every=0"]),
])
def test_full_disk_saving_a_model_replaces_nothing(stage_name, out, overrides, good_model, tmp_path, capsys,
                                                   monkeypatch, stand_ins):
    import transformers.modeling_utils
    run = tmp_path / "run"
    for name in ("sft_model", "reward_model", "policy"):  # earlier results, real directories: to keep
        shutil.copytree(stand_ins / name if name != "policy" else good_model, run / name)
    before = snapshot(run)
    monkeypatch.setattr(transformers.modeling_utils, "safe_save_file", full_disk_after(4096))
    expect_error(capsys, stage(run, stage_name, *overrides),
                 f"no space left on device writing {run / out}; free space and rerun: nothing was replaced", code=1)
    assert unchanged(before, snapshot(run))
    assert not [p for p in run.iterdir() if ".tmp" in p.name], "no temporary directory is left"


@pytest.mark.parametrize("name", ["eval.json", "report.md", "data_rm.json", "rl_metrics.json"])
def test_full_disk_replacing_a_file_keeps_the_old_one(name, tmp_path, monkeypatch):
    from common import files
    path = tmp_path / name
    path.write_text("old")
    real_write = Path.write_text

    def half_then_full(self, text, *args, **kwargs):
        real_write(self, text[: len(text) // 2], *args, **kwargs)
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(Path, "write_text", half_then_full)
    with pytest.raises(files.DiskFullError, match=f"no space left on device writing {path}; free space and rerun: "
                                                  f"nothing was replaced"):
        files.write_text_atomic(path, "new contents " * 100)
    monkeypatch.undo()
    assert path.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == [name]
