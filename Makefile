# Every target sets up its own environment in .venv/ first: nothing is installed by hand.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

OUT ?= shards
SPLIT ?= train
SUBSET ?= all
IMAGENET ?=
ARGS ?=

.PHONY: setup texture-shards test lint format bench bench-gpu mini-repro clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e '.[dev]'
	touch $@

texture-shards: $(STAMP)
	$(BIN)/nsneg-textures build --out $(OUT) --split $(SPLIT) --subset $(SUBSET) \
		$(if $(IMAGENET),--imagenet $(IMAGENET)) $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_synthesis.py
	$(BIN)/python benchmarks/bench_pipeline.py
	$(BIN)/python benchmarks/bench_patch_negatives.py
	$(BIN)/python benchmarks/bench_train_step.py

# On a GPU machine: synthesis (both encoders, batch 64/128/256), train step and loader -> bench-gpu/results.{json,md}.
# Fails clearly without a CUDA device.
bench-gpu: $(STAMP)
	$(BIN)/python benchmarks/bench_gpu.py --out bench-gpu $(ARGS)

mini-repro: $(STAMP)
	PYTHONPATH=benchmarks $(BIN)/python -m mini_repro $(ARGS)

clean:
	rm -rf $(VENV) shards
