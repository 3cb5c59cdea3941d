"""Preference pairs in the schema of `esfrankel17/HelpSteer2_binarized`: reading, validating, splitting, encoding.

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

Text is normalised by stripping surrounding whitespace from every turn and response (this also keeps the
token boundary between prompt and response stable under BPE).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import numbers
import re
from dataclasses import dataclass
from typing import Any, Sequence

from common.config import DataConfig
from common.data_files import DataError, Unparsed, read_rows  # noqa: F401 (re-exported)

MIN_PROMPT_TOKENS = 8  # encode_conversation drops a pair rather than keep fewer prompt tokens than this
_MARKER = re.compile(r"[ \t]*\r?\n?<extra_id_[01]>(System|User|Assistant)[ \t]*\r?\n?")
_ROLES = {"System": "system", "User": "user", "Assistant": "assistant"}


@dataclass(frozen=True)
class PreferencePair:
    """One prompt (chat messages ending with a user turn) with a preferred and a dispreferred response."""
    prompt: tuple[dict, ...]
    chosen: str
    rejected: str
    chosen_rating: float
    rejected_rating: float

    @property
    def prompt_key(self) -> str:
        """Canonical JSON of the prompt messages: equal prompts give equal keys (splitting, dedup)."""
        return messages_key(self.prompt)


@dataclass
class DataStats:
    """Counts reported to the user (and saved as JSON by callers). Token counts are per conversation."""
    rows: int = 0                # raw rows read
    pairs: int = 0               # rows that became PreferencePairs
    skipped_bad: int = 0         # malformed rows skipped (bad_rows="skip")
    multi_turn: int = 0          # prompts with several user turns (parsed from inline markers)
    merged_turns: int = 0        # consecutive same-role turns in a prompt joined into one
    repeated_user_turn: int = 0  # chosen/rejected lists that repeated the context before the response
    context_mismatch: int = 0    # ... where that repeated context differed from the `prompt` field
    equal_ratings: int = 0       # pairs with chosen_rating == rejected_rating (kept)
    truncated: int = 0           # prompts/conversations cut from the left
    dropped_overlong: int = 0    # prompts/conversations dropped for length
    boundary_split: int = 0      # conversations whose prompt/response token boundary needed separate encoding
    origin: str = ""             # where the rows were read (file, directory or hub id), for messages

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


# ------------------------------------------------------------------------------------------------ parsing


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


def load_pairs(cfg: DataConfig, source: str | None = None) -> tuple[list[PreferencePair], DataStats]:
    """Read and parse cfg.source (or `source`, e.g. the directory the sandbox data was written to).

    The max_train_pairs / max_val_pairs caps are applied by the caller after `split_by_prompt`.
    """
    source = cfg.source if source is None else source
    if source == "sandbox":
        raise DataError("data.source 'sandbox' is generated, not read: write it with "
                        "common.sandbox.write_sandbox_data(dir, ...) and pass source=dir")
    rows, origin = read_rows(source, cfg.split)
    stats = DataStats(origin=origin)
    return parse_pairs(rows, origin, cfg.bad_rows, stats), stats


# ---------------------------------------------------------------------------------------------- splitting


def _unit_hash(seed: int, key: str) -> float:
    digest = hashlib.sha256(f"{seed}:{key}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def split_by_prompt(pairs: Sequence[PreferencePair], val_fraction: float,
                    seed: int) -> tuple[list[PreferencePair], list[PreferencePair]]:
    """Deterministic train/validation split by prompt: all pairs of one prompt land on the same side.

    A prompt goes to validation when sha256(f"{seed}:{prompt_key}") maps below val_fraction, so its side
    depends neither on row order nor on the other rows. Only when that leaves one side empty (and there are
    >= 2 distinct prompts) is the prompt with the lowest (highest) hash moved to validation (train).
    """
    keys = [p.prompt_key for p in pairs]
    val_keys = validation_keys(keys, val_fraction, seed)
    train = [p for p, k in zip(pairs, keys) if k not in val_keys]
    val = [p for p, k in zip(pairs, keys) if k in val_keys]
    return train, val


def validation_keys(keys: Sequence[str], val_fraction: float, seed: int) -> set[str]:
    """The prompt keys split_by_prompt sends to validation (its rule, on keys alone: prompts without a pair, as
    in the ifeval task, are split by the same rule as those with one)."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    h = {k: _unit_hash(seed, k) for k in dict.fromkeys(keys)}
    val_keys = {k for k, v in h.items() if v < val_fraction}
    if len(h) >= 2 and not val_keys:
        val_keys = {min(h, key=h.get)}
    elif len(h) >= 2 and len(val_keys) == len(h):
        val_keys.discard(max(h, key=h.get))
    return val_keys


def messages_key(messages: Sequence[dict]) -> str:
    """Canonical JSON of prompt messages (PreferencePair.prompt_key of a pair with these messages)."""
    return json.dumps([[m["role"], m["content"]] for m in messages], ensure_ascii=False, separators=(",", ":"))


def unique_prompts(pairs: Sequence[PreferencePair]) -> list[tuple[dict, ...]]:
    """Distinct prompts in first-seen order."""
    seen: dict[str, tuple[dict, ...]] = {}
    for p in pairs:
        seen.setdefault(p.prompt_key, p.prompt)
    return list(seen.values())


# ----------------------------------------------------------------------------------------------- encoding


def prompt_text(tokenizer, messages: Sequence[dict]) -> str:
    """The chat-templated prompt, ending with the assistant generation header."""
    return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)


def conversation_text(tokenizer, messages: Sequence[dict], response: str) -> str:
    """The chat-templated prompt plus the assistant response (with the template's end-of-turn tokens)."""
    convo = list(messages) + [{"role": "assistant", "content": response}]
    return tokenizer.apply_chat_template(convo, tokenize=False)


def _ids(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def encode_prompt(tokenizer, messages: Sequence[dict], max_prompt_tokens: int, overlong: str,
                  stats: DataStats) -> list[int] | None:
    """Token ids of prompt_text (the template already holds the special tokens; none are added).

    Longer than max_prompt_tokens: "truncate_left" keeps the last max_prompt_tokens tokens (stats.truncated),
    "drop" returns None (stats.dropped_overlong).
    """
    ids = _ids(tokenizer, prompt_text(tokenizer, messages))
    if len(ids) <= max_prompt_tokens:
        return ids
    if overlong == "drop":
        stats.dropped_overlong += 1
        return None
    stats.truncated += 1
    return ids[-max_prompt_tokens:]


def encode_conversation_parts(tokenizer, messages: Sequence[dict], response: str, max_length: int,
                              max_prompt_tokens: int, overlong: str, stats: DataStats,
                              finished: bool = True) -> tuple[list[int], list[int]] | None:
    """encode_conversation, with the prompt and response ids returned apart: (prompt_ids, response_ids)."""
    p_text = prompt_text(tokenizer, messages)
    # a finished answer is rendered by the chat template (end-of-turn tokens appended); a truncated one is the
    # prompt (ending with the generation header) followed by the text the policy produced, and nothing else
    full_text = conversation_text(tokenizer, messages, response) if finished else p_text + response
    if not full_text.startswith(p_text):
        raise ValueError("the chat template renders the prompt differently with and without the response; "
                         "prompt and response tokens cannot be separated")
    prompt_ids, full_ids = _ids(tokenizer, p_text), _ids(tokenizer, full_text)
    if full_ids[:len(prompt_ids)] == prompt_ids:
        response_ids = full_ids[len(prompt_ids):]
    else:  # BPE merged across the boundary: encode the response part on its own
        stats.boundary_split += 1
        response_ids = _ids(tokenizer, full_text[len(p_text):])
    budget = min(max_prompt_tokens, max_length - len(response_ids))
    if len(prompt_ids) <= budget:
        return prompt_ids, response_ids
    if overlong == "drop" or budget < MIN_PROMPT_TOKENS:
        stats.dropped_overlong += 1
        return None
    stats.truncated += 1
    return prompt_ids[-budget:], response_ids


def encode_conversation(tokenizer, messages: Sequence[dict], response: str, max_length: int,
                        max_prompt_tokens: int, overlong: str, stats: DataStats,
                        finished: bool = True) -> list[int] | None:
    """Token ids of conversation_text: the prompt part (as in encode_prompt) followed by the response part.

    `finished=False` (a response cut at max_new_tokens) leaves out the template's end-of-turn tokens, so a
    reward model reads the answer as unfinished rather than as a complete turn.

    The response part is what follows the prompt tokens in the tokenised conversation (encoded separately
    only if BPE merges across the boundary, counted in stats.boundary_split). The response end is never cut:
    a reward model reads its score at the last token. If the prompt exceeds max_prompt_tokens or the total
    exceeds max_length, "truncate_left" cuts the prompt from the left (stats.truncated, once per
    conversation); "drop", or fewer than MIN_PROMPT_TOKENS prompt tokens left, gives None
    (stats.dropped_overlong).
    """
    parts = encode_conversation_parts(tokenizer, messages, response, max_length, max_prompt_tokens,
                                      overlong, stats, finished)
    return None if parts is None else parts[0] + parts[1]
