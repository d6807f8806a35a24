"""The fast word and n-gram features equal their plain definitions."""

from __future__ import annotations

import re

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.curate.quality import repeated_ngram_fraction, visible_and_alpha
from pipeline.curate.text import Grams, ngram_hashes, utf8_words, word_hashes, words

SETTINGS = settings(max_examples=300, deadline=None)
# Text with the characters that make word splitting hard: accents, combining marks, degree signs,
# non-breaking and ideographic spaces, dotted/dotless i, ligatures, ASCII control characters.
TRICKY = st.text(st.one_of(st.characters(), st.sampled_from(list("aZ9_ .,-/°é\u0301\u00a0\u3000İıﬁß\x1c\x1f\t\n"))),
                 max_size=200)
HASHES = st.lists(st.integers(0, 2**64 - 1), max_size=60).map(lambda xs: np.array(xs, dtype=np.uint64))


@given(TRICKY)
@SETTINGS
def test_utf8_words_equal_the_unicode_regex(text):
    assert utf8_words(text) == [w.encode("utf-8") for w in re.findall(r"\w+", text.casefold())]
    assert len(word_hashes(text)) == len(words(text))


def _reference_ngrams(h: np.ndarray, n: int) -> list[int]:
    mul, mask = 0x9E3779B97F4A7C15, 2**64 - 1
    out = []
    for i in range(len(h) - n + 1):
        acc = 0
        for k in range(n):
            acc = (acc * mul + int(h[i + k])) & mask
        out.append(acc)
    return out


@given(HASHES, st.integers(1, 13))
@SETTINGS
def test_prefix_sum_ngram_hashes_equal_the_polynomial(h, n):
    assert ngram_hashes(h, n).tolist() == _reference_ngrams(h, n)


@given(st.lists(st.sampled_from(["a", "b", "c", "the", "pt"]), max_size=60), st.integers(1, 6))
@SETTINGS
def test_repeated_fraction_counts_repeats_of_earlier_ngrams(tokens, n):
    grams = [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
    expected = (len(grams) - len(set(grams))) / len(grams) if grams else 0.0
    assert repeated_ngram_fraction(ngram_hashes(word_hashes(" ".join(tokens)), n)) == expected


@given(TRICKY)
@SETTINGS
def test_visible_and_alpha_equal_the_per_character_counts(text):
    assert visible_and_alpha(text) == (sum(not c.isspace() for c in text), sum(c.isalpha() for c in text))


@given(st.lists(TRICKY, min_size=1, max_size=4), st.integers(1, 6))
@SETTINGS
def test_per_message_ngrams_never_cross_a_message_boundary(texts, n):
    hs = [word_hashes(t) for t in texts]
    grams = Grams(hs)
    assert [g.tolist() for g in grams.per_message(n)] == [ngram_hashes(h, n).tolist() for h in hs]
    assert grams.all(n).tolist() == ngram_hashes(np.concatenate(hs), n).tolist()
