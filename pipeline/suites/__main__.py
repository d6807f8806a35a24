"""`python -m pipeline.suites`: scaffold a suite from a JSONL file, or check suites.

    python -m pipeline.suites scaffold held_out.jsonl --out eval_suites/mytask [--schema s.json]
    python -m pipeline.suites check eval_suites/mytask --params params.yaml
    python -m pipeline.suites check --all eval_suites
    python -m pipeline.suites tasks eval_suites/mytask --out my_tasks/   # lm-eval task YAMLs, for runs by hand

Exit code 0 when every suite is free of problems, 1 otherwise (warnings never fail).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from pipeline.suites.check import SuiteCheck, check_suite
from pipeline.suites.scaffold import scaffold_suite
from pipeline.suites.spec import SUITE_FILE, SuiteError, load_suite


def _metric_list(check: SuiteCheck) -> str:
    marks = []
    for m in check.metrics:
        tags = (["correctness"] if m in check.correctness else []) + \
               (["lower is better"] if m in check.lower_is_better else [])
        marks.append(m + "".join(f" ({t})" for t in tags))
    return ", ".join(marks) or "(none)"


def print_check(check: SuiteCheck, out=None) -> None:
    out = out or sys.stdout  # looked up per call, so a redirected stdout (tests, tee) is honoured
    print(f"suite {check.suite} ({check.root}): {check.items} items", file=out)
    print("  slices: " + (", ".join(f"{k} {n}" for k, n in check.slices.items()) or "(none)"), file=out)
    print(f"  metrics: {_metric_list(check)}", file=out)
    print(f"  headline: {check.headline}", file=out)
    for w in check.warnings:
        print(f"  warning: {w}", file=out)
    if check.problems:
        print(f"  {len(check.problems)} problem(s):", file=out)
        for p in check.problems:
            print(f"    - {p}", file=out)
    else:
        print("  ok: no problems", file=out)


def _gate_and_damage(params: str | None, no_damage: bool):
    """(gate params or None, damage flag, evaluate.limit, problems reading the params file)."""
    if params is None:
        return None, not no_damage, None, []
    from pipeline.params import load_section

    try:
        gate = load_section("gate", params)
        evaluate = load_section("evaluate", params)
        # The report the gate reads has damage only when evaluation ran it.
        damage = not no_damage and evaluate.damage
    except (OSError, ValueError, yaml.YAMLError) as exc:  # ValueError includes pydantic's ValidationError
        return None, not no_damage, None, [f"{params}: {exc}"]
    return gate, damage, evaluate.limit, []


def _check(args) -> int:
    dirs = [Path(d) for d in args.suites]
    for root in args.all or []:
        found = sorted(p.parent for p in Path(root).glob(f"*/{SUITE_FILE}"))
        if not found:
            print(f"{root}: no suites (no */{SUITE_FILE})", file=sys.stderr)
            return 1
        dirs += found
    if not dirs:
        print("check: name suite folders, or --all FOLDER", file=sys.stderr)
        return 1
    gate, damage, limit, failed = _gate_and_damage(args.params, args.no_damage)
    tokenizer = None
    if args.tokenizer:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer, trust_remote_code=False)
    for problem in failed:
        print(f"params: {problem}")
    for d in dirs:
        try:
            check = check_suite(load_suite(d), gate=gate, damage=damage, limit=limit, tokenizer=tokenizer)
        except (FileNotFoundError, SuiteError) as exc:
            print(f"suite {d}: does not load: {exc}")
            failed.append(str(d))
            continue
        print_check(check)
        if check.problems:
            failed.append(check.suite)
    return 1 if failed else 0


def _scaffold(args) -> int:
    try:
        result = scaffold_suite(args.jsonl, args.out, name=args.name, schema=args.schema, force=args.force)
    except (FileExistsError, FileNotFoundError, SuiteError) as exc:
        print(f"scaffold: {exc}", file=sys.stderr)
        return 1
    fields = ", ".join(f"{k}={v}" for k, v in (("prompt_field", result.prompt_field),
                                               ("completion_field", result.completion_field),
                                               ("id_field", result.id_field), ("slice_field", result.slice_field),
                                               ("options_field", result.options_field)) if v is not None)
    print(f"wrote suite {result.name} to {result.suite_dir} ({len(result.files)} files)")
    print(f"  format: {result.format}" + (f" ({fields})" if fields else ""))
    if result.system_prompt is not None:
        print(f"  system prompt shared by every item: {result.system_prompt[:60]!r}")
    print(f"  references look like: {result.kind}; scorers: {result.scorers}; headline: {result.headline}")
    for note in result.notes:
        print(f"  {note}")
    print(f"  generation.max_new_tokens: {result.max_new_tokens}")
    print(f"  starter gate rules: {result.suite_dir / 'gate.yaml'} (set the floors after the first run)")
    print_check(result.check)
    return 1 if result.problems else 0


def _tasks(args) -> int:
    """The lm-eval tasks evaluation builds from suite.yaml, written as YAML files with the items
    beside them (the last user turn as `prompt`, unrendered: lm-eval or the server applies the
    chat template), for `lm_eval --include_path <out> --apply_chat_template`."""
    from pipeline.evaluate.tasks import task_configs, write_plain
    from pipeline.files import atomic_write_text

    try:
        suite = load_suite(args.suite)
        items = suite.items()
    except (SuiteError, FileNotFoundError) as exc:
        print(f"tasks: {exc}", file=sys.stderr)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    data = (args.out / f"{suite.name}_items.jsonl").resolve()
    write_plain(items, data)
    configs = task_configs(suite, data, args.max_new_tokens or suite.spec.generation.max_new_tokens)
    for config in configs.values():
        atomic_write_text(args.out / f"{config['task']}.yaml", yaml.safe_dump(config, sort_keys=False))
    print(f"wrote {len(configs)} lm-eval task(s) of suite {suite.name} ({len(items)} items) to {args.out}: "
          f"{', '.join(c['task'] for c in configs.values())}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipeline.suites", description="Scaffold and check eval suites.")
    sub = parser.add_subparsers(dest="command", required=True)
    sc = sub.add_parser("scaffold", help="write a suite folder from a held-out JSONL file, then check it")
    sc.add_argument("jsonl", type=Path, help="held-out items: chat `messages` or prompt/completion records")
    sc.add_argument("--out", type=Path, required=True, help="suite folder to write (eval_suites/NAME)")
    sc.add_argument("--name", help="suite and task name (default: the --out folder's name)")
    sc.add_argument("--schema", type=Path, help="JSON Schema the answers must satisfy (adds the json_schema scorer)")
    sc.add_argument("--force", action="store_true", help="overwrite a non-empty --out folder")
    ck = sub.add_parser("check", help="check suites: items, tasks, scorers on the references, gate rule paths")
    ck.add_argument("suites", nargs="*", help="suite folders (holding suite.yaml)")
    ck.add_argument("--all", action="append", metavar="FOLDER", help="check every suite in FOLDER (*/suite.yaml)")
    ck.add_argument("--params", help="params.yaml: validate its gate section and check every rule's metric "
                                     "path against what the suite produces")
    ck.add_argument("--tokenizer", help="a tokenizer folder (artifacts/base, or a bundle's tokenizer/): warn about "
                                        "reference answers longer than generation.max_new_tokens")
    ck.add_argument("--no-damage", action="store_true", help="the report will have no damage section "
                                                             "(evaluate.damage off)")
    tk = sub.add_parser("tasks", help="write the lm-eval task YAMLs evaluation builds from suite.yaml, with the "
                                      "items, for running lm-eval by hand (e.g. against a live server)")
    tk.add_argument("suite", help="suite folder (holding suite.yaml)")
    tk.add_argument("--out", type=Path, required=True, help="folder to write <task>.yaml files and the items into")
    tk.add_argument("--max-new-tokens", type=int, help="generation budget (default: the suite's)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return {"check": _check, "scaffold": _scaffold, "tasks": _tasks}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
