"""Plain-text library scorers: exact_match, contains, refusal."""

from __future__ import annotations

import re
from typing import Callable

from pipeline.evaluate.library._common import check_bool, check_str_list, normalizer
from pipeline.evaluate.scoring import Metric, Output, Scorer, library_scorer
from pipeline.suites.spec import EvalItem, Suite, SuiteError


# -- exact_match ---------------------------------------------------------------------------------

class ExactMatch(Scorer):
    """`exact_match`: 1 when the normalised answer equals the normalised reference, else 0."""

    name = "exact_match"
    declares = (Metric("exact_match", correctness=True),)

    def __init__(self, normalize: Callable[[str], str]):
        self.normalize = normalize

    def score(self, output: Output, item: EvalItem) -> dict[str, float]:
        return {"exact_match": float(self.normalize(output.text) == self.normalize(item.reference))}


@library_scorer("exact_match")
def exact_match(suite: Suite, *, normalize: list[str] | None = None) -> Scorer:
    """Exact match of the whole answer against the reference answer.

    Output `exact_match` (correctness): 1 when the answer equals the reference after both are
    normalised, else 0.

    Options:
      normalize: list of normalisation steps applied to both sides (default `[whitespace]`):
        `case` (casefold), `whitespace` (collapse runs of whitespace, strip), `punctuation`
        (drop Unicode punctuation), `articles` (drop a/an/the). `[]` compares verbatim.
    """
    return ExactMatch(normalizer("exact_match", normalize, ["whitespace"]))


# -- contains ------------------------------------------------------------------------------------

_METRIC_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class Contains(Scorer):
    """`<name>` (default `contains_ok`): 1 when every stated condition on the answer holds: each
    `must` string and each per-item `must_from` string occurs, no `must_not` / `must_not_from`
    string occurs, each `regex` matches somewhere and no `must_not_regex` matches. With
    `must_from`, an item whose field is null gets no value (n/a)."""

    def __init__(self, name: str, must: list[str], must_not: list[str], regex: list[re.Pattern],
                 must_not_regex: list[re.Pattern], must_from: str | None, must_not_from: str | None,
                 case_sensitive: bool):
        self.name = name
        self.case_sensitive = case_sensitive
        self.must = [self._fold(s) for s in must]
        self.must_not = [self._fold(s) for s in must_not]
        self.regex, self.must_not_regex = regex, must_not_regex
        self.must_from, self.must_not_from = must_from, must_not_from
        self.declares = (Metric(name, partial=must_from is not None),)

    def _fold(self, text: str) -> str:
        return text if self.case_sensitive else text.casefold()

    def _record_strings(self, item: EvalItem, field: str | None) -> list[str]:
        if field is None:
            return []
        if field not in item.record:
            raise SuiteError(f"scorer {self.name}: item {item.id} has no field {field!r}")
        value = item.record[field]
        if value is None:
            return []
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise SuiteError(f"scorer {self.name}: item {item.id} field {field!r} must be a non-empty string "
                             f"or a list of non-empty strings, not {value!r}")
        return [self._fold(v) for v in value]

    def score(self, output: Output, item: EvalItem) -> dict[str, float]:
        if self.must_from is not None and self.must_from in item.record and item.record[self.must_from] is None:
            # nothing this item must mention: n/a, not a free pass that would dilute the mean
            # and the flip rate with items that cannot fail
            return {}
        must = self.must + self._record_strings(item, self.must_from)
        must_not = self.must_not + self._record_strings(item, self.must_not_from)
        folded = self._fold(output.text)
        ok = (all(s in folded for s in must)
              and not any(s in folded for s in must_not)
              and all(r.search(output.text) for r in self.regex)
              and not any(r.search(output.text) for r in self.must_not_regex))
        return {self.name: float(ok)}


@library_scorer("contains")
def contains(suite: Suite, *, must: list[str] = (), must_not: list[str] = (), regex: list[str] = (),
             must_not_regex: list[str] = (), must_from: str | None = None, must_not_from: str | None = None,
             case_sensitive: bool = False, name: str = "contains_ok") -> Scorer:
    """Must / must-not conditions on the answer: a cheap way to state a feared tail
    ("never mentions a drug the note lacks", "always names the unit").

    Output `<name>` (default `contains_ok`): 1 when every condition holds, else 0. It is a check,
    not correctness, unless the suite declares it with `correctness: [<name>]`; declare it as
    `lower_is_better` only if you invert its meaning yourself (it is 1 for a good answer).

    Options (at least one condition is required):
      must: strings that must all occur in the answer.
      must_not: strings none of which may occur.
      regex: regular expressions (Python `re` syntax) that must each match somewhere.
      must_not_regex: regular expressions none of which may match.
      must_from / must_not_from: the name of a field of each item's record holding a string or
        a list of strings: per-item `must` / `must_not` strings. A null `must_from` makes the
        item n/a for this metric (nothing to require, so no value, rather than a 1 that cannot
        fail); a null `must_not_from` means none; an item without the field is a suite error.
      case_sensitive: false (default) compares casefolded text and matches regexes with
        re.IGNORECASE.
      name: the output's name (letters, digits, underscores), e.g. to use two contains
        scorers in one suite.
    """
    where = "contains"
    must = check_str_list(where, "must", must, nonempty_items=True)
    must_not = check_str_list(where, "must_not", must_not, nonempty_items=True)
    regex = check_str_list(where, "regex", regex, nonempty_items=True)
    must_not_regex = check_str_list(where, "must_not_regex", must_not_regex, nonempty_items=True)
    for option, value in (("must_from", must_from), ("must_not_from", must_not_from)):
        if value is not None and (not isinstance(value, str) or not value):
            raise SuiteError(f"scorer {where}: option {option} must name a record field, not {value!r}")
    case_sensitive = check_bool(where, "case_sensitive", case_sensitive)
    if not isinstance(name, str) or not _METRIC_NAME.fullmatch(name):
        raise SuiteError(f"scorer {where}: option name must be letters, digits and underscores, not {name!r}")
    if not (must or must_not or regex or must_not_regex or must_from or must_not_from):
        raise SuiteError(f"scorer {where} ({name}): states no condition (give must, must_not, regex, "
                         "must_not_regex, must_from or must_not_from)")
    flags = 0 if case_sensitive else re.IGNORECASE

    def compile_all(option: str, patterns: list[str]) -> list[re.Pattern]:
        compiled = []
        for p in patterns:
            try:
                compiled.append(re.compile(p, flags))
            except re.error as exc:
                raise SuiteError(f"scorer {where} ({name}): option {option}: bad regular expression {p!r} "
                                 f"({exc})") from None
        return compiled

    return Contains(name, must, must_not, compile_all("regex", regex),
                    compile_all("must_not_regex", must_not_regex), must_from, must_not_from, case_sensitive)


# -- refusal -------------------------------------------------------------------------------------

DEFAULT_REFUSALS = ("i'm sorry", "i am sorry", "i cannot", "i can't", "as an ai", "i'm unable", "i am unable")


class Refusal(Scorer):
    """`empty_or_refusal` (lower is better): 1 when the stripped answer is empty or, casefolded,
    starts with one of the refusal phrases, else 0."""

    name = "refusal"
    declares = (Metric("empty_or_refusal", lower_is_better=True),)

    def __init__(self, phrases: tuple[str, ...]):
        self.phrases = phrases

    def score(self, output: Output, item: EvalItem) -> dict[str, float]:
        t = output.text.strip().casefold()
        return {"empty_or_refusal": float(not t or t.startswith(self.phrases))}


@library_scorer("refusal")
def refusal(suite: Suite, *, phrases: list[str] | None = None) -> Scorer:
    """The empty-or-refusal rate: how often the model answered nothing or declined.

    Output `empty_or_refusal` (lower is better, not correctness): 1 when the answer, stripped
    of surrounding whitespace, is empty or, casefolded, starts with a refusal phrase.

    Options:
      phrases: the refusal openings to look for, replacing the default ("i'm sorry",
        "i am sorry", "i cannot", "i can't", "as an ai", "i'm unable", "i am unable"). They are
        casefolded; note that a curly apostrophe (I’m) is a different character.
    """
    if phrases is None:
        chosen = DEFAULT_REFUSALS
    else:
        chosen = tuple(p.casefold() for p in check_str_list("refusal", "phrases", phrases, nonempty_items=True))
        if not chosen:
            raise SuiteError("scorer refusal: option phrases is empty (leave it out for the defaults)")
    return Refusal(chosen)


__all__ = ["exact_match", "contains", "refusal", "DEFAULT_REFUSALS"]
