"""common/paths.py: a run's paths, resolved once; a model path that is missing names the key that points to it."""

import pytest

from common import paths as paths_module
from common.config import load_config
from common.errors import ModelPathError
from common.paths import RunPaths


def test_paths_of_a_sandbox_run(tmp_path):
    paths = RunPaths(load_config(None, [f"run_dir={tmp_path}"]))
    assert paths.checkpoints == tmp_path / "checkpoints" and paths.trained_policy == tmp_path / "policy"
    assert paths.file("rl_metrics.json") == tmp_path / "rl_metrics.json"
    with pytest.raises(ModelPathError, match=r"model.policy=tiny needs the sandbox SFT model at .*sft_model: run "
                                             r"--stage sft first"):
        _ = paths.sft_policy
    with pytest.raises(ModelPathError, match="no reward model at .*reward_model: run --stage rm first, set "
                                             "reward.path .* reward.model_weight=0"):
        _ = paths.reward_model


def test_models_are_resolved_once_and_reward_init_defaults_to_the_sft_policy(tmp_path, monkeypatch, stand_ins):
    calls = []
    real = paths_module.resolve_model_path
    monkeypatch.setattr(paths_module, "resolve_model_path", lambda name: calls.append(name) or real(name))
    sft = str(stand_ins / "sft_model")
    paths = RunPaths(load_config(None, [f"run_dir={tmp_path}", f"model.policy={sft}",
                                        f"reward.path={stand_ins / 'reward_model'}"]))
    assert paths.sft_policy == sft and paths.reward_init == sft and paths.sft_policy == sft
    assert calls == [sft], "the SFT policy's path is resolved once per run"
    assert paths.reward_model == str(stand_ins / "reward_model")
    with pytest.raises(ModelPathError, match=r"not found: .*missing \(reward.init\)"):
        _ = RunPaths(load_config(None, [f"run_dir={tmp_path}", f"reward.init={tmp_path / 'missing'}"])).reward_init
