"""Exact and near-duplicate removal, streaming: the first record of a group is kept.

Exact: a 16-byte blake2b digest of the (scrubbed) roles and contents, so memory is a few dozen
bytes per kept record whatever the record size. Byte-exact on purpose: a copy that differs
only in whitespace or case is a near duplicate and is reported as one.

Near: MinHash LSH from datasketch over word n-grams (shingles) of the user and assistant turns
(text.SIGNATURE_ROLES: a system turn that every record shares would make short records look
alike). A record with fewer words than the n-gram size is one shingle, its whole word sequence,
so two short records are near duplicates only when their words are the same; an empty shingle
set would give every such record a MinHash equal to every other's. Each record's MinHash queries
the index of kept records; a candidate counts only when the estimated Jaccard
similarity reaches the threshold (LSH buckets are approximate in both directions), and only
kept records are inserted, so a cluster is one kept representative plus the near copies it
caused to be quarantined.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from typing import Sequence

import numpy as np
import xxhash
from datasketch import LeanMinHash, MinHash, MinHashLSH

from pipeline.curate.text import Grams, ngram_hashes, normalise
from pipeline.params import CurateNearDupParams

_MINHASH_SEED = 1  # fixed: the permutations, hence every estimate, must be the same on every run


def content_digest(messages: list[dict]) -> bytes:
    """16-byte digest of the roles and contents, each length-prefixed so no two conversations
    share an encoding."""
    h = hashlib.blake2b(digest_size=16)
    for m in messages:
        for part in (m["role"].encode("utf-8"), m["content"].encode("utf-8")):
            h.update(len(part).to_bytes(8, "little"))
            h.update(part)
    return h.digest()


def shingles(grams: Grams, n: int, turns: Sequence[str] = ()) -> np.ndarray:
    """The near-duplicate shingles of a record's signature turns: their word n-grams, or the whole
    word sequence as one shingle when it is shorter than n, or, with no words at all (only
    punctuation), the hash of the turns' whitespace- and case-normalised text."""
    words = grams.words()
    if len(words) >= n:
        return grams.all(n)
    if len(words):
        return ngram_hashes(words, len(words))
    text = "\n".join(normalise(t) for t in turns)
    return np.array([xxhash.xxh3_64_intdigest(text.encode("utf-8", "surrogatepass"))], dtype=np.uint64)


class ExactDedup:
    def __init__(self):
        self.first: dict[bytes, int] = {}  # digest -> index of the kept record (in NearDedup.kept order)

    def seen(self, digest: bytes) -> int | None:
        return self.first.get(digest)

    def add(self, digest: bytes, index: int) -> None:
        self.first[digest] = index


class MinHasher:
    """MinHash values of a shingle set (runs in the worker processes)."""

    def __init__(self, p: CurateNearDupParams):
        # Shingles arrive already hashed (text.ngram_hashes); datasketch mixes them again (fmix)
        # before permuting, so its `hashfunc` hook only has to pass the 32-bit values through.
        self._template = MinHash(num_perm=p.num_perm, seed=_MINHASH_SEED, hashfunc=int)

    def values(self, shingles: np.ndarray) -> np.ndarray:
        m = self._template.copy()
        if len(shingles):
            # 64-bit shingle hashes -> the 32 bits datasketch's default affine32 scheme takes
            m.update_batch((shingles >> np.uint64(32)).astype(np.uint32).tolist())
        return m.hashvalues


class NearDedup:
    """The LSH index of kept records and the clusters found (main process, in input order)."""

    def __init__(self, p: CurateNearDupParams):
        self.p = p
        self.lsh = MinHashLSH(threshold=p.threshold, num_perm=p.num_perm)
        self.scheme = MinHash(num_perm=p.num_perm, seed=_MINHASH_SEED).scheme
        self.sketches: dict[int, LeanMinHash] = {}     # kept record index -> its MinHash
        self.clusters: dict[int, list[tuple[str, float]]] = {}  # representative -> [("file:line", jaccard)]

    def sketch(self, values: np.ndarray) -> LeanMinHash:
        return LeanMinHash(seed=_MINHASH_SEED, hashvalues=values, scheme=self.scheme)

    def match(self, m: LeanMinHash) -> tuple[int, float] | None:
        """(kept index, estimated Jaccard) of the most similar kept record at or above threshold."""
        best = None
        for key in sorted(self.lsh.query(m)):
            j = self.sketches[key].jaccard(m)
            if j >= self.p.threshold and (best is None or j > best[1]):
                best = (key, j)
        return best

    def add(self, index: int, m: LeanMinHash) -> None:
        self.lsh.insert(index, m, check_duplication=False)
        self.sketches[index] = m

    def record_duplicate(self, representative: int, duplicate_ref: str, jaccard: float) -> None:
        self.clusters.setdefault(representative, []).append((duplicate_ref, jaccard))

    def summary(self, refs: list[str], examples: int = 3) -> dict:
        """Clusters (a kept record and its quarantined near copies), their sizes, the largest few."""
        sizes = Counter(1 + len(d) for d in self.clusters.values())
        largest = sorted(self.clusters.items(), key=lambda kv: (-len(kv[1]), kv[0]))[:examples]
        return {
            "enabled": True, "threshold": self.p.threshold, "ngram": self.p.ngram, "num_perm": self.p.num_perm,
            "lsh_bands": self.lsh.b, "lsh_rows": self.lsh.r,
            "clusters": len(self.clusters),
            "duplicates": sum(len(d) for d in self.clusters.values()),
            "cluster_sizes": {str(k): v for k, v in sorted(sizes.items())},
            "examples": [{"kept": refs[rep], "near_duplicates": [{"ref": d, "jaccard": round(j, 4)}
                                                                for d, j in dups]} for rep, dups in largest],
        }
