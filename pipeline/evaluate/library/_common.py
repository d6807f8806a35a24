"""Helpers shared by the library scorers: answer normalisation and option checking.

Option values come from suite.yaml, so every check raises SuiteError with the scorer and option
named; an option the factory does not know is a TypeError raised by Python itself (the
factories take keyword-only options), which build_scorer reports as a SuiteError.
"""

from __future__ import annotations

import re
import string
import unicodedata
from typing import Any, Callable, Iterable

from pipeline.suites.spec import SuiteError

#: The normalisation steps a `normalize:` option may list. They always apply in this order,
#: whatever order the list gives: case, punctuation, articles, whitespace.
NORMALIZE_STEPS = ("case", "punctuation", "articles", "whitespace")

# ASCII punctuation that Unicode files under P* (the ASCII symbols $+<=>^`|~ are S* and stay).
_ASCII_PUNCT = str.maketrans("", "", "".join(c for c in string.punctuation
                                             if unicodedata.category(c).startswith("P")))
_ARTICLES = re.compile(r"\b(?:a|an|the)\b\s*", re.IGNORECASE)


def _drop_punctuation(text: str) -> str:
    if text.isascii():
        return text.translate(_ASCII_PUNCT)
    return "".join(ch for ch in text if not unicodedata.category(ch).startswith("P"))


def normalizer(scorer: str, steps: Any, default: Iterable[str]) -> Callable[[str], str]:
    """The text normalisation a `normalize:` option asks for (None = `default`).

    Steps: `case` (casefold), `punctuation` (drop every Unicode punctuation character, category
    P*; symbols such as $ or + stay), `articles` (drop the words a/an/the, any case, with the
    whitespace after them), `whitespace` (collapse runs of whitespace to one space, strip)."""
    steps = list(default) if steps is None else check_str_list(scorer, "normalize", steps)
    unknown = sorted(set(steps) - set(NORMALIZE_STEPS))
    if unknown:
        raise SuiteError(f"scorer {scorer}: unknown normalize step(s) {unknown}; known: {list(NORMALIZE_STEPS)}")
    chosen = frozenset(steps)

    def normalize(text: str) -> str:
        if "case" in chosen:
            text = text.casefold()
        if "punctuation" in chosen:
            text = _drop_punctuation(text)
        if "articles" in chosen:
            text = _ARTICLES.sub("", text)
        if "whitespace" in chosen:
            text = " ".join(text.split())
        return text

    return normalize


def check_bool(scorer: str, option: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise SuiteError(f"scorer {scorer}: option {option} must be true or false, not {value!r}")
    return value


def check_int(scorer: str, option: str, value: Any, minimum: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise SuiteError(f"scorer {scorer}: option {option} must be an integer >= {minimum}, not {value!r}")
    return value


def check_str_list(scorer: str, option: str, value: Any, nonempty_items: bool = False) -> list[str]:
    """A list of strings (a lone string is refused: `must: abc` is not `must: [a, b, c]`)."""
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise SuiteError(f"scorer {scorer}: option {option} must be a list of strings, not {value!r}")
    if nonempty_items and any(not v for v in value):
        raise SuiteError(f"scorer {scorer}: option {option} may not hold an empty string")
    return list(value)


def metric_suffix(key: str) -> str:
    """A key made safe for a metric name: lower case, anything outside [a-z0-9_] becomes `_`."""
    return re.sub(r"[^a-z0-9_]", "_", key.lower())
