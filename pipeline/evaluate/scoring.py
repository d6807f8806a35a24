"""How a suite's answers are scored: the Scorer interface, the library registry, and turning a
suite.yaml `scorers:` list into scorer objects.

A scorer maps (Output, EvalItem) to named per-item numbers in [0, 1]. It declares which of its
outputs are per-item *correctness* (0 or 1 per item: what quantization flips and the suite check
are computed on) and which are lower-is-better (a rate of something feared). Library scorers
live in pipeline/evaluate/library/; a suite's own live in its folder's `scorers.py` and are
named `scorers:function` (lm-eval's `!function utils.process_results` idea):

    # eval_suites/mytask/scorers.py
    from pipeline.evaluate.scoring import scorer

    @scorer(correctness=["dose_right"])
    def dose(output: str, item) -> dict[str, float]:
        return {"dose_right": float(item.record["dose"] in output)}
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from pipeline.suites.spec import EvalItem, Suite, SuiteError


@dataclass(frozen=True)
class Output:
    """What the model produced for one item."""

    text: str
    option_logprobs: tuple[float, ...] | None = None  # log-likelihood of each option (multiple choice)


class Scorer:
    """Base class. Subclasses set `name`, `metrics` (every output name, in order), `correctness`
    (the per-item 0/1 ones), `lower_is_better`, `needs_choices`, `partial` (the metrics an item
    may have no value for: n/a, counted in no mean), and implement `score`."""

    name: str = ""
    metrics: tuple[str, ...] = ()
    partial: tuple[str, ...] = ()
    correctness: tuple[str, ...] = ()
    lower_is_better: tuple[str, ...] = ()
    needs_choices: bool = False  # reads Output.option_logprobs (the suite needs a choice_task)

    def score(self, output: Output, item: EvalItem) -> dict[str, float]:
        raise NotImplementedError

    def __call__(self, output: Output, item: EvalItem) -> dict[str, float]:
        values = self.score(output, item)
        if self.metrics and not set(self.metrics) - set(self.partial) <= set(values) <= set(self.metrics):
            raise SuiteError(f"scorer {self.name} wrote {sorted(values)} for item {item.id}, but declares "
                             f"{sorted(self.metrics)}")
        for k, v in values.items():
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or not 0.0 <= v <= 1.0:
                raise SuiteError(f"scorer {self.name}: output {k}={v!r} for item {item.id} is not a number in [0, 1]")
            if k in self.correctness and v not in (0.0, 1.0):
                raise SuiteError(f"scorer {self.name}: correctness output {k}={v!r} for item {item.id} is not 0 or 1")
        return {k: float(v) for k, v in values.items()}


# -- the library ---------------------------------------------------------------------------------

LIBRARY: dict[str, Callable[..., Scorer]] = {}


def library_scorer(name: str):
    """Register a library scorer factory: `factory(suite, **options) -> Scorer`."""
    def deco(factory):
        if name in LIBRARY and LIBRARY[name] is not factory:
            raise ValueError(f"library scorer {name!r} registered twice")
        LIBRARY[name] = factory
        return factory
    return deco


# -- suite-local function scorers ----------------------------------------------------------------

def scorer(correctness: Iterable[str] = (), lower_is_better: Iterable[str] = (), metrics: Iterable[str] = ()):
    """Mark a suite-local function `fn(output_text, item) -> dict` with what its outputs mean.
    `metrics` lists its outputs when they are fixed (checked on every call when given)."""
    def deco(fn):
        fn.correctness, fn.lower_is_better, fn.metrics = tuple(correctness), tuple(lower_is_better), tuple(metrics)
        return fn
    return deco


class FunctionScorer(Scorer):
    def __init__(self, name: str, fn: Callable, options: dict[str, Any], correctness=None, lower_is_better=None):
        self.name, self.fn, self.options = name, fn, options
        self.correctness = tuple(correctness if correctness is not None else getattr(fn, "correctness", ()))
        self.lower_is_better = tuple(lower_is_better if lower_is_better is not None
                                     else getattr(fn, "lower_is_better", ()))
        self.metrics = tuple(getattr(fn, "metrics", ()))
        params = inspect.signature(fn).parameters
        self.needs_choices = "option_logprobs" in params

    def score(self, output: Output, item: EvalItem) -> dict[str, float]:
        kw = dict(self.options)
        if self.needs_choices:
            kw["option_logprobs"] = output.option_logprobs
        out = self.fn(output.text, item, **kw)
        if not isinstance(out, dict):
            raise SuiteError(f"scorer {self.name} returned {type(out).__name__}, not a dict of metrics")
        return out


_MODULES: dict[str, Any] = {}


def load_module(path: str | Path):
    """Import a suite's Python file under a private name (two suites may both have a
    scorers.py): the way a suite's scorers.py imports its own helpers too, e.g.
    `fmt = load_module(Path(__file__).with_name("summary_format.py"))`."""
    path = Path(path).resolve()
    key = str(path)
    if key in _MODULES:
        return _MODULES[key]
    if not path.is_file():
        raise SuiteError(f"scorer module {path} not found")
    mod_name = f"tailgate_suite_{hashlib.sha256(key.encode()).hexdigest()[:12]}_{path.stem}"
    spec = importlib.util.spec_from_file_location(mod_name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = mod  # dataclasses and pickling look modules up here
    try:
        spec.loader.exec_module(mod)
    except Exception:
        del sys.modules[mod_name]
        raise
    _MODULES[key] = mod
    return mod


def _suite_module(suite: Suite, module: str):
    """The suite's own module, from its folder or, for a suite that includes another, from the
    first folder of the include chain that has it."""
    rel = f"{module.replace('.', '/')}.py"
    roots = getattr(suite, "module_roots", [suite.root])
    found = next((r / rel for r in roots if (r / rel).is_file()), roots[0] / rel)
    return load_module(found)


class _Prefixed(Scorer):
    """A scorer whose outputs are renamed `<prefix><name>` (two instances of one scorer)."""

    def __init__(self, inner: Scorer, prefix: str):
        self.inner, self.prefix = inner, prefix
        self.name = f"{prefix}{inner.name}"
        self.metrics = tuple(prefix + m for m in inner.metrics)
        self.correctness = tuple(prefix + m for m in inner.correctness)
        self.lower_is_better = tuple(prefix + m for m in inner.lower_is_better)
        self.needs_choices = inner.needs_choices

    def score(self, output: Output, item: EvalItem) -> dict[str, float]:
        return {self.prefix + k: v for k, v in self.inner(output, item).items()}


def _names(value, what: str, suite: Suite) -> tuple[str, ...] | None:
    if value is None:
        return None
    value = [value] if isinstance(value, str) else value  # `correctness: x` means [x], not its letters
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise SuiteError(f"suite {suite.name}: `{what}` must be a metric name or a list of them")
    return tuple(value)


def build_scorer(suite: Suite, entry: str | dict[str, Any]) -> Scorer:
    options = {"scorer": entry} if isinstance(entry, str) else dict(entry)
    if "scorer" not in options:
        raise SuiteError(f"suite {suite.name}: scorer entry {entry!r} has no `scorer:` key")
    name = options.pop("scorer")
    prefix = options.pop("prefix", "")
    correctness = _names(options.pop("correctness", None), "correctness", suite)
    lower = _names(options.pop("lower_is_better", None), "lower_is_better", suite)
    if ":" in name:
        module, _, fn_name = name.partition(":")
        fn = getattr(_suite_module(suite, module), fn_name, None)
        if not callable(fn):
            raise SuiteError(f"suite {suite.name}: {module}.py has no function {fn_name}")
        built: Scorer = FunctionScorer(name, fn, options, correctness, lower)
    else:
        import pipeline.evaluate.library  # noqa: F401  (fills LIBRARY)

        if name not in LIBRARY:
            raise SuiteError(f"suite {suite.name}: unknown scorer {name!r}; library: {sorted(LIBRARY)}, or "
                             "`module:function` from the suite folder")
        factory = LIBRARY[name]
        try:  # an unknown option is the suite's mistake; a TypeError inside the factory is a bug
            inspect.signature(factory).bind(suite, **options)
        except TypeError as exc:
            raise SuiteError(f"suite {suite.name}: scorer {name}: {exc}") from None
        built = factory(suite, **options)
        if correctness is not None:
            built.correctness = tuple(correctness)
        if lower is not None:
            built.lower_is_better = tuple(lower)
    if built.metrics:
        unknown = sorted(set(built.correctness + built.lower_is_better) - set(built.metrics))
        if unknown:
            raise SuiteError(f"suite {suite.name}: scorer {name} declares {unknown} as correctness/lower-is-better, "
                             f"but writes only {list(built.metrics)}")
    return _Prefixed(built, prefix) if prefix else built


def build_scorers(suite: Suite) -> list[Scorer]:
    return [build_scorer(suite, e) for e in suite.spec.scorers]


def score_item(scorers: list[Scorer], output: Output, item: EvalItem) -> dict[str, float]:
    """Every scorer's outputs for one item; two scorers may not write the same metric."""
    row: dict[str, float] = {}
    for s in scorers:
        values = s(output, item)
        clash = sorted(set(values) & set(row))
        if clash:
            raise SuiteError(f"scorer {s.name} writes {clash}, already written by another scorer (use `prefix:`)")
        row.update(values)
    return row


def correctness_metrics(scorers: list[Scorer]) -> list[str]:
    return [m for s in scorers for m in s.correctness]


def lower_is_better(scorers: list[Scorer]) -> list[str]:
    return [m for s in scorers for m in s.lower_is_better]


def reference_output(item: EvalItem) -> Output:
    """The output a perfect model would give: the reference text, and all log-likelihood mass on
    the reference option."""
    lp = None
    if item.options is not None:
        lp = tuple(0.0 if o == item.reference else -math.inf for o in item.options)
    return Output(item.reference, lp)

