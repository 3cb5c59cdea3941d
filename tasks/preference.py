"""The preference task: pairs in the schema of `esfrankel17/HelpSteer2_binarized`, from files or the hub.

Schema (card of esfrankel17/HelpSteer_binarized, same author and layout; HelpSteer2_binarized has the split
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

`data.source` names a .parquet/.jsonl/.json file or directory, or a hub id (tasks/files.py reads the rows); the
sandbox and the ifeval tasks write their pairs in this schema and read them back through `PreferenceTask`.
Text is normalised by stripping surrounding whitespace from every turn and response (common/data.py).
"""

from __future__ import annotations

import math
import numbers
import re
from typing import Any

from common.config import DataConfig
from common.data import DataError, DataStats, PreferencePair
from tasks.base import Task
from tasks.files import Unparsed, read_rows

_MARKER = re.compile(r"[ \t]*\r?\n?<extra_id_[01]>(System|User|Assistant)[ \t]*\r?\n?")
_ROLES = {"System": "system", "User": "user", "Assistant": "assistant"}


class _Bad(ValueError):
    """A malformed field; parse_pairs turns it into a DataError naming origin and row."""

    def __init__(self, field: str, problem: str):
        super().__init__(problem)
        self.field, self.problem = field, problem


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


def _response(value: Any, field: str) -> tuple[str, list]:
    """The response text (content of the final assistant message) and the messages before it."""
    if not isinstance(value, (list, tuple)):
        raise _Bad(field, f"expected a list of messages, got {type(value).__name__}")
    for j, m in enumerate(value):
        if not (isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)):
            raise _Bad(field, f"message {j} is not a {{'role': str, 'content': str}} mapping")
    if not any(m["role"] == "assistant" for m in value):
        raise _Bad(field, "no assistant message")
    if value[-1]["role"] != "assistant":
        raise _Bad(field, f"the last message is {value[-1]['role']!r}, not the assistant response")
    text = value[-1]["content"].strip()
    if not text:
        raise _Bad(field, "the assistant response is empty")
    return text, list(value[:-1])


def _rating(row: dict, field: str) -> float:
    v = row[field]
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(float(v)):
        raise _Bad(field, f"expected a finite number, got {v!r}")
    return float(v)


def _parse_row(row: Any, stats: DataStats) -> PreferencePair:
    if isinstance(row, Unparsed):
        raise _Bad("row", str(row))
    if not isinstance(row, dict):
        raise _Bad("row", f"expected a mapping of fields, got {type(row).__name__}")
    for field in ("prompt", "chosen", "rejected", "chosen_rating", "rejected_rating"):
        if field not in row or row[field] is None:
            raise _Bad(field, "missing")
    if not isinstance(row["prompt"], str):
        raise _Bad("prompt", f"expected a string, got {type(row['prompt']).__name__}")
    prompt, merged = parse_prompt(row["prompt"])
    chosen, chosen_ctx = _response(row["chosen"], "chosen")
    rejected, rejected_ctx = _response(row["rejected"], "rejected")
    pair = PreferencePair(tuple(prompt), chosen, rejected, _rating(row, "chosen_rating"),
                          _rating(row, "rejected_rating"))
    stats.multi_turn += sum(m["role"] == "user" for m in prompt) > 1
    stats.merged_turns += merged
    stats.equal_ratings += pair.chosen_rating == pair.rejected_rating
    for ctx in (chosen_ctx, rejected_ctx):
        if ctx:
            stats.repeated_user_turn += 1
            raw = [{"role": "user", "content": row["prompt"].strip()}]
            plain = [{"role": m["role"], "content": m["content"].strip()} for m in ctx]
            stats.context_mismatch += plain not in (prompt, raw)
    return pair


def parse_pairs(rows: list[dict], origin: str, bad_rows: str, stats: DataStats) -> list[PreferencePair]:
    """Validate and normalise raw rows into PreferencePairs (see the module docstring for the rules).

    A malformed row (missing field, wrong type, blank prompt or response, chosen/rejected without a final
    assistant message, non-numeric or non-finite rating, prompt whose turns do not alternate): with
    bad_rows == "error" raise DataError naming origin, 0-based row index and field; with "skip" leave it
    out and count it in stats.skipped_bad.
    """
    if bad_rows not in ("error", "skip"):
        raise ValueError(f"bad_rows must be 'error' or 'skip', got {bad_rows!r}")
    pairs = []
    stats.rows += len(rows)
    for i, row in enumerate(rows):
        try:
            pairs.append(_parse_row(row, stats))
        except _Bad as e:
            if bad_rows == "error":
                raise DataError(f"{origin}: row {i}: field {e.field!r}: {e.problem} (set data.bad_rows=skip "
                                f"to skip malformed rows)") from None
            stats.skipped_bad += 1
    stats.pairs += len(pairs)
    return pairs


def load_pairs(source: str, cfg: DataConfig) -> tuple[list[PreferencePair], DataStats]:
    """Read and parse the rows of `source` (a file, a directory or a hub id; split cfg.split, bad rows by
    cfg.bad_rows). The max_train_pairs / max_val_pairs caps are applied by the caller after the split."""
    rows, origin = read_rows(source, cfg.split)
    stats = DataStats(origin=origin)
    return parse_pairs(rows, origin, cfg.bad_rows, stats), stats


class PreferenceTask(Task):
    """Preference pairs read from `data.source` (a file, a directory or a hub id), in the HelpSteer2_binarized
    schema: the Level 1 and Level 2 runs on HelpSteer2. No gold judge, no out-of-distribution pool."""

    name = "preference"

    def pairs_source(self) -> str:
        """Where the preference rows are read."""
        return self.cfg.data.source

    def load_pairs(self) -> tuple[list[PreferencePair], DataStats]:
        return load_pairs(self.pairs_source(), self.cfg.data)
