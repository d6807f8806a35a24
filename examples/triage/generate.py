"""Synthetic support tickets for the triage example: training records and held-out suite items.

A ticket to Hearthline (a made-up home-security company: alarm panels, cameras, thermostats,
smart locks, smoke/CO detectors) is triaged into one compact JSON object:

    {"queue":"billing","priority":"normal","product":"camera","refund":true}

    queue     billing | shipping | technical | account | outage
    priority  low | normal | high | urgent      (urgent if and only if queue is outage)
    product   alarm | camera | thermostat | lock | detector
    refund    true when the customer asks for money back or a credit

Four slices: `common` (ordinary tickets), `outage` (a safety system is down: always queue
outage, priority urgent, even when the customer writes "no rush"), `negation` (tickets that say
what they are not about) and `long` (an ordinary ticket inside a long email: signature, legal
notice, quoted support thread, sometimes an older resolved issue quoted below).

Every ticket is assembled from independently chosen sentences (greeting, context, issue,
detail, priority cue, request, sign-off) with names, order numbers, dates and amounts filled
in, so no two tickets share most of their word n-grams: the curate stage's near-duplicate and
decontamination checks keep them. Held-out items are drawn first from their own random stream;
a training ticket identical to one of them, or holding much of one (HeldOut), is drawn again.

Seeded with strings and standard library only, so the files are the same bytes on every run
(whatever PYTHONHASHSEED is):

    python examples/triage/generate.py                 # rewrite data/raw/tickets.jsonl and suite/data/test.jsonl
    python examples/triage/generate.py --check         # exit 1 when the committed files differ
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
SEED = 20260314
TRAIN_PER_SLICE = {"common": 240, "outage": 100, "negation": 100, "long": 80}
TEST_PER_SLICE = {"common": 32, "outage": 32, "negation": 32, "long": 32}
QUEUES = ("billing", "shipping", "technical", "account", "outage")
PRIORITIES = ("low", "normal", "high", "urgent")
PRODUCTS = ("alarm", "camera", "thermostat", "lock", "detector")
WORD = re.compile(r"\w+")  # words as the curate stage counts them (case-folded)

# The tables live beside this script, which is run by path (and loaded by path in tests).
sys.path.insert(0, str(HERE))
from vocabulary import (  # noqa: E402
    FIRST, LAST, MONTHS, WEEKDAYS, ROOMS, STREETS, CITIES, COMPANIES, TITLES, RELATIONS, VULNERABLE, PHRASES,
    GREETINGS, CONTEXT, SIGNOFFS, LOW, HIGH, NEUTRAL, OUTAGE_TONE, PLAN, ISSUES, NON_SAFETY_TECHNICAL,
    NON_SAFETY, OUTAGES, OUTAGE_DETAIL, DETAIL, REFUND_YES, REFUND_NO, QUEUE_NEGATIONS, REFUND_NEGATIONS,
    PRIORITY_NEGATIONS, PRODUCT_NEGATIONS, SUBJECTS, DISCLAIMERS, AUTOREPLIES, OLD_ISSUES, OLD_ANSWERS,
)


def phone(rng: random.Random) -> str:
    return f"({rng.randint(200, 989)}) {rng.randint(200, 989)}-{rng.randint(1000, 9999)}"


class Ticket:
    """One ticket being written: its slots, sentences and labels."""

    def __init__(self, rng: random.Random, queue: str, product: str):
        self.rng, self.queue, self.product = rng, queue, product
        r = rng
        self.slots = {
            "first": r.choice(FIRST), "last": r.choice(LAST), "month": r.choice(MONTHS), "day": r.randint(1, 28),
            "weekday": r.choice(WEEKDAYS), "n": r.randint(2, 9), "amt": f"{r.randint(9, 79)}.{r.randint(0, 99):02d}",
            "amt2": f"{r.randint(80, 149)}.{r.randint(0, 99):02d}", "order": f"HL-{r.randint(100000, 999999)}",
            "code": f"{r.choice('ABCDEFGHKMNPRSTW')}{r.randint(1000, 9999)}", "room": r.choice(ROOMS),
            "street": f"{r.randint(2, 240)} {r.choice(STREETS)}", "relation": r.choice(RELATIONS),
            "color": r.choice(("red", "orange", "blue", "white")),
            "time": f"{r.randint(1, 12)}:{r.choice(('05', '20', '35', '50'))} {r.choice(('am', 'pm'))}",
            "temp": r.choice((-14, -9, -3, 2, 38, 41, 43)), "vulnerable": r.choice(VULNERABLE),
            "pp": r.choice(PHRASES[product]),
            "other": r.choice(PHRASES[r.choice([p for p in PRODUCTS if p != product])]),
            "ticket": f"#{r.randint(300000, 899999)}", "company": r.choice(COMPANIES), "title": r.choice(TITLES),
            "city": r.choice(CITIES), "hours": r.choice(("8am to 6pm", "9am to 5pm Monday to Friday", "8:30 to 17:30")),
            "hours2": r.choice((24, 48, 72)),
        }
        self.slots["plan"] = self.fill(r.choice(PLAN))
        self.priority, self.refund = "normal", False

    def fill(self, text: str) -> str:
        return text.format(**self.slots)

    def pick(self, options) -> str:
        return self.fill(self.rng.choice(options))

    def answer(self) -> str:
        assert self.queue in QUEUES and self.priority in PRIORITIES and self.product in PRODUCTS
        assert (self.priority == "urgent") == (self.queue == "outage"), "urgent if and only if outage"
        value = {"queue": self.queue, "priority": self.priority, "product": self.product, "refund": self.refund}
        return json.dumps(value, separators=(",", ":"))


def _join(parts) -> str:
    return " ".join(p for p in parts if p)


def _tone(t: Ticket) -> str:
    """The customer's priority cue (or none), and the priority it sets."""
    roll = t.rng.random()
    if roll < 0.25:
        t.priority = "low"
        return t.pick(LOW)
    if roll < 0.5:
        t.priority = "high"
        return t.pick(HIGH)
    t.priority = "normal"
    return t.pick(NEUTRAL)


def _request(t: Ticket, yes_share: float = 0.4) -> str:
    t.refund = t.rng.random() < yes_share
    return t.pick((REFUND_YES if t.refund else REFUND_NO)[t.queue])


def _body(t: Ticket, middle: list[str]) -> str:
    """Greeting, context, the given sentences (issue first, or now and then the tone), sign-off."""
    if t.rng.random() < 0.25 and len(middle) > 2:  # "I need this sorted today. My card was ..."
        middle = [middle[-2], *middle[:-2], middle[-1]]
    head = _join([t.pick(GREETINGS), t.pick(CONTEXT)])
    return "\n\n".join(x for x in (head, _join(middle), t.pick(SIGNOFFS)) if x)


def issue(t: Ticket) -> str:
    options = ISSUES[t.queue]
    if t.queue == "technical" and t.product in NON_SAFETY:
        options = options + NON_SAFETY_TECHNICAL
    return t.pick(options)


def common(rng: random.Random) -> Ticket:
    queue = rng.choice(("billing", "shipping", "technical", "account"))
    t = Ticket(rng, queue, rng.choice(PRODUCTS))
    tone = _tone(t)
    t.prompt = _body(t, [issue(t), t.pick(DETAIL[queue]), tone, _request(t)])
    return t


def outage(rng: random.Random) -> Ticket:
    t = Ticket(rng, "outage", rng.choice(tuple(OUTAGES)))
    t.priority = "urgent"
    t.prompt = _body(t, [t.pick(OUTAGES[t.product]), t.pick(OUTAGE_DETAIL), t.pick(OUTAGE_TONE),
                         _request(t, yes_share=0.3)])
    return t


def negation(rng: random.Random) -> Ticket:
    kind = rng.choice(("queue", "queue", "queue", "refund", "priority", "product"))
    if kind == "queue":
        negated, queues, text = rng.choice(QUEUE_NEGATIONS)
        t = Ticket(rng, rng.choice(queues), rng.choice(PRODUCTS))
        t.negated_queue = negated
        sentences = [t.fill(text), issue(t), _tone(t), _request(t)]
    else:
        t = Ticket(rng, rng.choice(("billing", "shipping", "technical", "account")), rng.choice(PRODUCTS))
        said = issue(t)
        if kind == "refund":
            t.refund = False
            sentences = [said, _tone(t), t.pick(REFUND_NEGATIONS)]
        elif kind == "priority":
            t.priority = "low"
            sentences = [said, t.pick(PRIORITY_NEGATIONS), _request(t)]
        else:
            t.slots["neg"] = rng.choice(PHRASES[rng.choice([p for p in PRODUCTS if p != t.product])])
            sentences = [t.pick(PRODUCT_NEGATIONS), said, _tone(t), _request(t)]
    t.prompt = _body(t, sentences)
    return t


def _quote(text: str) -> str:
    return "\n".join("> " + line if line else ">" for line in text.split("\n"))


def long_ticket(rng: random.Random) -> Ticket:
    """An ordinary ticket inside a long email: the labels come from the newest message only."""
    t = common(rng)
    s = t.slots
    signature = "\n".join([f"{s['first']} {s['last']}", f"{s['title']}, {s['company']}", f"Phone: {phone(rng)}",
                           f"{s['first'].lower()}.{s['last'].lower()}@example.com", f"{s['street']}, {s['city']}"])
    parts = [f"Subject: {rng.choice(SUBJECTS[t.queue])} (ticket {s['ticket']})", t.prompt, signature,
             t.pick(DISCLAIMERS)]
    if rng.random() < 0.5:
        parts.append(rng.choice(("Sent from my iPhone", "Sent from Outlook for Android", "Get Outlook for iOS")))
    thread = [f"-----Original Message-----\nFrom: Hearthline Support <support@hearthline.example>\n"
              f"Sent: {s['weekday']}, {s['month']} {s['day']} {s['time']}\nTo: {s['first']} {s['last']}\n"
              f"Subject: RE: [Ticket {s['ticket']}] {rng.choice(SUBJECTS[t.queue])}", t.pick(AUTOREPLIES)]
    if rng.random() < 0.5:  # an older, resolved issue quoted below: the distractor
        i = rng.randrange(len(OLD_ISSUES))
        thread.append(f"On {rng.choice(MONTHS)} {rng.randint(1, 28)}, Hearthline Support wrote:\n"
                      + _quote(OLD_ANSWERS[i] + "\n\n" + _quote(t.fill(OLD_ISSUES[i]))))
    parts.append(_quote("\n\n".join(thread)))
    t.prompt = "\n\n".join(parts)
    return t


MAKERS = {"common": common, "outage": outage, "negation": negation, "long": long_ticket}


class HeldOut:
    """The held-out items' word 13-grams, to keep training tickets from containing one.

    The rule of the curate stage's decontamination (pipeline/curate/decontam.py), a little
    stricter: 13-grams found in more than 5% of the items are template text and ignored; a
    ticket that holds 40% of an item's other 13-grams (the stage rejects at 50%) is drawn again.
    """

    N, SHARE, LIMIT = 13, 0.05, 0.4

    def __init__(self, prompts: list[str]):
        per_item = [self.grams(p) for p in prompts]
        count = Counter(g for grams in per_item for g in grams)
        common = {g for g, c in count.items() if c > max(self.SHARE * len(prompts), 1)}
        self.sizes = [len(grams - common) for grams in per_item]
        self.owner: dict[tuple, list[int]] = {}
        for i, grams in enumerate(per_item):
            for g in grams - common:
                self.owner.setdefault(g, []).append(i)

    @classmethod
    def grams(cls, text: str) -> set[tuple]:
        words = WORD.findall(text.casefold())
        return {tuple(words[i:i + cls.N]) for i in range(len(words) - cls.N + 1)}

    def contains_one(self, text: str) -> bool:
        hits = Counter(i for g in self.grams(text) for i in self.owner.get(g, ()))
        return any(n >= self.LIMIT * self.sizes[i] for i, n in hits.items())


def _records(rng: random.Random, counts: dict[str, int], prefix: str, seen: set[str],
             held_out: HeldOut | None = None) -> list[dict]:
    out = []
    for slice_name, n in counts.items():
        made = 0
        while made < n:
            t = MAKERS[slice_name](rng)
            if t.prompt in seen or (held_out is not None and held_out.contains_one(t.prompt)):
                continue  # drawn again: every ticket distinct, no training ticket holds a held-out one
            seen.add(t.prompt)
            made += 1
            rec = {"id": f"{prefix}-{slice_name}-{made:03d}", "slice": slice_name, "prompt": t.prompt,
                   "completion": t.answer()}
            if prefix == "ev":  # the suite's contains scorer reads it (null: nothing to avoid)
                rec["negated_queue"] = getattr(t, "negated_queue", None)
            out.append(rec)
    return out


def build(seed: int = SEED) -> dict[str, list[dict]]:
    seen: set[str] = set()
    test = _records(random.Random(f"{seed}:test"), TEST_PER_SLICE, "ev", seen)
    train = _records(random.Random(f"{seed}:train"), TRAIN_PER_SLICE, "tk", seen,
                     HeldOut([r["prompt"] for r in test]))
    random.Random(f"{seed}:order").shuffle(train)  # slices interleaved, as a real export would be
    return {"train": train, "test": test}


def render(records: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=HERE / "data", help="data folder (writes raw/tickets.jsonl)")
    p.add_argument("--suite", type=Path, default=HERE / "suite", help="suite folder (writes data/test.jsonl)")
    p.add_argument("--check", action="store_true", help="compare with the files on disk; exit 1 when they differ")
    args = p.parse_args(argv)
    data = build()
    files = {args.out / "raw" / "tickets.jsonl": render(data["train"]),
             args.suite / "data" / "test.jsonl": render(data["test"])}
    if args.check:
        stale = [str(path) for path, text in files.items()
                 if not path.is_file() or path.read_text(encoding="utf-8") != text]
        for path in stale:
            print(f"differs from the generator's output: {path}", file=sys.stderr)
        return 1 if stale else 0
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    for split in ("train", "test"):
        counts = Counter(r["slice"] for r in data[split])
        print(f"{split}: {len(data[split])} records ({', '.join(f'{k} {v}' for k, v in counts.items())})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
