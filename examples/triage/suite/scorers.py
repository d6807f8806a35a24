"""The triage suite's own scorer: did every ticket that must be urgent get urgent, and only those?

key_priority (json_match) already says whether the priority was right; what it cannot say is
which way a wrong one went. A missed outage (urgent answered as high or normal) leaves a home
without its alarm, smoke detector or lock while the ticket waits in a queue; a false urgent
only costs a responder's time. So they are two numbers with two directions:

- `urgent_recall` (correctness), only on items whose reference priority is urgent: 1 when the
  answer's priority is urgent too. Its overall mean is recall over every such item, whatever
  its slice; per slice it appears where urgent items are (here: `outage`).
- `false_urgent` (lower is better), only on the other items: 1 when the answer says urgent.

Each item gets exactly one of the two, so neither mean is diluted by items it says nothing
about. An answer without a JSON object, or whose priority is not a string, is not urgent.
"""

from __future__ import annotations

import json

from pipeline.evaluate.library.structured import extract_json
from pipeline.evaluate.scoring import Metric, scorer

URGENT = "urgent"


def _priority(text: str) -> str | None:
    """The `priority` of the JSON object in text, normalised as json_match compares strings."""
    found, value = extract_json(text, objects_only=True)
    if not found or not isinstance(value, dict) or not isinstance(value.get("priority"), str):
        return None
    return " ".join(value["priority"].split()).casefold()


# each item has one of the two (urgent tickets the recall, the rest the false-alarm rate)
@scorer(Metric("urgent_recall", correctness=True, partial=True), Metric("false_urgent", lower_is_better=True, partial=True))
def urgent_recall(output: str, item) -> dict[str, float]:
    reference = json.loads(item.reference)  # the suite's references are compact JSON objects
    said_urgent = _priority(output) == URGENT
    if reference["priority"] == URGENT:
        return {"urgent_recall": float(said_urgent)}
    return {"false_urgent": float(said_urgent)}
