"""common/config.py, config loading: YAML + overrides, validation that names the key and what is allowed."""

from pathlib import Path

import pytest
import torch
import yaml

import launch
from common.config import (
    Config,
    ConfigError,
    config_hash,
    flatten,
    load_config,
    offpolicy_correction,
    save_config,
    to_dict,
)
from common.models import resolve_device

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["tiny.yaml", "smollm2_helpsteer2.yaml"])
def test_shipped_configs_load(name):
    cfg = load_config(ROOT / "configs" / name)
    assert isinstance(cfg, Config)


def test_overrides_apply_with_types():
    cfg = load_config(ROOT / "configs/tiny.yaml", ["rl.kl_coef=0.2", "rl.steps=7", "reward.lr=1e-5",
                                                   "model.lora.enabled=true",
                                                   "model.lora.target_modules=q_proj,v_proj"])
    assert cfg.rl.kl_coef == 0.2 and cfg.rl.steps == 7
    assert cfg.reward.lr == 1e-5  # YAML 1.1 reads 1e-5 as a string; the loader accepts it for a float
    assert cfg.model.lora.enabled is True
    assert cfg.model.lora.target_modules == ("q_proj", "v_proj")


@pytest.mark.parametrize("override, message", [
    ("rl.kl_coeff=0.1", "unknown key 'rl.kl_coeff' (did you mean 'rl.kl_coef'?)"),
    ("rl.steps=ten", "rl.steps: expected an integer, got 'ten'"),
    ("rl.steps=1.5", "rl.steps: expected an integer"),
    ("rl.kl_coef=-1", "rl.kl_coef: must be >= 0.0, got -1.0"),
    ("rl.baseline=median", "rl.baseline: 'median' is not allowed; choose one of 'moving_average', 'ema', 'none', "
                           "'batch_mean', 'rloo'"),
    ("rl.baseline=rloo", "rl.baseline=rloo needs rl.rloo_k >= 2"),
    ("rl.rloo_k=4", "rl.rloo_k=4 samples each prompt 4 times, which only rl.baseline=rloo uses"),
    ("rl.tis_cap=0.5", "rl.tis_cap: must be >= 1.0"),
    ("generator.top_p=1.5", "generator.top_p: must be <= 1.0"),
    ("model.lora.enabled=yes please", "model.lora.enabled: expected true or false"),
    ("nonsense=1", "unknown key 'nonsense'"),
    ("rl=3", "rl: expected a mapping"),
    ("no_equals_sign", "is not of the form key=value"),
])
def test_bad_values_fail_with_the_key_named(override, message):
    with pytest.raises(ConfigError) as err:
        load_config(ROOT / "configs/tiny.yaml", [override])
    assert message in str(err.value)


def test_top_p_below_one_is_refused_at_load():
    with pytest.raises(ConfigError, match=r"^generator.top_p=0.9 is not supported: .*set generator.top_p=1.0"):
        load_config(None, ["generator.top_p=0.9"])


def test_bad_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("rl: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("rl:\n  stepz: 3\n")
    with pytest.raises(ConfigError, match="unknown key 'rl.stepz'"):
        load_config(unknown)


def test_saved_config_round_trips(tmp_path):
    cfg = load_config(ROOT / "configs/tiny.yaml", ["seed=3", "rl.kl_coef=0.01"])
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == cfg
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["rl"]["kl_coef"] == 0.01


def test_launch_exits_nonzero_on_bad_config(capsys):
    assert launch.main(["--config", str(ROOT / "configs/tiny.yaml"), "rl.kl_coef=abc"]) == 2
    assert "rl.kl_coef: expected a number" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["smollm2_helpsteer2", "smollm2_helpsteer2_distributional", "smollm2_helpsteer2_lora",
                                  "smollm2_helpsteer2_distributional_lora"])
def test_real_configs_ask_for_the_gpu(name):
    assert load_config(ROOT / "configs" / f"{name}.yaml").device == "cuda"


@pytest.mark.parametrize("name", ["smollm2_helpsteer2", "smollm2_helpsteer2_distributional"])
def test_lora_configs_are_the_real_configs_with_lora_adapters_and_their_lr(name):
    """A *_lora.yaml changes only model.lora, rl.lr and run_dir of its full fine-tuning config (the notebook's
    USE_LORA compares like with like), the same way for both levels."""
    full, lora = (flatten(to_dict(load_config(ROOT / "configs" / f"{n}.yaml"))) for n in (name, f"{name}_lora"))
    changed = {k for k in full if full[k] != lora[k]}
    assert changed == {"run_dir", "rl.lr", "model.lora.enabled", "model.lora.target_modules"}
    assert lora["model.lora.enabled"] and lora["rl.lr"] == pytest.approx(10 * full["rl.lr"])
    level1 = flatten(to_dict(load_config(ROOT / "configs" / "smollm2_helpsteer2_lora.yaml")))
    assert {k: v for k, v in lora.items() if k.startswith("model.lora")} == {
        k: v for k, v in level1.items() if k.startswith("model.lora")}


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised where torch sees no GPU")
def test_device_cuda_without_a_gpu_is_a_config_error_naming_the_key():
    with pytest.raises(ConfigError, match=r"^device: cuda, but torch .* sees no GPU: .*device=cpu"):
        resolve_device("cuda")


def test_config_hash_changes_with_any_value_and_only_then():
    base = load_config()
    assert config_hash(base) == config_hash(load_config())
    assert config_hash(load_config(overrides=["rl.lr=0.5"])) != config_hash(base)
    assert config_hash(load_config(overrides=[f"rl.lr={base.rl.lr}"])) == config_hash(base)
    assert len(config_hash(base)) == 16


def test_seed_bounds_are_numpys():
    assert load_config(None, ["seed=4294967295"]).seed == 2**32 - 1
    for bad, message in (("-1", "seed: must be >= 0, got -1"), ("4294967296", "seed: must be <= 4294967295")):
        with pytest.raises(ConfigError, match=message):
            load_config(None, [f"seed={bad}"])


def test_yaml_keeps_safe_load_semantics_without_repeated_keys(tmp_path):
    """The loader refuses a repeated key, and reads everything else as yaml.safe_load does (merge keys too)."""
    text = "base: &b {steps: 3, lr: 0.1}\nother: {<<: *b, steps: 5}\nlist: [1, 2]\nwhen: 1e-5\n"
    from common.config_schema import UniqueKeyLoader
    assert yaml.load(text, Loader=UniqueKeyLoader) == yaml.safe_load(text)  # noqa: S506
    path = tmp_path / "c.yaml"
    path.write_text("rl:\n  steps: 3\nrun_dir: x\nrl_extra: 1\nrun_dir: y\n")
    with pytest.raises(ConfigError, match=r"key 'run_dir' is given twice in one mapping \(line 3 and line 5\)"):
        load_config(path)


def test_empty_run_dir_and_a_prompt_budget_without_room_are_refused():
    with pytest.raises(ConfigError, match=r"^run_dir: empty"):
        load_config(ROOT / "configs/tiny.yaml", ["run_dir=  "])
    with pytest.raises(ConfigError, match=r"^data.max_prompt_tokens=96 leaves no room .* data.max_length=96"):
        load_config(ROOT / "configs/tiny.yaml", ["data.max_prompt_tokens=96"])
    assert load_config(ROOT / "configs/tiny.yaml", ["data.max_prompt_tokens=95"]).data.max_prompt_tokens == 95


def test_rloo_batch_size_counts_sequences_and_offpolicy_correction_auto_follows_staleness():
    """rl.batch_size is sequences (prompts x rl.rloo_k): a k that does not divide it is refused, naming both keys.
    rl.offpolicy_correction=auto is tis only in Ray mode with cluster.max_staleness >= 1."""
    cfg = load_config(ROOT / "configs/tiny.yaml", ["rl.baseline=rloo", "rl.rloo_k=4", "rl.batch_size=32"])
    assert (cfg.rl.batch_size, cfg.rl.rloo_k) == (32, 4)
    with pytest.raises(ConfigError, match=r"^rl.batch_size=30 \(sequences\) is not a multiple of rl.rloo_k=4"):
        load_config(ROOT / "configs/tiny.yaml", ["rl.baseline=rloo", "rl.rloo_k=4", "rl.batch_size=30"])
    stale = load_config(ROOT / "configs/tiny.yaml", ["cluster.max_staleness=1"])
    assert [offpolicy_correction(c, m) for c in (cfg, stale) for m in ("local", "ray")] == ["none", "none", "none",
                                                                                           "tis"]
    forced = load_config(ROOT / "configs/tiny.yaml", ["cluster.max_staleness=1", "rl.offpolicy_correction=none"])
    assert offpolicy_correction(forced, "ray") == "none"
