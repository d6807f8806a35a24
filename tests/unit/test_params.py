"""params.yaml and dvc.yaml agree with the typed schemas."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from pipeline.params import SECTIONS, BaseParams, TrainParams, load_section

REPO = Path(__file__).resolve().parents[2]


def test_every_section_of_params_yaml_validates():
    data = yaml.safe_load((REPO / "params.yaml").read_text())
    assert set(data) == set(SECTIONS)
    for name in SECTIONS:
        load_section(name, REPO / "params.yaml")


def test_unknown_keys_are_errors(tmp_path):
    with pytest.raises(ValidationError):
        TrainParams(lora_rank=8)
    bad = tmp_path / "params.yaml"
    bad.write_text("train:\n  max_step: 3\n")
    with pytest.raises(ValidationError):
        load_section("train", bad)
    bad.write_text("trian:\n  max_steps: 3\n")
    with pytest.raises(ValueError, match="unknown sections"):
        load_section("train", bad)


def test_local_dir_source_needs_a_path():
    with pytest.raises(ValidationError):
        BaseParams(source="local_dir")


def _sections_loaded_by(script: Path) -> set[str]:
    """Params sections a stage script loads: the literal names passed to load_section."""
    tree = ast.parse(script.read_text())
    return {node.args[0].value for node in ast.walk(tree)
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "load_section"
            and node.args and isinstance(node.args[0], ast.Constant)}


CHECK_ONLY = {"evaluate": {"gate"}}
# The export stage evaluates and gates an export exactly as the bundle was: it reads, and DVC
# declares, those sections too (a new threshold re-gates the exports).
ALSO_DECLARED = {"export": ["evaluate", "gate"]}


def test_dvc_yaml_declares_exactly_what_each_stage_reads():
    dvc = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    assert set(dvc) == set(SECTIONS), "one DVC stage per params section"
    for name, stage in dvc.items():
        script = REPO / "stages" / f"{name}.py"
        assert f"stages/{name}.py" in stage["cmd"], name
        # evaluate also reads `gate`, only to refuse before generating when a rule names a
        # metric its suite cannot produce; undeclared on purpose (a new threshold must not
        # rerun the evaluation), see stages/evaluate.py
        assert _sections_loaded_by(script) == {name} | CHECK_ONLY.get(name, set()) | set(ALSO_DECLARED.get(name, [])), \
            f"{script} must load only its own section"
        # train declares its section key by key: only the settings that decide the adapter
        # (tests/unit/test_train_params.py); every other stage its whole section
        expected = TrainParams.dvc_keys() if name == "train" else [name, *ALSO_DECLARED.get(name, [])]
        assert stage["params"] == expected, f"dvc stage {name} must declare exactly {expected}"
        deps = stage["deps"]
        assert f"stages/{name}.py" in deps and f"pipeline/{name}" in deps, f"{name} must depend on its code"
        for dep in deps:
            assert (REPO / dep).exists() or dep.startswith(("artifacts/", "data/curated", "reports/")), dep


def test_every_param_field_has_a_description():
    for name, model in SECTIONS.items():
        for field, info in model.model_fields.items():
            assert info.description, f"{name}.{field} has no description"


def _module_file(module: str) -> Path | None:
    path = REPO / Path(*module.split("."))
    if (path / "__init__.py").exists():
        return path / "__init__.py"
    if path.with_suffix(".py").exists():
        return path.with_suffix(".py")
    return None


def code_read_by(script: Path) -> set[Path]:
    """Every project file a stage script imports, transitively (lazy imports included)."""
    seen: set[Path] = set()
    todo = [script]
    while todo:
        f = todo.pop()
        if f in seen:
            continue
        seen.add(f)
        for node in ast.walk(ast.parse(f.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                module = node.module or ""
                if node.level:  # relative: resolve against the importing file's package
                    pkg = f.relative_to(REPO).parent.parts[: len(f.relative_to(REPO).parent.parts) - node.level + 1]
                    module = ".".join([*pkg, module] if module else pkg)
                names = [module] + [f"{module}.{a.name}" for a in node.names]
            for name in names:
                if name.split(".")[0] in ("pipeline", "serving"):
                    parts = name.split(".")
                    for i in range(1, len(parts) + 1):  # parent packages' __init__ run too
                        target = _module_file(".".join(parts[:i]))
                        if target is not None:
                            todo.append(target)
    return seen


def test_dvc_deps_cover_all_code_a_stage_imports():
    dvc = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for name, stage in dvc.items():
        declared = [REPO / d for d in stage["deps"]]
        for f in code_read_by(REPO / "stages" / f"{name}.py"):
            covered = any(f == d or d in f.parents for d in declared)
            assert covered, f"stage {name} imports {f.relative_to(REPO)} but dvc.yaml does not list it as a dep"


@pytest.mark.parametrize("params_file", ["params.yaml", "examples/triage/params.yaml"])
def test_every_key_dvc_declares_is_in_the_params_files(params_file):
    """DVC refuses a stage whose declared key is missing; a team copies the example's file."""
    data = yaml.safe_load((REPO / params_file).read_text())
    for name, stage in yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"].items():
        for key in stage["params"]:
            node = data
            for part in key.split("."):
                assert isinstance(node, dict) and part in node, f"{params_file} lacks {key} (dvc stage {name})"
                node = node[part]
