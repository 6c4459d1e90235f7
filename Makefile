# The map of the pipeline. `make help` lists every target.
# Point a stage elsewhere only through these variables:
#   PROFILE  real (default: Llama-3.1-8B-Instruct on a GPU) or tiny (a local tiny Llama on CPU)
#   CONFIG   an Axolotl config to train/merge (default: the stage's rendered config)
#   RUN      a folder to train into / merge from instead of the config's output_dir
PROFILE ?= real
RUN ?=
OVERWRITE ?= 0

ifeq ($(wildcard templates/profiles/$(PROFILE).yml),)
$(error unknown PROFILE=$(PROFILE): the profiles are $(basename $(notdir $(wildcard templates/profiles/*.yml))) (templates/profiles/))
endif

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON_BASE ?= python3.11
VENV := .venv
VENV_COMPRESS := .venv-compress
PY := $(VENV)/bin/python
AXOLOTL := $(VENV)/bin/axolotl
WORK := work/$(PROFILE)
CONFIGS := axolotl_configs/$(PROFILE)
CONFIG_1A := $(CONFIGS)/1a_base_sft.yml
TINY_BASE := work/tiny/base_model

# CPU hosts get the CPU build of torch: `+cpu` exists only on the PyTorch CPU index or a
# local wheel, never on PyPI, so pip cannot fall back to the multi-GB CUDA build.
# Set TORCH_INDEX=https://download.pytorch.org/whl/cpu on a CPU host with no local wheel.
HAS_GPU := $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo 1)
TORCH_SPEC := $(if $(HAS_GPU),torch==2.13.0,torch==2.13.0+cpu)
TORCH_INDEX ?=
PIP_QUIET := -q --disable-pip-version-check
# Some hosts' pip config names local index folders that may not exist; hide that noise only.
QUIET_INDEX_WARNINGS := | { grep -v 'is ignored: it is neither' || true; }
# The stamp's name carries the requirements file's hash: edit the file and setup reinstalls.
stamp = $(1)/.installed-$(shell sha256sum $(2) | cut -c1-16)
STAMP := $(call stamp,$(VENV),requirements.txt)
STAMP_COMPRESS := $(call stamp,$(VENV_COMPRESS),requirements-compress.txt)

# Axolotl/transformers/lm-eval must never reach a hub in the tiny profile.
ifeq ($(PROFILE),tiny)
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
endif
export DO_NOT_TRACK := 1
export AXOLOTL_DO_NOT_TRACK := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: help setup setup-gpu render check-render tiny-model train-1a merge-1a train merge \
        new-experiment demo test clean

help: ## list the targets
	@echo "usage: make <target> [PROFILE=real|tiny] [CONFIG=file.yml] [RUN=dir]"
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

setup: $(STAMP) $(STAMP_COMPRESS) ## create both virtual environments (quick when nothing changed)

$(STAMP): requirements.txt
	@echo "setup: $(VENV) from requirements.txt ($(TORCH_SPEC))"
	rm -f $(VENV)/.installed-*
	[ -x $(PY) ] || $(PYTHON_BASE) -m venv $(VENV)
	$(PY) -m pip install $(PIP_QUIET) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) "$(TORCH_SPEC)" 2>&1 $(QUIET_INDEX_WARNINGS)
	$(PY) -m pip install $(PIP_QUIET) -r requirements.txt 2>&1 $(QUIET_INDEX_WARNINGS)
	$(PY) -m pip check
	touch $@

$(STAMP_COMPRESS): requirements-compress.txt
	@echo "setup: $(VENV_COMPRESS) from requirements-compress.txt ($(TORCH_SPEC))"
	rm -f $(VENV_COMPRESS)/.installed-*
	[ -x $(VENV_COMPRESS)/bin/python ] || $(PYTHON_BASE) -m venv $(VENV_COMPRESS)
	$(VENV_COMPRESS)/bin/pip install $(PIP_QUIET) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) "$(TORCH_SPEC)" 2>&1 $(QUIET_INDEX_WARNINGS)
	$(VENV_COMPRESS)/bin/pip install $(PIP_QUIET) -r requirements-compress.txt 2>&1 $(QUIET_INDEX_WARNINGS)
	$(VENV_COMPRESS)/bin/pip check
	touch $@

setup-gpu: $(STAMP) ## GPU hosts only: add flash-attn and deepspeed to the training environment
	@[ -n "$(HAS_GPU)" ] || { echo "error: setup-gpu needs a CUDA GPU (nvidia-smi found none); CPU hosts use PROFILE=tiny" >&2; exit 2; }
	$(PY) -m pip install $(PIP_QUIET) packaging ninja
	$(PY) -m pip install $(PIP_QUIET) --no-build-isolation -r requirements-gpu.txt

# The venv's bin goes first on PATH: `axolotl train` launches `accelerate` by name.
export PATH := $(abspath $(VENV))/bin:$(PATH)

render: $(STAMP) ## render templates/ into axolotl_configs/<profile>/ (all profiles)
	$(PY) -m glue.render

check-render: $(STAMP) ## fail if axolotl_configs/ differs from a fresh render
	$(PY) -m glue.render --check

tiny-model: $(TINY_BASE)/config.json ## build the tiny profile's base model (random Llama, offline tokenizer)

$(TINY_BASE)/config.json: | $(STAMP)
	$(PY) -m glue.tiny_model --out $(TINY_BASE) --corpus tests/fixtures/sft/train.jsonl

# The tiny profile's base model is built on demand; the real one comes from the hub.
BASE_DEPS := $(if $(filter tiny,$(PROFILE)),$(TINY_BASE)/config.json)

train-1a: $(BASE_DEPS) ## Phase 1A: LoRA SFT of the base model (axolotl preprocess + train)
	$(MAKE) train CONFIG=$(CONFIG_1A)

merge-1a: ## Phase 1A: guarded merge of the adapter into the full-precision base, with proof
	$(MAKE) merge CONFIG=$(CONFIG_1A)

train: $(STAMP) ## train any config: make train CONFIG=axolotl_configs/experiments/x.yml [RUN=dir]
	@[ -n "$(CONFIG)" ] || { echo "error: set CONFIG=<axolotl config>, e.g. make train CONFIG=$(CONFIG_1A)" >&2; exit 2; }
	$(PY) -m glue.validate_config --for-training $(CONFIG) $(if $(RUN),--output-dir $(RUN)) $(if $(filter 1,$(OVERWRITE)),--overwrite)
	axolotl preprocess $(CONFIG) $(if $(RUN),--output-dir=$(RUN))
	axolotl train $(CONFIG) $(if $(RUN),--output-dir=$(RUN))

merge: $(STAMP) ## merge any trained config: make merge CONFIG=... [RUN=dir] [ALLOW_QLORA_MERGE=1]
	@[ -n "$(CONFIG)" ] || { echo "error: set CONFIG=<axolotl config>, e.g. make merge CONFIG=$(CONFIG_1A)" >&2; exit 2; }
	$(PY) -m glue.merge $(CONFIG) $(if $(RUN),--run $(RUN)) $(if $(filter 1,$(OVERWRITE)),--overwrite) \
		$(if $(filter 1,$(ALLOW_QLORA_MERGE)),--allow-qlora-merge)

new-experiment: $(STAMP) ## copy a config to axolotl_configs/experiments/NAME.yml: make new-experiment FROM=... NAME=...
	@[ -n "$(FROM)" ] && [ -n "$(NAME)" ] || { echo "error: usage: make new-experiment FROM=<config> NAME=<name>" >&2; exit 2; }
	$(PY) -m glue.new_experiment $(FROM) $(NAME)

demo: ## the whole chain on the tiny profile, on CPU, offline
	$(MAKE) setup
	$(MAKE) train-1a PROFILE=tiny OVERWRITE=1
	$(MAKE) merge-1a PROFILE=tiny OVERWRITE=1

test: setup ## run the test suite (offline, CPU; slow end-to-end tests included)
	$(PY) -m pytest tests -q --durations=15

clean: ## delete work/ (everything runs produce); the venvs stay
	rm -rf work
