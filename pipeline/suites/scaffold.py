"""Scaffold a suite from a held-out JSONL file: `scaffold_suite(jsonl, out_dir)`.

Reads the user's file (chat `messages` records, or prompt/completion-like fields) and writes a
suite folder a user can review and edit rather than write from nothing:

    <out_dir>/suite.yaml            commented; fields, slices, scorers and headline as detected
    <out_dir>/data/test.jsonl       the input, byte for byte (its sha is what the suite versions)
    <out_dir>/gate.yaml             a starter `gate:` block for params.yaml
    <out_dir>/schema.json           the user's JSON Schema, when one is given

then runs check_suite on the result, so what was guessed wrong shows at once.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pipeline.files import atomic_open, atomic_write_text
from pipeline.suites.check import SuiteCheck, check_suite
from pipeline.suites.spec import SuiteError, load_suite

PROMPT_FIELDS = ("prompt", "input", "question", "text", "instruction")
COMPLETION_FIELDS = ("completion", "output", "answer", "response", "target", "label", "reference")
SLICE_FIELDS = ("slice", "category", "subset", "split", "tag", "label_slice", "group", "domain")
ID_FIELDS = ("id", "uid", "example_id")
OPTIONS_FIELDS = ("options", "choices")
HEAD_RECORDS = 20        # "the first records": enough to see the format, blind to a stray late record
MAX_SLICES = 20          # more distinct values than this is a feature, not a slicing
MAX_JSON_KEYS = 12       # per-key metrics beyond this swamp the report
MAX_LABELS = 20
MAX_SHORT_WORDS = 5
DATA_FILE = "data/test.jsonl"


@dataclass
class ScaffoldResult:
    """What was detected and written, and what the check found in it."""

    suite_dir: Path
    name: str
    format: str                              # chat | prompt_completion
    prompt_field: str | None
    completion_field: str | None
    id_field: str | None
    slice_field: str | None
    options_field: str | None
    system_prompt: str | None
    kind: str                                # json | label | free_text: what the references look like
    scorers: list[Any]
    headline: str
    max_new_tokens: int
    files: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)   # what was kept or left out, and why
    check: SuiteCheck | None = None

    @property
    def problems(self) -> list[str]:
        return list(self.check.problems) if self.check else []

    @property
    def warnings(self) -> list[str]:
        return list(self.check.warnings) if self.check else []


def _read_records(path: Path) -> list[dict]:
    records = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except ValueError as exc:
                raise SuiteError(f"{path}:{lineno}: not JSON ({exc})") from None
            if not isinstance(rec, dict):
                raise SuiteError(f"{path}:{lineno}: a record must be a JSON object")
            records.append(rec)
    if not records:
        raise SuiteError(f"{path}: no records")
    return records


def _first_string_field(head: list[dict], names: tuple[str, ...]) -> str | None:
    for name in names:
        if all(isinstance(r.get(name), str) for r in head):
            return name
    return None


def _detect_fields(records: list[dict]) -> dict[str, Any]:
    head = records[:HEAD_RECORDS]
    found: dict[str, Any] = {"prompt_field": None, "completion_field": None, "system_prompt": None}
    if all("messages" in r for r in head):
        found["format"] = "chat"
        systems = {m[0].get("content") if m and isinstance(m[0], dict) and m[0].get("role") == "system" else None
                   for m in (r.get("messages") for r in records if isinstance(r.get("messages"), list))}
        # Only a prompt every item shares is the suite's; mixed ones stay per item.
        if len(systems) == 1 and isinstance(next(iter(systems)), str):
            found["system_prompt"] = next(iter(systems))
    else:
        found["format"] = "prompt_completion"
        found["prompt_field"] = _first_string_field(head, PROMPT_FIELDS)
        found["completion_field"] = _first_string_field(head, COMPLETION_FIELDS)
        if found["prompt_field"] is None or found["completion_field"] is None:
            raise SuiteError(f"cannot tell the format: records need `messages`, or a string prompt field "
                             f"(one of {list(PROMPT_FIELDS)}) and a string answer field (one of "
                             f"{list(COMPLETION_FIELDS)}); the first record has {sorted(head[0])}")
    found["id_field"] = next((k for k in ID_FIELDS if all(r.get(k) not in (None, "") for r in records)), None)
    found["options_field"] = next((k for k in OPTIONS_FIELDS if all(
        isinstance(r.get(k), list) and all(isinstance(o, str) for o in r[k]) for r in head)), None)
    taken = {"messages", found["prompt_field"], found["completion_field"], found["id_field"], found["options_field"]}
    found["slice_field"] = _detect_slice(records, taken)
    return found


def _detect_slice(records: list[dict], taken: set) -> str | None:
    def distinct(name: str) -> int | None:
        values = [r.get(name) for r in records]
        if not all(isinstance(v, (str, int)) and not isinstance(v, bool) and v != "" for v in values):
            return None
        return len(set(map(str, values)))

    # A named field is the user's own slicing: any count, as long as it groups (2+ values, not one per record).
    for name in SLICE_FIELDS:
        k = distinct(name) if name not in taken else None
        if k is not None and 2 <= k < len(records):
            return name
    for name in records[0]:
        if name in taken or not all(isinstance(r.get(name), str) for r in records):
            continue
        k = distinct(name)
        if k is not None and 2 <= k <= MAX_SLICES and k < len(records):
            return name
    return None


def _reference(rec: dict, fields: dict[str, Any]) -> str | None:
    if fields["format"] == "chat":
        msgs = rec.get("messages")
        last = msgs[-1] if isinstance(msgs, list) and msgs else None
        return last.get("content") if isinstance(last, dict) and isinstance(last.get("content"), str) else None
    value = rec.get(fields["completion_field"])
    return value if isinstance(value, str) else None


def _words(text: str) -> int:
    # Whitespace words undercount compact JSON ({"a":1,"b":2} is one); runs of word characters
    # count it as the tokenizer will roughly see it. Take whichever is larger.
    return max(len(text.split()), len(re.findall(r"\w+", text)))


def _json_object(text: str) -> dict | None:
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _propose(refs: list[str], has_options: bool, has_schema: bool) -> tuple[str, list[Any], str, list[str] | None]:
    """(kind, scorer entries, headline metric, labels) from what the references look like."""
    objects = [_json_object(r) for r in refs]
    distinct = sorted(set(refs))
    short = all(_words(r) <= MAX_SHORT_WORDS for r in refs)
    labels = None
    if refs and all(o is not None for o in objects):
        kind, headline = "json", "json_key_accuracy"
        # every key any reference has, in order of first appearance: a key only the feared slice
        # carries (a security flag) is the one a per-key metric is for; it is n/a on the rest
        keys = list(dict.fromkeys(k for o in objects for k in o))
        match: Any = {"scorer": "json_match", "keys": keys} if 0 < len(keys) <= MAX_JSON_KEYS else "json_match"
        scorers: list[Any] = ["json_valid", match, "refusal"]
    elif short and 2 <= len(distinct) <= MAX_LABELS and len(distinct) < len(refs):
        # Repetition is what makes a short answer a label: 15 distinct one-word answers over 15
        # items are short answers (exact match), not a class set.
        kind, headline, labels = "label", "label_accuracy", distinct
        scorers = ["label"]
    else:
        kind, headline = "free_text", "rouge_l"
        scorers = ["rouge_l", "chrf", "refusal"] + (["exact_match"] if short else [])
    if has_schema:
        scorers.insert(1 if kind == "json" else 0, "json_schema")
    if has_options or kind == "label":
        # log-likelihood over the options (a label task's are its labels) is a second view; the
        # headline stays what serving returns, the generated answer
        scorers.append("choice")
        if kind != "label":
            if "exact_match" not in scorers:
                scorers.append("exact_match")
            headline = "exact_match"
    return kind, scorers, headline, labels


def _key_notes(refs: list[str]) -> list[str]:
    """Which JSON keys got a per-key metric, and how many references have each."""
    objects = [o for o in (_json_object(r) for r in refs) if o is not None]
    counts: dict[str, int] = {}
    for o in objects:
        for k in o:
            counts[k] = counts.get(k, 0) + 1
    if len(counts) > MAX_JSON_KEYS:
        return [f"no per-key metrics: the references have {len(counts)} keys (more than {MAX_JSON_KEYS}); list the "
                "ones that matter under json_match's `keys:`"]
    every = [k for k, n in counts.items() if n == len(objects)]
    some = [f"{k} ({n} of {len(objects)} references; n/a on the others)" for k, n in counts.items() if n < len(objects)]
    out = [f"per-key metrics for every key a reference has: {', '.join(every) or '-'} (in every reference)"]
    if some:
        out.append("also for keys only some references have: " + ", ".join(some))
    return out


def _y(value: Any) -> str:
    """One YAML value on one line (flow style), quoted where YAML needs it."""
    if isinstance(value, str) and "\n" in value:
        # YAML would fold this over several lines; a JSON string is a one-line YAML double-quoted scalar.
        return json.dumps(value, ensure_ascii=False)
    text = yaml.safe_dump(value, default_flow_style=True, allow_unicode=True, width=math.inf, sort_keys=False)
    return text.removesuffix("\n...\n").strip()


def _line(key: str, value: Any, comment: str = "") -> str:
    text = f"{key}: {_y(value)}"
    return f"{text:<40} # {comment}" if comment else text


def _suite_yaml(name: str, source: Path, n: int, fields: dict[str, Any], kind: str, scorers: list[Any],
                headline: str, labels: list[str] | None, schema: bool, max_new_tokens: int, longest: int) -> str:
    chat = fields["format"] == "chat"
    why = {"json": "every reference parses as a JSON object: validity, per-key match, refusals",
           "label": "few distinct short references: a label set",
           "free_text": "free-text references: overlap (ROUGE-L, chrF) and refusals"}[kind]
    lines = [
        f"# Eval suite scaffolded by `python -m pipeline.suites scaffold` from {source.name} ({n} items).",
        "# Everything below was guessed from the data: review it, then run",
        "#   python -m pipeline.suites check <this folder> --params <this folder>/gate.yaml",
        "# Schema: SuiteSpec in pipeline/suites/spec.py (unknown keys are errors).",
        _line("name", name, "also the prefix of the lm-eval task names"),
        _line("version", 1, "bump whenever items or scoring change; reports carry it"),
        _line("description", f"Scaffolded from {source.name}."),
        _line("data", DATA_FILE, f"a byte-for-byte copy of {source.name}"),
        _line("format", fields["format"], "detected from the first records"),
    ]
    if not chat:
        lines += [_line("prompt_field", fields["prompt_field"], "the prompt sent as the user turn"),
                  _line("completion_field", fields["completion_field"], "the reference answer")]
    lines.append(_line("id_field", fields["id_field"],
                       "" if fields["id_field"] else "no id field found: items are named file:line"))
    lines.append(_line("slice_field", fields["slice_field"],
                       "per-slice CIs, the worst slice and slice floors; null = one slice"))
    if fields["options_field"]:
        lines.append(_line("options_field", fields["options_field"], "each item's multiple-choice options"))
    lines.append(_line("system_prompt", fields["system_prompt"],
                       "the system turn every item carries" if fields["system_prompt"] is not None
                       else "null: items' own system turns, else the bundle's pinned one (as serving does)"))
    lines += [f"# Scorers: {why}.",
              "# Library: pipeline/evaluate/library/; your own: scorers.py here, named `scorers:function`.",
              "scorers:"]
    lines += [f"  - {_y(s)}" for s in scorers]
    lines.append(_line("headline_metric", headline, "what reports lead with and the worst slice is judged by"))
    if labels is not None:
        lines.append(_line("labels", labels, "every distinct reference; add any the data lacks"))
    if schema:
        lines.append(_line("json_schema", "schema.json", "copied from --schema"))
    lines += ["generation:",
              f"  {_line('max_new_tokens', max_new_tokens, f'longest reference ~{longest} words x 2, to a multiple of 32')}",
              f"  {_line('stop', [], 'strings that end an answer')}",
              "# lm-eval tasks, built from this file at evaluation (no task YAMLs to keep in step):",
              _line("generate_task", name, "the model writes each answer, greedy"),
              _line("loglikelihood_task", f"{name}_nll", "the reference's NLL: per-example tails")]
    if fields["options_field"] or kind == "label":
        lines.append(_line("choice_task", f"{name}_choice", "log-likelihood over each item's options"
                           + ("" if fields["options_field"] else " (the labels)")))
    lines.append(_line("min_slice_n", 20, "smaller slices are flagged as too small to trust, never hidden"))
    return "\n".join(lines) + "\n"


def _gate_yaml(name: str, headline: str, refusal: bool, correctness: list[str], lower: list[str]) -> str:
    flips = bool(correctness)
    rules = [
        "    # Floors start at 0.0 and ceilings at their loosest, so the first run passes on quality: set",
        "    # each from what the first evaluation measures (reports/eval.json; a floor just below the",
        "    # lower end of its 95% CI), then tighten as models improve. The slice-size rule below is the",
        "    # one exception.",
        f"    - {{metric: overall.{headline}, min: 0.0, bound: ci_low}}",
        f"    - {{metric: slices.*.{headline}, min: 0.0, bound: ci_low, note: \"every slice, so the worst one too\"}}",
        "    # A floor on a slice of a few items means little even on the CI's lower end: every slice the",
        "    # floors name must have min_slice_n items (suite.yaml) as evaluated. This one is not a 0.0",
        "    # floor: it fails the first run if a slice is short; add items rather than lowering it.",
        "    - {metric: slices.*.too_small, max: 0, note: \"every slice has at least min_slice_n items\"}",
    ]
    if refusal:
        rules.append("    - {metric: overall.empty_or_refusal, max: 0.05, note: \"empty answers and refusals\"}")
    rules.append("    # Quantization damage: the same suite on the 16-bit base with the same adapter. Loosest")
    rules.append("    # values first (a first run on a small model moves a slice by more than 0.1); then set each")
    rules.append("    # just above what the first run measured (reports/eval.json, damage).")
    if flips:
        rules.append("    - {metric: damage.flip_rate, max: 1.0, note: \"right under reference precision, "
                     "wrong as shipped\"}")
    rules.append(f"    - {{metric: damage.worst_slice_drop, max: 1.0, note: \"largest per-slice {headline} drop\"}}")
    return "\n".join([
        f"# Starter release rules for suite {name}: paste the `gate:` block into params.yaml (or check",
        "# them as they are: python -m pipeline.suites check <suite> --params <suite>/gate.yaml).",
        "gate:",
        "  rules:",
        *rules,
        "  # Regression against the last release: null = the latest release of this suite in gate.registry",
        "  # (the first has none: \"no previous release: no regression check\"); none = off; or a digest / path.",
        "  baseline: null",
        "  registry: releases                                  # keep equal to release.remote",
        "  registry_public_key: .tailgate/signing/release.pub  # = release.signing.public_key",
        "  regression_alpha: 0.05   # a worsening significant at this level (paired test, Holm) fails too",
        "  # Day-one budgets: compared item by item with the previous release (McNemar's exact test on",
        "  # flipped items, a paired bootstrap otherwise). A drop the overall mean hides shows in its slice.",
        "  regression:",
        *_regression_rules(headline, correctness, lower),
    ]) + "\n"


def _regression_rules(headline: str, correctness: list[str], lower: list[str]) -> list[str]:
    def rule(metric: str) -> str:
        name = metric.rsplit(".", 1)[-1]
        return f"    - {{metric: {metric}, " + ("max_rise: 0.03}" if name in lower else "max_drop: 0.05}")

    rules = [rule(f"overall.{headline}"), rule(f"slices.*.{headline}")]
    rules += [rule(f"overall.{m}") for m in [*correctness, *lower] if m != headline]
    return rules


def _suite_name(name: str) -> str:
    clean = re.sub(r"[^a-z0-9_]+", "_", name.lower()).strip("_")
    return clean or "suite"


def scaffold_suite(jsonl: str | Path, out_dir: str | Path, name: str | None = None, schema: str | Path | None = None,
                   force: bool = False) -> ScaffoldResult:
    """Write a suite for `jsonl` into `out_dir` (refused if it exists and is not empty, unless
    force; force overwrites the files written here and leaves any others) and check it."""
    from pipeline.evaluate.scoring import build_scorers
    from pipeline.params import GateParams

    jsonl, out_dir = Path(jsonl), Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())) and not force:
        raise FileExistsError(f"{out_dir} exists and is not empty; pass force=True (--force) to overwrite")
    records = _read_records(jsonl)
    data_bytes = jsonl.read_bytes()  # read before writing: the input may live inside out_dir
    schema_text = None
    if schema is not None:
        schema_text = Path(schema).read_text(encoding="utf-8")
        try:
            json.loads(schema_text)
        except ValueError as exc:
            raise SuiteError(f"{schema}: the JSON Schema is not JSON ({exc})") from None
    name = _suite_name(name or out_dir.name)
    fields = _detect_fields(records)
    refs = [r for r in (_reference(rec, fields) for rec in records) if r is not None]
    kind, scorers, headline, labels = _propose(refs, fields["options_field"] is not None, schema is not None)
    notes = _key_notes(refs) if kind == "json" else []
    longest = max((_words(r) for r in refs), default=0)
    max_new_tokens = max(32, math.ceil(2 * longest / 32) * 32)

    files: dict[str, str | bytes] = {
        "suite.yaml": _suite_yaml(name, jsonl, len(records), fields, kind, scorers, headline, labels,
                                  schema is not None, max_new_tokens, longest),
        DATA_FILE: data_bytes,
    }
    if schema_text is not None:
        files["schema.json"] = schema_text
    written = []
    for rel, content in files.items():
        path = out_dir / rel
        with atomic_open(path, "wb") as f:
            f.write(content if isinstance(content, bytes) else content.encode("utf-8"))
        written.append(path)

    suite = load_suite(out_dir)
    try:
        built = build_scorers(suite)
    except SuiteError:
        built = []  # the check below names the scorer that does not build
    correctness = list(dict.fromkeys(m for sc in built for m in sc.correctness))
    lower = list(dict.fromkeys(m for sc in built for m in sc.lower_is_better))
    gate_text = _gate_yaml(name, headline, "refusal" in scorers, correctness, lower)
    atomic_write_text(out_dir / "gate.yaml", gate_text)
    written.append(out_dir / "gate.yaml")
    gate = GateParams.model_validate(yaml.safe_load(gate_text)["gate"])
    return ScaffoldResult(
        suite_dir=out_dir, name=name, format=fields["format"], prompt_field=fields["prompt_field"],
        completion_field=fields["completion_field"], id_field=fields["id_field"], slice_field=fields["slice_field"],
        options_field=fields["options_field"], system_prompt=fields["system_prompt"], kind=kind, scorers=scorers,
        headline=headline, max_new_tokens=max_new_tokens, files=written, notes=notes,
        check=check_suite(suite, gate=gate, damage=True))

