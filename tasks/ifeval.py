"""The real-model task: simple requests carrying verifiable instructions, judged by IFEval's own verifiers.

Every prompt is a base request ("Describe a rainy afternoon.") followed by one instruction whose text and
checker come from IFEval's instruction registry as packaged by `if-verifiable` (Apache-2.0): the registry class
writes the instruction (`build_description`) and checks an answer (`check_following`); strict and loose
accuracy are the library's `evaluate_instructions` (IFEval's definitions: strict checks the answer as written,
loose also accepts it with the first and/or last line removed or with `*` removed). Nothing here re-implements a
check. The instruction types used are those whose checkers run offline: none that needs NLTK's punkt data
(number_sentences, capital_word_frequency), the language detector only for the two English-case checks
(langdetect ships its profiles; it is seeded, as IFEval's own evaluation leaves it unseeded).

The task's files live in one directory (`ifeval.dir`, '' = <run_dir>/data), written by `--stage pairs`
(stages/pairs.py samples the SFT policy; `IFEvalTask.write_pairs` labels and writes): `prompts.jsonl` (every prompt
with its instruction ids and arguments: the verifier table, keyed by prompt text), `average_rating_split.jsonl`
(preference pairs in the HelpSteer2_binarized schema) and `task.json` (the settings it was built with and its
counts; written last). Out-of-distribution = the held-out instruction types (`ifeval.heldout_instructions`): no
training prompt carries one (tasks/base.py sends their prompts to the `ood` split).
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import json
import os
import random
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from common.config import Config, to_dict
from common.config_data import IFEVAL_OFFLINE_TYPES as OFFLINE_TYPES  # noqa: F401 (the table config.py validates)
from common.errors import PathNotFound, UserError
from tasks.base import RL_STAGES, GoldFn, Messages, RewardFn, completion_text, last_user_text
from tasks.preference import PreferenceTask, parse_prompt

PROMPTS_FILE = "prompts.jsonl"
PAIRS_FILE = "average_rating_split.jsonl"  # data.split's default name, so the normal data path reads it
TASK_FILE = "task.json"  # written last: its presence marks a complete task directory

# The packages the verifiers import (all Apache-2.0 on PyPI, installed with --no-deps by `make real-task`):
# if-verifiable (the registry), langdetect (english_capital / english_lowercase), nltk (imported by the
# registry's utilities; no NLTK data is used), immutabledict (imported by them too).
PACKAGES = {"if_verifiable": "if-verifiable==0.1.2", "langdetect": "langdetect==1.0.9", "nltk": "nltk",
            "immutabledict": "immutabledict"}

# The instruction types whose checkers need no downloaded data are common/config.py's IFEVAL_OFFLINE_TYPES (what
# ifeval.instructions may name). The arguments we pass where the library's random defaults do not fit answers of
# ~100 tokens (number_words defaults to 100..500 words; a prompt that is impossible or always satisfied gives no
# preference signal); the other types' arguments are drawn by the library.
ARGUMENTS = {
    "length_constraints:number_words": lambda rng: {"num_words": rng.choice((15, 20, 30, 40, 50)),
                                                    "relation": "less than"},
}

# Simple base requests a 135M chat model answers in a few sentences (written for this task; the instruction
# text appended to each is the library's).
REQUESTS = (
    "Describe a rainy afternoon.", "Write a short note inviting a friend to dinner.", "Explain what a rainbow is.",
    "Give advice to someone starting to learn to cook.", "Describe your ideal weekend.",
    "Write a short story about a lost cat.", "Explain why people should drink water.", "Describe the ocean.",
    "Write a thank-you message to a teacher.", "Explain how to make a cup of tea.",
    "Tell me about the moon.", "Write a short poem about autumn.", "Describe a busy city street.",
    "Give three tips for better sleep.", "Explain what a computer does.", "Write a product review of a pair of shoes.",
    "Describe a walk in the forest.", "Explain why exercise is healthy.", "Write a birthday message for a sister.",
    "Tell me about elephants.", "Describe a good breakfast.", "Explain how plants grow.",
    "Write a short letter to a neighbour about a noisy party.", "Describe winter in the mountains.",
    "Give advice on saving money.", "Explain what the internet is.", "Write a short speech for a school event.",
    "Describe a visit to a museum.", "Tell me about bees.", "Explain how to plant a tree.",
    "Write an email asking for a day off.", "Describe a summer holiday at the beach.",
    "Explain why reading books is useful.", "Write a short story about a brave knight.",
    "Describe your favourite meal.", "Tell me about the sun.", "Give tips for a job interview.",
    "Explain how a bicycle works.", "Write a welcome message for new club members.", "Describe a thunderstorm.",
    "Explain what friendship means.", "Write a short advertisement for a bakery.", "Describe a quiet library.",
    "Tell me about penguins.", "Give advice for a first day at a new school.", "Explain how rain forms.",
    "Write a short review of a film you like.", "Describe a train journey.",
)


@dataclass(frozen=True)
class TaskPrompt:
    """One prompt of the task: the user message and the verifiable instructions it carries."""
    prompt: str
    instruction_id_list: tuple[str, ...]
    kwargs: tuple[dict, ...]

    @property
    def messages(self) -> Messages:
        return ({"role": "user", "content": self.prompt},)

    def as_row(self) -> dict:
        return {"prompt": self.prompt, "instruction_id_list": list(self.instruction_id_list),
                "kwargs": [dict(k) for k in self.kwargs]}


def missing_packages() -> list[str]:
    """The pip requirements of the verifiers that are not installed (empty when the task can run)."""
    return [req for module, req in PACKAGES.items() if importlib.util.find_spec(module) is None]


def require_packages() -> None:
    missing = missing_packages()
    if missing:
        raise UserError(f"data.source=ifeval needs the IFEval verifiers: `make real-task` (or pip install --no-deps "
                        f"{' '.join(missing)})")


def _registry() -> dict:
    require_packages()
    import langdetect
    from if_verifiable.ifeval.instructions_registry import INSTRUCTION_DICT
    # langdetect samples internally; seeded, an answer gets the same verdict every time it is checked
    langdetect.DetectorFactory.seed = 0
    return INSTRUCTION_DICT


@contextlib.contextmanager
def _seeded_global_random(seed: int):
    """The registry draws default arguments from the global `random` module: seed it for one call and put the
    caller's state back, so composing the task is reproducible and changes no one else's random stream."""
    state = random.getstate()
    random.seed(seed)
    try:
        yield
    finally:
        random.setstate(state)


def instruction(instruction_id: str, seed: int, kwargs: dict | None = None) -> tuple[str, dict]:
    """(text, arguments) of one instruction, written by its registry class; `kwargs` None = drawn (seeded)."""
    checker = _registry()[instruction_id](instruction_id)
    with _seeded_global_random(seed):
        text = checker.build_description(**(kwargs or {}))
    return text, dict(checker.get_instruction_args() or {})


def compose_prompts(instruction_ids: tuple[str, ...], num_prompts: int, seed: int) -> list[TaskPrompt]:
    """`num_prompts` distinct prompts: a base request and one instruction of `instruction_ids`, chosen round-robin
    over a seeded shuffle so that every type is asked about equally often. Deterministic for a seed."""
    rng = random.Random(seed)
    out, seen, attempts = [], set(), 0
    while len(out) < num_prompts:
        attempts += 1
        if attempts > 20 * num_prompts:
            raise UserError(f"ifeval: cannot compose {num_prompts} distinct prompts from {len(REQUESTS)} requests "
                            f"and {len(instruction_ids)} instruction types; lower the number of prompts")
        iid = instruction_ids[len(out) % len(instruction_ids)]
        sampler = ARGUMENTS.get(iid)
        text, args = instruction(iid, rng.randrange(2**31), sampler(rng) if callable(sampler) else None)
        prompt = f"{rng.choice(REQUESTS)} {text}".strip()  # stripped, as the data path reads a prompt
        if prompt not in seen:
            seen.add(prompt)
            out.append(TaskPrompt(prompt, (iid,), (args,)))
    return out


def task_prompts(cfg_ifeval, seed: int) -> list[TaskPrompt]:
    """The training-type prompts, then the held-out-type prompts (ifeval.num_prompts / num_ood_prompts)."""
    train = compose_prompts(tuple(cfg_ifeval.instructions), cfg_ifeval.num_prompts, seed)
    ood = compose_prompts(tuple(cfg_ifeval.heldout_instructions), cfg_ifeval.num_ood_prompts, seed + 1) \
        if cfg_ifeval.heldout_instructions and cfg_ifeval.num_ood_prompts else []
    return train + ood


@dataclass(frozen=True)
class Verdict:
    """IFEval's four accuracies of one answer (if_verifiable's EvaluationScores): prompt-level = every
    instruction followed, instruction-level = the share followed; strict as written, loose after its variants."""
    prompt_strict: float
    prompt_loose: float
    instruction_strict: float
    instruction_loose: float

    @property
    def preference_score(self) -> float:
        """What pairs are ranked by (0..2): instruction-level strict + loose, so an answer that only passes once
        its first/last line or its `*` are removed ranks between a failure and a strict pass."""
        return self.instruction_strict + self.instruction_loose


def verify(task: TaskPrompt, response: str) -> Verdict:
    """The library's verdict on `response` to `task` (if_verifiable.common.evaluate_instructions)."""
    from if_verifiable.common import evaluate_instructions
    _, s = evaluate_instructions(response=response, instruction_id_list=list(task.instruction_id_list),
                                 kwargs_list=[dict(k) for k in task.kwargs], prompt=task.prompt,
                                 instruction_registry=_registry())
    return Verdict(s.binary_strict, s.binary_loose, s.partial_strict, s.partial_loose)


def preference_rows(tasks: list[TaskPrompt], answers: list[list[str]], finished: list[list[bool]] | None = None,
                    mode: str = "best_worst", lengths: str = "any") -> tuple[list[dict], dict]:
    """HelpSteer2_binarized rows from each prompt's sampled answers, ranked by the verifiers (preference score),
    ratings on HelpSteer2's 0..4 scale (2 x score). mode best_worst: the best (first of equals) against the worst,
    one row per prompt; all: every two answers with different scores (every pass x fail pair of the prompt).
    lengths same_finish (needs `finished`, per answer: ended with EOS): only answers that both ended or were both
    cut are paired, so that no pair rewards finishing in place of following the instruction. A prompt whose
    non-empty answers all score the same is a tie: no row, counted; one whose differing answers never share a
    finish state is counted as `unmatched`. Returns (rows, counts)."""
    rows, counts = [], {"prompts": len(tasks), "pairs": 0, "ties": 0, "no_answers": 0, "answers": 0,
                        "empty_answers": 0, "unmatched": 0, "prompts_with_pairs": 0}
    finished = finished or [[True] * len(texts) for texts in answers]
    for task, texts, ended in zip(tasks, answers, finished):
        counts["answers"] += len(texts)
        counts["empty_answers"] += sum(not t.strip() for t in texts)
        scored = [(verify(task, t.strip()).preference_score, t.strip(), e) for t, e in zip(texts, ended) if t.strip()]
        if len(scored) < 2:
            counts["no_answers"] += 1
            continue
        if len({s for s, _, _ in scored}) == 1:
            counts["ties"] += 1
            continue
        pairs = answer_pairs(scored, mode, lengths)
        counts["unmatched"] += not pairs
        counts["prompts_with_pairs"] += bool(pairs)
        user = {"role": "user", "content": task.prompt}
        rows += [{"prompt": task.prompt, "chosen": [user, {"role": "assistant", "content": best[1]}],
                  "rejected": [user, {"role": "assistant", "content": worst[1]}],
                  "chosen_rating": 2.0 * best[0], "rejected_rating": 2.0 * worst[0]} for best, worst in pairs]
    counts["pairs"] = len(rows)
    counts["tie_rate"] = counts["ties"] / max(1, counts["prompts"] - counts["no_answers"])
    return rows, counts


def answer_pairs(scored: list[tuple[float, str, bool]], mode: str, lengths: str) -> list[tuple]:
    """(chosen, rejected) among one prompt's (score, text, finished) answers; see preference_rows."""
    if lengths == "same_finish":
        groups = [[a for a in scored if a[2] == state] for state in (True, False)]
        return [p for g in groups if len({a[0] for a in g}) > 1 for p in answer_pairs(g, mode, "any")]
    if mode == "best_worst":
        return [(max(scored, key=lambda a: a[0]), min(scored, key=lambda a: a[0]))]
    return [(a, b) for a in scored for b in scored if a[0] > b[0]]


def write_prompts(path: Path, prompts: list[TaskPrompt]) -> None:
    path.write_text("".join(json.dumps(p.as_row()) + "\n" for p in prompts))


def read_prompts(path: str | Path) -> list[TaskPrompt]:
    path = Path(path)
    if not path.is_file():
        raise PathNotFound(f"no task prompts at {path}: run `launch.py --stage pairs` (data.source=ifeval) first")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [TaskPrompt(r["prompt"], tuple(r["instruction_id_list"]), tuple(r["kwargs"])) for r in rows]


@functools.lru_cache(maxsize=8)
def _table(path: str, mtime_ns: int) -> dict[str, TaskPrompt]:  # noqa: ARG001 - mtime keys the cache
    return {p.prompt: p for p in read_prompts(path)}


def verifier_table(task_dir: str | Path) -> dict[str, TaskPrompt]:
    """prompt text -> its TaskPrompt, read from <task_dir>/prompts.jsonl (cached while the file is unchanged)."""
    path = Path(task_dir) / PROMPTS_FILE
    if not path.is_file():
        read_prompts(path)  # raises PathNotFound naming the stage to run
    return _table(str(path), path.stat().st_mtime_ns)


class IFEvalJudge:
    """The gold judge of the task, keyed by prompt text (the last user message): per answer, prompt-level
    strict accuracy as `gold` (IFEval's headline figure) and loose as `gold_loose`."""

    def __init__(self, task_dir: str | Path) -> None:
        self.table = verifier_table(task_dir)

    def __call__(self, prompt_text: str, response: str) -> dict[str, float]:
        task = self.table.get(prompt_text)
        if task is None:
            raise KeyError(f"prompt not in the task's verifier table ({PROMPTS_FILE}): {prompt_text[:80]!r}")
        v = verify(task, response)
        return {"gold": v.prompt_strict, "gold_loose": v.prompt_loose}


def ood_kind(prompt_text: str, task_dir: str | Path, heldout: tuple[str, ...]) -> str:
    """'' for a prompt whose instructions are all training types, else its held-out instruction type(s)."""
    task = verifier_table(task_dir).get(prompt_text)
    if task is None:
        return ""
    return ",".join(i for i in task.instruction_id_list if i in heldout)


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class IFEvalTask(PreferenceTask):
    """The real-model task (data.source=ifeval): its prompts and pairs are built once by `--stage pairs` in
    `ifeval.dir` and read by every stage after; IFEval's verifiers are its gold judge and its reward functions;
    its held-out instruction types are the OOD pool."""

    name = "ifeval"
    heldout_text = ("ID: {n_id} held-out prompts with instruction types training also asks (new prompts). OOD: "
                    "{n_ood} prompts whose instruction type no training prompt carries (one column per held-out "
                    "type). Gold: IFEval's strict prompt-level accuracy (loose: gold_loose).")
    gold_name = "strict"

    def __init__(self, cfg: Config) -> None:
        super().__init__(cfg)
        self.dir = Path(cfg.ifeval.dir) if cfg.ifeval.dir else Path(cfg.run_dir) / "data"

    def stages(self) -> tuple[str, ...]:
        """pairs, rm, then best_of_n (the SFT policy's best of n by the reward model and by the verifiers: what RL on
        that reward model can hope for, measured before it trains), rl, eval."""
        return ("pairs", "rm", "best_of_n") + RL_STAGES[1:]

    def experiment_overrides(self, root: Path) -> list[str]:
        """The task is the same for every seed (seeded by data.split_seed): an experiment builds it once, in
        <root>/data, and every run reads it there; so is the SFT policy (the real model, no sft stage), whose eval
        answers every run then reads from <root>/data/sft_answers (eval.sft_answers) instead of sampling them again."""
        out = [] if self.cfg.ifeval.dir else [f"ifeval.dir={root / 'data'}"]
        return out + ([] if self.cfg.eval.sft_answers else [f"eval.sft_answers={root / 'data' / 'sft_answers'}"])

    def pairs_source(self) -> str:
        if not (self.dir / TASK_FILE).is_file():
            raise PathNotFound(f"no ifeval task at {self.dir} ({TASK_FILE} missing): run `launch.py --stage pairs` "
                               f"with this config first (--stage all does)")
        return str(self.dir)

    def row_schema(self) -> tuple[str, dict[str, str]]:
        return "helpsteer2", {}  # the task writes its own rows, in that schema, whatever data.format says

    def unpaired_prompts(self) -> list[Messages]:
        """Every prompt of the task, paired or not, in the task's order."""
        return [tuple(parse_prompt(t.prompt)[0]) for t in read_prompts(self.dir / PROMPTS_FILE)]

    def ood_kind(self, prompt_text: str) -> str:
        return ood_kind(prompt_text, self.dir, self.cfg.ifeval.heldout_instructions)

    def gold_judge(self) -> GoldFn | None:
        return IFEvalJudge(self.dir)

    def reward_functions(self) -> dict[str, RewardFn]:
        """IFEval's prompt-level strict and loose accuracy of each completion (1.0 = every instruction followed)."""
        def make(key: str) -> RewardFn:
            def reward(prompts: list, completions: list, **kwargs) -> list[float]:  # noqa: ARG001 - ids, columns
                judge = IFEvalJudge(self.dir)
                return [judge(last_user_text(p), completion_text(c))[key] for p, c in zip(prompts, completions)]
            return reward
        return {"ifeval_strict": make("gold"), "ifeval_loose": make("gold_loose")}

    # ----------------------------------------------------------------------------- building it (--stage pairs)
    def fingerprint(self) -> dict:
        """Every setting the task's files depend on; a task directory built with others is not this task."""
        cfg = self.cfg
        return {"ifeval": to_dict(cfg.ifeval) | {"dir": None}, "policy": cfg.model.policy,
                "split_seed": cfg.data.split_seed, "max_prompt_tokens": cfg.data.max_prompt_tokens,
                "overlong": cfg.data.overlong, "temperature": cfg.generator.temperature,
                "max_new_tokens": cfg.generator.max_new_tokens}

    def existing(self) -> dict | None:
        """The counts of a complete task built here with these settings; None when there is none; UserError when
        one was built with other settings (rebuilding would change every run that already read it)."""
        path = self.dir / TASK_FILE
        if not path.is_file():
            return None
        built = json.loads(path.read_text())
        if built.get("fingerprint") != json.loads(json.dumps(self.fingerprint())):
            raise UserError(f"{self.dir}: an ifeval task built with other settings is there ({path}); point "
                            f"ifeval.dir elsewhere, or remove that directory to rebuild it")
        return built["counts"]

    def require_packages(self) -> None:
        require_packages()

    def compose(self) -> list[TaskPrompt]:
        require_packages()
        return task_prompts(self.cfg.ifeval, self.cfg.data.split_seed)

    def write_pairs(self, prompts: list[TaskPrompt], answers: list[list[str]], finished: list[list[bool]],
                    extra: dict, started: float) -> dict:
        """Label each prompt's sampled answers with the verifiers (`finished`: per answer, whether it ended with
        EOS), write the task's files (task.json last, each under a temporary name renamed into place) and return
        the counts (`started`: the stage's perf_counter at its start, for its seconds)."""
        rows, counts = preference_rows(prompts, answers, finished, self.cfg.ifeval.pairs,
                                       self.cfg.ifeval.pair_lengths)
        self.dir.mkdir(parents=True, exist_ok=True)
        write_prompts(self.dir / PROMPTS_FILE, prompts)
        write_atomic(self.dir / PAIRS_FILE, "".join(json.dumps(r) + "\n" for r in rows))
        counts.update(extra, seconds=round(time.perf_counter() - started, 1),
                      sft_pass_rates=pass_rates(prompts, answers))
        counts["truncation_rate"] = counts.get("truncated_answers", 0) / max(1, counts["answers"])
        write_atomic(self.dir / TASK_FILE, json.dumps({"fingerprint": self.fingerprint(), "counts": counts},
                                                      indent=2))
        return counts

    def remove_files(self) -> None:
        for name in (TASK_FILE, PAIRS_FILE, PROMPTS_FILE):
            (self.dir / name).unlink(missing_ok=True)


def pass_rates(prompts: list[TaskPrompt], answers: list[list[str]]) -> dict:
    """Per instruction type, the answers' strict and loose prompt-level accuracy (what the pairs can teach)."""
    acc: dict[str, list] = defaultdict(lambda: [0.0, 0.0, 0])
    for task, texts in zip(prompts, answers):
        for text in texts:
            v = verify(task, text)
            a = acc[",".join(task.instruction_id_list)]
            a[0], a[1], a[2] = a[0] + v.prompt_strict, a[1] + v.prompt_loose, a[2] + 1
    return {t: {"strict": s / n, "loose": lo / n, "answers": n} for t, (s, lo, n) in sorted(acc.items())}
