"""Row formats: what a preference or prompt row looks like, how a data set's format is found, and data.columns.

The formats are TRL's (its "Dataset formats and types" guide; one row of each is in docs/data.md), plus the
HelpSteer2_binarized schema (tasks/preference.py):

- standard: `prompt`, `chosen`, `rejected` strings. The prompt becomes one user message, chosen and rejected the
  assistant's answer to it (the chat template renders them).
- conversational: `prompt` a list of {"role", "content"} messages ending with a user turn; `chosen`/`rejected`
  lists of the assistant message(s) that answer it (several are joined with a blank line).
- standard_implicit_prompt: `chosen`/`rejected` whole texts and no prompt column: the prompt is their shared
  prefix, by characters, as TRL's `extract_prompt` takes it (words both answers start with go to the prompt).
- conversational_implicit_prompt: `chosen`/`rejected` whole conversations: the prompt is their shared leading
  messages, the answers what follows (assistant messages only).
- prompt_only: a `prompt` (string or messages) and no chosen/rejected: prompts for RL and eval, no pairs.
- helpsteer2: `prompt` a string with inline turn markers, `chosen`/`rejected` lists of messages.

Ratings are optional in every preference format: `chosen_rating`/`rejected_rating`, or `score_chosen`/
`score_rejected` (as in trl-lib's UltraFeedback data sets); a data set has them when its first row does.

Detection (data.format=auto) reads the columns of the first row that has a prompt, chosen or rejected column
(after data.columns): with chosen/rejected and a prompt, a list prompt is conversational, else a list chosen is
helpsteer2, else standard; with chosen/rejected and no prompt, a list chosen is conversational_implicit_prompt,
else standard_implicit_prompt; with a prompt alone, prompt_only. Every row is then read in that one format: a row
that does not fit it is a malformed row (data.bad_rows), named by row and field.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from common.data import DataStats, PreferencePair

RATINGS = ("chosen_rating", "rejected_rating")
RATING_COLUMNS = (RATINGS, ("score_chosen", "score_rejected"))  # the names data sets use, in order of preference
ROW_FIELDS = ("prompt", "chosen", "rejected")
FORMAT_FIELDS = {"standard": ROW_FIELDS, "conversational": ROW_FIELDS, "helpsteer2": ROW_FIELDS,
                 "standard_implicit_prompt": ("chosen", "rejected"),
                 "conversational_implicit_prompt": ("chosen", "rejected"), "prompt_only": ("prompt",)}
ROLES = ("system", "user", "assistant")
Messages = tuple[dict, ...]


class _Bad(ValueError):
    """A malformed field; tasks.preference.parse_rows turns it into a DataError naming origin, row and column."""

    def __init__(self, field: str, problem: str):
        super().__init__(problem)
        self.field, self.problem = field, problem


@dataclass(frozen=True)
class Schema:
    """How one data set's rows are read: its format, and the column each field comes from."""
    format: str
    columns: dict[str, str]  # field -> column, for the fields the format reads (and the ratings, when rated)
    mapped: dict[str, str] = field(default_factory=dict)  # data.columns, to name a renamed column in errors
    detected_at: int | None = None  # the row the format was detected from (None: data.format named it)

    @property
    def rated(self) -> bool:
        return RATINGS[0] in self.columns

    def column(self, name: str) -> str:
        return self.columns.get(name, name)

    def get(self, row: Mapping, name: str) -> Any:
        """The row's value of a field; _Bad when it is absent or null."""
        column = self.column(name)
        value = row.get(column)
        if value is None:
            hint = "" if column in row else (f" (the row's columns: {_names(row)}; data.columns reads other names, "
                                             f"e.g. data.columns={name}=COLUMN)")
            raise _Bad(name, "missing" + hint)
        return value

    def extra_columns(self, row: Mapping) -> dict:
        """The row's other columns (a `solution`, say): what reward functions receive as keyword arguments."""
        used = set(self.columns.values())
        return {k: v for k, v in row.items() if k not in used}


def _names(row: Mapping, limit: int = 8) -> str:
    names = [str(k) for k in row]
    return ", ".join(names[:limit]) + (f", ... ({len(names)} in all)" if len(names) > limit else "") or "none"


def detect_schema(rows: list, fmt: str, mapped: dict[str, str]) -> Schema:
    """The schema of a data set: data.format (or, for auto, the format its columns show: the module docstring's
    rule), the columns each field comes from, and whether it has ratings."""
    at, first = next(((i, r) for i, r in enumerate(rows) if isinstance(r, dict)
                      and any(r.get(mapped.get(f, f)) is not None for f in ROW_FIELDS)), (None, None))
    if fmt == "auto":
        fmt = "standard" if first is None else _detect(first, mapped)  # no row fits: each is named as malformed
    else:
        at = None
    columns = {f: mapped.get(f, f) for f in FORMAT_FIELDS[fmt]}
    if fmt != "prompt_only":
        columns |= _rating_columns(first, mapped)
    return Schema(fmt, columns, dict(mapped), at)


def _detect(row: dict, mapped: dict[str, str]) -> str:
    value = {f: row.get(mapped.get(f, f)) for f in ROW_FIELDS}
    answer = value["chosen"] if value["chosen"] is not None else value["rejected"]
    if answer is None:
        return "prompt_only"
    if value["prompt"] is None:
        return "conversational_implicit_prompt" if isinstance(answer, list) else "standard_implicit_prompt"
    if isinstance(value["prompt"], list):
        return "conversational"
    return "helpsteer2" if isinstance(answer, list) else "standard"


def _rating_columns(first: dict | None, mapped: dict[str, str]) -> dict[str, str]:
    if any(f in mapped for f in RATINGS):
        return {f: mapped.get(f, f) for f in RATINGS}
    for names in RATING_COLUMNS:
        if first is not None and any(n in first for n in names):
            return dict(zip(RATINGS, names))
    return {}


# ------------------------------------------------------------------------------------------------ fields


def ratings(row: Mapping, schema: Schema) -> tuple[float | None, float | None]:
    """The row's (chosen, rejected) ratings; (None, None) for a data set without them."""
    if not schema.rated:
        return None, None
    values = [schema.get(row, name) for name in RATINGS]
    for name, v in zip(RATINGS, values):
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(float(v)):
            raise _Bad(name, f"expected a finite number, got {v!r}")
    return float(values[0]), float(values[1])


def text(value: Any, name: str) -> str:
    """A non-blank string, stripped."""
    if not isinstance(value, str):
        raise _Bad(name, f"expected a string, got {type(value).__name__}")
    if not value.strip():
        raise _Bad(name, "empty")
    return value.strip()


def message_list(value: Any, name: str) -> list[dict]:
    """A list of {"role": str, "content": str} messages, as {"role", "content"} dicts with stripped content."""
    if not isinstance(value, (list, tuple)):
        raise _Bad(name, f"expected a list of messages, got {type(value).__name__}")
    for j, m in enumerate(value):
        if not (isinstance(m, Mapping) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)):
            raise _Bad(name, f"message {j} is not a {{'role': str, 'content': str}} mapping")
        if m["role"] not in ROLES:
            raise _Bad(name, f"message {j} has role {m['role']!r}; expected one of {', '.join(ROLES)}")
    return [{"role": m["role"], "content": m["content"].strip()} for m in value]


def prompt_messages(messages: list[dict], name: str) -> Messages:
    """A prompt: messages ending with a non-empty user turn, a system message only first."""
    if not messages:
        raise _Bad(name, "no messages")
    if any(m["role"] == "system" for m in messages[1:]):
        raise _Bad(name, "a system message after the first message")
    if messages[-1]["role"] != "user":
        raise _Bad(name, f"the last message is {messages[-1]['role']!r}; a prompt ends with the user's turn")
    if not messages[-1]["content"]:
        raise _Bad(name, "the final user turn is empty")
    return tuple(messages)


def answer(messages: list[dict], name: str) -> str:
    """The assistant's answer: one or more assistant messages (after the prompt), joined with a blank line."""
    if not messages:
        raise _Bad(name, "no assistant message after the prompt")
    other = next((m["role"] for m in messages if m["role"] != "assistant"), None)
    if other is not None:
        raise _Bad(name, f"holds a {other!r} message; after the prompt only the assistant's answer may follow")
    reply = "\n\n".join(m["content"] for m in messages if m["content"])
    if not reply:
        raise _Bad(name, "the assistant response is empty")
    return reply


def user(content: str) -> Messages:
    return ({"role": "user", "content": content},)


# ------------------------------------------------------------------------------------------------ formats


def standard(row: Mapping, schema: Schema, stats: DataStats) -> PreferencePair:  # noqa: ARG001 - one signature
    prompt = text(schema.get(row, "prompt"), "prompt")
    chosen, rejected = (text(schema.get(row, f), f) for f in ("chosen", "rejected"))
    return PreferencePair(user(prompt), chosen, rejected, *ratings(row, schema))


def conversational(row: Mapping, schema: Schema, stats: DataStats) -> PreferencePair:
    prompt = prompt_messages(message_list(schema.get(row, "prompt"), "prompt"), "prompt")
    answers = {f: message_list(schema.get(row, f), f) for f in ("chosen", "rejected")}
    pair = PreferencePair(prompt, *(answer(m, f) for f, m in answers.items()), *ratings(row, schema))
    stats.merged_turns += sum(len(m) - 1 for m in answers.values())  # several assistant messages joined
    return pair


def shared_prefix(a: str, b: str) -> int:
    """Where two texts first differ: the end of their shared prompt, by characters as TRL's extract_prompt cuts it
    (TRL also leaves a space before the difference to the answers; both sides are stripped here)."""
    n = min(len(a), len(b))
    return next((k for k in range(n) if a[k] != b[k]), n)


def standard_implicit_prompt(row: Mapping, schema: Schema, stats: DataStats) -> PreferencePair:  # noqa: ARG001
    whole = {f: text(schema.get(row, f), f) for f in ("chosen", "rejected")}
    cut = shared_prefix(whole["chosen"], whole["rejected"])
    prompt = whole["chosen"][:cut].strip()
    if not prompt:
        raise _Bad("chosen", "chosen and rejected share no leading text: there is no prompt (give a prompt column)")
    chosen, rejected = (whole[f][cut:].strip() for f in ("chosen", "rejected"))
    for f, reply in (("chosen", chosen), ("rejected", rejected)):
        if not reply:
            raise _Bad(f, "nothing follows the prompt shared with the other answer")
    return PreferencePair(user(prompt), chosen, rejected, *ratings(row, schema))


def conversational_implicit_prompt(row: Mapping, schema: Schema, stats: DataStats) -> PreferencePair:
    chosen, rejected = (message_list(schema.get(row, f), f) for f in ("chosen", "rejected"))
    k = next((i for i, (c, r) in enumerate(zip(chosen, rejected)) if c != r), min(len(chosen), len(rejected)))
    if k == 0:
        raise _Bad("chosen", "chosen and rejected share no leading messages: there is no prompt")
    prompt = prompt_messages(chosen[:k], "chosen")
    pair = PreferencePair(prompt, answer(chosen[k:], "chosen"), answer(rejected[k:], "rejected"),
                          *ratings(row, schema))
    stats.merged_turns += len(chosen) + len(rejected) - 2 * k - 2
    return pair


def prompt_only(row: Mapping, schema: Schema, stats: DataStats) -> Messages:  # noqa: ARG001 - one signature
    value = schema.get(row, "prompt")
    if isinstance(value, str):
        return user(text(value, "prompt"))
    if not isinstance(value, (list, tuple)):
        raise _Bad("prompt", f"expected a string or a list of messages, got {type(value).__name__}")
    return prompt_messages(message_list(value, "prompt"), "prompt")


# format -> (row, schema, stats) -> a pair (or a prompt, for prompt_only); tasks/preference.py adds helpsteer2
RowParser = Callable[[Mapping, Schema, DataStats], "PreferencePair | Messages"]
PARSERS: dict[str, RowParser] = {
    "standard": standard, "conversational": conversational, "standard_implicit_prompt": standard_implicit_prompt,
    "conversational_implicit_prompt": conversational_implicit_prompt, "prompt_only": prompt_only}
