"""The offline sandbox: a preference task with a known programmatic gold judge.

Prompts ask for words of a topic ("Hi, I am Ada. Name a few fruits."). The gold judge rewards distinct
on-topic words and penalises off-topic and repeated words, so some responses are measurably better.
SFT data and preference pairs are sampled from a mixture of on-topic words, filler words ("um", "stuff") and
other topics' words: the SFT policy is mediocre on purpose. Fillers are bad whatever the prompt, an easy
feature for a small reward model; topic match depends on the prompt and is harder to learn, so the reward
model is an imperfect proxy of the gold judge, as real ones are.
Files are written in the esfrankel17/HelpSteer2_binarized schema and loaded through the normal data path.

Two kinds of held-out prompts. In-distribution: new names on (template, topic) requests that training also
asks (the usual by-prompt split). Out-of-distribution: requests with a template (`sandbox.heldout_templates`, the
last N of TEMPLATES) or a topic (`sandbox.heldout_topics`, the last N of TOPICS) that no training prompt uses;
they come from `num_ood_pairs` extra pairs and only ever go to validation (tasks/base.py). A held-out
topic's words still occur in training answers as other topics' words, as every topic's do, so on a new topic
a reward model must apply "on topic" to words it has only seen off topic: a real test of generalisation.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

from common.config_data import SandboxConfig
from common.models import TINY
from tasks.base import RL_STAGES, GoldFn
from tasks.preference import PreferenceTask

TOPICS: dict[str, tuple[str, ...]] = {
    "colors": ("red", "blue", "green", "yellow", "purple", "orange", "black", "white", "pink", "brown", "gray",
               "violet"),
    "animals": ("dog", "cat", "horse", "lion", "tiger", "bear", "wolf", "fox", "rabbit", "mouse", "eagle",
                "shark"),
    "fruits": ("apple", "banana", "cherry", "grape", "lemon", "mango", "peach", "pear", "plum", "melon", "kiwi",
               "lime"),
    "countries": ("France", "Spain", "Italy", "Japan", "China", "India", "Brazil", "Mexico", "Canada", "Egypt",
                  "Kenya", "Peru"),
    "sports": ("tennis", "soccer", "golf", "rugby", "boxing", "hockey", "cricket", "baseball", "cycling",
               "rowing", "skiing", "surfing"),
    "instruments": ("piano", "guitar", "violin", "drum", "flute", "harp", "cello", "trumpet", "organ", "banjo",
                    "oboe", "tuba"),
    "tools": ("hammer", "saw", "drill", "wrench", "chisel", "shovel", "rake", "axe", "pliers", "ladder", "file",
              "clamp"),
    "vegetables": ("carrot", "potato", "onion", "garlic", "pepper", "lettuce", "cabbage", "spinach", "celery",
                   "radish", "leek", "pea"),
}
TEMPLATES = ("List some {topic}.", "Name a few {topic}, please.", "Which {topic} do you know?",
             "Tell me some {topic}.", "Can you give me {topic}?", "Write down {topic}.")
NAMES = ("Ada", "Ben", "Cleo", "Dan", "Eva", "Finn", "Gus", "Hana", "Ivo", "Jade", "Kai", "Lena", "Max", "Nora",
         "Otto", "Pia", "Quinn", "Rosa", "Sam", "Tara", "Uma", "Vic", "Wes", "Xia", "Yara", "Zed", "Abe", "Bea",
         "Cal", "Dee", "Eli", "Fay", "Gil", "Hal", "Ida", "Jon", "Kim", "Lou", "Mia", "Ned")
FILLERS = ("um", "stuff", "things", "whatever", "hmm", "okay", "maybe", "like", "so", "yeah", "anyway", "well")
# An answer with no word at all does not answer the request: it scores as the worst answer the data can hold (max_words
# = 6 off-topic words; SandboxConfig.max_words' default). Without this floor the judge, which only counts bad words
# against an answer, scored silence 0, above the SFT policy's -3 to -3.5, so a policy that learnt to say nothing
# "gained" gold (docs/collapse.md). The data never holds an empty answer, so pairs and SFT examples are unchanged.
EMPTY_GOLD = -6.0
_WORD_TOPIC = {w.lower(): t for t, words in TOPICS.items() for w in words}
_TOPIC_RE = re.compile(r"\b(" + "|".join(TOPICS) + r")\b")


def topic_of(prompt: str) -> str:
    """The topic a prompt asks for (the last topic name it mentions)."""
    found = _TOPIC_RE.findall(prompt)
    if not found:
        raise ValueError(f"sandbox prompt names no topic: {prompt!r}")
    return found[-1]


def gold_score(prompt: str, response: str) -> float:
    """The gold judge: distinct on-topic words - off-topic words - repeated on-topic words.

    Any token that is not a word of the prompt's topic counts as off topic (other topics' words, chatter,
    garbage), so a longer answer only helps when every added word is a new on-topic word. An answer without a word
    scores EMPTY_GOLD.
    """
    topic = topic_of(prompt)
    words = re.findall(r"[a-z]+", response.lower())
    if not words:
        return EMPTY_GOLD
    on = [w for w in words if _WORD_TOPIC.get(w) == topic]
    off = len(words) - len(on)
    distinct = len(set(on))
    return float(distinct - off - (len(on) - distinct))


def rating(score: float, max_words: int) -> float:
    """Map a gold score onto HelpSteer2's 0..4 rating scale (linear, clipped)."""
    return round(min(4.0, max(0.0, 2.0 + 2.0 * score / max_words)), 3)


def heldout(cfg: SandboxConfig) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The held-out (out-of-distribution) templates and topics: the last N of each."""
    topics = tuple(TOPICS)
    return (TEMPLATES[len(TEMPLATES) - cfg.heldout_templates:] if cfg.heldout_templates else (),
            topics[len(topics) - cfg.heldout_topics:] if cfg.heldout_topics else ())


def template_of(prompt: str) -> str:
    """The request template a sandbox prompt was written from."""
    request = prompt.split(". ", 1)[-1]
    for template in TEMPLATES:
        if re.fullmatch(re.escape(template).replace(re.escape("{topic}"), r"\w+"), request):
            return template
    raise ValueError(f"sandbox prompt matches no template: {prompt!r}")


def ood_kind(prompt: str, cfg: SandboxConfig) -> str:
    """'' for an in-distribution prompt; 'new_topic' (a held-out topic, any template) or 'new_template' (a
    held-out template on a training topic) for an out-of-distribution one."""
    templates, topics = heldout(cfg)
    if topic_of(prompt) in topics:
        return "new_topic"
    return "new_template" if template_of(prompt) in templates else ""


def sample_prompt(rng: random.Random, requests: list[tuple[str, str]] | None = None) -> str:
    """A prompt from any (template, topic), or from `requests` when given."""
    if requests is None:
        topic, template = rng.choice(list(TOPICS)), None
    else:
        template, topic = rng.choice(requests)
    return f"Hi, I am {rng.choice(NAMES)}. " + (template or rng.choice(TEMPLATES)).format(topic=topic)


def requests(cfg: SandboxConfig, ood: bool) -> list[tuple[str, str]]:
    """The (template, topic) requests of training (ood=False) or of the out-of-distribution held-out set."""
    templates, topics = heldout(cfg)
    return [(t, k) for t in TEMPLATES for k in TOPICS if (t in templates or k in topics) == ood]


def sample_response(prompt: str, rng: random.Random, cfg: SandboxConfig) -> str:
    """k words: on topic with probability on_topic_prob, a filler word with filler_prob, else another topic's."""
    topic = topic_of(prompt)
    others = [t for t in TOPICS if t != topic]

    def word() -> str:
        u = rng.random()
        if u < cfg.on_topic_prob:
            return rng.choice(TOPICS[topic])
        if u < cfg.on_topic_prob + cfg.filler_prob:
            return rng.choice(FILLERS)
        return rng.choice(TOPICS[rng.choice(others)])

    return ", ".join(word() for _ in range(rng.randint(1, cfg.max_words))) + "."


def make_pair_row(prompt: str, rng: random.Random, cfg: SandboxConfig) -> dict:
    """One row in the HelpSteer2_binarized schema; the two responses never tie on the gold score."""
    while True:
        a, b = sample_response(prompt, rng, cfg), sample_response(prompt, rng, cfg)
        sa, sb = gold_score(prompt, a), gold_score(prompt, b)
        if sa != sb:
            break
    (chosen, s_c), (rejected, s_r) = sorted([(a, sa), (b, sb)], key=lambda x: -x[1])
    user = {"role": "user", "content": prompt}
    return {"prompt": prompt,
            "chosen": [user, {"role": "assistant", "content": chosen}],
            "rejected": [user, {"role": "assistant", "content": rejected}],
            "chosen_rating": rating(s_c, cfg.max_words), "rejected_rating": rating(s_r, cfg.max_words)}


def write_sandbox_data(out_dir: str | Path, cfg: SandboxConfig, seed: int) -> Path:
    """Write <out_dir>/average_rating_split.jsonl: num_pairs pairs on training requests, then num_ood_pairs on
    held-out templates and topics. Deterministic for a seed."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    path = out_dir / "average_rating_split.jsonl"
    train_requests = None if not any(heldout(cfg)) else requests(cfg, ood=False)
    ood_requests = requests(cfg, ood=True)
    if cfg.num_ood_pairs and not ood_requests:
        raise ValueError("sandbox.num_ood_pairs > 0 needs sandbox.heldout_templates or sandbox.heldout_topics > 0")
    with path.open("w") as f:
        for k in range(cfg.num_pairs + cfg.num_ood_pairs):
            prompt = sample_prompt(rng, train_requests if k < cfg.num_pairs else ood_requests)
            f.write(json.dumps(make_pair_row(prompt, rng, cfg)) + "\n")
    return path


def sft_examples(prompts: list[str], cfg: SandboxConfig, seed: int) -> list[tuple[str, str]]:
    """(prompt, response) demonstrations for the SFT warm-up, drawn from the mediocre mixture."""
    rng = random.Random(seed + 1)
    return [(p, sample_response(p, rng, cfg))
            for p in (rng.choice(prompts) for _ in range(cfg.num_sft_examples))]


class SandboxTask(PreferenceTask):
    """The offline sandbox as a task: generated pairs (written once under <run_dir>/data, seeded by
    data.split_seed), the held-out requests as the OOD pool, the programmatic gold judge, and the sft stage that
    warms up the tiny random policy on its demonstrations."""

    name = "sandbox"
    heldout_text = ("ID: {n_id} held-out prompts with new names on requests (template, topic) that training also "
                    "asks. OOD: {n_ood} prompts whose template or topic no training prompt uses (new_template: a "
                    "held-out template on a training topic; new_topic: a held-out topic).")

    def stages(self) -> tuple[str, ...]:
        return (("sft",) if self.cfg.model.policy == TINY else ()) + RL_STAGES

    def pairs_source(self) -> str:
        out = Path(self.cfg.run_dir) / "data"
        if not (out / "average_rating_split.jsonl").is_file():
            write_sandbox_data(out, self.cfg.sandbox, seed=self.cfg.data.split_seed)
        return str(out)

    def ood_kind(self, prompt_text: str) -> str:
        return ood_kind(prompt_text, self.cfg.sandbox)

    def row_schema(self) -> tuple[str, dict[str, str]]:
        return "helpsteer2", {}  # the task writes its own rows, in that schema, whatever data.format says

    def gold_judge(self) -> GoldFn | None:
        return gold_score if self.cfg.sandbox.gold_judge else None

    def sft_examples(self, prompts: list[str], seed: int) -> list[tuple[str, str]]:
        return sft_examples(prompts, self.cfg.sandbox, seed)
