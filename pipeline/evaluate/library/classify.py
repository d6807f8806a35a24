"""Classification library scorers: label (a generated answer naming one of a label set) and
choice (log-likelihood multiple choice over each item's options)."""

from __future__ import annotations

import math
import re
from typing import Callable

from pipeline.evaluate.library._common import check_str_list, normalizer
from pipeline.evaluate.scoring import Metric, Output, Scorer, library_scorer
from pipeline.suites.spec import EvalItem, Suite, SuiteError


# -- label ---------------------------------------------------------------------------------------

class Label(Scorer):
    """`label_accuracy`: 1 when the label the answer names is the reference label;
    `label_valid`: 1 when the answer names exactly one label."""

    name = "label"
    declares = (Metric("label_accuracy", correctness=True), Metric("label_valid"))

    def __init__(self, labels: list[str], norm: Callable[[str], str]):
        self.norm = norm
        self.normalized: dict[str, str] = {}
        for lab in labels:
            n = norm(lab.strip())
            if not n.strip():
                raise SuiteError(f"scorer label: label {lab!r} is empty once normalised")
            if n in self.normalized:
                raise SuiteError(f"scorer label: labels {self.normalized[n]!r} and {lab!r} are the same once "
                                 "normalised")
            self.normalized[n] = lab
        # Longest first: a label found inside a longer one ("positive" in "very positive") is masked.
        self.patterns = [(n, re.compile(r"(?<!\w)" + re.escape(n) + r"(?!\w)"))
                         for n in sorted(self.normalized, key=len, reverse=True)]

    def predict(self, text: str) -> str | None:
        """The normalised label the answer names, or None."""
        stripped = text.strip()
        whole = self.norm(stripped)
        if whole in self.normalized:
            return whole
        line = self.norm(stripped.split("\n", 1)[0])
        found = []
        for n, pattern in self.patterns:
            line, hits = pattern.subn(lambda m: "\0" * len(m.group()), line)
            if hits:
                found.append(n)
                if len(found) > 1:
                    return None
        return found[0] if found else None

    def score(self, output: Output, item: EvalItem) -> dict[str, float]:
        ref = self.norm(item.reference.strip())
        if ref not in self.normalized:
            raise SuiteError(f"scorer label: item {item.id}: reference {item.reference!r} is not one of the labels "
                             f"{list(self.normalized.values())}")
        pred = self.predict(output.text)
        return {"label_accuracy": float(pred == ref), "label_valid": float(pred is not None)}


@library_scorer("label")
def label(suite: Suite, *, labels: list[str] | None = None, normalize: list[str] | None = None) -> Scorer:
    """Classification by a generated label.

    The answer's label: the whole answer, normalised, if it equals a normalised label; else the
    label that occurs as a whole word or phrase in the answer's first line, if exactly one does
    (a label inside a longer label that also occurs there, "positive" in "very positive", does
    not count); else none. Negations are not understood: "not positive" names "positive".

    Outputs:
      label_accuracy (correctness): 1 when the answer's label is the reference label.
      label_valid: 1 when the answer names exactly one label (a label-format rate).
    Every reference answer must be one of the labels (after normalisation).

    Options:
      labels: the label set (default: the suite's `labels:`; one of the two is required).
      normalize: steps applied to the answer, the labels and the reference, as in exact_match
        (default `[case, whitespace, punctuation]`).
    """
    if labels is None:
        labels = suite.spec.labels
        if labels is None:
            raise SuiteError(f"suite {suite.name}: the label scorer needs a label set (`labels:` in suite.yaml or "
                             "the scorer's labels option)")
    labels = check_str_list("label", "labels", labels)
    if not labels:
        raise SuiteError(f"suite {suite.name}: the label scorer's label set is empty")
    return Label(labels, normalizer("label", normalize, ["case", "whitespace", "punctuation"]))


# -- choice --------------------------------------------------------------------------------------

def _argmax(values: list[float]) -> int:
    return max(range(len(values)), key=lambda i: (values[i], -i))  # the first of equal maxima


class Choice(Scorer):
    """`choice_accuracy`: 1 when the option with the highest log-likelihood is the reference;
    `choice_accuracy_norm`: the same with each log-likelihood divided by the option's length in
    characters."""

    name = "choice"
    declares = (Metric("choice_accuracy", correctness=True), Metric("choice_accuracy_norm"))
    needs_choices = True

    def score(self, output: Output, item: EvalItem) -> dict[str, float]:
        if item.options is None:
            raise SuiteError(f"scorer choice: item {item.id} has no options (a multiple-choice item lists them)")
        lps = output.option_logprobs
        if lps is None or len(lps) != len(item.options):
            got = "none" if lps is None else len(lps)
            raise SuiteError(f"scorer choice: item {item.id} has {len(item.options)} options but the evaluation "
                             f"produced {got} option log-likelihoods")
        if any(not isinstance(x, (int, float)) or isinstance(x, bool) or math.isnan(x) or x == math.inf
               for x in lps):
            raise SuiteError(f"scorer choice: item {item.id}: option log-likelihoods {list(lps)} are not all "
                             "numbers below +inf")
        gold = item.answer_index
        per_char = [lp / max(len(opt), 1) for lp, opt in zip(lps, item.options)]
        return {"choice_accuracy": float(_argmax(list(lps)) == gold),
                "choice_accuracy_norm": float(_argmax(per_char) == gold)}


@library_scorer("choice")
def choice(suite: Suite) -> Scorer:
    """Log-likelihood multiple choice, as lm-eval's `multiple_choice` output type: the model
    does not generate; the suite's `choice_task` measures the log-likelihood of each of an
    item's options (`options:` field) after its prompt.

    Outputs:
      choice_accuracy (correctness): 1 when the option with the highest summed log-likelihood
        is the reference answer (ties go to the first option).
      choice_accuracy_norm: the same after dividing each log-likelihood by the option's length
        in characters (lm-eval's acc_norm idea: long options are not penalised for length).
    Every item needs options. The scorer takes no settings.
    """
    return Choice()


__all__ = ["label", "choice"]
