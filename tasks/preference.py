"""The preference task: pairs (or prompts) from files or the hub, in TRL's formats or HelpSteer2_binarized's.

The formats, their detection from the columns and data.columns are in tasks/formats.py; this file reads the rows
(tasks/files.py), applies the bad-rows policy and holds the HelpSteer2_binarized schema, `esfrankel17/
HelpSteer2_binarized`'s.

HelpSteer2 schema (card of esfrankel17/HelpSteer_binarized, same author and layout; HelpSteer2_binarized has the split
`average_rating_split`): `prompt` (string), `chosen`/`rejected` (lists of {"content", "role"} messages),
`chosen_rating`/`rejected_rating` (float64).

Quirks handled here, verified against public sources:
- Multi-turn prompts are written inline in the `prompt` string. nvidia/HelpSteer2 README (commit 8aeb07c,
  "About 29% of all prompts used are multi-turn"): the prompt holds all user turns and all but the last
  assistant turn as "{user turn 1}\\n<extra_id_1>Assistant\\n{assistant turn 1}\\n<extra_id_1>User\\n{user
  turn 2}". The markers are the SteerLM/Nemotron turn headers (NVIDIA/NeMo-Aligner
  examples/nlp/data/steerlm/common.py: "<extra_id_0>System\\n", "<extra_id_1>User\\n",
  "<extra_id_1>Assistant\\n"). `parse_prompt` turns them into alternating chat messages; they are never
  passed to a model as raw text.
- `chosen`/`rejected` may repeat the user turn before the assistant turn ([user, assistant]), or hold only
  the assistant turn; public users of the data set take `conversation[:-1]` as the context. The response is
  the content of the final (assistant) message; the prompt always comes from the `prompt` field.
- Ratings are floats (averages of the HelpSteer2 attributes), so ties and non-integers are legal.

`data.source` names a .parquet/.jsonl/.json/.csv file or directory, or a hub id (tasks/files.py reads the rows); the
sandbox and the ifeval tasks write their pairs in the HelpSteer2 schema and read them back through `PreferenceTask`
(always in that schema, whatever data.format and data.columns say). Text is normalised by stripping surrounding
whitespace from every turn and response (common/data.py).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from common.config_data import DataConfig, parse_columns
from common.data import DataError, DataStats, PreferencePair, messages_key
from tasks import formats
from tasks.base import Messages, Task
from tasks.files import Unparsed, read_rows
from tasks.formats import Schema, _Bad

_MARKER = re.compile(r"[ \t]*\r?\n?<extra_id_[01]>(System|User|Assistant)[ \t]*\r?\n?")
_ROLES = {"System": "system", "User": "user", "Assistant": "assistant"}


def parse_prompt(text: str) -> tuple[list[dict], int]:
    """Chat messages from a HelpSteer2 prompt string, and how many same-role turns were merged.

    Text before the first marker is the first user turn; "<extra_id_1>User" / "<extra_id_1>Assistant"
    (and a leading "<extra_id_0>System") start the following turns. Consecutive turns of one role are
    joined with a blank line. Raises ValueError (_Bad) if the result does not start and end with a user turn.
    """
    if not text.strip():
        raise _Bad("prompt", "empty")
    parts = _MARKER.split(text)
    turns = [("user", parts[0])] + [(_ROLES[parts[i]], parts[i + 1]) for i in range(1, len(parts), 2)]
    messages: list[dict] = []
    merged = 0
    for i, (role, content) in enumerate(turns):
        content = content.strip()
        if i == 0 and not content:
            continue  # the prompt starts with a marker
        if role == "system" and messages:
            raise _Bad("prompt", "a System marker after the first turn")
        if messages and messages[-1]["role"] == role:
            messages[-1]["content"] = f"{messages[-1]['content']}\n\n{content}".strip()
            merged += 1
            continue
        messages.append({"role": role, "content": content})
    body = [m["role"] for m in messages if m["role"] != "system"]
    if not body or body[0] != "user" or body[-1] != "user":
        raise _Bad("prompt", "the conversation must start and end with a user turn")
    if not messages[-1]["content"]:
        raise _Bad("prompt", "the final user turn is empty")
    return messages, merged


def _response(value: Any, name: str) -> tuple[str, list]:
    """The response text (content of the final assistant message) and the messages before it."""
    if not isinstance(value, (list, tuple)):
        raise _Bad(name, f"expected a list of messages, got {type(value).__name__}")
    for j, m in enumerate(value):
        if not (isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)):
            raise _Bad(name, f"message {j} is not a {{'role': str, 'content': str}} mapping")
    if not any(m["role"] == "assistant" for m in value):
        raise _Bad(name, "no assistant message")
    if value[-1]["role"] != "assistant":
        raise _Bad(name, f"the last message is {value[-1]['role']!r}, not the assistant response")
    text = value[-1]["content"].strip()
    if not text:
        raise _Bad(name, "the assistant response is empty")
    return text, list(value[:-1])


def helpsteer2(row: Mapping, schema: Schema, stats: DataStats) -> PreferencePair:
    """A HelpSteer2_binarized row (the module docstring's rules)."""
    raw = {f: schema.get(row, f) for f in ("prompt", "chosen", "rejected")}
    for name in formats.RATINGS if schema.rated else ():  # every field present before any is checked
        schema.get(row, name)
    if not isinstance(raw["prompt"], str):
        raise _Bad("prompt", f"expected a string, got {type(raw['prompt']).__name__}")
    prompt, merged = parse_prompt(raw["prompt"])
    chosen, chosen_ctx = _response(raw["chosen"], "chosen")
    rejected, rejected_ctx = _response(raw["rejected"], "rejected")
    pair = PreferencePair(tuple(prompt), chosen, rejected, *formats.ratings(row, schema))
    stats.merged_turns += merged
    for ctx in (chosen_ctx, rejected_ctx):
        if ctx:
            stats.repeated_user_turn += 1
            whole = [{"role": "user", "content": raw["prompt"].strip()}]
            plain = [{"role": m["role"], "content": m["content"].strip()} for m in ctx]
            stats.context_mismatch += plain not in (prompt, whole)
    return pair


PARSERS: dict[str, formats.RowParser] = {**formats.PARSERS, "helpsteer2": helpsteer2}


@dataclass
class Parsed:
    """A data set's rows, read: its pairs, or (a prompt-only data set) its prompts, and each prompt's other columns."""
    schema: Schema
    pairs: list[PreferencePair] = field(default_factory=list)
    prompts: list[Messages] = field(default_factory=list)  # distinct, in first-seen order
    columns: dict[str, dict] = field(default_factory=dict)  # every prompt's key -> the other columns of its first row
    seen: set = field(default_factory=set)  # (prompt key, chosen, rejected) of the pairs kept, to drop repeats


def parse_rows(rows: list, origin: str, bad_rows: str, stats: DataStats, fmt: str = "auto",
               columns: dict[str, str] | None = None) -> Parsed:
    """Validate and normalise raw rows into PreferencePairs, or prompts for a prompt-only data set, in format `fmt`
    (auto: detected from the columns, tasks/formats.py) with `columns` (field -> column) renamed.

    A malformed row (a missing field, a wrong type, a blank prompt or response, a conversation that does not end
    where its format says, a non-numeric or non-finite rating, ...): with bad_rows == "error" raise DataError
    naming origin, 0-based row index and the column; with "skip" leave it out and count it in stats.skipped_bad.
    """
    if bad_rows not in ("error", "skip"):
        raise ValueError(f"bad_rows must be 'error' or 'skip', got {bad_rows!r}")
    schema = formats.detect_schema(rows, fmt, columns or {})
    parse, out = PARSERS[schema.format], Parsed(schema)
    stats.rows += len(rows)
    stats.format = schema.format
    for i, row in enumerate(rows):
        try:
            if isinstance(row, Unparsed):
                raise _Bad("row", str(row))
            if not isinstance(row, dict):
                raise _Bad("row", f"expected a mapping of fields, got {type(row).__name__}")
            item = parse(row, schema, stats)
        except _Bad as e:
            if bad_rows == "error":
                raise DataError(f"{origin}: row {i}: {_field_name(e.field, schema)}: {e.problem} "
                                f"({_format_note(schema)}; set data.bad_rows=skip to skip malformed rows)") from None
            stats.skipped_bad += 1
            continue
        _add(out, item, schema.extra_columns(row), stats)
    stats.pairs += len(out.pairs)
    return out


def _add(out: Parsed, item: PreferencePair | Messages, extra: dict, stats: DataStats) -> None:
    """Keep a parsed pair or prompt, counting what the user should know of. A pair without a preference (chosen
    and rejected the same text) or repeating an earlier pair (the same prompt, chosen and rejected: it would
    weigh twice) is dropped and counted; a tie and a system message are kept and counted (docs/data.md)."""
    if isinstance(item, PreferencePair):
        prompt = item.prompt
        if item.chosen == item.rejected:
            stats.identical_responses += 1
            return
        key = (item.prompt_key, item.chosen, item.rejected)
        if key in out.seen:
            stats.duplicate_pairs += 1
            return
        out.seen.add(key)
        out.pairs.append(item)
        stats.equal_ratings += item.rated and item.chosen_rating == item.rejected_rating
        stats.system_prompts += prompt[0]["role"] == "system"
    else:
        prompt = item
        stats.prompts += 1
        if messages_key(prompt) in out.columns:
            return  # a repeated prompt is asked once
        out.prompts.append(prompt)
        stats.system_prompts += prompt[0]["role"] == "system"
    stats.multi_turn += sum(m["role"] == "user" for m in prompt) > 1
    out.columns.setdefault(messages_key(prompt), extra)


def _field_name(name: str, schema: Schema) -> str:
    if name == "row":
        return "field 'row'"
    column = schema.column(name)
    return f"field {column!r}" + (f" (data.columns: {name}={column})" if name in schema.mapped else "")


def _format_note(schema: Schema) -> str:
    how = "" if schema.detected_at is None else f", detected from row {schema.detected_at}'s columns"
    return f"rows read as {schema.format}{how}"


def parse_pairs(rows: list, origin: str, bad_rows: str, stats: DataStats, fmt: str = "auto",
                columns: dict[str, str] | None = None) -> list[PreferencePair]:
    """parse_rows' pairs."""
    return parse_rows(rows, origin, bad_rows, stats, fmt, columns).pairs


def load_pairs(source: str, cfg: DataConfig) -> tuple[list[PreferencePair], DataStats]:
    """Read and parse the rows of `source` (a file, a directory or a hub id; split cfg.split, bad rows by
    cfg.bad_rows, format cfg.format, columns cfg.columns). The max_train_pairs / max_val_pairs caps are applied by
    the caller after the split."""
    rows, origin = read_rows(source, cfg.split)
    stats = DataStats(origin=origin)
    return parse_pairs(rows, origin, cfg.bad_rows, stats, cfg.format, parse_columns(cfg.columns)), stats


class PreferenceTask(Task):
    """Preference pairs, or prompts alone, read from `data.source` (a file, a directory or a hub id) in one of the
    formats of tasks/formats.py: the Level 1 and Level 2 runs on HelpSteer2, and a user's own data. No gold judge,
    no out-of-distribution pool. Prompt-only data has no pairs to train a reward model on: RL and eval only."""

    name = "preference"

    def pairs_source(self) -> str:
        """Where the preference rows are read."""
        return self.cfg.data.source

    def row_schema(self) -> tuple[str, dict[str, str]]:
        """The format the rows are read in and the columns renamed: data.format and data.columns."""
        return self.cfg.data.format, parse_columns(self.cfg.data.columns)

    @cached_property
    def _parsed(self) -> tuple[Parsed, DataStats]:
        """The rows, read and parsed once per task (every stage builds its own task)."""
        rows, origin = read_rows(self.pairs_source(), self.cfg.data.split)
        stats = DataStats(origin=origin)
        return parse_rows(rows, origin, self.cfg.data.bad_rows, stats, *self.row_schema()), stats

    def load_pairs(self) -> tuple[list[PreferencePair], DataStats]:
        parsed, stats = self._parsed
        return parsed.pairs, stats

    def prompts_only(self) -> bool:
        fmt = self.row_schema()[0]
        return fmt == "prompt_only" if fmt != "auto" else self._parsed[0].schema.format == "prompt_only"

    def unpaired_prompts(self) -> list[Messages]:
        return list(self._parsed[0].prompts) if self.prompts_only() else []

    def prompt_columns(self, prompts: list[Messages]) -> list[dict]:
        """Each prompt's other columns, from its first row (`solution`, say; none for a prompt the data lacks)."""
        columns = self._parsed[0].columns
        return [dict(columns.get(messages_key(p), {})) for p in prompts]
