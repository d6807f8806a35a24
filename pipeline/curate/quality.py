"""Quality heuristics: cheap, explainable checks that catch what a schema cannot.

Each check returns None for a record that passes, or a human-readable detail for one that
fails; the caller attaches the reason code. The measures are standard in corpus filtering
(repeated n-grams, the share of alphabetic characters, a reply that only echoes its prompt)
and their thresholds live in params (`curate.quality`), so a team tunes them on its own notes
and sees in the report what each one removed. They work on the word hashes of
pipeline/curate/text.py, computed once per message.
"""

from __future__ import annotations

import re

import numpy as np

from pipeline.curate.text import Grams, normalise
from pipeline.params import CurateQualityParams

# ASCII characters str.isspace / str.isalpha accept (isspace also takes \x1c-\x1f): deleting them
# with bytes.translate counts them at C speed, exactly as the per-character methods would.
_ASCII_SPACE = bytes(c for c in range(128) if chr(c).isspace())
_ASCII_ALPHA = bytes(c for c in range(128) if chr(c).isalpha())
_NON_ASCII = re.compile(r"[^\x00-\x7f]")


def repeated_ngram_fraction(grams: np.ndarray) -> float:
    """Share of a text's word n-grams (hashes, in order) that repeat an earlier one (0 for none)."""
    if not len(grams):
        return 0.0
    s = np.sort(grams)
    distinct = 1 + int(np.count_nonzero(s[1:] != s[:-1]))
    return (len(grams) - distinct) / len(grams)


def visible_and_alpha(text: str) -> tuple[int, int]:
    """(non-space characters, letters) as str.isspace / str.isalpha count them."""
    b = text.encode("ascii", "ignore")  # the ASCII characters, counted at C speed
    visible = len(b.translate(None, _ASCII_SPACE))
    alpha = len(b) - len(b.translate(None, _ASCII_ALPHA))
    if len(b) < len(text):  # the few others one by one
        rest = _NON_ASCII.findall(text)
        visible += len(rest) - sum(map(str.isspace, rest))
        alpha += sum(map(str.isalpha, rest))
    return visible, alpha


def alpha_fraction(text: str) -> float:
    """Letters among the non-space characters (1.0 for text that has none)."""
    visible, alpha = visible_and_alpha(text)
    return alpha / visible if visible else 1.0


def check_repetition(messages: list[dict], grams: Grams, p: CurateQualityParams) -> str | None:
    for i, (m, h, g) in enumerate(zip(messages, grams.word_hs, grams.per_message(p.repetition_ngram))):
        if len(h) < p.min_words:
            continue  # too short for the fraction to mean anything
        frac = repeated_ngram_fraction(g)
        if frac > p.max_repeated_ngram_fraction:
            return (f"message {i} ({m['role']}): {frac:.0%} of its word {p.repetition_ngram}-grams repeat "
                    f"(max {p.max_repeated_ngram_fraction:.0%})")
    return None


def check_alpha(messages: list[dict], p: CurateQualityParams) -> str | None:
    for i, m in enumerate(messages):
        visible, alpha = visible_and_alpha(m["content"])
        if visible < p.min_visible_chars:
            continue
        if alpha / visible < p.min_alpha_fraction:
            return (f"message {i} ({m['role']}): only {alpha / visible:.0%} of its characters are letters "
                    f"(min {p.min_alpha_fraction:.0%})")
    return None


def check_copied_prompt(messages: list[dict], grams: Grams, p: CurateQualityParams) -> str | None:
    """The reply repeats its prompt instead of answering it.

    The same words as a user turn (case, spacing and punctuation aside), or a share of the
    reply's word n-grams found in the user turns above the limit: a summary quotes a phrase or
    two of its note, an echo quotes nearly all of it. A reply shorter than n words is judged by
    the first test only.
    """
    users = [i for i, m in enumerate(messages[:-1]) if m["role"] == "user"]
    reply_words = grams.word_hs[-1]
    if len(reply_words):
        if any(np.array_equal(reply_words, grams.word_hs[i]) for i in users):
            return "the reply is a user turn, verbatim"
    elif any(normalise(messages[-1]["content"]) == normalise(messages[i]["content"]) for i in users):
        return "the reply is a user turn, verbatim"
    per_message = grams.per_message(p.copy_ngram)
    reply_grams = per_message[-1]
    if not len(reply_grams):
        return None
    prompt_grams = np.sort(np.concatenate([per_message[i] for i in users]))
    if not len(prompt_grams):
        return None
    at = np.minimum(np.searchsorted(prompt_grams, reply_grams), len(prompt_grams) - 1)
    copied = float(np.mean(prompt_grams[at] == reply_grams))
    if copied > p.max_copied_ngram_fraction:
        return (f"{copied:.0%} of the reply's word {p.copy_ngram}-grams are copied from the prompt "
                f"(max {p.max_copied_ngram_fraction:.0%})")
    return None


def check(messages: list[dict], grams: Grams, p: CurateQualityParams) -> tuple[str, str] | None:
    """(reason, detail) of the first failing heuristic, in the order reasons are reported."""
    if detail := check_repetition(messages, grams, p):
        return "repetitive", detail
    if detail := check_alpha(messages, p):
        return "symbol_ratio", detail
    if detail := check_copied_prompt(messages, grams, p):
        return "copied_prompt", detail
    return None
