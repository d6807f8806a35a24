"""The default filter thresholds, measured on the default raw data: every planted defect of a
kind is caught, no clean record is touched. Plus the rules behind decontamination and
near-duplicate clustering on small hand-made cases."""

from __future__ import annotations

import json
import re

import pytest

from pipeline.curate import quality
from pipeline.curate import validate as v
from pipeline.curate.decontam import EvalIndex
from pipeline.curate.checks import signature
from pipeline.curate.dedup import MinHasher, NearDedup, shingles
from pipeline.curate.text import Grams, word_hashes
from pipeline.params import CurateDecontamParams, CurateNearDupParams, CurateParams
from tests.conftest import REPO

P = CurateParams()


@pytest.fixture(scope="module")
def raw():
    """line -> messages of every parseable raw line, and line -> planted defect."""
    defects = {d["line"]: d for d in json.loads((REPO / "data/raw/defects.json").read_text())["defects"]}
    records = {}
    for lineno, line in enumerate((REPO / "data/raw/discharge_notes.jsonl").read_bytes().splitlines(), start=1):
        try:
            records[lineno] = v.to_record(v.parse_line(line)).messages
        except v.Rejected:
            assert defects[lineno]["kind"] == "malformed"
    return records, defects


def _grams(messages) -> Grams:
    return Grams([word_hashes(m["content"]) for m in messages])


def _signature(messages) -> Grams:
    """What the stage compares across records: the user and assistant turns."""
    return signature(messages, [word_hashes(m["content"]) for m in messages])


def test_quality_defaults_reject_no_clean_record(raw):
    records, defects = raw
    for lineno, messages in records.items():
        if lineno not in defects:
            assert quality.check(messages, _grams(messages), P.quality) is None, lineno


def test_decontam_defaults_catch_every_eval_copy_and_no_clean_record(raw):
    records, defects = raw
    index = EvalIndex.from_suites(P.decontam, REPO / "eval_suites")
    assert index.stats["boilerplate_ngrams"] > 0  # the shared instruction line is ignored
    for lineno, messages in records.items():
        leaks = index.leaks(_signature(messages).all(P.decontam.ngram))
        if lineno in defects and defects[lineno]["kind"] == "eval_copy":
            item = re.search(r"ev-\d+", defects[lineno]["detail"]).group(0)
            assert leaks and leaks[0][0] == f"discharge/{item}", (lineno, leaks)
        elif lineno not in defects:
            assert not leaks, (lineno, leaks)


def test_near_dup_defaults_catch_every_planted_pair_and_no_clean_pair(raw):
    records, defects = raw
    hasher, near = MinHasher(P.near_dup), NearDedup(P.near_dup)
    kept: dict[int, int] = {}  # LSH key -> raw line
    matched: dict[int, int] = {}
    for lineno, messages in records.items():
        if defects.get(lineno, {}).get("kind") in ("exact_duplicate", "eval_copy", "over_long"):
            continue  # other checks take these before near-dup runs
        sketch = near.sketch(hasher.values(shingles(_signature(messages), P.near_dup.ngram)))
        if (hit := near.match(sketch)) is not None:
            matched[lineno] = kept[hit[0]]
        else:
            kept[len(kept)] = lineno
            near.add(len(kept) - 1, sketch)
    pairs = {frozenset((d["line"], int(re.search(r"line (\d+)", d["detail"]).group(1))))
             for d in defects.values() if d["kind"] == "near_duplicate"}
    assert {frozenset(p) for p in matched.items()} == pairs


def test_boilerplate_is_ignored_and_overlap_is_a_share_of_the_item():
    shared = "please summarize the following clinical note into five short labelled lines for the chart"
    items = [(f"s/{i}", [f"{shared}. note {i}: " + " ".join(f"w{i}x{k}" for k in range(40)), f"answer {i}"])
             for i in range(20)]
    index = EvalIndex(CurateDecontamParams(ngram=5, max_eval_item_share=0.1, min_overlap_fraction=0.5), items)
    hashes = lambda text: Grams([word_hashes(text)]).all(5)  # noqa: E731
    assert index.leaks(hashes(shared + " and nothing else")) == []             # boilerplate alone: no leak
    assert index.leaks(hashes(items[3][1][0]))[0] == ("s/3", 1.0)              # the whole item
    words = items[7][1][0].split()
    size = index.sizes[7]                                # the item's n-grams left after boilerplate
    assert 0 < size < len(words) - 4
    more = index.leaks(hashes(" ".join(words[-(size // 2 + 8):])))    # its last words: over half its n-grams
    assert [ref for ref, _ in more] == ["s/7"] and more[0][1] == (size // 2 + 4) / size
    assert index.leaks(hashes(" ".join(words[-(size // 2):]))) == []   # under half: not a leak


def test_near_dup_clusters_name_the_kept_record_and_each_copy():
    p = CurateNearDupParams(threshold=0.8, ngram=3, num_perm=128)
    hasher, near = MinHasher(p), NearDedup(p)
    base = " ".join(f"word{i}" for i in range(60))
    texts = [base, base + " extra", "something else entirely " * 5, base.replace("word30", "changed")]
    refs = []
    for i, t in enumerate(texts):
        sketch = near.sketch(hasher.values(Grams([word_hashes(t)]).all(3)))
        if (hit := near.match(sketch)) is not None:
            near.record_duplicate(hit[0], f"f:{i + 1}", hit[1])
        else:
            near.add(len(refs), sketch)
            refs.append(f"f:{i + 1}")
    summary = near.summary(refs)
    assert summary["clusters"] == 1 and summary["cluster_sizes"] == {"3": 1}
    assert summary["examples"][0]["kept"] == "f:1"
    assert [d["ref"] for d in summary["examples"][0]["near_duplicates"]] == ["f:2", "f:4"]


def test_prompt_completion_records_become_chats():
    rec = v.to_record({"prompt": "Q?", "completion": "A."}, system="Be brief.")
    assert rec.messages == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Q?"},
                            {"role": "assistant", "content": "A."}]
    conv = v.to_record({"prompt": [{"role": "user", "content": "Q?"}],
                        "completion": [{"role": "assistant", "content": "A."}]})
    assert [m["role"] for m in conv.messages] == ["user", "assistant"]
    with pytest.raises(v.Rejected) as err:
        v.to_record({"prompt": "Q?", "completion": "A."}, fmt="messages")
    assert err.value.reason == v.BAD_MESSAGES
    with pytest.raises(v.Rejected) as err:
        v.to_record({"prompt": "Q?"})
    assert err.value.reason == v.MISSING_ASSISTANT
    chat = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    assert v.to_record({"id": 7, "messages": chat}).id == "7"


def test_deep_nesting_is_bad_json_not_a_crash():
    for raw in (b"[" * 100_000, b'{"a":' * 100_000, b"[" * 5000 + b"]" * 5000):
        with pytest.raises(v.Rejected) as err:
            v.to_record(v.parse_line(raw))
        assert err.value.reason in (v.BAD_JSON, v.NOT_OBJECT)
