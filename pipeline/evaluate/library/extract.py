"""Finding the JSON value in a model answer: `extract_json`, shared by every JSON scorer."""

from __future__ import annotations

import json
import re
from typing import Any, Iterator


def _reject_constant(name: str):
    raise ValueError(f"{name} is not JSON")


# Strict JSON: Python's NaN / Infinity / -Infinity extensions are refused.
_DECODER = json.JSONDecoder(parse_constant=_reject_constant)
_FENCE = re.compile(r"```[ \t]*([^\s`]*)[^\n`]*\n(.*?)```", re.DOTALL)
_NOTHING = object()
_OPEN = re.compile(r"[\[{]")
_STRUCTURE = re.compile(r'[\[\]{}"]')
_IN_STRING = re.compile(r'["\\\x00-\x1f]')
_OPENER = {"}": "{", "]": "["}
# Bound on the scan's work (characters handed to the parser, plus a charge per attempt), so that
# a huge answer full of brackets cannot take long; a real answer never comes near it.
_SCAN_BUDGET = 4_000_000
_MAX_STRUCTURE = 500_000
_ATTEMPT_COST = 200


def _parse_whole(text: str) -> Any:
    """The JSON value `text` is, or _NOTHING (never raises on model output)."""
    try:
        value, end = _DECODER.raw_decode(text)
    except (ValueError, RecursionError):  # JSONDecodeError, an over-long integer, NaN, deep nesting
        return _NOTHING
    return value if end == len(text) else _NOTHING


def _balanced_spans(text: str, objects_only: bool) -> Iterator[tuple[int, int]]:
    """(start, end) of every balanced {...} / [...] span, in order of start, found in one pass
    (each outermost span's group is yielded as soon as it closes, so the first answer object
    is tried before the rest of a long answer is read). Quotes matter only inside a bracket
    (prose may have stray ones); inside, JSON strings are skipped with their escapes. A
    mismatched closer, or a raw control character inside a string, means no enclosing span can
    be JSON, so the open brackets are dropped. Stops after _MAX_STRUCTURE brackets and quotes."""
    spans: list[tuple[int, int]] = []
    stack: list[tuple[int, str]] = []
    pos = 0
    for _ in range(_MAX_STRUCTURE):
        m = (_STRUCTURE if stack else _OPEN).search(text, pos)
        if m is None:
            break
        ch, pos = m.group(), m.end()
        if ch == '"':
            while True:
                c = _IN_STRING.search(text, pos)
                if c is None:  # the answer ends inside a string
                    yield from sorted(spans)
                    return
                pos = c.end()
                if c.group() == "\\":
                    pos += 1
                    continue
                if c.group() != '"':
                    stack.clear()
                break
        elif ch in "[{":
            stack.append((m.start(), ch))
            continue
        else:
            start, opener = stack.pop()
            if opener != _OPENER[ch]:
                stack.clear()
            elif opener == "{" or not objects_only:
                spans.append((start, pos))
        if not stack and spans:
            yield from sorted(spans)
            spans = []
    yield from sorted(spans)


def extract_json(text: str, objects_only: bool = False, scan: bool = True) -> tuple[bool, Any]:
    """Find the JSON value in a model answer, as a user reading it would:

    1. the whole answer, stripped of surrounding whitespace;
    2. else the contents of the first fenced block marked ```json or unmarked ```;
    3. else (when `scan`) the first balanced {...} or [...] span that parses, trying spans from
       the left (only {...} when `objects_only`, so prose like "see [1]" or a list before the
       object does not hide it).

    Strict JSON: NaN and Infinity are refused. Returns (found, value): (False, None) when there
    is none. Never raises on any string, and stays fast on huge ones (the scan gives up after
    about 4 million characters of failed candidates)."""
    stripped = text.strip()
    value = _parse_whole(stripped)
    if value is not _NOTHING:
        return True, value
    if "```" in stripped:
        for m in _FENCE.finditer(stripped):
            if m.group(1).lower() in ("", "json"):
                value = _parse_whole(m.group(2).strip())
                if value is not _NOTHING:
                    return True, value
                break
    if not scan:
        return False, None
    budget = _SCAN_BUDGET
    for start, end in _balanced_spans(stripped, objects_only):
        if (start, end) == (0, len(stripped)):
            continue  # the whole answer, tried above
        value = _parse_whole(stripped[start:end])
        if value is not _NOTHING:
            return True, value
        budget -= end - start + _ATTEMPT_COST
        if budget <= 0:
            break
    return False, None


__all__ = ["extract_json"]
