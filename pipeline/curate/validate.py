"""Schema validation of raw records, with a reason code for every rejection.

A record arrives as a raw JSONL line (bytes) or as a row of a Parquet/CSV file (a dict) and
leaves as a chat: a list of {role, content} messages ending in the assistant's reply, plus its
id and slice. Records in prompt/completion shape are converted here, so every later check sees
one shape.
"""

from __future__ import annotations

import json
from typing import Any, NamedTuple

from pipeline.chat import ROLES

# Reason codes, in the order the checks run (the report lists them in this order). Each rejected
# record gets exactly one: the first check it fails, so the more specific checks come first.
LINE_TOO_LONG = "line_too_long"          # reader: longer than max_line_bytes, never read whole
UNREADABLE_FILE = "unreadable_file"      # reader: the file cannot be read on from here (rest of file lost)
BAD_ROW = "bad_row"                      # reader: a CSV row whose field count differs from the header's
NON_UTF8 = "non_utf8"
NUL_CHARACTER = "nul_character"
BAD_JSON = "bad_json"
NOT_OBJECT = "not_object"
BAD_FIELD = "bad_field"                  # `id` / `slice` of a type the outputs cannot carry
BAD_MESSAGES = "bad_messages"
BAD_MESSAGE = "bad_message"
UNKNOWN_ROLE = "unknown_role"
MISSING_ASSISTANT = "missing_assistant"
EMPTY_CONTENT = "empty_content"
REPETITIVE = "repetitive"
SYMBOL_RATIO = "symbol_ratio"
COPIED_PROMPT = "copied_prompt"
BAD_TEMPLATE = "bad_template"
TOO_SHORT = "too_short"
TOO_LONG = "too_long"
EXACT_DUPLICATE = "exact_duplicate"
EVAL_CONTAMINATION = "eval_contamination"
NEAR_DUPLICATE = "near_duplicate"

REASONS = (LINE_TOO_LONG, UNREADABLE_FILE, BAD_ROW, NON_UTF8, NUL_CHARACTER, BAD_JSON, NOT_OBJECT, BAD_FIELD,
           BAD_MESSAGES, BAD_MESSAGE, UNKNOWN_ROLE, MISSING_ASSISTANT, EMPTY_CONTENT, REPETITIVE, SYMBOL_RATIO,
           COPIED_PROMPT, BAD_TEMPLATE, TOO_SHORT, TOO_LONG, EXACT_DUPLICATE, EVAL_CONTAMINATION, NEAR_DUPLICATE)


class Rejected(Exception):
    def __init__(self, reason: str, detail: str):
        assert reason in REASONS, reason
        self.reason, self.detail = reason, detail
        super().__init__(f"{reason}: {detail}")


class Record(NamedTuple):
    id: str | None
    slice: str
    messages: list[dict[str, str]]


def parse_line(raw: bytes) -> Any:
    """Decode one raw JSONL line into a JSON value or raise Rejected."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Rejected(NON_UTF8, f"invalid UTF-8 at byte {exc.start}") from None
    if "\x00" in text:
        raise Rejected(NUL_CHARACTER, f"NUL byte at character {text.index(chr(0))}")
    try:
        # strict=False: raw control characters (a literal tab) inside strings are common in
        # exports and harmless; json.loads would otherwise reject the whole record.
        return json.loads(text, strict=False)
    except json.JSONDecodeError as exc:
        raise Rejected(BAD_JSON, f"{exc.msg} (column {exc.colno})") from None
    except RecursionError:
        raise Rejected(BAD_JSON, "nested deeper than the JSON parser's recursion limit") from None
    except ValueError as exc:  # e.g. an integer literal past Python's int-string conversion limit
        raise Rejected(BAD_JSON, str(exc)[:200]) from None


def _encodable(text: str) -> bool:
    # A JSON "\ud800" escape decodes to a lone surrogate, which no UTF-8 output file can hold.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _turns(value: Any, field: str, role: str) -> list:
    """A prompt or completion: a string (one turn of `role`) or a list of messages."""
    if isinstance(value, str):
        return [{"role": role, "content": value}]
    if isinstance(value, list):
        return value
    raise Rejected(BAD_MESSAGE, f"`{field}` must be a string or a list of messages, not {type(value).__name__}")


def _messages_of(obj: dict, fmt: str, system: str | None, tabular: bool) -> Any:
    messages, prompt, completion = obj.get("messages"), obj.get("prompt"), obj.get("completion")
    if fmt == "messages" or (fmt == "auto" and messages is not None):
        if tabular and isinstance(messages, str):
            # a CSV cell holds text: a chat column is its JSON
            try:
                messages = json.loads(messages)
            except (ValueError, RecursionError):
                raise Rejected(BAD_MESSAGES, "`messages` cell is not a JSON list") from None
        return messages
    if fmt == "prompt_completion" or (fmt == "auto" and (prompt is not None or completion is not None)):
        if prompt is None:
            raise Rejected(BAD_MESSAGES, "prompt/completion record without a `prompt`")
        if completion is None:
            raise Rejected(MISSING_ASSISTANT, "prompt/completion record without a `completion`")
        turns = _turns(prompt, "prompt", "user") + _turns(completion, "completion", "assistant")
        if system is not None and not (turns and isinstance(turns[0], dict) and turns[0].get("role") == "system"):
            turns.insert(0, {"role": "system", "content": system})
        return turns
    raise Rejected(BAD_MESSAGES, "record has neither `messages` nor `prompt`/`completion`")


def _slice_of(obj: dict) -> str | None:
    """The record's slice ("default" when it names none), or None when the field is unusable."""
    slc = obj.get("slice")
    if slc is None:
        return "default"
    return slc if isinstance(slc, str) and _encodable(slc) else None


def slice_hint(obj: Any) -> str | None:
    """The slice of a decoded record that may fail validation: the per-slice counts charge a
    malformed record to its slice when its `slice` field is readable. None otherwise."""
    return _slice_of(obj) if isinstance(obj, dict) else None


def to_record(obj: Any, fmt: str = "auto", system: str | None = None, tabular: bool = False) -> Record:
    """Schema-check one decoded record and return it as a chat, or raise Rejected."""
    if not isinstance(obj, dict):
        raise Rejected(NOT_OBJECT, f"top-level JSON value is {type(obj).__name__}, not an object")
    rid = obj.get("id")
    if isinstance(rid, int) and not isinstance(rid, bool):
        rid = str(rid)
    if rid is not None and not (isinstance(rid, str) and _encodable(rid)):
        raise Rejected(BAD_FIELD, f"`id` must be a string or an integer, not {type(rid).__name__}")
    slc = _slice_of(obj)
    if slc is None:
        raise Rejected(BAD_FIELD, f"`slice` must be a string, not {type(obj['slice']).__name__}")
    messages = _messages_of(obj, fmt, system, tabular)
    if not isinstance(messages, list) or not messages:
        raise Rejected(BAD_MESSAGES, "`messages` must be a non-empty list")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise Rejected(BAD_MESSAGE, f"message {i} must be an object with string role and content")
        if m["role"] not in ROLES:
            raise Rejected(UNKNOWN_ROLE, f"message {i} has role {m['role'][:40]!r}; allowed: {', '.join(ROLES)}")
        if "\x00" in m["content"]:
            raise Rejected(NUL_CHARACTER, f"message {i} contains a NUL character")
        if not _encodable(m["content"]):
            raise Rejected(NON_UTF8, f"message {i} contains a lone surrogate (an invalid \\u escape)")
    if messages[-1]["role"] != "assistant":
        raise Rejected(MISSING_ASSISTANT, "the last message must be the assistant's reply")
    if not any(m["role"] == "user" for m in messages):
        raise Rejected(BAD_MESSAGES, "no user message")
    for i, m in enumerate(messages):
        if not m["content"].strip():
            raise Rejected(EMPTY_CONTENT, f"message {i} ({m['role']}) is empty")
    # Only role and content travel on: extra keys (name, tool_calls...) are not part of the template.
    return Record(rid, slc, [{"role": m["role"], "content": m["content"]} for m in messages])
