# Peer Cycles node. `make run` serves a demo node; `make test` runs the whole suite.
SHELL := /bin/bash
PEER_PORT ?= 8000
VENV := .venv
PY := $(VENV)/bin/python

# The first Python >= 3.12 found: PATH first, then the pyenv versions these machines carry.
PYTHON ?= $(shell for p in python3.12 python3.13 python3.14 /root/.pyenv/versions/3.12.1/bin/python \
	/root/.pyenv/versions/3.13.0/bin/python python3; do \
	command -v $$p >/dev/null 2>&1 && $$p -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null \
	&& { command -v $$p; break; }; done)

.PHONY: run test setup migrate check-python clean help ledger-check deposits-scan bench-litellm llama-wheel

help:
	@echo "make run    - install, migrate, seed a demo fleet and serve the node on 127.0.0.1:$(PEER_PORT)"
	@echo "make test   - install and run the whole test suite against PostgreSQL and Redis"
	@echo "make setup  - only create .venv and install Python and npm packages"
	@echo "make llama-wheel    - build llama.cpp once per machine (part of make setup)"
	@echo "make ledger-check   - verify every ledger invariant (manage.py ledger_check)"
	@echo "make deposits-scan  - credit finalized USDC deposits now (manage.py deposits_scan)"
	@echo "make bench-litellm  - relay overhead next to LiteLLM (docs/benchmarks.md; BENCH_ARGS=--help)"

check-python:
	@if [ -z "$(PYTHON)" ]; then \
	  echo "No Python 3.12 or newer found. Install one (e.g. 'pyenv install 3.12' or your OS package" >&2; \
	  echo "python3.12) and rerun, or point to it: make PYTHON=/path/to/python3.12 $(MAKECMDGOALS)" >&2; \
	  exit 1; fi

$(VENV)/.installed: requirements.txt requirements-dev.txt worker/requirements.txt worker/requirements-nodeps.txt | check-python
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	@$(MAKE) --no-print-directory llama-wheel
	$(PY) -m pip install --quiet --no-index --no-deps --find-links $(LLAMA_WHEELS) $(LLAMA_PACKAGE)
	@echo "Installing Python packages..."
	$(PY) -m pip install --quiet -r requirements.txt -r requirements-dev.txt
	$(PY) -m pip install --quiet --no-deps -r worker/requirements-nodeps.txt
	@touch $@

# llama.cpp is built from source once per machine, into a folder of our own rather than pip's
# wheel cache: pip keys that cache on the package alone, so a wheel built for another CPU would be
# reused. On x86-64 the build targets x86-64-v3 (AVX2, FMA, F16C) instead of -march=native:
# some virtual machines advertise AMX that they then refuse (SIGILL in llama.cpp's AMX matmul),
# and a native wheel dies on any older CPU it is copied to.
LLAMA_PACKAGE := llama-cpp-python==0.3.36
LLAMA_CMAKE_ARGS := $(if $(filter x86_64,$(shell uname -m)),-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON \
	-DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON)
LLAMA_WHEELS ?= $(HOME)/.cache/peer-cycles/wheels/$(subst ==,-,$(LLAMA_PACKAGE))-$(shell uname -m)$(if $(LLAMA_CMAKE_ARGS),-v3)

llama-wheel:
	@if ! ls $(LLAMA_WHEELS)/llama_cpp_python-*.whl >/dev/null 2>&1; then \
	  echo "Building llama.cpp (about 8 minutes on 2 cores; once per machine, into $(LLAMA_WHEELS))..."; \
	  mkdir -p $(LLAMA_WHEELS) && CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(PY) -m pip wheel --quiet --no-cache-dir \
	    --no-deps --wheel-dir $(LLAMA_WHEELS) $(LLAMA_PACKAGE); fi

node_modules/.installed: package.json
	npm install --no-audit --no-fund --loglevel=error
	@touch $@

setup: $(VENV)/.installed node_modules/.installed

migrate: setup
	@mkdir -p var
	$(PY) manage.py migrate --noinput

run: migrate
	$(PY) manage.py run_node --port $(PEER_PORT)

# Tests use real PostgreSQL and Redis: these defaults are the local servers (.ci/run starts them).
test: setup
	DATABASE_URL=$${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/peercycles} \
	REDIS_URL=$${REDIS_URL:-redis://127.0.0.1:6379/7} \
	$(PY) -m pytest $(PYTEST_ARGS)

ledger-check: migrate
	$(PY) manage.py ledger_check

deposits-scan: migrate
	$(PY) manage.py deposits_scan

clean:
	rm -rf var .pytest_cache

# The relay benchmark against LiteLLM (docs/benchmarks.md). LiteLLM lives in a venv of its own
# and never in requirements*.txt. Its 1.107.0 release was compromised: keep the pin below it.
# uvicorn (with uvloop, httptools) goes to a folder for the node's interpreter (--servers uvicorn).
BENCH_VENV := .bench-venv
LITELLM_VERSION := 1.106.12

$(BENCH_VENV)/.installed: | check-python
	@test -x $(BENCH_VENV)/bin/python || $(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install --quiet 'litellm[proxy]==$(LITELLM_VERSION)'
	$(PY) -m pip install --quiet --no-deps --upgrade --target $(BENCH_VENV)/node-extras \
		uvicorn==0.54.0 uvloop==0.23.0 httptools==0.9.0
	@touch $@

# Its own database and Redis db by default: the benchmark takes that database's workers offline.
bench-litellm: setup $(BENCH_VENV)/.installed
	DATABASE_URL=$${BENCH_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/peercycles_bench} \
	REDIS_URL=$${BENCH_REDIS_URL:-redis://127.0.0.1:6379/12} \
	$(PY) tests/bench/bench_vs_litellm.py $(BENCH_ARGS)
