"""Reference-overlap library scorers, through their reference implementations: rouge_l (Google's
rouge-score) and chrf (sacrebleu)."""

from __future__ import annotations

from pipeline.evaluate.library._common import check_bool, check_int
from pipeline.evaluate.scoring import Metric, Output, Scorer, library_scorer
from pipeline.suites.spec import EvalItem, Suite

# rouge-score's LCS is a pure-Python table of answer tokens x reference tokens: an answer far
# longer than any generation budget is scored on its first characters only (see _answer_cap).
_CELL_BUDGET_CHARS = 20_000_000


def _answer_cap(reference: str) -> int:
    """How many answer characters rouge_l reads: at least 10,000 and 4x the reference, more for
    short references (the LCS table stays near a few million cells)."""
    return max(10_000, 4 * len(reference), _CELL_BUDGET_CHARS // max(len(reference), 1))


def _clip(x: float) -> float:
    return min(max(float(x), 0.0), 1.0)


class RougeL(Scorer):
    """`rouge_l`: ROUGE-L F-measure (longest common subsequence of tokens) of the answer against
    the reference, in [0, 1]."""

    name = "rouge_l"
    declares = (Metric("rouge_l"),)

    def __init__(self, rouge):
        self.rouge = rouge

    def score(self, output: Output, item: EvalItem) -> dict[str, float]:
        answer = output.text[:_answer_cap(item.reference)]
        return {"rouge_l": _clip(self.rouge.score(item.reference, answer)["rougeL"].fmeasure)}


@library_scorer("rouge_l")
def rouge_l(suite: Suite, *, use_stemmer: bool = False) -> Scorer:
    """ROUGE-L with Google's `rouge-score` package (the implementation papers report): the
    F-measure of the longest common subsequence of answer and reference tokens. Its tokenizer
    lower-cases and keeps only ASCII letters and digits, so it suits English text.

    Output `rouge_l` (in [0, 1]; not correctness: use exact_match or a check for that). An
    answer longer than max(10,000, 4x the reference, 20M / reference length) characters (far
    beyond any generation budget) is scored on that prefix, keeping the pure-Python LCS fast.

    Options:
      use_stemmer: false (default); true applies the Porter stemmer to both sides.
    """
    from rouge_score import rouge_scorer

    stem = check_bool("rouge_l", "use_stemmer", use_stemmer)
    return RougeL(rouge_scorer.RougeScorer(["rougeL"], use_stemmer=stem))


class Chrf(Scorer):
    """`chrf`: sacrebleu's sentence-level chrF (chrF++ with word n-grams) of the answer against the
    reference, divided by 100."""

    name = "chrf"
    declares = (Metric("chrf"),)

    def __init__(self, metric):
        self.metric = metric

    def score(self, output: Output, item: EvalItem) -> dict[str, float]:
        return {"chrf": _clip(self.metric.sentence_score(output.text, [item.reference]).score / 100.0)}


@library_scorer("chrf")
def chrf(suite: Suite, *, char_order: int = 6, word_order: int = 0) -> Scorer:
    """chrF with `sacrebleu` (sacrebleu.metrics.CHRF, sentence_score): the F-score (beta 2) of
    character n-grams, plus word n-grams for chrF++. Language-agnostic and forgiving of
    inflection, which suits translation and short free-text answers.

    Output `chrf` (sacrebleu's 0-100 score / 100, in [0, 1]; not correctness).

    Options:
      char_order: character n-gram order (default 6).
      word_order: word n-gram order (default 0 = chrF; 2 = chrF++).
    """
    from sacrebleu.metrics import CHRF

    metric = CHRF(char_order=check_int("chrf", "char_order", char_order, 1),
                  word_order=check_int("chrf", "word_order", word_order, 0))
    return Chrf(metric)


__all__ = ["rouge_l", "chrf"]
