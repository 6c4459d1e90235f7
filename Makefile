# The map of the pipeline. `make help` lists every target and every variable (`#: NAME text`
# lines document a variable; help prints them with their values).
#: PROFILE  real (Llama-3.1-8B-Instruct, bf16, GPU) or tiny (a local tiny Llama, CPU, offline)
PROFILE ?= real
#: CONFIG  an Axolotl config for train/merge (the stage targets set their own)
CONFIG ?=
#: RUN  a folder to train into / merge from instead of the config's output_dir
RUN ?=
#: OVERWRITE  1: replace a finished output of data, train, merge, compress, gguf (the other stages always rebuild theirs)
OVERWRITE ?= 0

ifeq ($(wildcard templates/profiles/$(PROFILE).yml),)
$(error unknown PROFILE=$(PROFILE): the profiles are $(basename $(notdir $(wildcard templates/profiles/*.yml))) (templates/profiles/))
endif

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

#: PYTHON_BASE  the interpreter the virtual environments are made from
PYTHON_BASE ?= python3.11
VENV := .venv
VENV_COMPRESS := .venv-compress
PY := $(VENV)/bin/python
# Commands that load Axolotl or torchao (transformers in .venv does) run through this filter: it
# drops the known torch/torchao noise lines (listed in glue/train/axolotl_run.py) and nothing else.
QUIET := $(PY) -m glue.train.axolotl_run
WORK := work/$(PROFILE)
CONFIGS := axolotl_configs/$(PROFILE)
CONFIG_1A := $(CONFIGS)/1a_base_sft.yml
CONFIG_1C := $(CONFIGS)/1c_distill.yml
CONFIG_2E := $(CONFIGS)/2e_recovery.yml
DATA := $(WORK)/data
MERGED_1A := $(WORK)/1a_base_sft/merged
MERGED_1C := $(WORK)/1c_distill/merged
TINY_BASE := work/tiny/base_model

# CPU hosts get the CPU build of torch: `+cpu` exists only on the PyTorch CPU index or a
# local wheel, never on PyPI, so pip cannot fall back to the multi-GB CUDA build. With no
# local wheel and no TORCH_INDEX, setup takes it from the PyTorch CPU index and says so.
HAS_GPU := $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo 1)
TORCH_SPEC := $(if $(HAS_GPU),torch==2.13.0,torch==2.13.0+cpu)
TORCH_CPU_INDEX := https://download.pytorch.org/whl/cpu
#: TORCH_INDEX  a package index for torch (default: pip's own configuration, then the PyTorch CPU index on CPU hosts)
TORCH_INDEX ?=
PIP_QUIET := -q --disable-pip-version-check
# Some hosts' pip config names local index folders that may not exist; hide that noise only.
QUIET_INDEX_WARNINGS := | { grep -v 'is ignored: it is neither' || true; }
# The stamp's name carries the requirements file's hash: edit the file and setup reinstalls.
# torch first and alone in each venv, so that nothing else picks a torch build. On a CPU host
# with no TORCH_INDEX, a dry run finds out whether pip's own sources have the +cpu wheel.
install_torch = index='$(TORCH_INDEX)'; \
	if [ -z "$$index" ] && [ -z "$(HAS_GPU)" ] && ! $(1) -m pip install -q --dry-run --no-deps "$(TORCH_SPEC)" >/dev/null 2>&1; then \
	    index=$(TORCH_CPU_INDEX); echo "setup: no local $(TORCH_SPEC) wheel; installing it from the PyTorch CPU index ($$index)"; fi; \
	$(1) -m pip install $(PIP_QUIET) $${index:+--index-url $$index} "$(TORCH_SPEC)" 2>&1 $(QUIET_INDEX_WARNINGS)
stamp = $(1)/.installed-$(shell sha256sum $(2) | cut -c1-16)
STAMP := $(call stamp,$(VENV),requirements.txt)
STAMP_COMPRESS := $(call stamp,$(VENV_COMPRESS),requirements-compress.txt)

# llama-cpp-python and llama.cpp's converter (requirements-gguf.txt), into the compression env.
# The build is portable x86-64 with AVX2: a native build on a CPU with AMX enables ggml's AMX
# kernels, which crashed (SIGSEGV in ggml_backend_amx_mul_mat) on every quantized GGUF here.
# GPU hosts may set LLAMA_CPP_CMAKE_ARGS=-DGGML_CUDA=on. Built once per machine and argument set.
LLAMA_CPP_VERSION := $(shell sed -n 's/^llama-cpp-python==//p' requirements-gguf.txt)
#: LLAMA_CPP_CMAKE_ARGS  llama.cpp build flags (GPU hosts: -DGGML_CUDA=on)
LLAMA_CPP_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF
#: LLAMA_CPP_CACHE  where the llama-cpp-python wheel is built once per machine
LLAMA_CPP_CACHE ?= $(HOME)/.cache/cogumi/llama-cpp
LLAMA_CPP_BUILD := $(shell (cat requirements-gguf.txt; echo '$(LLAMA_CPP_CMAKE_ARGS)') | sha256sum | cut -c1-16)
LLAMA_CPP_SDIST := $(LLAMA_CPP_CACHE)/llama_cpp_python-$(LLAMA_CPP_VERSION).tar.gz
LLAMA_CPP := $(VENV_COMPRESS)/src/llama.cpp
# What setup unpacks from the sdist. The stamp carries the list, so a file added here reaches an
# existing environment too (from the cached wheel: llama-cpp-python is not rebuilt).
LLAMA_CPP_FILES := convert_hf_to_gguf.py convert_lora_to_gguf.py conversion gguf-py LICENSE
STAMP_GGUF := $(VENV_COMPRESS)/.llama-cpp-$(shell echo '$(LLAMA_CPP_BUILD) $(LLAMA_CPP_FILES)' | sha256sum | cut -c1-16)

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
        new-experiment data bench-data eval-1a eval failures-1b distill-1c train-1c merge-1c eval-1c bench-distill \
        compress gguf calibrate eval-compressed compress-report package dequantize train-2e merge-2e \
        demo test test-fast clean

DOC_VARS = $(shell sed -n 's/^#: \([A-Z0-9_]*\) .*/\1/p' $(firstword $(MAKEFILE_LIST)))
help: ## list the targets and the variables
	@echo "usage: make <target> [VARIABLE=value ...]"
	@echo "targets:"
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'
	@echo "variables (value now, for PROFILE=$(PROFILE)):"
	@$(foreach v,$(DOC_VARS),printf '  %-30s %s\n' '$(v)=$(subst ','\'',$($(v)))' "$$(sed -n 's/^#: $(v)  //p' $(firstword $(MAKEFILE_LIST)))";)

setup: $(STAMP) $(STAMP_COMPRESS) $(STAMP_GGUF) ## create both virtual environments (quick when nothing changed)

$(STAMP): requirements.txt
	@echo "setup: $(VENV) from requirements.txt ($(TORCH_SPEC))"
	rm -f $(VENV)/.installed-*
	[ -x $(PY) ] || $(PYTHON_BASE) -m venv $(VENV)
	@$(call install_torch,$(PY))
	$(PY) -m pip install $(PIP_QUIET) -r requirements.txt 2>&1 $(QUIET_INDEX_WARNINGS)
	$(PY) -m pip check
	touch $@

$(STAMP_COMPRESS): requirements-compress.txt
	@echo "setup: $(VENV_COMPRESS) from requirements-compress.txt ($(TORCH_SPEC))"
	rm -f $(VENV_COMPRESS)/.installed-*
	[ -x $(VENV_COMPRESS)/bin/python ] || $(PYTHON_BASE) -m venv $(VENV_COMPRESS)
	@$(call install_torch,$(VENV_COMPRESS)/bin/python)
	$(VENV_COMPRESS)/bin/pip install $(PIP_QUIET) -r requirements-compress.txt 2>&1 $(QUIET_INDEX_WARNINGS)
	$(VENV_COMPRESS)/bin/pip check
	touch $@

$(STAMP_GGUF): requirements-gguf.txt | $(STAMP_COMPRESS)
	@echo "setup: llama-cpp-python $(LLAMA_CPP_VERSION) and llama.cpp's converter into $(VENV_COMPRESS)"
	rm -f $(VENV_COMPRESS)/.llama-cpp-*
	mkdir -p $(LLAMA_CPP_CACHE)/$(LLAMA_CPP_BUILD)
	[ -f $(LLAMA_CPP_SDIST) ] || $(VENV_COMPRESS)/bin/pip download $(PIP_QUIET) --no-deps --no-binary :all: \
	    -d $(LLAMA_CPP_CACHE) llama-cpp-python==$(LLAMA_CPP_VERSION) 2>&1 $(QUIET_INDEX_WARNINGS)
	ls $(LLAMA_CPP_CACHE)/$(LLAMA_CPP_BUILD)/*.whl >/dev/null 2>&1 || { \
	    echo "setup: building llama-cpp-python (once per machine, ~10 min on 2 cores; cached in $(LLAMA_CPP_CACHE))"; \
	    CMAKE_ARGS="$(LLAMA_CPP_CMAKE_ARGS)" $(VENV_COMPRESS)/bin/pip wheel $(PIP_QUIET) --no-deps --no-cache-dir \
	        -w $(LLAMA_CPP_CACHE)/$(LLAMA_CPP_BUILD) $(LLAMA_CPP_SDIST) 2>&1 $(QUIET_INDEX_WARNINGS); }
	$(VENV_COMPRESS)/bin/pip install $(PIP_QUIET) --no-deps --force-reinstall $(LLAMA_CPP_CACHE)/$(LLAMA_CPP_BUILD)/*.whl
	$(VENV_COMPRESS)/bin/pip install $(PIP_QUIET) -r requirements-gguf.txt 2>&1 $(QUIET_INDEX_WARNINGS)
	$(VENV_COMPRESS)/bin/pip check
	rm -rf $(LLAMA_CPP) && mkdir -p $(LLAMA_CPP)
	tar -xzf $(LLAMA_CPP_SDIST) -C $(LLAMA_CPP) --strip-components=3 \
	    $(addprefix llama_cpp_python-$(LLAMA_CPP_VERSION)/vendor/llama.cpp/,$(LLAMA_CPP_FILES))
	touch $@

setup-gpu: $(STAMP) ## GPU hosts only: add flash-attn and deepspeed to the training environment
	@[ -n "$(HAS_GPU)" ] || { echo "error: setup-gpu needs a CUDA GPU (nvidia-smi found none); CPU hosts use PROFILE=tiny" >&2; exit 2; }
	$(PY) -m pip install $(PIP_QUIET) packaging ninja
	$(PY) -m pip install $(PIP_QUIET) --no-build-isolation -r requirements-gpu.txt

# The venv's bin goes first on PATH: `axolotl train` launches `accelerate` by name.
export PATH := $(abspath $(VENV))/bin:$(PATH)

render: $(STAMP) ## render templates/ into axolotl_configs/<profile>/ (all profiles)
	$(PY) -m glue.train.render

check-render: $(STAMP) ## fail if axolotl_configs/ differs from a fresh render
	$(PY) -m glue.train.render --check

tiny-model: $(TINY_BASE)/config.json ## build the tiny profile's base model (offline tokenizer, pretrained on the generated world; cached per machine)

#: TINY_CACHE  where the tiny base model is built once per machine (a few minutes of pretraining)
TINY_CACHE ?= $(HOME)/.cache/cogumi/tiny-base
# Rebuilt when the generator or the builder changes; an unchanged build is a copy from TINY_CACHE.
$(TINY_BASE)/config.json: glue/train/tiny_model.py glue/core/tiny_world.py tests/fixtures/sft/train.jsonl | $(STAMP)
	$(QUIET) $(PY) -m glue.train.tiny_model --out $(TINY_BASE) --corpus tests/fixtures/sft/train.jsonl \
	    --cache $(TINY_CACHE) --overwrite

# The tiny profile's base model is built on demand; the real one comes from the hub.
BASE_DEPS := $(if $(filter tiny,$(PROFILE)),$(TINY_BASE)/config.json)

# ---- Phase 0 -------------------------------------------------------------------------------
#: BENCH_ROWS  bench-data: rows of the synthetic corpus
BENCH_ROWS ?= 20000
#: WHOLE_STAGE  bench-data: 1 times all of make data on the corpus
WHOLE_STAGE ?= 0

data: $(STAMP) $(BASE_DEPS) ## Phase 0: curate the seven sources into work/<profile>/data (train/val, rejects, report)
	$(PY) -m glue.data.curate --profile $(PROFILE) --out $(DATA) $(if $(filter 1,$(OVERWRITE)),--overwrite)

bench-data: $(STAMP) $(TINY_BASE)/config.json ## benchmark: scoring, language ID and dedup rows/s on a synthetic corpus [BENCH_ROWS=n] [WHOLE_STAGE=1: time all of make data]
	$(PY) -m glue.data.bench --rows $(BENCH_ROWS) --tokenizer $(TINY_BASE) $(if $(filter 1,$(WHOLE_STAGE)),--whole-stage)

# ---- Phase 1A ------------------------------------------------------------------------------
# The machine check comes first: on a host that cannot train the config, say so before
# building the training data.
train-1a: $(STAMP) $(BASE_DEPS) ## Phase 1A: LoRA SFT of the base model (builds the data first if missing; axolotl preprocess + train)
	$(QUIET) $(PY) -m glue.train.validate_config --hardware-only $(CONFIG_1A)
	[ -f $(DATA)/train.jsonl ] || $(MAKE) data
	$(MAKE) train CONFIG=$(CONFIG_1A)

merge-1a: ## Phase 1A: guarded merge of the adapter into the full-precision base, with proof
	$(MAKE) merge CONFIG=$(CONFIG_1A)

train: $(STAMP) ## train any config: make train CONFIG=axolotl_configs/experiments/x.yml [RUN=dir]
	@[ -n "$(CONFIG)" ] || { echo "error: set CONFIG=<axolotl config>, e.g. make train CONFIG=$(CONFIG_1A)" >&2; exit 2; }
	$(QUIET) $(PY) -m glue.train.validate_config --for-training $(CONFIG) $(if $(RUN),--output-dir $(RUN)) $(if $(filter 1,$(OVERWRITE)),--overwrite)
	$(QUIET) axolotl preprocess $(CONFIG) $(if $(RUN),--output-dir=$(RUN))
	$(QUIET) axolotl train $(CONFIG) $(if $(RUN),--output-dir=$(RUN))

merge: $(STAMP) ## merge any trained config: make merge CONFIG=... [RUN=dir] [ALLOW_QLORA_MERGE=1]
	@[ -n "$(CONFIG)" ] || { echo "error: set CONFIG=<axolotl config>, e.g. make merge CONFIG=$(CONFIG_1A)" >&2; exit 2; }
	$(QUIET) $(PY) -m glue.train.merge $(CONFIG) $(if $(RUN),--run $(RUN)) $(if $(filter 1,$(OVERWRITE)),--overwrite) \
		$(if $(filter 1,$(ALLOW_QLORA_MERGE)),--allow-qlora-merge)

#: FROM  new-experiment: the config to copy
FROM ?=
#: ALLOW_QLORA_MERGE  merge: 1 merges an adapter trained on a 4-bit base (into the full-precision base)
ALLOW_QLORA_MERGE ?= 0

new-experiment: $(STAMP) ## copy a config to axolotl_configs/experiments/NAME.yml: make new-experiment FROM=... NAME=...
	@[ -n "$(FROM)" ] && [ -n "$(NAME)" ] || { echo "error: usage: make new-experiment FROM=<config> NAME=<name>" >&2; exit 2; }
	$(PY) -m glue.train.new_experiment $(FROM) $(NAME)

# ---- experiments side by side ---------------------------------------------------------------
#: SET  sweep: the values to try, "key=v1,v2 key=v1,v2" (one experiment copy per combination)
SET ?=
#: SWEEP  sweep: the copies' name prefix (default: FROM's file name)
SWEEP ?=
#: MATCH  experiments: only runs whose folder under work/<profile>/ matches this glob (table and plot), e.g. 'experiments/*'
MATCH ?=

.PHONY: experiments sweep
experiments: $(STAMP) ## every training run under work/<profile>/ side by side: changes, status, losses, eval, loss plot [MATCH=glob] (always rebuilds)
	$(PY) -m glue.train.experiments --work $(WORK) --out $(WORK)/experiments_report $(if $(MATCH),--match '$(MATCH)')

sweep: $(STAMP) $(BASE_DEPS) ## train one experiment per combination: make sweep FROM=... SET="learning_rate=1e-4,2e-4" [SWEEP=name] (a rerun resumes)
	@[ -n "$(FROM)" ] && [ -n "$(SET)" ] || { echo 'error: usage: make sweep FROM=<config> SET="key=v1,v2 ..." [SWEEP=name]' >&2; exit 2; }
	$(QUIET) $(PY) -m glue.train.sweep $(FROM) --set '$(SET)' $(if $(SWEEP),--name $(SWEEP))

# ---- evaluation and Phase 1B ------------------------------------------------------------
#: MODEL  a model folder (or GGUF file) for eval, failures-1b, compress, gguf, calibrate
MODEL ?=
#: NAME  eval: the output folder's name under work/<profile>/eval/; new-experiment: the copy's name
NAME ?= $(notdir $(patsubst %/,%,$(MODEL)))
#: BASELINE  eval/eval-1a: an evaluated model folder to compare against (gates on the drop)
BASELINE ?=
#: SUITE  the lm-eval suite (eval_configs/suites/)
SUITE ?= eval_configs/suites/$(PROFILE)_1a.yml
#: PROMPTS  failures-1b/eval-1c: held-out prompts (default: the curated val split)
PROMPTS ?=
#: ALLOW_CODE_EVAL  1: run model-written code (HumanEval, code judges)
ALLOW_CODE_EVAL ?= 0
#: STRICT  1: a gate that cannot be evaluated fails the run
STRICT ?= 0
# Code benchmarks execute model-written code: both switches only with ALLOW_CODE_EVAL=1.
CODE_ENV := $(if $(filter 1,$(ALLOW_CODE_EVAL)),HF_ALLOW_CODE_EVAL=1)
CODE_FLAG := $(if $(filter 1,$(ALLOW_CODE_EVAL)),--allow-code-exec)

# Every evaluation goes through this one recipe: $(call evaluate,python,model,output name,baseline folder)
evaluate = $(CODE_ENV) $(QUIET) $(1) -m glue.eval.evaluate --model $(2) --suite $(SUITE) --out $(WORK)/eval/$(3) \
	$(if $(4),--baseline $(4)) $(CODE_FLAG) $(if $(filter 1,$(STRICT)),--strict) --overwrite
# The student answers the held-out prompts, judged: $(call failures,model,output folder)
failures = $(CODE_ENV) $(QUIET) $(PY) -m glue.eval.failures --model $(1) --profile $(PROFILE) --out $(2) \
	$(if $(PROMPTS),--prompts $(PROMPTS)) $(CODE_FLAG) --overwrite

eval-1a: $(STAMP) ## benchmark gate on the merged 1A model [BASELINE=dir] [ALLOW_CODE_EVAL=1] [STRICT=1] (always rebuilds)
	$(call evaluate,$(PY),$(MERGED_1A),1a,$(BASELINE))

eval: $(STAMP) ## benchmark any model: make eval MODEL=dir [NAME=name] [BASELINE=dir] [SUITE=file] (always rebuilds)
	@[ -n "$(MODEL)" ] || { echo "error: set MODEL=<model folder>, e.g. make eval MODEL=$(MERGED_1A)" >&2; exit 2; }
	$(call evaluate,$(PY),$(MODEL),$(NAME),$(BASELINE))

failures-1b: $(STAMP) ## Phase 1B: judge the 1A model on held-out prompts, cluster and label its failures (always rebuilds)
	$(call failures,$(or $(MODEL),$(MERGED_1A)),$(WORK)/1b_failures)
	$(QUIET) $(PY) -m glue.eval.cluster --failures $(WORK)/1b_failures/failures.jsonl --profile $(PROFILE) \
	    --out $(WORK)/1b_clusters --overwrite

# ---- Phase 1C ------------------------------------------------------------------------------
#: ESTIMATE_ONLY  distill-1c: 1 prints the calls and cost it would make, and stops
ESTIMATE_ONLY ?= 0
#: BUDGET_USD  distill-1c: stop when this much has been spent (default: templates/distill.yml)
BUDGET_USD ?=
#: MODE  distill-1c: teacher (default: templates/distill.yml) or self-consistency
MODE ?=

distill-1c: $(STAMP) ## Phase 1C: teacher examples for the 1B clusters [ESTIMATE_ONLY=1] [BUDGET_USD=n] [MODE=self-consistency] (resumes: a finished call is never made again)
	$(PY) -m glue.distill.build --profile $(PROFILE) --clusters $(WORK)/1b_clusters --curated $(DATA)/train.jsonl \
	    --out $(WORK)/1c_distill_data $(if $(filter 1,$(ESTIMATE_ONLY)),--estimate-only) \
	    $(if $(BUDGET_USD),--budget-usd $(BUDGET_USD)) $(if $(MODE),--mode $(MODE))

train-1c: ## Phase 1C: LoRA on the merged 1A model with the distillation mix, early stopping
	$(MAKE) train CONFIG=$(CONFIG_1C)

merge-1c: ## Phase 1C: guarded merge of the 1C adapter, with proof
	$(MAKE) merge CONFIG=$(CONFIG_1C)

eval-1c: $(STAMP) ## Phase 1C: same suite and judge as 1A; before/after per task and per failure cluster (always rebuilds)
	$(call evaluate,$(PY),$(MERGED_1C),1c,$(WORK)/eval/1a)
	$(call failures,$(MERGED_1C),$(WORK)/1c_failures)
	$(PY) -m glue.eval.compare --before $(WORK)/1b_failures --after $(WORK)/1c_failures \
	    --clusters $(WORK)/1b_clusters --eval-before $(WORK)/eval/1a --eval-after $(WORK)/eval/1c --out $(WORK)/eval/1c_vs_1a

bench-distill: $(STAMP) ## benchmark: teacher requests/s at concurrency 64 against a local server with 200 ms latency
	$(PY) -m tests.bench_distill

# ---- Phase 2: compression, calibration, packaging -------------------------------------------
PY_COMPRESS := $(VENV_COMPRESS)/bin/python
#: RECIPE  compress/dequantize/calibrate/package: the llm-compressor recipe (and so the output folder)
RECIPE ?= compression_recipes/w4a16_gptq.yaml
#: CALIB_SAMPLES  compress: calibration rows (default: the recipe's calibration block)
CALIB_SAMPLES ?=
#: CALIB_LEN  compress: calibration sequence length (default: the recipe's)
CALIB_LEN ?=
# What Phase 2 compresses: the 1C model, or any merged model given as MODEL=.
COMPRESS_FROM = $(or $(MODEL),$(MERGED_1C))
COMPRESSED = $(WORK)/compressed/$(basename $(notdir $(RECIPE)))
#: ARTEFACT  package: the folder or file to archive (default: RECIPE's output)
ARTEFACT ?=

compress: $(STAMP_COMPRESS) ## Phase 2: compress with a recipe [RECIPE=compression_recipes/x.yaml] [MODEL=dir] [CALIB_SAMPLES=n] [CALIB_LEN=n]
	$(PY_COMPRESS) -m glue.compress.compress --model $(COMPRESS_FROM) --recipe $(RECIPE) --data $(DATA)/train.jsonl \
	    --out $(COMPRESSED) $(if $(filter 1,$(OVERWRITE)),--overwrite) \
	    $(if $(CALIB_SAMPLES),--samples $(CALIB_SAMPLES)) $(if $(CALIB_LEN),--max-seq-length $(CALIB_LEN))

# tokens: next-token confidence on the curated held-out split; choices: the answer-letter
# confidence on multiple-choice questions, which need a local MMLU-style file (HELDOUT=).
#: CALIBRATION  calibrate: tokens (next-token confidence) or choices (answer letters, needs HELDOUT)
CALIBRATION ?= tokens
#: HELDOUT  calibrate: the held-out file
HELDOUT ?= $(if $(filter tokens,$(CALIBRATION)),$(DATA)/val.jsonl)
calibrate: $(STAMP_COMPRESS) ## 2F: temperature scaling, ECE before/after [MODEL=dir, default: RECIPE's output] [CALIBRATION=tokens|choices HELDOUT=file] (always rebuilds)
	@[ -n "$(HELDOUT)" ] || { echo "error: CALIBRATION=$(CALIBRATION) needs HELDOUT=<JSONL of question/choices/answer records>, e.g. tests/fixtures/eval/mmlu_test.jsonl" >&2; exit 2; }
	$(PY_COMPRESS) -m glue.compress.calibrate --model $(or $(MODEL),$(COMPRESSED)) --heldout $(HELDOUT) --mode $(CALIBRATION) \
	    --out $(WORK)/calibration/$(notdir $(or $(MODEL),$(COMPRESSED)))/$(CALIBRATION) --overwrite

# The reference (COMPRESS_FROM) is evaluated again here, into eval/<its folder name> (`merged`),
# where compress-report looks: the denominator of "eval recovery" then comes from the same
# lm-eval release, the same flags and the same tasks (code or not) as the artefacts.
REFERENCE_NAME = $(notdir $(patsubst %/,%,$(COMPRESS_FROM)))
COMPRESSED_ARTEFACTS = $(wildcard $(WORK)/compressed/*) $(wildcard $(WORK)/gguf/*.gguf)
eval-compressed: $(STAMP) $(STAMP_COMPRESS) ## Phase 2: eval suite on the reference, every compressed/ folder and gguf/ file [MODEL=dir] [ALLOW_CODE_EVAL=1] (always rebuilds)
	@[ -n "$(strip $(COMPRESSED_ARTEFACTS))" ] || { echo "error: nothing under $(WORK)/compressed/ or $(WORK)/gguf/; run make compress or make gguf first" >&2; exit 2; }
	$(call evaluate,$(PY_COMPRESS),$(COMPRESS_FROM),$(REFERENCE_NAME))
	for model in $(COMPRESSED_ARTEFACTS); do \
	    $(call evaluate,$(PY_COMPRESS),$$model,$$(basename $$model),$(WORK)/eval/$(REFERENCE_NAME)); \
	done

compress-report: $(STAMP_COMPRESS) ## Phase 2: size, bits/param, perplexity, recovery of every compressed/ folder and gguf/ file (+ plot) (always rebuilds)
	$(PY_COMPRESS) -m glue.compress.report --reference $(COMPRESS_FROM) --heldout $(DATA)/val.jsonl \
	    --eval-dir $(WORK)/eval --out $(WORK)/compress_report --overwrite $(COMPRESSED_ARTEFACTS)

#: GGUF_TYPES  gguf: llama.cpp quantization types
GGUF_TYPES ?= Q5_K_M,Q4_K_M
gguf: $(STAMP_COMPRESS) $(STAMP_GGUF) ## Phase 2: GGUF export + llama.cpp quantization, checked against transformers [MODEL=dir] [GGUF_TYPES=Q5_K_M,Q4_K_M]
	$(PY_COMPRESS) -m glue.compress.gguf --model $(COMPRESS_FROM) --types $(GGUF_TYPES) --converter $(LLAMA_CPP) \
	    --data $(DATA)/val.jsonl --out $(WORK)/gguf $(if $(filter 1,$(OVERWRITE)),--overwrite)

dequantize: $(STAMP_COMPRESS) ## 2E: dense copy of RECIPE's compressed model for the recovery fine-tune (always rebuilds)
	$(PY_COMPRESS) -m glue.compress.dequantize --model $(COMPRESSED) --out $(WORK)/2e_recovery_base --overwrite

train-2e: ## 2E: short recovery LoRA over the dequantized compressed model (after make dequantize)
	$(MAKE) train CONFIG=$(CONFIG_2E)

merge-2e: ## 2E: guarded merge of the recovery adapter (then compress it again: make compress MODEL=...)
	$(MAKE) merge CONFIG=$(CONFIG_2E)

package: $(STAMP_COMPRESS) ## zstd archive + SHA-256 + manifest of an artefact [ARTEFACT=dir, default: RECIPE's output] (always rebuilds)
	$(PY_COMPRESS) -m glue.compress.package pack $(or $(ARTEFACT),$(COMPRESSED)) --out $(WORK)/packages --overwrite

# ---- Phase 3: domain modifiers -------------------------------------------------------------
#: DOMAIN  modifier, modifier-data: a domain of templates/modifiers.yml, e.g. code
DOMAIN ?=
MODIFIER_CONFIG = $(CONFIGS)/3_modifier_$(DOMAIN).yml
# What `make modifiers` trains: the domains templates/modifiers.yml marks `mvp: true`.
MVP_DOMAINS = $(shell $(PY) -c 'from glue.core.modifiers import load_modifiers, mvp_domains; print(*mvp_domains(load_modifiers()))')
check_domain = [ -f $(MODIFIER_CONFIG) ] || { echo "error: DOMAIN='$(DOMAIN)' has no config $(MODIFIER_CONFIG): set DOMAIN \
	to one of $(patsubst $(CONFIGS)/3_modifier_%.yml,%,$(wildcard $(CONFIGS)/3_modifier_*.yml)) (templates/modifiers.yml), e.g. make $@ DOMAIN=code" >&2; exit 2; }

.PHONY: modifier-data modifier modifiers modifiers-report
modifier-data: $(STAMP) ## Phase 3: a modifier's data: the domain's curated rows + 1B/1C targeted examples for the base's failures [DOMAIN=code] [BUDGET_USD=n] [ALLOW_CODE_EVAL=1]
	@$(check_domain)
	$(CODE_ENV) $(QUIET) $(PY) -m glue.modifiers.data --profile $(PROFILE) --domain $(DOMAIN) \
	    $(if $(filter 1,$(OVERWRITE)),--overwrite) $(if $(BUDGET_USD),--budget-usd $(BUDGET_USD)) $(CODE_FLAG)

# Trained through `make train` like every stage, then the base's hash is recorded beside the
# adapter, so the loader can tell the base it was trained over from one rebuilt in place.
modifier: $(STAMP) ## Phase 3: train one domain modifier (a LoRA adapter over the merged 1C model, kept unmerged): make modifier DOMAIN=code (builds its data first if missing)
	@$(check_domain)
	$(QUIET) $(PY) -m glue.train.validate_config --hardware-only $(MODIFIER_CONFIG)
	[ -f $(WORK)/modifiers/$(DOMAIN)/data/train.jsonl ] && [ "$(OVERWRITE)" != 1 ] || $(MAKE) modifier-data
	$(MAKE) train CONFIG=$(MODIFIER_CONFIG)
	$(PY) -m glue.modifiers.hotswap record $(MODIFIER_CONFIG) $(if $(RUN),--run $(RUN))

modifiers: $(STAMP) ## Phase 3: train every modifier templates/modifiers.yml marks `mvp: true`, one after another
	for domain in $(MVP_DOMAINS); do $(MAKE) modifier DOMAIN=$$domain; done

modifiers-report: $(STAMP) ## Phase 3: every trained modifier on every domain vs the base: table, heatmap, adapter sizes [SUITE=file] [ALLOW_CODE_EVAL=1] (always rebuilds)
	$(CODE_ENV) $(QUIET) $(PY) -m glue.modifiers.report --profile $(PROFILE) --suite $(SUITE) \
	    --out $(WORK)/modifiers/report $(CODE_FLAG) --overwrite

# ---- Phase 3: modifiers in llama.cpp -----------------------------------------------------------
#: ADAPTERS  modifier-gguf: PEFT LoRA adapters as NAME=FOLDER (default: every trained modifier, work/<profile>/modifiers/<domain>/adapter)
ADAPTERS ?= $(foreach f,$(wildcard $(WORK)/modifiers/*/adapter/adapter_model.safetensors),$(notdir $(patsubst %/adapter/adapter_model.safetensors,%,$(f)))=$(dir $(f)))
.PHONY: modifier-gguf
modifier-gguf: $(STAMP_COMPRESS) $(STAMP_GGUF) ## Phase 3: modifiers to GGUF (llama.cpp's converter), hot-swapped on each make gguf file, checked against transformers+peft [ADAPTERS="name=dir ..."] [MODEL=dir] (always rebuilds)
	@[ -n "$(strip $(ADAPTERS))" ] || { echo "error: no trained modifier (no $(WORK)/modifiers/*/adapter/adapter_model.safetensors): run make modifiers first, or set ADAPTERS=\"name=<PEFT LoRA folder> ...\"" >&2; exit 2; }
	$(PY_COMPRESS) -m glue.modifiers.gguf_adapter $(ADAPTERS) --base-model $(COMPRESS_FROM) --gguf $(WORK)/gguf \
	    --converter $(LLAMA_CPP) --data $(DATA)/val.jsonl --out $(WORK)/modifiers/gguf --overwrite

# The demo's steps, in order, each run as `make <step> PROFILE=tiny`; each stage is rerun from scratch.
# It compresses with one recipe of each kind (GPTQ and AWQ 4-bit weights, 2:4 sparsity): the
# tests compress with every recipe, and the multiple-choice calibration runs there too.
DEMO_RECIPES := w4a16_gptq w4a16_awq sparse_2of4
DEMO_STEPS := "data OVERWRITE=1" "eval MODEL=$(TINY_BASE) NAME=base" "train-1a OVERWRITE=1" "merge-1a OVERWRITE=1" \
	"eval-1a BASELINE=work/tiny/eval/base" failures-1b distill-1c \
	"train-1c OVERWRITE=1" "merge-1c OVERWRITE=1" eval-1c "modifiers OVERWRITE=1" modifiers-report \
	$(foreach r,$(DEMO_RECIPES),"compress RECIPE=compression_recipes/$(r).yaml OVERWRITE=1") "gguf OVERWRITE=1" modifier-gguf \
	dequantize "train-2e OVERWRITE=1" "merge-2e OVERWRITE=1" calibrate \
	"eval-compressed SUITE=eval_configs/suites/tiny_2.yml" compress-report package

demo: ## the whole chain on the tiny profile, on CPU, offline, with each step's time; then checks each stage's figure moved the right way (tests/demo)
	$(MAKE) setup
	@times=""; for step in $(DEMO_STEPS); do \
	    start=$$(date +%s); $(MAKE) --no-print-directory PROFILE=tiny $$step; \
	    times="$$times$$(printf '  %5d s  make %s' $$(( $$(date +%s) - start )) "$$step")\n"; \
	done; printf "demo done; time per step (PROFILE=tiny):\n$$times"
	@echo "checking that every stage's figure moved the way it should (tests/demo):"
	$(PY) -m pytest tests/demo -q -p no:cacheprovider
	@echo "see work/tiny/eval/1a/summary.md, work/tiny/1b_clusters/report.md, work/tiny/eval/1c_vs_1a/compare.md,"
	@echo "work/tiny/compress_report/report.md and work/tiny/*/manifest.json"

# Both environments' tests; llm-compressor's tests run in its own environment.
# tests/demo checks what `make demo` wrote: the demo runs it, after its chain.
PYTEST_TRAIN = $(PY) -m pytest tests --ignore=tests/compress --ignore=tests/demo -q
PYTEST_COMPRESS = $(VENV_COMPRESS)/bin/python -m pytest tests/compress -q

test: setup ## run every test (offline, CPU): unit, model-tier and slow end-to-end ones
	$(PYTEST_TRAIN) --durations=15
	$(PYTEST_COMPRESS) --durations=10

test-fast: $(STAMP) $(STAMP_COMPRESS) ## unit tests only: no model built, no llama.cpp build (under 3 minutes on 2 cores)
	$(PYTEST_TRAIN) -m "not model and not slow"
	$(PYTEST_COMPRESS) -m "not model and not slow"

clean: ## delete work/ (everything runs produce); the venvs stay
	rm -rf work
