"""The data sections of the config: where preference pairs and prompts come from and how their rows are read
(`data`), and the two built-in tasks' settings (`sandbox`, `ifeval`). Kept apart from common/config.py, which
assembles every section into `Config`, so that each file stays readable on its own."""

from __future__ import annotations

from dataclasses import dataclass

from common.config_schema import ConfigError, opt

# The fields a preference or prompt row is read into (data.columns maps them to a data set's own column names), and
# the row formats data.format names (tasks/formats.py reads them; docs/data.md shows one row of each).
PREFERENCE_FIELDS = ("prompt", "chosen", "rejected", "chosen_rating", "rejected_rating")
DATA_FORMATS = ("auto", "standard", "conversational", "standard_implicit_prompt", "conversational_implicit_prompt",
                "prompt_only", "helpsteer2")


@dataclass(frozen=True)
class DataConfig:
    source: str = opt("sandbox", help="'sandbox' (generated offline task), 'ifeval' (verifiable instructions, pairs "
                                      "sampled from the SFT policy by --stage pairs: the ifeval section), a hub "
                                      "id, or a .parquet/.jsonl/.json/.csv file or directory of preference pairs or "
                                      "prompts in one of data.format's formats (docs/data.md)")
    format: str = opt("auto", choices=DATA_FORMATS,
                      help="how data.source's rows are read (docs/data.md): auto = detected from the columns; TRL's "
                           "standard, conversational, standard_implicit_prompt, conversational_implicit_prompt and "
                           "prompt_only; or helpsteer2 (esfrankel17/HelpSteer2_binarized's schema)")
    columns: tuple[str, ...] = opt((), help="FIELD=COLUMN items: read FIELD from the data set's COLUMN, e.g. "
                                            "prompt=question,chosen=good,rejected=bad; fields: "
                                            + ", ".join(PREFERENCE_FIELDS))
    split: str = opt("average_rating_split", help="the hub split (or file) holding the preference pairs")
    val_fraction: float = opt(0.1, gt=0.0, lt=1.0, help="share of distinct prompts held out for validation")
    split_seed: int = opt(0, ge=0, help="seed of the train/validation split; fixed across training seeds")
    dev_fraction: float = opt(0.3, ge=0.0, lt=1.0, help="share of each held-out pool's distinct prompts (ID and OOD) "
                                                         "set apart as the validation pools (splits dev, dev_ood): "
                                                         "the RL probe and every choice (steps, lr, kl_coef) read "
                                                         "them; the rest are the test pools that eval reads once, "
                                                         "at the end; 0 = no validation pools (no probe)")
    max_prompt_tokens: int = opt(256, ge=8, help="longer prompts are truncated from the left or dropped")
    max_length: int = opt(512, ge=16, help="prompt + response tokens for reward-model training")
    overlong: str = opt("truncate_left", choices=("truncate_left", "drop"))
    bad_rows: str = opt("error", choices=("error", "skip"), help="malformed rows: fail naming the row, or skip "
                                                                  "and count them")
    max_train_pairs: int = opt(0, ge=0, help="0 = all")
    max_val_pairs: int = opt(0, ge=0, help="0 = all")

    def __post_init__(self) -> None:
        parse_columns(self.columns)
        if self.max_prompt_tokens >= self.max_length:  # no room left for a response: most pairs would be dropped
            raise ConfigError(f"data.max_prompt_tokens={self.max_prompt_tokens} leaves no room for a response in "
                              f"data.max_length={self.max_length} (prompt + response tokens): set "
                              f"data.max_prompt_tokens below data.max_length, e.g. half of it")


def parse_columns(items: tuple[str, ...], key: str = "data.columns") -> dict[str, str]:
    """('prompt=question', ...) -> {'prompt': 'question'}; an unknown field or a malformed item raises ConfigError
    naming the key and the fields."""
    out: dict[str, str] = {}
    for item in items:
        field, sep, column = (part.strip() for part in str(item).partition("="))
        if not sep or not field or not column:
            raise ConfigError(f"{key}: {item!r} is not FIELD=COLUMN (for example prompt=question)")
        if field not in PREFERENCE_FIELDS:
            raise ConfigError(f"{key}: unknown field {field!r} in {item!r}; the fields are "
                              f"{', '.join(PREFERENCE_FIELDS)}")
        if field in out:
            raise ConfigError(f"{key}: field {field!r} is mapped twice")
        out[field] = column
    return out


@dataclass(frozen=True)
class SandboxConfig:
    """The offline task: list words of a requested topic; a programmatic gold judge scores responses."""
    num_pairs: int = opt(3000, ge=10, help="preference pairs generated (split into train and validation)")
    num_sft_examples: int = opt(4000, ge=10)
    on_topic_prob: float = opt(0.45, ge=0.0, le=1.0, help="chance that an SFT/pair response word is on topic")
    filler_prob: float = opt(0.25, ge=0.0, le=1.0, help="chance that it is a filler word; else another topic's")
    max_words: int = opt(6, ge=1)
    heldout_templates: int = opt(1, ge=0, le=5, help="the last N of the 6 request templates never occur in "
                                                     "training: their prompts are out-of-distribution held-out")
    heldout_topics: int = opt(1, ge=0, le=7, help="the last N of the 8 topics never occur in training prompts")
    num_ood_pairs: int = opt(400, ge=0, help="extra pairs whose prompts use a held-out template or topic "
                                             "(validation only); 0 = no out-of-distribution split")
    gold_judge: bool = opt(True, help="score answers with the sandbox's programmatic judge (eval's gold row); "
                                      "false for a real chat model, whose answers the toy judge cannot read")


# The IFEval instruction types whose checkers run offline (no NLTK data), which ifeval.instructions may name; the
# task (tasks/ifeval.py) composes and checks them.
IFEVAL_OFFLINE_TYPES = (
    "punctuation:no_comma", "startend:quotation", "startend:end_checker", "detectable_content:postscript",
    "detectable_content:number_placeholders", "detectable_format:title", "detectable_format:json_format",
    "detectable_format:number_bullet_lists", "detectable_format:number_highlighted_sections", "keywords:existence",
    "keywords:forbidden_words", "keywords:frequency", "keywords:letter_frequency", "change_case:english_lowercase",
    "change_case:english_capital", "length_constraints:number_words")


@dataclass(frozen=True)
class IFEvalConfig:
    """The real-model task (data.source=ifeval, tasks/ifeval.py): requests with one IFEval instruction each,
    preference pairs sampled from the SFT policy and labelled by IFEval's verifiers (stages/pairs.py)."""
    dir: str = opt("", help="where the task's files are written once and read by every stage; '' = <run_dir>/data "
                            "(a seeds/grid experiment shares <run_dir>/data across its runs)")
    instructions: tuple[str, ...] = opt(
        ("punctuation:no_comma", "startend:quotation", "startend:end_checker", "detectable_content:postscript",
         "detectable_content:number_placeholders", "detectable_format:title", "detectable_format:json_format",
         "detectable_format:number_bullet_lists", "keywords:existence", "keywords:forbidden_words",
         "change_case:english_lowercase", "length_constraints:number_words"),
        help="instruction types of training (and in-distribution held-out) prompts")
    heldout_instructions: tuple[str, ...] = opt(
        ("detectable_format:number_highlighted_sections", "keywords:frequency", "change_case:english_capital"),
        help="instruction types no training prompt carries: their prompts are out-of-distribution held-out")
    num_prompts: int = opt(400, ge=4, help="prompts with training-type instructions (split by prompt into train "
                                           "and in-distribution held-out by data.val_fraction)")
    num_ood_prompts: int = opt(60, ge=0, help="prompts with held-out instruction types (held-out only)")
    samples_per_prompt: int = opt(4, ge=2, help="answers sampled from the SFT policy per prompt, labelled by the "
                                                "verifiers; all equal = a tie (no pair, counted)")
    pairs: str = opt("best_worst", choices=("best_worst", "all"),
                     help="which pairs a prompt's answers give: best_worst = its best against its worst (one pair); "
                          "all = every two answers the verifiers score differently (every pass x fail pair)")
    pair_lengths: str = opt("any", choices=("any", "same_finish"),
                            help="same_finish = pair only answers that both ended (EOS) or were both cut at "
                                 "generator.max_new_tokens, so that a pair never teaches 'finished beats cut' in place "
                                 "of the instruction; any = no such check")
    batch_size: int = opt(64, ge=1, help="prompts per generate call while sampling the pairs")

    def __post_init__(self) -> None:
        for key in ("instructions", "heldout_instructions"):
            unknown = [i for i in getattr(self, key) if i not in IFEVAL_OFFLINE_TYPES]
            if unknown:
                raise ConfigError(f"ifeval.{key}: {', '.join(unknown)} not among the offline instruction types: "
                                  f"{', '.join(IFEVAL_OFFLINE_TYPES)}")
        if not self.instructions:
            raise ConfigError("ifeval.instructions: name at least one training instruction type")
        both = sorted(set(self.instructions) & set(self.heldout_instructions))
        if both:
            raise ConfigError(f"ifeval.heldout_instructions: {', '.join(both)} also in ifeval.instructions; a held-out "
                              f"type must never occur in training")
