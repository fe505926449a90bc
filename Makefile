# Every target sets up its own environment in .venv/ first: nothing is installed by hand.
# The demo and the tools need the runtime only; the tests and the linter add the dev extras.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
RUNTIME := $(VENV)/.installed-runtime
DEV := $(VENV)/.installed-dev

OUT ?= shards
SPLIT ?= train
SUBSET ?= all
IMAGENET ?=
ARGS ?=

.PHONY: setup setup-dev texture-shards test test-fast lint format bench bench-gpu benchmarks-page mini-repro mini-repro-search mini-repro-byol clean

setup: $(RUNTIME)

setup-dev: $(DEV)

$(RUNTIME): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e .
	touch $@

$(DEV): $(RUNTIME)
	$(BIN)/python -m pip install -e '.[dev]'
	touch $@

texture-shards: $(RUNTIME)
	$(BIN)/nsneg-textures build --out $(OUT) --split $(SPLIT) --subset $(SUBSET) \
		$(if $(IMAGENET),--imagenet $(IMAGENET)) $(ARGS)

# The whole suite (what CI runs); test-fast leaves out what starts Ray, runs a whole job, DDP,
# torch.compile or a wheel build.
test: $(DEV)
	$(BIN)/python -m pytest -q tests

test-fast: $(DEV)
	$(BIN)/python -m pytest -q -m "not slow" tests

lint: $(DEV)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(DEV)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: $(RUNTIME)
	$(BIN)/python benchmarks/bench_synthesis.py
	$(BIN)/python benchmarks/bench_pipeline.py
	$(BIN)/python benchmarks/bench_patch_negatives.py
	$(BIN)/python benchmarks/bench_train_step.py

# On a GPU machine: synthesis (both encoders, batch 64/128/256), train step and loader -> bench-gpu/results.{json,md}.
# Fails clearly without a CUDA device.
bench-gpu: $(RUNTIME)
	$(BIN)/python benchmarks/bench_gpu.py --out bench-gpu $(ARGS)

# docs/benchmarks.md from the recorded runs in docs/benchmarks/ (bench_report.py record adds one).
benchmarks-page: $(RUNTIME)
	$(BIN)/python benchmarks/bench_report.py render

# The mini reproduction (docs/mini-repro.md): the search for its views per run (the baseline
# alone), the MoCo rows, the BYOL rows on the same prepared world. Each resumes where it stopped.
mini-repro-search: $(RUNTIME)
	PYTHONPATH=benchmarks $(BIN)/python -m mini_repro --stage search $(ARGS)

mini-repro: $(RUNTIME)
	PYTHONPATH=benchmarks $(BIN)/python -m mini_repro $(ARGS)

mini-repro-byol: $(RUNTIME)
	PYTHONPATH=benchmarks $(BIN)/python -m mini_repro --protocol byol --data runs/mini-repro-full $(ARGS)

clean:
	rm -rf $(VENV) shards
