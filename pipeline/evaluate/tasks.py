"""The suite's lm-eval tasks, built from suite.yaml and run over its items as the shipped chat
encoding renders them.

suite.yaml is the one source of truth: evaluation builds each task's lm-eval config from it
(the generation budget, the stop strings, greedy decoding, the data file) instead of reading
task YAMLs that it would have to override anyway. Scoring is the suite's scorers' on the raw
output, which is what serving returns, so no lm-eval `filter_list` may change what is scored.

Evaluation renders every item's prompt once, through the bundle's chat template with the
system prompt resolved (the item's own, else the suite's, else the bundle's pinned one, as
serving applies it), and hands lm-eval a JSONL of `{id, slice, prompt, reference, options,
answer_index}`. The tasks read those fields (`doc_to_text: "{{prompt}}"`), so any item format
and any system-prompt policy reaches lm-eval as the exact text serving would tokenize, and
lm-eval's own chat templating (one system instruction for all items) stays off.

`python -m pipeline.suites tasks <suite> --out DIR` writes the same configs as YAML files, for
running lm-eval by hand (against a live server, say).
"""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.chat import render_prompt
from pipeline.suites import EvalItem, Suite

OUTPUT_TYPES = {"generate_task": "generate_until", "loglikelihood_task": "loglikelihood",
                "choice_task": "multiple_choice"}

# What each kind of task reads from a rendered item and reports on its own. lm-eval's metric is
# only its summary line: tailgate scores the raw outputs with the suite's scorers.
_KIND_FIELDS = {
    "generate_until": {"doc_to_target": "{{reference}}",
                       "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True}]},
    "loglikelihood": {"doc_to_target": "{{reference}}", "target_delimiter": "",
                      "metric_list": [{"metric": "perplexity", "aggregation": "perplexity", "higher_is_better": False}]},
    "multiple_choice": {"doc_to_choice": "{{options}}", "doc_to_target": "{{answer_index}}", "target_delimiter": "",
                        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}]},
}


def write_rendered(tokenizer, items: list[EvalItem], default_system: str | None, path: Path) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for it in items:
            row = {"id": it.id, "slice": it.slice, "reference": it.reference,
                   "prompt": render_prompt(tokenizer, it.prompt_messages(default_system))}
            if it.options is not None:
                row.update(options=list(it.options), answer_index=it.answer_index)
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def write_plain(items: list[EvalItem], path: Path) -> None:
    """The items with `prompt` = the last user turn, unrendered: for lm-eval runs that apply a
    chat template themselves (`--apply_chat_template`, a chat endpoint). lm-eval sends one user
    turn per item, so earlier turns of a multi-turn item are not part of such a run."""
    with open(path, "w", encoding="utf-8") as f:
        for it in items:
            row = {"id": it.id, "slice": it.slice, "reference": it.reference, "prompt": it.prompt}
            if it.options is not None:
                row.update(options=list(it.options), answer_index=it.answer_index)
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def task_configs(suite: Suite, data_file: Path, max_new_tokens: int) -> dict[str, dict]:
    """The suite's lm-eval task configs (by suite.yaml key: generate_task, ...) over data_file."""
    out = {}
    for key, kind in OUTPUT_TYPES.items():
        name = getattr(suite.spec, key)
        if name is None:
            continue
        config = {"task": name, "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(data_file)}},
                  "test_split": "test", "output_type": kind, "doc_to_text": "{{prompt}}",
                  **json.loads(json.dumps(_KIND_FIELDS[kind])), "metadata": {"version": suite.spec.version}}
        if kind == "generate_until":
            config["generation_kwargs"] = {"until": list(suite.spec.generation.stop), "max_gen_toks": max_new_tokens,
                                           "do_sample": False}
        out[key] = config
    return out


def run_lm_eval(lm, suite: Suite, data_file: Path, max_new_tokens: int, limit: int | None = None) -> dict[str, list]:
    """Run the suite's tasks; return lm-eval's per-doc samples by task key (generate_task, ...)."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    # The tasks are handed over as configs. Indexing lm-eval's thousands of built-in task YAMLs
    # as well cost 8.9 s per evaluation here (0.06 s without).
    tm = TaskManager(include_defaults=False)
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
