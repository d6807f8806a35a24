"""How a suite's answers are scored: the Scorer interface, the library registry, and turning a
suite.yaml `scorers:` list into scorer objects.

One contract for every scorer, library or the suite's own: it is called with `(output, item)`
(`output` is the answer text, a `str`, carrying the multiple-choice log-likelihoods as
`output.option_logprobs`; `item` the EvalItem) and returns named per-item numbers in [0, 1]
(ints, floats, bools and numpy scalars are accepted). Each output is declared once, as a
`Metric`: whether it is per-item *correctness* (0 or 1 per item: what quantization flips and
the suite check are computed on), whether lower is better (a rate of something feared), and
whether an item may have no value (n/a). Library scorers live in pipeline/evaluate/library/; a
suite's own live in its folder's `scorers.py` and are named `scorers:function` (lm-eval's
`!function utils.process_results` idea):

    # eval_suites/mytask/scorers.py
    from pipeline.evaluate.scoring import Metric, scorer

    @scorer(Metric("dose_right", correctness=True), Metric("wrong_drug", lower_is_better=True))
    def dose(output, item) -> dict[str, float]:
        return {"dose_right": item.record["dose"] in output, "wrong_drug": ...}
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import math
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterable

from pipeline.suites.spec import EvalItem, Suite, SuiteError


class Output(str):
    """What the model produced for one item: the answer text itself (so a scorer may treat it as
    the string it is), with the log-likelihood of each option when the suite scores choices."""

    option_logprobs: tuple[float, ...] | None

    def __new__(cls, text: str, option_logprobs: Iterable[float] | None = None) -> "Output":
        out = super().__new__(cls, text)
        out.option_logprobs = None if option_logprobs is None else tuple(option_logprobs)
        return out

    @property
    def text(self) -> str:
        return str(self)


@dataclass(frozen=True)
class Metric:
    """One scorer output and what it means, declared in one place."""

    name: str
    correctness: bool = False      # 0 or 1 per item: right or wrong (flips, the suite check)
    lower_is_better: bool = False  # a rate of something feared
    partial: bool = False          # an item may have no value: n/a, counted in no mean

    def __post_init__(self) -> None:
        if self.correctness and self.lower_is_better:
            raise SuiteError(f"metric {self.name}: a correctness metric is 1 when right, so it cannot be "
                             "lower-is-better")


def _as_number(v: Any) -> Any:
    """bools and numpy scalars as Python numbers; anything else unchanged (and refused later)."""
    if hasattr(v, "item") and not isinstance(v, (int, float)) and getattr(v, "shape", None) == ():
        v = v.item()  # numpy / torch scalars
    return float(v) if isinstance(v, bool) else v


class Scorer:
    """Base class. Subclasses set `name` and `declares` (one Metric per output, in order),
    `needs_choices` when they read `output.option_logprobs`, and implement `score`."""

    name: str = ""
    declares: tuple[Metric, ...] = ()
    # False: `declares` names only some outputs (their meaning); the scorer may write others
    declares_all: bool = True
    needs_choices: bool = False  # reads output.option_logprobs (the suite needs a choice_task)

    @property
    def metrics(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.declares)

    @property
    def correctness(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.declares if m.correctness)

    @property
    def lower_is_better(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.declares if m.lower_is_better)

    @property
    def partial(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.declares if m.partial)

    def score(self, output: Output, item: EvalItem) -> dict[str, float]:
        raise NotImplementedError

    def __call__(self, output: Output, item: EvalItem) -> dict[str, float]:
        values = {k: _as_number(v) for k, v in self.score(output, item).items()}
        if self.declares_all and not set(self.metrics) - set(self.partial) <= set(values) <= set(self.metrics):
            raise SuiteError(f"scorer {self.name} wrote {sorted(values)} for item {item.id}, but declares "
                             f"{sorted(self.metrics)}")
        for k, v in values.items():
            if not isinstance(v, (int, float)) or not math.isfinite(v) or not 0.0 <= v <= 1.0:
                raise SuiteError(f"scorer {self.name}: output {k}={v!r} for item {item.id} is not a number in [0, 1]")
            if k in self.correctness and v not in (0.0, 1.0):
                raise SuiteError(f"scorer {self.name}: correctness output {k}={v!r} for item {item.id} is not 0 or 1")
        return {k: float(v) for k, v in values.items()}


def declare(metrics: Iterable[str] = (), correctness: Iterable[str] = (), lower_is_better: Iterable[str] = (),
            partial: Iterable[str] = ()) -> tuple[Metric, ...]:
    """Metrics from name lists (the older spelling of a declaration): every name listed anywhere,
    in first-listed order."""
    correctness, lower, partial = set(correctness), set(lower_is_better), set(partial)
    names = list(dict.fromkeys([*metrics, *sorted(correctness), *sorted(lower), *sorted(partial)]))
    return tuple(Metric(n, correctness=n in correctness, lower_is_better=n in lower, partial=n in partial)
                 for n in names)


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

def scorer(*declares: Metric, correctness: Iterable[str] = (), lower_is_better: Iterable[str] = (),
           metrics: Iterable[str] = (), partial: Iterable[str] = (), needs_choices: bool = False):
    """Declare what a suite-local scorer `fn(output, item, **options) -> dict` writes: one Metric
    per output (`@scorer(Metric("x", correctness=True))`), or the same as name lists
    (`@scorer(correctness=["x"], metrics=["x", "y"])`). A scorer declaring outputs is checked on
    every call (undeclared names are errors); one declaring none may write any names.
    `needs_choices`: it reads `output.option_logprobs` (so does one taking an `option_logprobs`
    argument)."""
    listed = declare(metrics, correctness, lower_is_better, partial)
    clash = sorted({m.name for m in declares} & {m.name for m in listed})
    if clash:
        raise SuiteError(f"scorer declares {clash} twice (as a Metric and in a name list)")

    def deco(fn):
        fn.declares, fn.needs_choices = (*declares, *listed), needs_choices
        fn.declares_all = bool(declares) or bool(list(metrics))
        return fn
    return deco


def _overridden(declared: tuple[Metric, ...], correctness: tuple[str, ...] | None,
                lower: tuple[str, ...] | None) -> tuple[Metric, ...]:
    """A suite.yaml entry's `correctness:` / `lower_is_better:` replace what the scorer declares."""
    return tuple(replace(m, correctness=m.name in correctness if correctness is not None else m.correctness,
                         lower_is_better=m.name in lower if lower is not None else m.lower_is_better)
                 for m in declared)


class FunctionScorer(Scorer):
    def __init__(self, name: str, fn: Callable, options: dict[str, Any]):
        self.name, self.fn, self.options = name, fn, options
        self.declares = tuple(getattr(fn, "declares", ()))
        self.declares_all = bool(getattr(fn, "declares_all", False))
        self.takes_logprobs = "option_logprobs" in inspect.signature(fn).parameters
        self.needs_choices = bool(getattr(fn, "needs_choices", False)) or self.takes_logprobs

    def score(self, output: Output, item: EvalItem) -> dict[str, float]:
        kw = dict(self.options)
        if self.takes_logprobs:
            kw["option_logprobs"] = output.option_logprobs
        out = self.fn(output, item, **kw)
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
        self.declares = tuple(replace(m, name=prefix + m.name) for m in inner.declares)
        self.declares_all, self.needs_choices = inner.declares_all, inner.needs_choices

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
        built: Scorer = FunctionScorer(name, fn, options)
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
    if correctness is not None or lower is not None:
        if not built.declares_all:  # the override names outputs the scorer did not declare
            built.declares = built.declares + tuple(
                m for m in declare((), correctness or (), lower or ()) if m.name not in built.metrics)
        else:
            unknown = sorted((set(correctness or ()) | set(lower or ())) - set(built.metrics))
            if unknown:
                raise SuiteError(f"suite {suite.name}: scorer {name}: `correctness`/`lower_is_better` name "
                                 f"{unknown}, but it writes only {list(built.metrics)}")
        try:
            built.declares = _overridden(built.declares, correctness, lower)
        except SuiteError as exc:
            raise SuiteError(f"suite {suite.name}: scorer {name}: {exc}") from None
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

