"""actors/reward_functions.py and their place in the scorer: loading FILE.py:NAME, module:NAME and a task's built-in,
TRL's calling convention, the weighted sum with the reward model, every expected error in one line, the stage list
without a reward model, the Ray scorer actor's build path, and one tiny run where a function is the whole reward."""

import json
import math
import re

import pytest
import torch

import launch
from actors.reward_functions import (
    RewardFunction,
    RewardFunctionError,
    RewardFunctions,
    describe,
    load,
    resolve,
    with_absolute_files,
)
from actors.scorer import Scorer
from common.config import ConfigError, RewardConfig, load_config
from common.config_data import DataConfig
from common.errors import UserError
from common.models import load_causal_lm
from experiments.runner import parse_grid, plan
from helpers import CONFIG, CPU, FAST, ROOT, expect_error, make_generator, prompt_pool, stage
from tasks.registry import load_task

REWARDS = '''\
CALLS = []
NOT_CALLABLE = 3


def length(prompts, completions, completion_ids, **kwargs):
    CALLS.append(dict(prompts=prompts, completions=completions, completion_ids=completion_ids, **kwargs))
    return [float(len(ids)) for ids in completion_ids]


def maybe(completions, **kwargs):
    return [None if c[0]["content"] == "skip" else 1.0 for c in completions]


def boom(completions, **kwargs):
    raise ValueError("cannot parse the answer")


def short(completions, **kwargs):
    return [1.0]


def infinite(completions, **kwargs):
    return [0.0] + [float("inf")] * (len(completions) - 1)


def words(completions, **kwargs):
    return ["good" for _ in completions]


async def later(completions, **kwargs):
    return [0.25 for _ in completions]
'''
BOOM_LINE = REWARDS.splitlines().index('    raise ValueError("cannot parse the answer")') + 1
PROMPTS = [({"role": "user", "content": "List some fruits."},), ({"role": "user", "content": "Name a colour."},)]


@pytest.fixture
def rewards_file(tmp_path, monkeypatch):
    """my_rewards.py in the working directory (a relative FILE.py is read from there)."""
    (tmp_path / "my_rewards.py").write_text(REWARDS)
    monkeypatch.chdir(tmp_path)
    return tmp_path / "my_rewards.py"


def functions(*specs_weights, prompts=PROMPTS, columns=None) -> RewardFunctions:
    loaded = [RewardFunction(s, *resolve(s, {}), w) for s, w in specs_weights]
    return RewardFunctions(loaded, prompts, columns or [{} for _ in prompts])


def calls() -> list[dict]:
    """The keyword arguments of each call of my_rewards.py's `length` (the loader runs a file once per process)."""
    return resolve("my_rewards.py:length", {})[1].__globals__["CALLS"]


# ------------------------------------------------------------------------------------------------------- loading


def test_file_module_and_builtin_names_resolve(rewards_file, tmp_path, monkeypatch):
    name, fn = resolve("my_rewards.py:length", {})
    assert name == "length" and fn(completion_ids=[[1, 2], [3]], prompts=[], completions=[]) == [2.0, 1.0]
    assert resolve(f"{rewards_file}:maybe", {})[0] == "maybe", "an absolute path too"
    (tmp_path / "pkg_rewards.py").write_text("def score(completions, **kwargs):\n    return [0.5] * len(completions)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    name, fn = resolve("pkg_rewards:score", {})
    assert name == "score" and fn(completions=[1, 2]) == [0.5, 0.5]
    task = load_task(load_config(None, [f"run_dir={tmp_path}"]))
    (builtin,) = load(RewardConfig(functions=("sandbox_gold",), function_weights=(2.0,)), task)
    assert (builtin.name, builtin.weight, builtin.spec) == ("sandbox_gold", 2.0, "sandbox_gold")
    assert builtin.fn(prompts=[PROMPTS[0]], completions=[[{"role": "assistant", "content": "apple, pear."}]],
                      completion_ids=[[1]]) == [2.0]


@pytest.mark.parametrize("spec, needles", [
    ("missing.py:f", ["no file", "missing.py", "a relative FILE.py is read from the working directory"]),
    ("my_rewards.py:nope", ["my_rewards.py has no 'nope'", "length"]),
    ("my_rewards.py:NOT_CALLABLE", ["NOT_CALLABLE in my_rewards.py is a int, not a function"]),
    ("bad_import.py:f", ["importing bad_import.py raised ModuleNotFoundError", "not_a_module_xyz",
                         "bad_import.py line 2"]),
    ("no_such_module_xyz:f", ["no module 'no_such_module_xyz'"]),
    ("sandbox_goldd", ["not a built-in reward function of this task", "offers: sandbox_gold"]),
])
def test_a_name_that_does_not_resolve_is_one_config_error_naming_it(spec, needles, rewards_file):
    (rewards_file.parent / "bad_import.py").write_text("X = 1\nimport not_a_module_xyz\n")
    task = load_task(load_config(None, [f"run_dir={rewards_file.parent}"]))
    with pytest.raises(ConfigError) as e:
        load(RewardConfig(functions=(spec,)), task)
    assert str(e.value).startswith(f"reward.functions: {spec}: ")
    for needle in needles:
        assert needle in str(e.value), (needle, str(e.value))


def test_config_checks_weights_syntax_and_that_some_reward_remains():
    with pytest.raises(ConfigError, match=r"reward.function_weights: 1 weight\(s\) for 2 reward.functions"):
        load_config(None, ["reward.functions=a.py:f,b.py:g", "reward.function_weights=[1.0]"])
    with pytest.raises(ConfigError, match="reward.model_weight=0 leaves no reward"):
        load_config(None, ["reward.model_weight=0"])
    with pytest.raises(ConfigError, match=r"reward.functions\[1\]: 'a.py:score-2' is not FILE.py:NAME"):
        load_config(None, ["reward.functions=sandbox_gold,a.py:score-2"])
    with pytest.raises(ConfigError, match="rl.reward_reduction=risk_averse .* reward.model_weight=0"):
        load_config(None, ["reward.head=distributional", "rl.reward_reduction=risk_averse", "reward.model_weight=0",
                           "reward.functions=sandbox_gold"])
    cfg = load_config(None, ["reward.functions=a.py:f,sandbox_gold", "reward.function_weights=0.5,-1"])
    assert describe(cfg.reward)["text"] == "1 x reward model + 0.5 x a.py:f + -1 x sandbox_gold"
    assert describe(load_config(None).reward)["text"] == "reward model"
    alone = load_config(None, ["reward.functions=sandbox_gold", "reward.model_weight=0"]).reward
    assert describe(alone) == {"reward_model": 0.0, "functions": {"sandbox_gold": 1.0},
                               "text": "1 x sandbox_gold (no reward model)"}


def test_launch_stops_at_load_on_a_name_that_does_not_resolve(tmp_path, capsys):
    expect_error(capsys, stage(tmp_path / "run", "rl", "reward.functions=missing.py:score"),
                 "reward.functions: missing.py:score: no file", code=2)
    assert not (tmp_path / "run").exists(), "nothing is written"


def test_relative_files_are_made_absolute_for_the_ray_scorer_actors(rewards_file):
    cfg = load_config(None, ["reward.functions=my_rewards.py:length,pkg:score,sandbox_gold"])
    assert with_absolute_files(cfg).reward.functions == (f"{rewards_file}:length", "pkg:score", "sandbox_gold")


# ------------------------------------------------------------------------------------------------------- calling


def test_functions_get_trls_keyword_arguments_in_batch_order(rewards_file):
    fns = functions(("my_rewards.py:length", 1.0), columns=[{"solution": "apple"}, {"solution": "red"}])
    scores = fns([1, 0, 1], ["red", "apple, pear", ""], [[5, 6, 2], [7], []])
    assert scores["length"].tolist() == [3.0, 1.0, 0.0]
    (call,) = calls()
    assert call["prompts"] == [[dict(PROMPTS[1][0])], [dict(PROMPTS[0][0])], [dict(PROMPTS[1][0])]]
    assert call["completions"] == [[{"role": "assistant", "content": t}] for t in ("red", "apple, pear", "")]
    assert call["completion_ids"] == [[5, 6, 2], [7], []] and call["solution"] == ["red", "apple", "red"]
    assert set(call) == {"prompts", "completions", "completion_ids", "solution"}
    assert functions(("my_rewards.py:later", 1.0))([0], ["x"], [[1]])["later"].tolist() == [0.25], "awaited"


def test_reward_model_and_functions_are_summed_by_their_weights(rewards_file):
    """reward = model_weight * r_RM + sum_f w_f * r_f, a None adding 0 (TRL's nansum): by hand."""
    fns = functions(("my_rewards.py:length", 0.5), ("my_rewards.py:maybe", -2.0))
    scorer = Scorer(None, None, PROMPTS, DataConfig(), CPU, functions=fns, model_weight=2.0)
    rm = torch.tensor([1.0, 2.0])
    scores = {"length": torch.tensor([3.0, 1.0]), "maybe": torch.tensor([1.0, math.nan])}
    assert scorer.combine(rm, scores).tolist() == [2 * 1.0 + 0.5 * 3 - 2 * 1.0, 2 * 2.0 + 0.5 * 1 + 0.0]
    assert scorer.combine(None, scores).tolist() == [0.5 * 3 - 2 * 1.0, 0.5 * 1]
    with pytest.warns(UserWarning, match="every function returned None for some completions"):
        only_maybe = functions(("my_rewards.py:maybe", 1.0))
        Scorer(None, None, PROMPTS, DataConfig(), CPU, functions=only_maybe).combine(
            None, {"maybe": torch.tensor([1.0, math.nan])})


def test_scorer_with_a_reward_model_and_functions(rewards_file, reward_model, policy, tokenizer):
    """The scorer's batch path: the functions get the unpadded sampled ids, the reward model's own score is logged
    as rm_reward beside each function's, and rl.missing_eos_penalty comes off the sum."""
    messages, _ = prompt_pool(tokenizer, 8)
    batch = make_generator(policy, tokenizer, n=8, max_new_tokens=4).generate(list(range(8)), seed=0)
    finished = batch.finished(tokenizer.eos_token_id)
    fns = functions(("my_rewards.py:length", 0.5), prompts=messages)
    scorer = Scorer(reward_model, tokenizer, messages, DataConfig(max_length=96, max_prompt_tokens=64), CPU,
                    missing_eos_penalty=0.25, functions=fns, model_weight=2.0)
    scored = scorer.score(batch)
    rm = scorer.head_logits(batch.prompt_index.tolist(), batch.response_texts, finished.tolist())[:, 0]
    lengths = batch.response_mask.sum(-1).float()
    assert torch.allclose(scored.rewards, 2.0 * rm + 0.5 * lengths - 0.25 * (~finished).float(), atol=1e-6)
    assert torch.equal(scored.extras["reward_fn/length"], lengths) and torch.allclose(scored.extras["rm_reward"], rm)
    ids = calls()[-1]["completion_ids"]
    assert ids == [row[:n].tolist() for row, n in zip(batch.response_ids, batch.response_mask.sum(-1))]


@pytest.mark.parametrize("name, needles", [
    ("boom", ["reward function my_rewards.py:boom (reward.functions) raised ValueError: cannot parse the answer",
              f"(my_rewards.py line {BOOM_LINE})"]),
    ("short", ["my_rewards.py:short", "returned 1 values for 2 completions"]),
    ("infinite", ["my_rewards.py:infinite", "returned inf at row 1 (prompt 'Name a colour.')"]),
    ("words", ["my_rewards.py:words", "returned 'good' at row 0 (prompt 'List some fruits.')"]),
])
def test_a_function_that_fails_is_one_line_naming_file_function_and_row(name, needles, rewards_file):
    with pytest.raises(RewardFunctionError) as e:
        functions((f"my_rewards.py:{name}", 1.0))([0, 1], ["a", "b"], [[1], [2]])
    assert isinstance(e.value, UserError) and "\n" not in str(e.value), "launch.py prints it as one error line"
    for needle in needles:
        assert needle in str(e.value), (needle, str(e.value))


def test_the_documented_example_file_scores_as_documented(tmp_path, monkeypatch):
    """docs/rewards.md's example file, loaded as reward.functions loads it, on hand-checked answers."""
    code = re.search(r"```python\n(.*?)```", (ROOT / "docs" / "rewards.md").read_text(), re.DOTALL).group(1)
    (tmp_path / "my_rewards.py").write_text(code)
    monkeypatch.chdir(tmp_path)
    kwargs = dict(prompts=[[dict(m) for m in p] for p in PROMPTS],
                  completions=[[{"role": "assistant", "content": t}] for t in ("apple, pear.", "red and blue")],
                  completion_ids=[[1, 2], [3] * 24])
    score = {n: resolve(f"my_rewards.py:{n}", {})[1](**kwargs) for n in ("comma_list", "short_answer",
                                                                          "mentions_fruit")}
    assert score == {"comma_list": [1.0, 0.0], "short_answer": [0.5 * (1 - 1 / 23), 0.0],
                     "mentions_fruit": [1.0, None]}


# ------------------------------------------------------------------------------------------------------ stages


def test_without_a_reward_model_no_stage_trains_one(tmp_path):
    """launch's and the experiment runner's stage lists both come from Task.planned_stages (a variant's own)."""
    base = [f"run_dir={tmp_path}", "reward.functions=sandbox_gold"]
    cfg = load_config(None, [*base, "reward.model_weight=0"])
    assert launch.stages_for("all", cfg) == ["sft", "rl", "eval"] and launch.stages_for("rm", cfg) == ["rm"]
    _, runs = plan(CONFIG, base, [0], parse_grid(["reward.model_weight=0,1"]), "all")
    assert [r.stages for r in runs] == [["sft", "rl", "eval"], ["sft", "rm", "rl", "eval"]]


def test_ray_scorer_actor_builds_its_scorer_without_a_reward_model(rewards_file, stand_ins, tokenizer):
    """The ScorerActor class (run in-process: the Ray wrapper is not needed to check its build path) loads the
    function itself and scores a shard with no reward model."""
    pytest.importorskip("ray")
    from cluster.ray_actors import RolloutItem, ScorerActor
    cfg = with_absolute_files(load_config(None, [f"run_dir={rewards_file.parent}", "reward.model_weight=0",
                                                 "reward.functions=my_rewards.py:length"]))
    messages, tokens = prompt_pool(tokenizer, 4)
    actor = ScorerActor(cfg, str(stand_ins / "sft_model"), None, messages, 0, tokens)
    assert actor.scorer.model is None
    policy = load_causal_lm(str(stand_ins / "sft_model"), CPU, torch.float32)
    batch = make_generator(policy, tokenizer, n=4, max_new_tokens=3).generate([0, 1, 2, 3], seed=0)

    class Queue:
        items = []

        def put(self, item, block, timeout):
            self.items.append(item)

    queue = Queue()
    assert actor.score_into(RolloutItem(5, 0, batch), queue, 1.0) == 5
    (item,) = queue.items
    assert torch.equal(item.batch.rewards, batch.response_mask.sum(-1).float())
    assert set(item.batch.extras) == {"reward_fn/length", "gold"}


# ------------------------------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_a_reward_function_alone_trains_without_a_reward_model(rewards_file, tmp_path):
    """`reward.functions=FILE.py:NAME reward.model_weight=0` on the sandbox: sft -> rl -> eval -> report; no rm stage,
    no reward_model/, the function's reward logged and evaluated, eval.json and the report say what the reward is."""
    run = tmp_path / "run"
    assert launch.main(["--config", CONFIG, f"run_dir={run}", *FAST, "rl.steps=2", "reward.model_weight=0",
                        "reward.functions=my_rewards.py:length"]) == 0
    assert not (run / "reward_model").exists() and not (run / "rm_metrics.json").exists()
    rl = json.loads((run / "rl_metrics.json").read_text())
    final = rl["final"]
    assert final["rollout/reward"] == pytest.approx(final["rollout/reward_fn/length"])
    assert "rollout/rm_reward" not in final
    assert rl["reward_components"]["text"] == "1 x my_rewards.py:length (no reward model)"
    assert "eval/reward" in final, "the held-out probe scores with the function too"
    ev = json.loads((run / "eval.json").read_text())
    assert ev["reward_components"] == {"reward_model": 0.0, "functions": {"my_rewards.py:length": 1.0},
                                       "text": "1 x my_rewards.py:length (no reward model)"}
    assert set(ev["comparisons"]) == {"reward", "reward_fn/length", "gold"}
    assert ev["per_prompt"]["trained"]["reward"] == ev["per_prompt"]["trained"]["reward_fn/length"]
    report = (run / "report" / "report.md").read_text()
    assert "Reward: 1 x my_rewards.py:length (no reward model)" in report
