"""Every command the README's code blocks give runs as written from a fresh clone: each
`make` target exists, each `.venv/bin/python -m MODULE` (or `python -m`) answers `--help`, and
nothing calls a tool from .venv/bin whose children would run the system python (`.venv/bin/dvc
repro` did: the stages' `python` was not the project's, and DVC had already removed the
outputs it was about to rebuild)."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys

import pytest

from tests.conftest import REPO

DOCS = ["README.md", *sorted(str(p.relative_to(REPO)) for p in (REPO / "docs").glob("*.md"))]


def _commands() -> list[tuple[str, str]]:
    out = []
    for doc in DOCS:
        text = (REPO / doc).read_text(encoding="utf-8")
        for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
            joined = re.sub(r"\\\n\s*", " ", block)
            for line in joined.splitlines():
                line = line.split("  #")[0].strip()
                if line and not line.startswith("#"):
                    out.append((doc, line))
    return out


COMMANDS = _commands()


def test_the_docs_have_commands():
    assert len(COMMANDS) > 10


@pytest.mark.parametrize("doc, line", [c for c in COMMANDS if c[1].startswith("make ")])
def test_every_make_target_exists(doc, line):
    targets = set(re.findall(r"^([a-z][\w-]*):", (REPO / "Makefile").read_text(), flags=re.M))
    target = shlex.split(line)[1]
    assert target in targets, f"{doc}: `{line}` names no Makefile target"


def test_no_tool_from_the_venv_runs_the_pipeline_with_another_python():
    bad = [(d, line) for d, line in COMMANDS if re.match(r"\.venv/bin/dvc\s+(repro|exp)", line)]
    assert not bad, f"use `make run` (it puts .venv/bin first on PATH for the stages): {bad}"


MODULES = sorted({m for _d, line in COMMANDS
                  for m in re.findall(r"^(?:\.venv/bin/)?python -m ([\w.]+)", line)})


@pytest.mark.parametrize("module", MODULES)
def test_every_documented_module_answers_help(module):
    done = subprocess.run([sys.executable, "-m", module, "--help"], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, f"python -m {module} --help: {done.stderr[-800:]}"


def test_every_relative_link_in_the_docs_resolves():
    """The README links its depth in docs/ and the docs link each other and the repository: a
    page moved or renamed leaves no link pointing at nothing."""
    broken = []
    for doc in DOCS:
        for link in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", (REPO / doc).read_text(encoding="utf-8")):
            if not re.match(r"[a-z]+:", link) and not ((REPO / doc).parent / link).exists():
                broken.append(f"{doc}: {link}")
    assert not broken, broken
