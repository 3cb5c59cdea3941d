"""Preference data as every room sees it: `PreferencePair`, the counts reported to the user, the split by prompt,
and encoding prompts and conversations into token ids with the chat template. Reading a data set's rows (files,
the hub) and their formats (TRL's, HelpSteer2_binarized's) belongs to the tasks (tasks/files.py, tasks/formats.py,
tasks/preference.py).

Text is normalised by stripping surrounding whitespace from every turn and response (this also keeps the
token boundary between prompt and response stable under BPE).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass

from common.errors import UserError

MIN_PROMPT_TOKENS = 8  # encode_conversation drops a pair rather than keep fewer prompt tokens than this


class DataError(UserError, ValueError):
    """A data file, hub data set or row is unusable; the message names where (file/hub id, row, field)."""


@dataclass(frozen=True)
class PreferencePair:
    """One prompt (chat messages ending with a user turn) with a preferred and a dispreferred response, and the
    data set's ratings of the two (None for a data set without ratings)."""
    prompt: tuple[dict, ...]
    chosen: str
    rejected: str
    chosen_rating: float | None = None
    rejected_rating: float | None = None

    @property
    def rated(self) -> bool:
        return self.chosen_rating is not None and self.rejected_rating is not None

    @property
    def prompt_key(self) -> str:
        """Canonical JSON of the prompt messages: equal prompts give equal keys (splitting, dedup)."""
        return messages_key(self.prompt)


@dataclass
class DataStats:
    """Counts reported to the user (and saved as JSON by callers). Token counts are per conversation."""
    rows: int = 0                # raw rows read
    pairs: int = 0               # rows that became PreferencePairs
    prompts: int = 0             # rows of a prompt-only data set that became prompts
    skipped_bad: int = 0         # malformed rows skipped (bad_rows="skip")
    multi_turn: int = 0          # prompts with several user turns (parsed from inline markers)
    merged_turns: int = 0        # consecutive same-role turns in a prompt joined into one
    repeated_user_turn: int = 0  # chosen/rejected lists that repeated the context before the response
    context_mismatch: int = 0    # ... where that repeated context differed from the `prompt` field
    equal_ratings: int = 0       # pairs with chosen_rating == rejected_rating: ties (kept, docs/data.md says why)
    identical_responses: int = 0  # pairs whose chosen and rejected are the same text (dropped: no preference)
    duplicate_pairs: int = 0     # pairs repeating an earlier one's prompt, chosen and rejected (dropped; one kept)
    system_prompts: int = 0      # pairs or prompts whose prompt starts with a system message (kept)
    truncated: int = 0           # prompts/conversations cut from the left
    dropped_overlong: int = 0    # prompts/conversations dropped for length
    dropped_overlong_pairs: int = 0  # pairs left out of reward-model training because a side was dropped for length
    boundary_split: int = 0      # conversations whose prompt/response token boundary needed separate encoding
    origin: str = ""             # where the rows were read (file, directory or hub id), for messages
    format: str = ""             # the rows' format (data.format, or the one detected from the columns)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------------------------- splitting


def _unit_hash(seed: int, key: str) -> float:
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
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
