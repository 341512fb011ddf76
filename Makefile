# The two commands of the README: `make demo` (the main job) and `make test`.
PY        ?= python3
VENV      ?= .venv
BIN       := $(VENV)/bin
STAMP     := $(VENV)/.installed
WORKSPACE ?= workspace
PROFILE   ?= full
ADDRESS   ?= 127.0.0.1
PORT      ?= 8501
PYTEST_ARGS ?= -m "not slow and not gpu"

.PHONY: demo serve test test-all lint bench clean-workspace

# Install once into .venv; again only when pyproject.toml changes. torch comes first and
# pinned, so that pip does not resolve the open registry to a multi-GB CUDA build.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	@echo "installing into $(VENV) (log: $(VENV)/install.log)"
	@( $(BIN)/python -c "import torch" 2>/dev/null \
	   || $(BIN)/pip install --progress-bar off "torch==2.13.0" \
	   || $(BIN)/pip install --progress-bar off "torch>=2.4,<2.14" ) > $(VENV)/install.log 2>&1 \
	   || (cat $(VENV)/install.log; exit 1)
	@$(BIN)/pip install --progress-bar off -e ".[test]" >> $(VENV)/install.log 2>&1 \
	   || (cat $(VENV)/install.log; exit 1)
	@touch $(STAMP)

# The world, a leave-one-out study and a mashup + scratch pair are computed by one background
# job (reused when there; `mashup demo status`); the dashboard serves at once and shows each
# as it lands.
demo: $(STAMP)
	$(BIN)/mashup demo start --workspace $(WORKSPACE) --profile $(PROFILE)
	$(MAKE) --no-print-directory serve

# Beyond loopback: `make serve ADDRESS=0.0.0.0 READ_ONLY=1`, or with MASHUP_TOKEN set.
serve: $(STAMP)
	$(BIN)/mashup serve --workspace $(WORKSPACE) --host $(ADDRESS) --port $(PORT) \
	  $(if $(READ_ONLY),--read-only)

# On two pytest-xdist workers of one torch thread each (pyproject's addopts: -n 2); add
# PYTEST_ARGS='-n 0 ...' to run in one process.
test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-all: $(STAMP)
	$(BIN)/python -m pytest -m "not gpu"

lint: $(STAMP)
	$(BIN)/ruff check mashup_core pages tests benchmarks app.py
	$(BIN)/python tests/test_layers.py  # imports only go down the wings, no cycles

bench: $(STAMP)
	@for b in benchmarks/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean-workspace:
	rm -rf $(WORKSPACE)

# The fast suite on the LOWEST versions pyproject allows (the other end of `make test`, which
# runs on the newest). A fresh $(FLOORS_VENV) every time: torch first through pip, which takes
# the CPU build of 2.13.0 that lies on this machine's disk (uv does not look there, and PyPI's
# Linux x86-64 torch wheels are CUDA builds of several GB); then uv pins every runtime
# dependency to exactly its `>=` floor (constraints/floors.py reads them from pyproject) and
# resolves the rest of the direct requirements to their lowest, transitive ones to the newest.
FLOORS_VENV ?= .venv-floors
FLOORS_PYTEST_ARGS ?= -m "not slow and not gpu and not browser"

.PHONY: test-floors
test-floors:
	rm -rf $(FLOORS_VENV)
	$(PY) -m venv $(FLOORS_VENV)
	$(FLOORS_VENV)/bin/python constraints/floors.py > $(FLOORS_VENV)/floors.txt
	$(FLOORS_VENV)/bin/pip install --progress-bar off -q "uv>=0.5"
	$(FLOORS_VENV)/bin/pip install --progress-bar off -q "torch>=2.4,<2.14"
	$(FLOORS_VENV)/bin/uv pip install --python $(FLOORS_VENV)/bin/python -q \
	  --resolution lowest-direct -c $(FLOORS_VENV)/floors.txt -e ".[test]"
	$(FLOORS_VENV)/bin/pip list --format freeze > $(FLOORS_VENV)/versions.txt
	@grep -iE '^(torch|transformers|peft|safetensors|datasets|lm.eval|streamlit|scipy|pandas|numpy)==' \
	  $(FLOORS_VENV)/versions.txt | tr '\n' ' '; echo
	$(FLOORS_VENV)/bin/python -m pytest $(FLOORS_PYTEST_ARGS)
