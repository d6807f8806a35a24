"""curate on short, templated records (issue 24, points 13 and 14).

A label task built here: support tickets of a few words as prompt/completion records, with
`curate.system` set to a long shared instruction (as the README advises for such data), and an
eval suite whose items are tickets of a few words too. Before, the shared system turn was most
of every record's n-grams, so short tickets became near duplicates of each other; and an eval
ticket of a few words has no 13-gram at all, so a verbatim copy of it in the training data
went through decontamination unseen.
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from pathlib import Path

import pytest

from pipeline.curate import curate
from pipeline.curate.render import render_markdown
from pipeline.params import CurateDecontamParams, CurateParams
from tests.conftest import build_tiny_model_dir

PRODUCTS = ["alarm", "camera", "thermostat", "lock", "detector"]
PROBLEMS = ["offline", "beeping", "not charging", "stuck", "showing an error", "disconnected", "frozen"]
OPENERS = ["My", "Our", "The", "Hi, my", "Hello, our"]
CLOSERS = ["help!", "please help.", "what now?", "any ideas?", "urgent.", ""]
DAYS = ["monday", "today", "noon", "friday", "last night", "the update"]
N_TICKETS = 60


def _words(rng: random.Random, n: int) -> str:
    # invented words: no accidental n-gram overlap with anything else
    return " ".join("".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(4, 9)))
                    for _ in range(n))


def _answer(product: str, problem: str) -> str:
    queue = "outage" if problem == "offline" else "technical"
    return json.dumps({"queue": queue, "priority": "urgent" if queue == "outage" else "normal", "product": product})


def _tickets(rng: random.Random, n: int) -> list[tuple[str, str, str]]:
    """(prompt, completion, slice): short tickets from one template, no two with the same product,
    problem and day (tickets that differ only in their greeting are near duplicates, rightly)."""
    seen, out = set(), []
    while len(out) < n:
        product, problem, day = rng.choice(PRODUCTS), rng.choice(PROBLEMS), rng.choice(DAYS)
        if (product, problem, day) in seen:
            continue
        seen.add((product, problem, day))
        prompt = f"{rng.choice(OPENERS)} {product} is {problem} since {day} {rng.choice(CLOSERS)}".strip()
        out.append((prompt, _answer(product, problem), "outage" if problem == "offline" else "common"))
    return out


def _norm(text: str) -> str:
    return " ".join(re.findall(r"\w+", text.casefold()))


def _suite(root: Path, items: list[dict]) -> None:
    root.mkdir(parents=True)
    (root / "suite.yaml").write_text("name: tickets\nversion: 1\ndata: items.jsonl\nheadline_metric: exact_match\n"
                                     "format: prompt_completion\nscorers: [exact_match]\ngenerate_task: tickets_gen\n")
    (root / "items.jsonl").write_text("".join(json.dumps(it) + "\n" for it in items))


def _write(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def tok(tmp_path_factory) -> Path:
    return build_tiny_model_dir(tmp_path_factory.mktemp("tok") / "tiny")


@pytest.fixture(scope="module")
def system() -> str:
    # a long shared instruction, as a label task's curate.system is (the triage example's is 70 words)
    return _words(random.Random(99), 100)


def _params(system: str | None, **kw) -> CurateParams:
    return CurateParams(format="prompt_completion", system=system, min_seq_len_tokens=1, max_seq_len_tokens=4096,
                        workers=1, max_quarantine_fraction=0.9, on_slice_loss="warn", **kw)


def test_short_templated_tickets_with_a_system_turn_are_not_near_duplicates(tok, system, tmp_path):
    rng = random.Random(1)
    tickets = _tickets(rng, N_TICKETS)
    records = [{"id": f"t{i}", "slice": s, "prompt": p, "completion": c} for i, (p, c, s) in enumerate(tickets)]
    # two real near duplicates: a short ticket again in other case and punctuation, and a long
    # ticket again with its last word changed
    long_prompt = _words(rng, 100)
    records += [{"id": "dup-short", "slice": "common", "prompt": tickets[3][0].upper().replace(" ", "  ") + " ...",
                 "completion": tickets[3][1]},
                {"id": "long", "slice": "common", "prompt": long_prompt, "completion": tickets[5][1]},
                {"id": "dup-long", "slice": "common", "prompt": long_prompt.rsplit(" ", 1)[0] + " changed",
                 "completion": tickets[5][1]}]
    _write(tmp_path / "raw/tickets.jsonl", records)
    suites = tmp_path / "suites"
    _suite(suites / "tickets", [{"id": f"e{i}", "slice": "x", "prompt": _words(rng, 30), "completion": "{}"}
                                for i in range(5)])
    out = tmp_path / "out"
    report = curate(_params(system), tmp_path / "raw", suites, tok, out)
    near = {q["line"] for q in _lines(out / "quarantine.jsonl") if q["reason"] == "near_duplicate"}
    assert near == {N_TICKETS + 1, N_TICKETS + 3}, report["near_dup"]  # only the two planted copies
    assert report["reasons"]["near_duplicate"] == 2 and report["kept"] == N_TICKETS + 1
    kept = {r["id"] for split in ("train", "val") for r in _lines(out / f"{split}.jsonl")}
    assert {f"t{i}" for i in range(N_TICKETS)} <= kept
    # the system turn is still in every kept record: left out of the signature, not of the data
    assert all(r["messages"][0] == {"role": "system", "content": system} for r in _lines(out / "train.jsonl"))


def test_records_shorter_than_the_shingle_are_near_duplicates_only_of_the_same_words(tok, system, tmp_path):
    # 2 + 1 words: fewer than the 5-word shingle, so each record is one shingle of its words
    records = [{"id": "a", "slice": "s", "prompt": "Alarm offline", "completion": "outage"},
               {"id": "b", "slice": "s", "prompt": "Camera offline", "completion": "outage"},
               {"id": "c", "slice": "s", "prompt": "alarm   OFFLINE!", "completion": "Outage."},
               {"id": "d", "slice": "s", "prompt": "?!", "completion": "..."},
               {"id": "e", "slice": "s", "prompt": "!?", "completion": ",,,"}]
    _write(tmp_path / "raw/r.jsonl", records)
    _suite(tmp_path / "suites/tickets",
           [{"id": "e0", "slice": "x", "prompt": "unrelated words here", "completion": "x"}])
    out = tmp_path / "out"
    curate(_params(system), tmp_path / "raw", tmp_path / "suites", tok, out)
    reasons = {q["line"]: q["reason"] for q in _lines(out / "quarantine.jsonl")}
    # a and b differ in a word, d and e in their punctuation only records: all distinct; c is a's copy
    assert reasons == {3: "near_duplicate"}


@pytest.fixture(scope="module")
def leak_task(tmp_path_factory) -> dict:
    """Eval tickets of a few words in three slices, some copied into the training data."""
    tmp = tmp_path_factory.mktemp("leaks")
    rng = random.Random(5)
    eval_tickets = _tickets(rng, 30)
    items = [{"id": f"e{i}", "slice": ["common", "outage", "tail"][i % 3], "prompt": p, "completion": c}
             for i, (p, c, _) in enumerate(eval_tickets)]
    # one instruction that 6 of 36 items share as their whole prompt (17%): it names no item
    items += [{"id": f"g{i}", "slice": "common", "prompt": "Please triage this ticket.", "completion": "{}"}
              for i in range(6)]
    items.append({"id": "pii", "slice": "tail", "prompt": "Write to me at ana.lopez@example.com now",
                  "completion": "{}"})
    _suite(tmp / "suites/tickets", items)
    train = _tickets(random.Random(6), 40)
    held_out = {_norm(p) for p, _, _ in eval_tickets}
    train = [t for t in train if _norm(t[0]) not in held_out]
    records = [{"id": f"t{i}", "slice": s, "prompt": p, "completion": c} for i, (p, c, s) in enumerate(train)]
    n = len(records)
    leaks = [  # (training record, the item it leaks)
        ({"id": "leak1", "slice": "common", "prompt": "  " + items[2]["prompt"].upper().rstrip("!.?") + " ?!",
          "completion": "a different answer"}, "e2"),
        ({"id": "leak2", "slice": "common", "prompt": items[2]["prompt"].lower(), "completion": "another"}, "e2"),
        ({"id": "leak3", "slice": "outage", "prompt": items[4]["prompt"].replace(" ", "\n"),
          "completion": items[4]["completion"]}, "e4"),
        ({"id": "leak-pii", "slice": "common", "prompt": items[-1]["prompt"], "completion": "ok"}, "pii"),
    ]
    records += [r for r, _ in leaks]
    # not leaks: an eval ticket inside a longer user turn, and the shared instruction alone
    records += [{"id": "inside", "slice": "common", "prompt": f"Forwarding this: {items[7]['prompt']} Thanks, Ana",
                 "completion": "ok"},
                {"id": "instruction", "slice": "common", "prompt": "please triage this ticket", "completion": "ok"}]
    _write(tmp / "raw/tickets.jsonl", records)
    return {"raw": tmp / "raw", "suites": tmp / "suites", "items": {it["id"]: it for it in items},
            "leak_lines": {n + k + 1: item for k, (_, item) in enumerate(leaks)}, "n": len(records)}


def test_a_short_eval_item_copied_into_a_user_turn_is_quarantined_naming_item_and_slice(tok, system, leak_task,
                                                                                       tmp_path):
    out = tmp_path / "out"
    report = curate(_params(system), leak_task["raw"], leak_task["suites"], tok, out)
    quarantined = {q["line"]: q for q in _lines(out / "quarantine.jsonl")}
    leaked = {line: q for line, q in quarantined.items() if q["reason"] == "eval_contamination"}
    assert set(leaked) == set(leak_task["leak_lines"])
    for line, item_id in leak_task["leak_lines"].items():
        item = leak_task["items"][item_id]
        assert f"tickets/{item_id} (slice {item['slice']}): its prompt, exactly" in leaked[line]["detail"]
    # n-grams alone see none of it: every item is shorter than 13 words
    assert report["decontam"]["items_without_item_ngrams"] == report["decontam"]["eval_items"]
    assert report["decontam"]["exact_prompt"]["boilerplate_prompts"] == 1
    assert report["decontam"]["undetectable_items"] == 6  # the six items whose prompt is the shared instruction
    assert report["leaked_eval_items"] == {"tickets/e2": 2, "tickets/e4": 1, "tickets/pii": 1}
    per_slice = report["leaks_per_eval_slice"]["tickets"]
    e2, e4 = leak_task["items"]["e2"]["slice"], leak_task["items"]["e4"]["slice"]
    assert (e2, e4) == ("tail", "outage")
    assert per_slice == {
        "common": {"items": 16, "leaked_items": 0, "leaked_by_prompt": 0, "training_records": 0,
                   "undetectable_items": 6},
        "outage": {"items": 10, "leaked_items": 1, "leaked_by_prompt": 1, "training_records": 1,
                   "undetectable_items": 0},
        "tail": {"items": 11, "leaked_items": 2, "leaked_by_prompt": 2, "training_records": 3,
                 "undetectable_items": 0}}
    md = render_markdown(report)
    assert "| tickets | tail | 11 | 2 | 2 | 3 | 0 |" in md


def test_exact_prompt_matching_can_be_switched_off(tok, system, leak_task, tmp_path):
    params = _params(system).model_copy(
        update={"decontam": CurateDecontamParams(exact_prompt=False)})
    report = curate(params, leak_task["raw"], leak_task["suites"], tok, tmp_path / "out")
    assert report["reasons"]["eval_contamination"] == 0 and report["leaked_eval_items"] == {}
    # every item is then undetectable, and the report says so per slice
    assert report["decontam"]["undetectable_items"] == report["decontam"]["eval_items"]
    assert Counter({s: v["undetectable_items"] for s, v in report["leaks_per_eval_slice"]["tickets"].items()}) == \
        Counter({"common": 16, "outage": 10, "tail": 11})
