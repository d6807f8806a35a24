"""Eval suites: `eval_suites/<name>/suite.yaml` plus lm-eval task YAMLs and their data.

A suite names its items (chat JSONL with a slice field), the lm-eval tasks that run them
(one generation task, one log-likelihood task), the scorers to apply and the system prompt
the items share. Variants may `include:` another suite.yaml and override keys.
"""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field

SUITE_FILE = "suite.yaml"


class SuiteSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="Suite name (also the prefix of its lm-eval task names).")
    version: int = Field(description="Bumped whenever items or scoring change; reports carry it.")
    description: str = ""
    data: str = Field(description="Items (chat JSONL), relative to the suite directory.")
    slice_field: str = Field("slice", description="Record field that names an item's slice.")
    system_prompt: str = Field(description="System message every item carries (checked on load).")
    generate_task: str = Field(description="lm-eval generate_until task name.")
    loglikelihood_task: str = Field(description="lm-eval loglikelihood task name (reference-reply NLL).")
    task_dir: str = Field("tasks", description="Folder of lm-eval task YAMLs, for TaskManager(include_path=...).")
    scorers: list[str] = Field(description="Scorer names from pipeline.evaluate.scorers (checked when evaluating).")
    min_slice_n: int = Field(20, description="Slices with fewer items are flagged as too small to trust.")
    length_buckets_tokens: list[int] = Field(
        default_factory=lambda: [256, 384, 512, 768],
        description="Upper edges of the prompt-length buckets quality is reported by.")


class Suite:
    def __init__(self, root: Path, spec: SuiteSpec):
        self.root, self.spec = root, spec

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def task_dir(self) -> Path:
        return self.root / self.spec.task_dir

    @property
    def data_path(self) -> Path:
        return self.root / self.spec.data

    @cached_property
    def _items(self) -> list[dict]:
        items = []
        with open(self.data_path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                item = json.loads(line)
                msgs = item.get("messages")
                if (not isinstance(msgs, list) or len(msgs) != 3 or [m["role"] for m in msgs] != ["system", "user", "assistant"]
                        or msgs[0]["content"] != self.spec.system_prompt):
                    raise ValueError(f"{self.data_path}:{lineno}: items must be [system, user, assistant] "
                                     "with the suite's system_prompt")
                if self.spec.slice_field not in item or "id" not in item:
                    raise ValueError(f"{self.data_path}:{lineno}: item needs `id` and `{self.spec.slice_field}`")
                items.append(item)
        ids = [i["id"] for i in items]
        if len(set(ids)) != len(ids):
            raise ValueError(f"{self.data_path}: duplicate item ids")
        return items

    def items(self) -> list[dict]:
        return self._items

    def slice_of(self, item: dict) -> str:
        return str(item[self.spec.slice_field])


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    return {**base, **{k: v for k, v in over.items() if k != "include"}}


def _read_spec(path: Path, depth: int = 0) -> dict[str, Any]:
    if depth > 4:
        raise ValueError(f"{path}: include chain too deep")
    data = yaml.safe_load(path.read_text()) or {}
    if "include" in data:
        parent = (path.parent / data["include"]).resolve()
        data = _merge(_read_spec(parent, depth + 1), data)
    return data


def load_suite(suite_dir: str | Path) -> Suite:
    suite_dir = Path(suite_dir)
    spec_path = suite_dir / SUITE_FILE
    if not spec_path.exists():
        raise FileNotFoundError(f"{spec_path} not found")
    return Suite(suite_dir, SuiteSpec.model_validate(_read_spec(spec_path)))


def load_all_suites(suites_dir: str | Path) -> list[Suite]:
    return [load_suite(p.parent) for p in sorted(Path(suites_dir).glob(f"*/{SUITE_FILE}"))]
