# The documented commands. Each one installs what it needs by itself, from nothing.
SYSTEM_PYTHON ?= /usr/bin/python3.11
VENV          := .venv
PY            := $(VENV)/bin/python
PROFILE       ?= pretrained
STAMP         := $(VENV)/.installed

.PHONY: serve test test-unit build weights sts soak venv clean lint

serve: build
	$(PY) -m ensemble.server

test: build
	$(PY) -m pytest -m "not gpu" --timeout=900

test-unit: venv
	$(PY) -m pytest -m "not server and not gpu"

build: venv
	$(PY) -m export.build --profile $(PROFILE)

# Fetch (when the hub is reachable) and verify pretrained checkpoints, then rebuild.
weights: venv
	$(PY) -m export.weights $(if $(CHECKPOINTS),--checkpoints $(CHECKPOINTS))

# STS Benchmark Spearman of every served block and FUSED (SPLIT=dev|test).
sts: build
	$(PY) -m perf.sts --split $(or $(SPLIT),dev)

# Bounded Locust soak on loopback with a memory watch (USERS, MINUTES).
soak: build
	$(PY) -m perf.soak --users $(or $(USERS),16) --minutes $(or $(MINUTES),10)

venv: $(STAMP)

$(STAMP): requirements.txt pyproject.toml client/pyproject.toml scripts/check_python.sh
	bash scripts/check_python.sh $(SYSTEM_PYTHON)
	test -x $(PY) || $(SYSTEM_PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e . -e client
	touch $(STAMP)

lint: venv
	$(PY) -m ruff check export ensemble client perf tests

clean:
	rm -rf $(VENV) .run
	git clean -fdXq model_repository
