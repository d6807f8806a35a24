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

FIRST = ("Maria", "James", "Aisha", "Tom", "Priya", "Daniel", "Chloe", "Omar", "Grace", "Luis", "Hannah", "Kenji",
         "Fatima", "Peter", "Sofia", "Marcus", "Elena", "Ravi", "Julia", "Samuel", "Nadia", "Owen", "Mei", "Carlos",
         "Ingrid", "Tariq", "Rosa", "Victor", "Leah", "Andre", "Yuki", "Brendan", "Amara", "Felix", "Zoe", "Hugo")
LAST = ("Okafor", "Lindqvist", "Patel", "Brennan", "Moreau", "Nakamura", "Hughes", "Castillo", "Weber", "Osei",
        "Romano", "Fischer", "Kowalski", "Haddad", "Murphy", "Jensen", "Alvarez", "Chen", "Dubois", "Sato",
        "Novak", "Adeyemi", "Larsen", "Quinn", "Ibrahim", "Schmidt", "Reyes", "Walsh", "Tanaka", "Byrne")
MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December")
WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
ROOMS = ("kitchen", "hallway", "nursery", "basement", "garage", "upstairs landing", "living room", "bedroom")
STREETS = ("Maple Avenue", "Harbour Road", "Linden Street", "Quarry Lane", "Elm Court", "Station Road",
           "Birch Drive", "Canal Street", "Orchard Way", "Hillcrest Road")
CITIES = ("Portland", "Leeds", "Madison", "Galway", "Tacoma", "Dundee", "Boise", "Halifax", "Ghent", "Asheville")
COMPANIES = ("Brightwater Dental", "Okafor & Sons Joinery", "Northgate Logistics", "Cedar Lane Pharmacy",
             "Pinecrest Property Management", "Lumen Architects", "Harbourside Vets", "Tallow Street Bakery")
TITLES = ("Office Manager", "Operations Lead", "Owner", "Facilities Coordinator", "Practice Manager", "Director")
RELATIONS = ("wife", "husband", "partner", "daughter", "son", "mother", "father", "flatmate", "dog sitter")
VULNERABLE = ("newborn", "two-month-old baby", "90-year-old mother", "father on oxygen", "toddler", "sick child")

# How customers name each product (the label is the key, the ticket uses a phrase).
PHRASES = {
    "alarm": ("alarm panel", "alarm system", "security panel", "alarm keypad", "alarm base station"),
    "camera": ("outdoor camera", "doorbell camera", "indoor camera", "floodlight camera", "garden camera"),
    "thermostat": ("thermostat", "smart thermostat", "hallway thermostat", "thermostat upstairs"),
    "lock": ("smart lock", "front door lock", "back door deadbolt", "keypad lock"),
    "detector": ("smoke detector", "CO detector", "carbon monoxide detector", "smoke and CO detector"),
}

GREETINGS = ("Hi,", "Hello,", "Hello Hearthline team,", "Hi there,", "Good morning,", "Good afternoon,",
             "To whom it may concern,", "Hey support,", "Dear Hearthline,", "", "", "")
CONTEXT = ("I've been a customer for {n} years.", "We moved into this house in {month}.",
           "I bought the {pp} from your website last {weekday}.", "My account is under {first} {last}.",
           "We have the {pp} and a couple of other Hearthline devices.", "The installer set everything up in {month}.",
           "I'm writing on behalf of my {relation}, who is not very technical.", "", "", "")
SIGNOFFS = ("Thanks,\n{first}", "Regards,\n{first} {last}", "Cheers, {first}", "Thank you,\n{first} {last}",
            "- {first}", "Best,\n{first}", "{first} {last}", "Many thanks, {first}")

LOW = ("Whenever you get a chance is fine.", "Take your time with this one.", "It can wait until next week.",
       "Low priority on my end.", "Just flagging it for whenever someone is free.", "No hurry at all.")
HIGH = ("I need this sorted today, please.", "Please treat this as a priority, this is the third time I'm writing.",
        "This has to be fixed before I travel on {weekday}.",
        "I've been waiting {n} days and I'm running out of patience.",
        "Please escalate this, it's costing me money every day.", "I need an answer as soon as possible.")
NEUTRAL = ("Let me know if you need anything else from me.", "Thanks in advance for your help.",
           "I can send photos if that helps.", "My order number is {order} if you need it.", "")
# An outage is urgent whatever the tone: calm wording is the feared tail, panicked wording the easy case.
OUTAGE_TONE = ("No rush, but I thought you should know.", "Whenever someone has a moment.",
               "Not a big deal probably, just letting you know.", "Please help right away.",
               "We are really worried.", "Please call me back as soon as you can.", "", "")

PLAN = ("monitoring plan for my {pp}", "{pp} subscription", "cloud plan for the {pp}", "Protect plan for the {pp}")
ISSUES = {
    "billing": (
        "I was charged twice for the {plan} this month, ${amt} each time.",
        "My card was charged ${amt} after I cancelled the {plan} on {month} {day}.",
        "The price of my {plan} went from ${amt} to ${amt2} without any notice.",
        "I can't find the invoice for my {plan} for {month}.",
        "There is a ${amt} charge labelled HEARTHLINE {code} on my statement that I don't recognise.",
        "I switched to yearly billing for the {plan} but was still charged the monthly ${amt}.",
    ),
    "shipping": (
        "My order {order} for a {pp} was supposed to arrive on {month} {day} and it still hasn't shown up.",
        "The {pp} from order {order} arrived with a cracked housing.",
        "I ordered a {pp} (order {order}) but the box had a {other} in it.",
        "Tracking for order {order} has said 'label created' for {n} days.",
        "The courier left the {pp} from order {order} at the wrong address on {street}.",
        "Order {order} arrived without the mounting kit for the {pp}.",
    ),
    "technical": (
        "The app crashes every time I open the settings for the {pp}.",
        "The batteries in my {pp} run flat in about {n} weeks.",
        "The {pp} shows the wrong time in the app, about {n} hours off.",
        "I can't pair the new {pp} with the app, it times out at the last step.",
    ),
    "account": (
        "I need to reset my password but the reset email never arrives.",
        "Please change the email on my account to {first}.{last}{n}@example.com.",
        "How do I add my {relation} as a second user for the {pp}?",
        "We sold the house and need to transfer the {pp} to the new owners.",
        "I lost the phone I use for two-factor login and can't get into the app.",
        "My account still shows my old address on {street}, please update it.",
    ),
}
# Technical faults that leave a safety device working; never said of an alarm or a detector,
# where a dead link or a bricked unit would be an outage.
NON_SAFETY_TECHNICAL = (
    "My {pp} won't connect to the wifi since I changed my router.",
    "The firmware update for the {pp} stopped halfway and now it blinks {color}.",
    "The night mode on my {pp} keeps switching itself off.",
)
NON_SAFETY = ("camera", "thermostat", "lock")
OUTAGES = {
    "alarm": (
        "My {pp} says 'monitoring offline' and the test signal never reached your monitoring center.",
        "Since {time} the {pp} has had no link to the monitoring center and the keypad shows a communication fault.",
        "After the power cut the {pp} went dead and it will not arm at all.",
    ),
    "detector": (
        "The {pp} in the {room} has shown offline in the app since {time}, so nobody would be alerted to a fire.",
        "The {pp} in the {room} lost its connection to the hub and your center is not receiving its signals.",
    ),
    "lock": (
        "The {pp} is stuck unlocked and ignores the app and the keypad, and I'm away from home.",
        "Our {pp} will not lock, the house is open and we are away until {weekday}.",
    ),
    "thermostat": (
        "The {pp} shut the heating off and won't turn it back on; it is {temp} degrees outside and we have a "
        "{vulnerable} at home.",
        "The {pp} is stuck on cooling and unresponsive, the house is at {temp} degrees with a {vulnerable} here.",
    ),
    "camera": (
        "Every camera on my account went offline at {time} and the monitoring center says it cannot verify alarms.",
        "The {pp} that covers our entrance is offline and the monitoring center can't see the alarm zone it watches.",
    ),
}
OUTAGE_DETAIL = ("The app shows error code E{n}.", "I already restarted the hub twice.",
                 "My neighbour says theirs is down too.", "The status page says everything is fine.",
                 "I pay for professional monitoring for exactly this reason.", "", "")
DETAIL = {
    "billing": ("My bank statement shows it on {month} {day}.", "I've attached a screenshot of the statement.", ""),
    "shipping": ("I was home all day and no one came.", "The box itself looked fine.", ""),
    "technical": ("I already tried turning it off and on again.", "The light on the front is {color}.",
                  "It worked fine for the first {n} weeks.", ""),
    "account": ("I'm the account holder.", "I can verify my identity however you need.", ""),
}
REFUND_YES = {
    "billing": ("Please refund the extra charge.", "I want that money refunded to my card.",
                "I'd like a refund for {month}.", "Please reverse the charge and refund me."),
    "shipping": ("I'd like my money back instead of a replacement.", "Please cancel it and refund the order.",
                 "Just refund me, please."),
    "technical": ("If it can't be fixed I want to return it for a refund.",
                  "I'd like to send it back and get my money back."),
    "account": ("Please close the account and refund the months I haven't used.",),
    "outage": ("I expect a credit for the days the monitoring was down.",
               "I want a refund for this month's monitoring.", "Please refund the monitoring fee for this period."),
}
REFUND_NO = {
    "billing": ("Please make sure it's right from next month.", "Can you send me a corrected invoice?",
                "Could you explain what the charge is for?", "Can you check what happened?"),
    "shipping": ("Please send a replacement.", "Can you tell me where it is?", "Please ship the right one.",
                 "Can you arrange a new delivery?"),
    "technical": ("What should I try next?", "Is there a fix for this?", "Can someone walk me through it?",
                  "Could a technician take a look?"),
    "account": ("Please update it for me.", "How do I do that?", "What do you need from me to do this?"),
    "outage": ("Please get it back online.", "Send someone out or tell me what to do.", "What do I do now?",
               "Please check it from your side.", ""),
}

# Negation: a sentence that rules a wrong reading out. (negated queue, queues it may go with, text)
QUEUE_NEGATIONS = (
    ("billing", ("technical", "account", "shipping"),
     "This is not a billing question, the charges on my account are fine."),
    ("billing", ("technical", "shipping"), "I'm not disputing any charge."),
    ("shipping", ("technical", "account"), "This isn't about shipping, the box arrived on time and in one piece."),
    ("technical", ("billing", "account"), "The {pp} itself works fine, this is not a technical problem."),
    ("account", ("billing", "technical"), "It's not about my login or account details."),
    ("outage", ("billing", "account", "technical"),
     "This is not an outage, the {pp} is working and monitoring is fine."),
    ("outage", ("billing", "technical"), "Nothing is down and nobody is in danger, to be clear."),
)
REFUND_NEGATIONS = ("I'm not asking for a refund, I just want it sorted.", "I don't want my money back.",
                    "No refund needed, to be clear.")
PRIORITY_NEGATIONS = ("It's not urgent.", "This is not an emergency.", "Not time-sensitive at all.")
PRODUCT_NEGATIONS = ("The problem isn't my {neg}, it's the {pp}.", "It's not the {neg} this time but the {pp}.")

SUBJECTS = {"billing": ("Question about my bill", "Charge on my card", "Invoice"),
            "shipping": ("Where is my order", "Delivery problem", "Order issue"),
            "technical": ("Device not working properly", "Help with setup", "Problem with my device"),
            "account": ("Account change", "Login problem", "Update my details")}
DISCLAIMERS = (
    "CONFIDENTIALITY NOTICE: This email and any attachments are for the sole use of the intended recipient and may "
    "contain confidential and privileged information of {company}. Any unauthorised review, use, disclosure or "
    "distribution is prohibited. If you are not the intended recipient, please contact the sender by reply email "
    "and destroy all copies of the original message.",
    "This message was sent from {company}. It may contain information that is confidential or legally privileged. "
    "If you received it in error, please tell the sender and delete it; do not copy it or use it for any purpose. "
    "{company} accepts no liability for viruses transmitted by email.",
    "Please consider the environment before printing this email. The views expressed here are the sender's own and "
    "not necessarily those of {company}. Our office hours are {hours}; messages received outside those hours are "
    "answered on the next working day.",
    "IMPORTANT: {company} will never ask you to change bank details by email. If you receive such a request, call "
    "us on the number on our website before acting on it. This email is intended only for its addressee.",
)
AUTOREPLIES = (
    "Thank you for contacting Hearthline Support. Your request has been received and assigned ticket number "
    "{ticket}. One of our team will reply within {hours2} hours. For anything safety related, such as an alarm "
    "that will not arm or a detector that is offline, please call our monitoring line instead of replying to this "
    "email. You can check the status of your ticket at any time in the Hearthline app under Help.",
    "Hi {first}, thanks for getting in touch. This is an automatic confirmation that we have your message "
    "(ticket {ticket}). Our support hours are {hours}. Many questions are answered in our help center, including "
    "how to reset a device, update payment details and track an order. Please keep the ticket number in the "
    "subject line if you write again.",
    "Hello {first}, we're sorry to hear you are having trouble. Your case {ticket} is now in our queue. Replies "
    "usually take {hours2} hours on working days. Please do not open a second ticket for the same issue, as this "
    "can slow things down. Kind regards, the Hearthline Support team.",
)
OLD_ISSUES = ("My order {order} hasn't arrived yet.", "I was charged ${amt} twice in {month}.",
              "The {pp} app wouldn't let me log in.", "The {pp} kept beeping after the battery change.")
OLD_ANSWERS = ("Your replacement has shipped and this ticket is now resolved.",
               "We've refunded the duplicate payment; it can take five working days to appear.",
               "Your password has been reset, please try again.", "A firmware fix was pushed to your device.")


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
