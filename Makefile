# Two commands for a newcomer: `make run` (the default pipeline) and `make test`.
# torch is installed first and pinned so that a CPU machine takes the CPU build instead of
# pulling several GB of CUDA wheels; on a CUDA machine the same pin resolves to the CUDA build.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
TORCH  ?= torch==2.13.0
STAMP   = $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: install run test test-fast bench clean-venv

$(STAMP): pyproject.toml constraints.txt Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[dev]"
	touch $@

install: $(STAMP)

run: $(STAMP)
	$(BIN)/dvc config --local core.analytics false
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/dvc repro

test: $(STAMP)
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest -q $(PYTEST_ARGS)

test-fast: $(STAMP)
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest -q -m "not slow" $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python -m benchmarks.serving

clean-venv:
	rm -rf $(VENV)
