"""Suite tools: scaffolding a suite from a user's JSONL and checking suites before a release.

Everything is built in tmp_path; the scorers run on reference answers only (no model)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from pipeline.params import GateParams, load_section
from pipeline.suites import SuiteError, load_suite
from pipeline.suites.check import check_suite
from pipeline.suites.scaffold import scaffold_suite
from pipeline.suites.__main__ import main


def _write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def _json_records(n: int = 12) -> list[dict]:
    return [{"id": f"j{i}", "category": "easy" if i % 2 else "hard",
             "input": f"Extract the patient from note {i}.",
             "output": json.dumps({"name": f"patient {i}", "age": 20 + i, "ward": "B" if i % 3 else "C"})}
            for i in range(n)]


def _label_records(n: int = 12) -> list[dict]:
    labels = ["negative", "neutral", "positive"]
    return [{"text": f"Review number {i}: it was fine.", "label": labels[i % 3],
             "source": "web" if i < n // 2 else "mail"} for i in range(n)]


def _chat_records(n: int = 8) -> list[dict]:
    system = "You summarise meeting notes.\nBe brief: two sentences. # not a comment"
    return [{"uid": f"c{i}", "subset": "short" if i < n // 2 else "long",
             "messages": [{"role": "system", "content": system},
                          {"role": "user", "content": f"Summarise meeting {i}."},
                          {"role": "assistant", "content": f"The team met on day {i} and agreed to ship the "
                                                           "release after the review, with two open risks noted."}]}
            for i in range(n)]


@pytest.fixture
def label_suite(tmp_path) -> Path:
    src = _write_jsonl(tmp_path / "labels.jsonl", _label_records())
    scaffold_suite(src, tmp_path / "sentiment")
    return tmp_path / "sentiment"


def test_scaffold_json_prompt_completion(tmp_path):
    src = _write_jsonl(tmp_path / "held_out.jsonl", _json_records())
    schema = tmp_path / "s.json"
    schema.write_text(json.dumps({"type": "object", "required": ["name", "age"]}))
    res = scaffold_suite(src, tmp_path / "extract", schema=schema)
    assert (res.format, res.prompt_field, res.completion_field) == ("prompt_completion", "input", "output")
    assert (res.id_field, res.slice_field, res.options_field) == ("id", "category", None)
    assert res.kind == "json" and res.headline == "json_key_accuracy"
    assert res.scorers == ["json_valid", "json_schema", {"scorer": "json_match", "keys": ["name", "age", "ward"]},
                           "refusal"]
    assert res.problems == [], res.problems
    out = tmp_path / "extract"
    assert (out / "data/test.jsonl").read_bytes() == src.read_bytes()
    assert json.loads((out / "schema.json").read_text()) == json.loads(schema.read_text())
    spec = load_suite(out).spec
    assert spec.prompt_field == "input" and spec.completion_field == "output" and spec.json_schema == "schema.json"
    assert spec.generation.max_new_tokens % 32 == 0 and spec.generation.max_new_tokens >= 32
    # no task YAMLs: the tasks are built from suite.yaml at evaluation
    assert not (out / "tasks").exists() and (spec.generate_task, spec.loglikelihood_task) == ("extract", "extract_nll")
    assert spec.choice_task is None
    gate = load_section("gate", out / "gate.yaml")
    metrics = {r.metric for r in gate.rules}
    assert {"overall.json_key_accuracy", "slices.*.json_key_accuracy", "overall.empty_or_refusal",
            "damage.flip_rate", "damage.worst_slice_drop", "slices.*.too_small"} == metrics
    assert all(r.bound == "ci_low" for r in gate.rules if r.metric.endswith("json_key_accuracy"))
    # day-one regression budgets: the headline overall and per slice, every correctness metric, the
    # feared rates as ceilings on their rise; compared with the latest release (baseline: null)
    budgets = {r.metric: (r.max_drop, r.max_rise) for r in gate.regression}
    assert budgets == {"overall.json_key_accuracy": (0.05, None), "slices.*.json_key_accuracy": (0.05, None),
                       "overall.json_valid": (0.05, None), "overall.json_schema_valid": (0.05, None),
                       "overall.json_object_match": (0.05, None), "overall.key_name": (0.05, None),
                       "overall.key_age": (0.05, None), "overall.key_ward": (0.05, None),
                       "overall.empty_or_refusal": (None, 0.03)}
    assert gate.baseline is None and gate.registry == "releases"


def test_scaffold_labels_with_a_detected_slice(tmp_path, label_suite):
    spec = load_suite(label_suite).spec
    assert (spec.prompt_field, spec.completion_field) == ("text", "label")
    assert spec.slice_field == "source"  # not a named slice field: the string field with few values
    assert spec.labels == ["negative", "neutral", "positive"] and spec.headline_metric == "label_accuracy"
    # choice scoring over the labels, with no per-item options; the headline stays the generated label
    assert spec.scorers == ["label", "choice"] and spec.choice_task == "sentiment_choice"
    suite = load_suite(label_suite)
    assert all(it.options == ("negative", "neutral", "positive") for it in suite.items())
    check = check_suite(suite)
    assert check.problems == [] and check.slices == {"mail": 6, "web": 6}
    assert {"label_accuracy", "choice_accuracy"} <= set(check.correctness)


def test_scaffold_choice_items(tmp_path):
    recs = [{**r, "options": ["negative", "neutral", "positive"]} for r in _label_records()]
    res = scaffold_suite(_write_jsonl(tmp_path / "mc.jsonl", recs), tmp_path / "mc")
    # the headline is the generated answer (what serving returns), not the choice score
    assert res.options_field == "options" and "choice" in res.scorers and res.headline == "label_accuracy"
    assert load_suite(tmp_path / "mc").spec.choice_task == "mc_choice"
    assert res.problems == [], res.problems


def test_scaffold_free_text_chat(tmp_path):
    res = scaffold_suite(_write_jsonl(tmp_path / "chat.jsonl", _chat_records()), tmp_path / "notes", name="Meet-Notes")
    assert res.format == "chat" and res.prompt_field is None
    assert (res.id_field, res.slice_field) == ("uid", "subset")
    assert res.system_prompt == _chat_records()[0]["messages"][0]["content"]
    assert load_suite(tmp_path / "notes").spec.system_prompt == res.system_prompt
    assert res.kind == "free_text" and res.scorers == ["rouge_l", "chrf", "refusal"] and res.headline == "rouge_l"
    assert res.name == "meet_notes" and load_suite(tmp_path / "notes").spec.loglikelihood_task == "meet_notes_nll"
    # rouge_l/chrf are not correctness metrics: no flips to count, so no flip-rate rule.
    gate = load_section("gate", tmp_path / "notes/gate.yaml")
    assert "damage.flip_rate" not in {r.metric for r in gate.rules}
    assert res.problems == [], res.problems


def test_overwrite_is_refused_unless_forced(tmp_path, label_suite, capsys):
    src = tmp_path / "labels.jsonl"
    with pytest.raises(FileExistsError):
        scaffold_suite(src, label_suite)
    assert main(["scaffold", str(src), "--out", str(label_suite)]) == 1
    assert "not empty" in capsys.readouterr().err
    assert scaffold_suite(src, label_suite, force=True).problems == []


def test_a_scorer_that_marks_references_wrong_is_named(label_suite):
    (label_suite / "scorers.py").write_text(
        "from pipeline.evaluate.scoring import scorer\n\n"
        "@scorer(correctness=['strict_ok'])\n"
        "def strict(output, item):\n"
        "    return {'strict_ok': float(item.reference != 'neutral')}\n")
    spec = yaml.safe_load((label_suite / "suite.yaml").read_text())
    spec["scorers"].append("scorers:strict")
    (label_suite / "suite.yaml").write_text(yaml.safe_dump(spec))
    check = check_suite(load_suite(label_suite))
    [problem] = check.problems
    assert "scorers:strict" in problem and "strict_ok" in problem
    # No id field: items are named file:line.
    neutral = [f"test.jsonl:{i + 1}" for i, r in enumerate(_label_records()) if r["label"] == "neutral"]
    assert "4 of 12 items" in problem and all(f"'{i}'" in problem for i in neutral)
    with pytest.raises(ValueError, match="strict_ok"):
        check.raise_for_problems()


def test_a_leftover_task_yaml_and_bad_items_are_problems(label_suite):
    """A task YAML beside suite.yaml would look like configuration and change nothing."""
    (label_suite / "tasks").mkdir()
    (label_suite / "tasks/sentiment.yaml").write_text("task: sentiment\nfilter_list: []\n")
    with open(label_suite / "data/test.jsonl", "a") as f:
        f.write('{"text": "no label here", "source": "web"}\n')
    problems = check_suite(load_suite(label_suite)).problems
    assert any("sentiment.yaml is never read" in p and "generate_task" in p for p in problems), problems
    assert any(p.startswith("items do not load") for p in problems), problems


def test_task_dir_is_refused_with_the_way_forward(label_suite):
    spec = label_suite / "suite.yaml"
    spec.write_text(spec.read_text() + "task_dir: tasks\n")
    with pytest.raises(SuiteError, match="task_dir` is gone.*pipeline.suites tasks"):
        load_suite(label_suite)


def test_tasks_are_built_from_suite_yaml_and_exported_as_lm_eval_reads_them(label_suite, tmp_path):
    from pipeline.evaluate.tasks import task_configs

    suite = load_suite(label_suite)
    configs = task_configs(suite, tmp_path / "items.jsonl", 24)
    gen, choice = configs["generate_task"], configs["choice_task"]
    assert gen["generation_kwargs"] == {"until": list(suite.spec.generation.stop), "max_gen_toks": 24,
                                        "do_sample": False}
    assert choice["output_type"] == "multiple_choice" and choice["doc_to_choice"] == "{{options}}"
    assert main(["tasks", str(label_suite), "--out", str(tmp_path / "out")]) == 0
    written = {p.name for p in (tmp_path / "out").iterdir()}
    assert written == {"sentiment.yaml", "sentiment_nll.yaml", "sentiment_choice.yaml", "sentiment_items.jsonl"}
    from lm_eval.tasks import TaskManager

    tm = TaskManager(include_path=str(tmp_path / "out"), include_defaults=False)
    assert {"sentiment", "sentiment_nll", "sentiment_choice"} <= set(tm.all_tasks)
    first = json.loads((tmp_path / "out/sentiment_items.jsonl").read_text().splitlines()[0])
    assert first["prompt"] == suite.items()[0].prompt and first["options"] == ["negative", "neutral", "positive"]


def test_gate_rules_must_name_metrics_and_slices_the_report_has(label_suite):
    gate = GateParams.model_validate({"rules": [
        {"metric": "overall.label_accuracy", "min": 0.5, "bound": "ci_low"},
        {"metric": "overall.field_accuracy", "min": 0.5},
        {"metric": "slices.forum.label_accuracy", "min": 0.5},
        {"metric": "slices.*.label_accuracy", "min": 0.5},
        {"metric": "damage.slices.web.label_accuracy_drop", "max": 0.1},
        {"metric": "nll_per_token.p99", "max": 2.0},
        {"metric": "slices.*.typo", "min": 0.5},
    ], "regression": [{"metric": "slices.*.label_valid", "max_drop": 0.05},
                      {"metric": "overall.typo", "max_drop": 0.05}]})
    check = check_suite(load_suite(label_suite), gate=gate)
    problems = check.problems
    assert len(problems) == 4, problems
    assert "gate rule 1 (overall.field_accuracy" in problems[0] and "unknown metric 'field_accuracy'" in problems[0]
    assert "label_accuracy" in problems[0]  # says which metrics exist
    assert "gate rule 2 (slices.forum" in problems[1] and "unknown slice 'forum'" in problems[1]
    assert "mail, web" in problems[1]
    # A wildcard over a wrong metric is one mistake: one problem naming every slice it expanded to.
    assert "gate rule 6" in problems[2] and "slices.mail.typo, slices.web.typo" in problems[2]
    assert "regression rule 1 (overall.typo)" in problems[3]
    no_damage = check_suite(load_suite(label_suite), gate=gate, damage=False).problems
    assert any("gate rule 4" in p and "damage is off" in p for p in no_damage), no_damage


def test_check_cli_exit_codes(tmp_path, label_suite, capsys):
    assert main(["check", str(label_suite), "--params", str(label_suite / "gate.yaml")]) == 0
    out = capsys.readouterr().out
    assert "label_accuracy (correctness)" in out and "headline: label_accuracy" in out and "mail 6" in out
    bad_params = tmp_path / "params.yaml"
    bad_params.write_text("gate:\n  rules:\n    - {metric: overall.nope, min: 0.1}\n")
    assert main(["check", str(label_suite), "--params", str(bad_params)]) == 1
    assert "unknown metric 'nope'" in capsys.readouterr().out
    assert main(["check", str(label_suite), "--params", str(bad_params), "--no-damage"]) == 1
    typo = tmp_path / "typo.yaml"
    typo.write_text("gate:\n  rulez: []\n")
    assert main(["check", str(label_suite), "--params", str(typo)]) == 1
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "suite.yaml").write_text((label_suite / "suite.yaml").read_text().replace("sentiment", "broken"))
    assert main(["check", "--all", str(tmp_path)]) == 1  # broken has no data or tasks
    out = capsys.readouterr().out
    assert "suite sentiment" in out and "suite broken" in out and "not found" in out
    assert main(["check", "--all", str(tmp_path / "sentiment" / "tasks")]) == 1


def test_the_starter_gate_passes_any_first_run_on_quality(label_suite):
    """Its promise: floors at 0.0 and ceilings at their loosest, so a first run passes whatever
    its quality; only the slice-size rule may stop it."""
    from pipeline.gate.rules import apply_rule

    gate = load_section("gate", label_suite / "gate.yaml")
    assert any(r.metric == "slices.*.too_small" for r in gate.rules)
    for rule in gate.rules:
        if rule.metric.endswith("too_small"):
            continue
        worst = 0.0 if rule.min is not None else 1.0  # every metric and damage figure here is in [0, 1]
        report = {"overall": {}, "slices": {"s": {}}, "damage": {}}
        parts = rule.metric.split(".")
        node = report
        for part in parts[:-1]:
            node = node.setdefault("s" if part == "*" else part, {})
        node[parts[-1]] = {"mean": worst, "ci95": [worst, worst]}
        assert all(r.passed for r in apply_rule(rule, report)), rule


def test_a_key_only_the_tail_has_gets_its_own_metric(tmp_path, capsys):
    """A held-out JSON file whose security flag appears on the security slice only: scaffold and
    check give it a per-key metric there (n/a elsewhere, so its n is that slice's), and say so."""
    records = [{"id": f"t{i}", "category": "security" if i < 6 else "billing", "input": f"Ticket {i}.",
                "output": json.dumps({"queue": "sec" if i < 6 else "billing", "priority": "P1" if i < 6 else "P3",
                                      **({"security_incident": True} if i < 6 else {})})}
               for i in range(14)]
    src = _write_jsonl(tmp_path / "tickets.jsonl", records)
    assert main(["scaffold", str(src), "--out", str(tmp_path / "tickets")]) == 0
    printed = capsys.readouterr().out
    assert "security_incident (6 of 14 references; n/a on the others)" in printed
    suite = load_suite(tmp_path / "tickets")
    match = next(s for s in suite.spec.scorers if isinstance(s, dict) and s.get("scorer") == "json_match")
    assert match["keys"] == ["queue", "priority", "security_incident"]
    check = check_suite(suite, damage=True)
    assert check.ok, check.problems
    assert "key_security_incident" in check.slice_metrics["security"]
    assert "key_security_incident" not in check.slice_metrics["billing"]
    assert check.metric_items["key_security_incident"] == 6 and check.metric_items["key_queue"] == 14
