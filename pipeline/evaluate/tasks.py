"""The suite's lm-eval tasks, run over its items as the shipped chat encoding renders them.

Evaluation renders every item's prompt once, through the bundle's chat template with the
system prompt resolved (the item's own, else the suite's, else the bundle's pinned one, as
serving applies it), and hands lm-eval a JSONL of `{id, slice, prompt, reference, options,
answer_index}`. The suite's task YAMLs read those fields (`doc_to_text: "{{prompt}}"`), so any
item format and any system-prompt policy reaches lm-eval as the exact text serving would
tokenize, and lm-eval's own chat templating (one system instruction for all items) stays off.
"""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.chat import render_prompt
from pipeline.suites import EvalItem, Suite, SuiteError

OUTPUT_TYPES = {"generate_task": "generate_until", "loglikelihood_task": "loglikelihood",
                "choice_task": "multiple_choice"}


def write_rendered(tokenizer, items: list[EvalItem], default_system: str | None, path: Path) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for it in items:
            row = {"id": it.id, "slice": it.slice, "reference": it.reference,
                   "prompt": render_prompt(tokenizer, it.prompt_messages(default_system))}
            if it.options is not None:
                row.update(options=list(it.options), answer_index=it.answer_index)
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def read_task(path: Path) -> dict:
    """A task YAML as lm-eval itself reads it: `include:` merged, `!function` resolved."""
    from lm_eval.tasks._yaml_loader import load_yaml  # lm-eval's loader; no public name in 0.4.13

    data = load_yaml(path)
    if not isinstance(data, dict):
        raise ValueError("not a YAML mapping")
    return data


def task_configs(suite: Suite, data_file: Path, max_new_tokens: int) -> dict[str, dict]:
    """The suite's task YAMLs pointed at the rendered items, with its generation settings."""
    out = {}
    for key, kind in OUTPUT_TYPES.items():
        name = getattr(suite.spec, key)
        if name is None:
            continue
        path = suite.task_path(name)
        if not path.is_file():
            raise SuiteError(f"suite {suite.name}: {key} {name!r} has no task file {path}")
        config = read_task(path)
        if config.get("output_type") != kind:
            raise SuiteError(f"{path}: output_type must be {kind} for the suite's {key}")
        config["dataset_kwargs"] = {**config.get("dataset_kwargs", {}), "data_files": {"test": str(data_file)}}
        if kind == "generate_until":
            config["generation_kwargs"] = {**config.get("generation_kwargs", {}), "until": list(suite.spec.generation.stop),
                                           "max_gen_toks": max_new_tokens, "do_sample": False}
        out[key] = config
    return out


def run_lm_eval(lm, suite: Suite, data_file: Path, max_new_tokens: int, limit: int | None = None) -> dict[str, list]:
    """Run the suite's tasks; return lm-eval's per-doc samples by task key (generate_task, ...)."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    # A suite is self-contained: its tasks are handed over as configs. Indexing lm-eval's
    # thousands of built-in task YAMLs as well cost 8.9 s per evaluation here (0.06 s without).
    tm = TaskManager(include_path=str(suite.task_dir), include_defaults=False)
    configs = task_configs(suite, data_file, max_new_tokens)
    out = simple_evaluate(model=lm, tasks=list(configs.values()), task_manager=tm, apply_chat_template=False,
                          log_samples=True, limit=limit, bootstrap_iters=0, random_seed=0, numpy_random_seed=0,
                          torch_random_seed=0)
    return {key: out["samples"][config["task"]] for key, config in configs.items()}


def by_id(samples: list[dict]) -> dict[str, dict]:
    return {s["doc"]["id"]: s for s in samples}


def option_logprobs(sample: dict) -> tuple[float, ...]:
    """Sum log-likelihood of each option from a multiple_choice sample (one response per option)."""
    return tuple(float(r[0][0]) for r in sample["resps"])
