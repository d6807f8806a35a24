"""Decontamination judges boilerplate per suite: a small suite's shared text stays boilerplate
for it however big the suites it is read with, and stays evidence for the others.

The case the pooled share got wrong: a small suite whose every item carries the same filler,
read beside a big suite that dilutes the filler's pooled share under max_eval_item_share. A
training record holding only the filler then "contained" every item of the small suite. And a
suite smaller than 1 / max_eval_item_share keeps what only one of its items holds.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from pipeline.curate.decontam import EvalIndex
from pipeline.curate.text import Grams, word_hashes
from pipeline.params import CurateDecontamParams

P = CurateDecontamParams(ngram=5, max_eval_item_share=0.05, min_overlap_fraction=0.5)
N_SMALL, N_BIG = 4, 100


def _words(rng: random.Random, n: int) -> str:
    return " ".join("".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(7)) for _ in range(n))


def _grams(text: str):
    return Grams([word_hashes(text)]).all(P.ngram)


def _two_suites(seed: int = 0) -> tuple[str, list[tuple[str, list[str]]], list[str]]:
    """(filler, items, suite of each item): every small item is the filler plus a few words of
    its own; one big item happens to hold the filler too."""
    rng = random.Random(seed)
    filler = _words(rng, 60)
    small = [(f"small/{i}", [f"{filler} {_words(rng, 20)}", _words(rng, 6)]) for i in range(N_SMALL)]
    big = [(f"big/{i}", [(f"{filler} " if i == 0 else "") + _words(rng, 40), _words(rng, 6)]) for i in range(N_BIG)]
    return filler, small + big, ["small"] * N_SMALL + ["big"] * N_BIG


def test_shared_filler_is_boilerplate_for_its_own_suite_whatever_the_other_suites():
    filler, items, suites = _two_suites()
    assert (N_SMALL + 1) / (N_SMALL + N_BIG) <= P.max_eval_item_share  # pooled, the filler is "rare"
    pooled = EvalIndex(P, items)                  # one suite: the old, pooled computation
    per_suite = EvalIndex(P, items, suites)
    record = _grams(f"{filler} and then a training answer of its own")
    assert {ref for ref, _ in pooled.leaks(record)} >= {f"small/{i}" for i in range(N_SMALL)}  # the old false alarm
    assert [ref for ref, _ in per_suite.leaks(record)] == ["big/0"]  # rare in big: still that item's text
    stats = {name: {k: s[k] for k in ("items", "boilerplate_ngrams", "undetectable_items")}
             for name, s in per_suite.stats["per_suite"].items()}
    assert stats["small"] == {"items": N_SMALL, "boilerplate_ngrams": 60 - P.ngram + 1, "undetectable_items": 0}
    assert stats["big"] == {"items": N_BIG, "boilerplate_ngrams": 0, "undetectable_items": 0}
    assert per_suite.stats["boilerplate_ngrams"] == 60 - P.ngram + 1 and pooled.stats["boilerplate_ngrams"] == 0


def test_a_copied_item_of_the_small_suite_is_still_caught():
    _filler, items, suites = _two_suites(seed=1)
    index = EvalIndex(P, items, suites)
    for ref, texts in items[:N_SMALL]:
        assert index.leaks(_grams(" ".join(texts)))[0] == (ref, 1.0)  # its own words are left to match


def test_one_suite_decides_as_before():
    """With a single suite the per-suite share is the pooled share: same boilerplate, same leaks
    (the default run's outputs stay byte-identical)."""
    _filler, items, _suites = _two_suites(seed=2)
    a, b = EvalIndex(P, items), EvalIndex(P, items, ["only"] * len(items))
    assert a.owner == b.owner and list(a.sizes) == list(b.sizes)
    assert {k: v for k, v in a.stats.items() if k != "per_suite"} == {k: v for k, v in b.stats.items()
                                                                       if k != "per_suite"}


def test_from_suites_reads_prompt_turns_and_reference_per_suite(tmp_path: Path):
    filler, items, suites = _two_suites(seed=3)
    for name, fmt in (("small", "prompt_completion"), ("big", "chat")):
        root = tmp_path / name
        root.mkdir()
        (root / "suite.yaml").write_text(f"name: {name}\nversion: 1\ndata: items.jsonl\nheadline_metric: exact_match\n"
                                         f"scorers: [exact_match]\ngenerate_task: {name}_gen\nslice_field: null\n")
        rows = []
        for (ref, (prompt, answer)), suite in zip(items, suites):
            if suite != name:
                continue
            rid = ref.split("/", 1)[1]
            rows.append({"id": rid, "prompt": prompt, "completion": answer} if fmt == "prompt_completion" else
                        {"id": rid, "messages": [{"role": "system", "content": "Be brief."},
                                                 {"role": "user", "content": prompt},
                                                 {"role": "assistant", "content": answer}]})
        (root / "items.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    index = EvalIndex.from_suites(P, tmp_path)
    # the prompt (its one user turn, not the chat item's system turn) is matched exactly too
    direct = EvalIndex(P, items, suites, prompts=[[texts[0]] for _, texts in items],
                       slices=[index.where[ref][1] for ref, _ in items])
    assert sorted(index.refs) == sorted(direct.refs) and set(index.stats["per_suite"]) == {"big", "small"}
    assert index.stats["exact_prompt"] == {"enabled": True, "prompts": N_SMALL + N_BIG, "boilerplate_prompts": 0}
    assert sorted(index.prompt_owner) == sorted(direct.prompt_owner)
    assert index.stats["per_suite"] == direct.stats["per_suite"]
    assert [ref for ref, _ in index.leaks(_grams(filler))] == ["big/0"]
    prompt, answer = items[N_SMALL + 5][1]  # the reference answer is indexed with the prompt
    assert index.leaks(_grams(prompt))[0][0] == "big/5" and index.leaks(_grams(prompt))[0][1] < 1.0
    assert index.leaks(_grams(f"{prompt} {answer}"))[0] == ("big/5", 1.0)
