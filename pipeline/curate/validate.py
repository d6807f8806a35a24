"""Schema validation of raw chat records, with a reason code for every rejection."""

from __future__ import annotations

import json
from typing import Any

from pipeline.chat import ROLES

# Reason codes, in the order checks run. Each rejected line gets exactly one.
NON_UTF8 = "non_utf8"
BAD_JSON = "bad_json"
NOT_OBJECT = "not_object"
BAD_MESSAGES = "bad_messages"
BAD_MESSAGE = "bad_message"
UNKNOWN_ROLE = "unknown_role"
MISSING_ASSISTANT = "missing_assistant"
EMPTY_CONTENT = "empty_content"
BAD_TEMPLATE = "bad_template"
TOO_LONG = "too_long"
EXACT_DUPLICATE = "exact_duplicate"
EVAL_CONTAMINATION = "eval_contamination"

REASONS = (NON_UTF8, BAD_JSON, NOT_OBJECT, BAD_MESSAGES, BAD_MESSAGE, UNKNOWN_ROLE, MISSING_ASSISTANT,
           EMPTY_CONTENT, BAD_TEMPLATE, TOO_LONG, EXACT_DUPLICATE, EVAL_CONTAMINATION)


class Rejected(Exception):
    def __init__(self, reason: str, detail: str):
        assert reason in REASONS, reason
        self.reason, self.detail = reason, detail
        super().__init__(f"{reason}: {detail}")


def parse_line(raw: bytes) -> dict[str, Any]:
    """Decode and schema-check one raw line; return the record or raise Rejected."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Rejected(NON_UTF8, f"invalid UTF-8 at byte {exc.start}") from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise Rejected(BAD_JSON, f"{exc.msg} at column {exc.colno}") from None
    if not isinstance(obj, dict):
        raise Rejected(NOT_OBJECT, f"top-level JSON value is {type(obj).__name__}, not an object")
    messages = obj.get("messages")
    if not isinstance(messages, list) or not messages:
        raise Rejected(BAD_MESSAGES, "`messages` must be a non-empty list")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise Rejected(BAD_MESSAGE, f"message {i} must be an object with string role and content")
        if m["role"] not in ROLES:
            raise Rejected(UNKNOWN_ROLE, f"message {i} has role {m['role']!r}; allowed: {', '.join(ROLES)}")
        if "\x00" in m["content"]:
            raise Rejected(BAD_MESSAGE, f"message {i} contains a NUL character")
    if messages[-1]["role"] != "assistant":
        raise Rejected(MISSING_ASSISTANT, "the last message must be the assistant's reply")
    if not any(m["role"] == "user" for m in messages):
        raise Rejected(BAD_MESSAGES, "no user message")
    for i, m in enumerate(messages):
        if not m["content"].strip():
            raise Rejected(EMPTY_CONTENT, f"message {i} ({m['role']}) is empty")
    return obj


def normalise(text: str) -> str:
    """Whitespace- and case-insensitive form used for exact dedup and decontamination."""
    return " ".join(text.split()).casefold()


def content_key(messages: list[dict]) -> str:
    return json.dumps([[m["role"], normalise(m["content"])] for m in messages], ensure_ascii=False)
