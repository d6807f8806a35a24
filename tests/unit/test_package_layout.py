"""The package layout DESIGN.md asks for: logic lives in named modules (a package's
`__init__.py` only re-exports), no code reaches into another package's private names, and
checking the base's lock does not import torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CODE = ("pipeline", "benchmarks", "stages", "serving")


def _is_reexport(node: ast.stmt) -> bool:
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        return True
    if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):  # the docstring
        return True
    return isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] in (
        ["__all__"], ["__version__"])


def test_package_inits_only_reexport():
    logic = {}
    for init in sorted((REPO / "pipeline").rglob("__init__.py")):
        found = [f"line {n.lineno}" for n in ast.parse(init.read_text()).body if not _is_reexport(n)]
        if found:
            logic[str(init.relative_to(REPO))] = found
    assert logic == {}, f"move these into a named module: {logic}"


def _private(dotted: str) -> bool:
    return any(part.startswith("_") and not part.startswith("__") for part in dotted.split("."))


def test_no_private_name_is_imported_across_packages():
    crossings = []
    for root in CODE:
        for f in sorted((REPO / root).rglob("*.py")):
            package = ".".join(f.relative_to(REPO).parent.parts)
            for node in ast.walk(ast.parse(f.read_text())):
                if not isinstance(node, ast.ImportFrom) or node.level or not node.module:
                    continue
                if node.module.split(".")[0] not in CODE:
                    continue  # third-party private names are their own business
                names = [a.name for a in node.names if _private(a.name)]
                if _private(node.module):
                    names.append(node.module)
                if names and node.module != package and not node.module.startswith(package + "."):
                    crossings.append(f"{f.relative_to(REPO)}:{node.lineno} {node.module}: {names}")
    assert crossings == [], "private names used outside their package:\n" + "\n".join(crossings)


def test_checking_the_base_lock_does_not_import_torch():
    code = ("import sys; from pipeline.base import check_lock; "
            "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'imported torch'")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
