"""Eval suites: `eval_suites/<name>/suite.yaml`, its items, its lm-eval tasks and its scorers.

A suite is data plus declarations, nothing under `pipeline/` knows its task:

- items: chat JSONL (`messages` ending in the reference assistant turn) or prompt/completion
  JSONL, each with an id and a slice; a multiple-choice item also lists its options;
- the system prompt: per suite (`system_prompt`), per item (a chat item's own system turn), or
  none (then evaluation applies the bundle's pinned system prompt, exactly as serving does for
  a request that brings none);
- generation settings (max new tokens, stop strings), an optional JSON Schema and label set;
- scorers from the library (pipeline/evaluate/library/) or the suite's own `scorers.py`, and
  the `headline_metric` the report and its plots lead with.

Variants may `include:` another suite.yaml and override keys.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator

SUITE_FILE = "suite.yaml"


class SuiteError(ValueError):
    """A suite that cannot be evaluated: names the file, the line or item, and what is wrong."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GenerationSpec(_Strict):
    max_new_tokens: int = Field(256, gt=0, description="Generation budget per item (evaluate.max_new_tokens overrides).")
    stop: list[str] = Field(default_factory=list, description="Strings that end an answer (cut before the first).")


class SuiteSpec(_Strict):
    name: str = Field(description="Suite name (also the prefix of its lm-eval task names).")
    version: int = Field(description="Bumped whenever items or scoring change; reports carry it.")
    description: str = ""
    data: str = Field(description="Items (JSONL), relative to the suite directory.")
    format: Literal["auto", "chat", "prompt_completion"] = Field(
        "auto", description="chat: `messages` ending in the reference assistant turn; prompt_completion: `prompt` "
        "and `completion` fields; auto: per record, whichever it has.")
    id_field: str | None = Field(
        "id", description="Record field holding the item id; a record without one (or null here) is named file:line, "
        "which moves when lines move: give items ids when you can.")
    slice_field: str | None = Field(
        "slice", description="Record field naming the item's slice; null = one slice, `all`.")
    prompt_field: str = Field("prompt", description="prompt_completion: the field holding the prompt.")
    completion_field: str = Field("completion", description="prompt_completion: the field holding the reference answer.")
    options_field: str = Field("options", description="Field listing a multiple-choice item's options (the "
                               "reference must be one of them).")
    system_prompt: str | None = Field(
        None, description="System turn for items that carry none; null = the bundle's pinned system prompt, as "
        "serving applies it.")
    headline_metric: str = Field(description="The scorer output reports and plots lead with, and the worst "
                                 "slice is judged by.")
    scorers: list[str | dict[str, Any]] = Field(
        description="Library scorer names, `module:function` from the suite folder (`scorers:my_check` = "
        "`scorers.py`), or mappings {scorer: name, <options>, prefix:, correctness:, lower_is_better:}.")
    json_schema: str | None = Field(None, description="JSON Schema file (relative to the suite) for the json_schema scorer.")
    labels: list[str] | None = Field(None, description="The label set, for the label scorer; also the options of "
                                     "choice scoring for items that list none.")
    generation: GenerationSpec = Field(default_factory=GenerationSpec, description="How answers are generated.")
    # The tasks are built from this file at evaluation (pipeline/evaluate/tasks.py): no task
    # YAMLs to keep in step with it. The names are lm-eval's task names in its outputs.
    generate_task: str = Field(description="Name of the lm-eval generate_until task evaluation builds: the model "
                               "writes each answer, greedy, with `generation`'s budget and stop strings.")
    loglikelihood_task: str | None = Field(
        None, description="Name of the lm-eval loglikelihood task scoring the reference answer (per-example NLL "
        "tails); null = none.")
    choice_task: str | None = Field(
        None, description="Name of the lm-eval multiple_choice task over each item's options (the suite's `labels` "
        "where an item lists none); null = none.")
    min_slice_n: int = Field(20, description="Slices with fewer items are flagged as too small to trust.")
    length_buckets_tokens: list[int] = Field(
        default_factory=lambda: [256, 384, 512, 768],
        description="Upper edges of the prompt-length buckets quality is reported by.")

    @field_validator("scorers")
    @classmethod
    def _some_scorers(cls, v):
        if not v:
            raise ValueError("a suite needs at least one scorer")
        return v


@dataclass(frozen=True)
class EvalItem:
    """One evaluated item, whatever its file format."""

    id: str
    slice: str
    messages: tuple[dict, ...]          # the prompt turns, ending in a user turn; a system turn only if given
    reference: str                      # the reference answer
    options: tuple[str, ...] | None = None
    record: dict = field(default_factory=dict, compare=False)  # the raw record: suite scorers read its fields

    @property
    def prompt(self) -> str:
        """The last user turn (what most scorers compare the answer against)."""
        return self.messages[-1]["content"]

    @property
    def system(self) -> str | None:
        return self.messages[0]["content"] if self.messages and self.messages[0]["role"] == "system" else None

    def prompt_messages(self, default_system: str | None) -> list[dict]:
        """The prompt as sent: the item's own system turn, else default_system (if any)."""
        msgs = [dict(m) for m in self.messages]
        if default_system is not None and self.system is None:
            msgs.insert(0, {"role": "system", "content": default_system})
        return msgs

    @property
    def answer_index(self) -> int | None:
        return None if self.options is None else self.options.index(self.reference)


def _item(spec: SuiteSpec, rec: Any, where: str) -> EvalItem:
    if not isinstance(rec, dict):
        raise SuiteError(f"{where}: an item must be a JSON object")
    fmt = spec.format
    if fmt == "auto":
        fmt = "chat" if "messages" in rec else "prompt_completion"
    if fmt == "chat":
        msgs = rec.get("messages")
        ok = isinstance(msgs, list) and len(msgs) >= 2 and all(
            isinstance(m, dict) and m.get("role") in ("system", "user", "assistant") and isinstance(m.get("content"), str)
            for m in msgs)
        if not ok or msgs[-1]["role"] != "assistant" or msgs[-2]["role"] != "user":
            raise SuiteError(f"{where}: `messages` must be role/content turns ending in a user turn and the "
                             "reference assistant turn")
        if any(m["role"] == "system" for m in msgs[1:]):
            raise SuiteError(f"{where}: a system turn may only come first")
        prompt = tuple({"role": m["role"], "content": m["content"]} for m in msgs[:-1])
        reference = msgs[-1]["content"]
    else:
        p, c = rec.get(spec.prompt_field), rec.get(spec.completion_field)
        if not isinstance(p, str) or not isinstance(c, str):
            raise SuiteError(f"{where}: needs string fields `{spec.prompt_field}` and `{spec.completion_field}` "
                             "(or `messages`)")
        prompt, reference = ({"role": "user", "content": p},), c
    if not prompt[-1]["content"].strip():
        raise SuiteError(f"{where}: empty prompt")
    options = rec.get(spec.options_field)
    if options is not None:
        if not isinstance(options, list) or len(options) < 2 or not all(isinstance(o, str) for o in options):
            raise SuiteError(f"{where}: `{spec.options_field}` must list at least two strings")
        if reference not in options:
            raise SuiteError(f"{where}: the reference answer {reference!r} is not one of its options")
        options = tuple(options)
    elif spec.labels is not None and reference in spec.labels:
        # a label task's options are its labels: choice scoring needs no per-item list
        options = tuple(spec.labels)
    if spec.slice_field is None:
        slice_name = "all"
    elif spec.slice_field not in rec or rec[spec.slice_field] in (None, ""):
        raise SuiteError(f"{where}: item has no `{spec.slice_field}` (the suite's slice_field)")
    else:
        slice_name = str(rec[spec.slice_field])
    item_id = rec.get(spec.id_field) if spec.id_field is not None else None
    return EvalItem(id=str(item_id) if item_id is not None else where.rsplit("/", 1)[-1], slice=slice_name,
                    messages=prompt, reference=reference, options=options, record=rec)


class Suite:
    def __init__(self, root: Path, spec: SuiteSpec, module_roots: list[Path] | None = None):
        self.root, self.spec = root, spec
        # where the suite's own Python modules (scorers.py) are found: its folder, then the
        # folders of the suites it includes
        self.module_roots = list(module_roots or [root])

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def data_path(self) -> Path:
        return self.root / self.spec.data

    @cached_property
    def _items(self) -> list[EvalItem]:
        if not self.data_path.is_file():
            raise SuiteError(f"{self.data_path}: suite data file not found")
        items = []
        with open(self.data_path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                where = f"{self.data_path.name}:{lineno}"
                try:
                    rec = json.loads(line)
                except ValueError as exc:
                    raise SuiteError(f"{self.data_path}:{lineno}: not JSON ({exc})") from None
                items.append(_item(self.spec, rec, where))
        if not items:
            raise SuiteError(f"{self.data_path}: no items")
        seen: dict[str, int] = {}
        for it in items:
            seen[it.id] = seen.get(it.id, 0) + 1
        dup = sorted(k for k, n in seen.items() if n > 1)
        if dup:
            raise SuiteError(f"{self.data_path}: duplicate item ids {dup[:5]}")
        return items

    def items(self) -> list[EvalItem]:
        return self._items

    def slices(self) -> list[str]:
        return sorted({it.slice for it in self.items()})

    def limited(self, per_slice: int | None) -> list[EvalItem]:
        """The first `per_slice` items of every slice in file order (all items when None)."""
        if per_slice is None:
            return self.items()
        taken: dict[str, int] = {}
        out = []
        for it in self.items():
            if taken.get(it.slice, 0) < per_slice:
                taken[it.slice] = taken.get(it.slice, 0) + 1
                out.append(it)
        return out

    @cached_property
    def json_schema(self) -> dict | None:
        if self.spec.json_schema is None:
            return None
        path = self.root / self.spec.json_schema
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise SuiteError(f"{path}: cannot read the suite's JSON Schema ({exc})") from None


# Keys holding a path relative to the suite folder: an included file's values are relative to
# the folder that declares them, so they are rebased onto the including suite's folder.
_PATH_KEYS = ("data", "json_schema")


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    return {**base, **{k: v for k, v in over.items() if k != "include"}}


def _read_spec(path: Path, depth: int = 0) -> tuple[dict[str, Any], list[Path]]:
    """The merged spec of `path` and every suite it includes, with the included files' relative
    paths resolved against the file that declares them; and the folders of the chain, the
    including one first (where a suite's own scorer modules are looked up, in that order)."""
    if depth > 4:
        raise SuiteError(f"{path}: include chain too deep")
    data = yaml.safe_load(path.read_text()) or {}
    roots = [path.parent]
    if "include" in data:
        parent = (path.parent / data["include"]).resolve()
        if not parent.is_file():
            raise SuiteError(f"{path}: include {data['include']!r} not found (resolved against {path.parent}: "
                             f"{parent})")
        base, parent_roots = _read_spec(parent, depth + 1)
        for key in _PATH_KEYS:
            if isinstance(base.get(key), str) and key not in data:
                base[key] = os.path.relpath(parent.parent / base[key], path.parent)
        data, roots = _merge(base, data), roots + parent_roots
    return data, roots


def load_suite(suite_dir: str | Path) -> Suite:
    suite_dir = Path(suite_dir)
    spec_path = suite_dir / SUITE_FILE
    if not spec_path.exists():
        raise FileNotFoundError(f"{spec_path} not found")
    try:
        data, roots = _read_spec(spec_path)
        if "task_dir" in data:
            raise SuiteError(f"{spec_path}: `task_dir` is gone: evaluation builds the lm-eval tasks from suite.yaml "
                             "and reads no task YAMLs; delete the key and the task files (`python -m pipeline.suites "
                             "tasks <suite> --out DIR` writes the built configs for running lm-eval by hand)")
        spec = SuiteSpec.model_validate(data)
    except ValueError as exc:
        if isinstance(exc, SuiteError):
            raise
        raise SuiteError(f"{spec_path}: {exc}") from None
    return Suite(suite_dir, spec, module_roots=roots)


def load_all_suites(suites_dir: str | Path) -> list[Suite]:
    return [load_suite(p.parent) for p in sorted(Path(suites_dir).glob(f"*/{SUITE_FILE}"))]
