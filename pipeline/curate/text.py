"""Word features shared by the quality heuristics, MinHash dedup and decontamination.

A message is turned into words once (case-folded, punctuation dropped: `\\w+`) and each word
into a 64-bit hash once; every n-gram measure downstream works on those hashes with numpy, so
the per-record cost is a few array operations instead of a Python loop per n-gram, and memory
holds 8 bytes per n-gram instead of its text.
"""

from __future__ import annotations

import re

import numpy as np
import xxhash

_WORD = re.compile(r"\w+")
_NON_ASCII = re.compile(r"[^\x00-\x7f]")
_EMPTY = np.zeros(0, dtype=np.uint64)
# Odd multiplier of the polynomial n-gram hash. Odd, so it is invertible modulo 2**64 and distinct
# n-grams of random word hashes collide with probability about 2**-64.
_MUL = 0x9E3779B97F4A7C15
_INV = pow(_MUL, -1, 2**64)
_WORD_CACHE_MAX = 1 << 20  # distinct words remembered; past that, words are hashed each time

# The turns that near-duplicate and decontamination signatures are computed on. A system turn is
# left out: it is usually one instruction every record shares (curate.system puts the same one
# before every prompt/completion record), and in short records it outweighed the content, so
# 406 of 430 short tickets became "near duplicates" of each other through it alone.
SIGNATURE_ROLES = ("user", "assistant")


class _WordHashes(dict):
    """UTF-8 word -> stable 64-bit hash (xxh3; unlike hash() it is the same in every process),
    memoised up to a bound so that memory stays flat on an open vocabulary."""

    def __missing__(self, word: bytes) -> int:
        h = xxhash.xxh3_64_intdigest(word)
        if len(self) < _WORD_CACHE_MAX:
            self[word] = h
        return h


_word_hash = _WordHashes()


class _Powers:
    """MUL**k and MUL**-k modulo 2**64 for k < len, grown on demand (numpy uint64 wraps)."""

    def __init__(self):
        self.pos = self.neg = np.ones(1, dtype=np.uint64)

    def ensure(self, size: int) -> None:
        if len(self.pos) >= size:
            return
        size = max(size, 2 * len(self.pos))
        one = np.ones(1, dtype=np.uint64)  # a uint64 1: with a Python int numpy would promote to float64
        self.pos = np.concatenate((one, np.cumprod(np.full(size - 1, _MUL, dtype=np.uint64))))
        self.neg = np.concatenate((one, np.cumprod(np.full(size - 1, _INV, dtype=np.uint64))))


_powers = _Powers()


def normalise(text: str) -> str:
    """Whitespace- and case-insensitive form (exact-copy checks)."""
    return " ".join(text.split()).casefold()


def words(text: str) -> list[str]:
    return _WORD.findall(text.casefold())


# ASCII bytes that are not word characters -> space; every other byte (word characters and the
# bytes of non-ASCII characters) is kept.
_ASCII_NONWORD_TO_SPACE = bytes(c if c >= 128 or chr(c).isalnum() or c == ord("_") else 32 for c in range(256))


def utf8_words(text: str) -> list[bytes]:
    """words(text), UTF-8 encoded, computed on bytes (about 3x faster than the regex).

    Non-ASCII characters that are not word characters (a degree sign, a dash, a combining
    mark) become spaces first; then every byte >= 128 belongs to a word character, and ASCII
    separators split the bytes at C speed. The result is exactly words(text)
    (tests/unit/test_curate_text.py checks it).
    """
    low = text.casefold()
    if not low.isascii():
        for c in set(_NON_ASCII.findall(low)):
            if not (c.isalnum() or c == "_"):  # what \w means for str patterns
                low = low.replace(c, " ")
    return low.encode("utf-8").translate(_ASCII_NONWORD_TO_SPACE).split()


def word_hashes(text: str) -> np.ndarray:
    """uint64 hash of every word of `text`, in order."""
    ws = utf8_words(text)
    return np.fromiter(map(_word_hash.__getitem__, ws), dtype=np.uint64, count=len(ws))


def sequence_key(word_h: np.ndarray) -> int | None:
    """64-bit key of a whole word sequence (None for no words): two texts get the same key when
    they are equal up to case, whitespace and punctuation."""
    if not len(word_h):
        return None
    return xxhash.xxh3_64_intdigest(np.ascontiguousarray(word_h, dtype="<u8").tobytes())


def ngram_hashes(word_h: np.ndarray, n: int) -> np.ndarray:
    """uint64 hash of every contiguous word n-gram (empty when there are fewer than n words).

    The hash of words w[i..i+n) is sum_k w[i+k] * MUL**(n-1-k) mod 2**64. Computed from one
    prefix sum of w[t] * MUL**-t, so the cost is a handful of array operations whatever n is:
    hash_i = MUL**(i+n-1) * (C[i+n] - C[i]).
    """
    total = len(word_h) - n + 1
    if total <= 0:
        return _EMPTY
    _powers.ensure(len(word_h) + 1)
    prefix = np.zeros(len(word_h) + 1, dtype=np.uint64)
    np.cumsum(word_h * _powers.neg[:len(word_h)], out=prefix[1:])
    return (prefix[n:] - prefix[:total]) * _powers.pos[n - 1:n - 1 + total]


class Grams:
    """A record's per-message word hashes and, computed once per size n, its n-gram hashes.

    Each size is hashed once over the concatenated words of all messages; a message's own
    n-grams are a slice of that array (the windows that start and end inside it).
    """

    __slots__ = ("word_hs", "_offsets", "_words", "_cache")

    def __init__(self, word_hs: list[np.ndarray]):
        self.word_hs = word_hs
        self._offsets = np.cumsum([0] + [len(h) for h in word_hs]).tolist()
        self._words = np.concatenate(word_hs) if word_hs else _EMPTY
        self._cache: dict[int, np.ndarray] = {}

    def all(self, n: int) -> np.ndarray:
        """Every n-gram of the concatenated messages (repeats included; some cross a boundary).

        Enough for set measures against n-grams of other texts (MinHash, eval lookups): a
        cross-boundary n-gram only matches where the same words occur in a row elsewhere.
        """
        if n not in self._cache:
            self._cache[n] = ngram_hashes(self._words, n)
        return self._cache[n]

    def words(self) -> np.ndarray:
        """The word hashes of all messages, in order."""
        return self._words

    def per_message(self, n: int) -> list[np.ndarray]:
        grams, off = self.all(n), self._offsets
        return [grams[a:b - n + 1] if b - a >= n else _EMPTY for a, b in zip(off, off[1:])]
