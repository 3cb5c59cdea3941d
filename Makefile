# Two commands on a fresh machine: `make demo` (offline sandbox end to end) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch is pinned first: an unpinned install would pull the CUDA build and gigabytes of packages.
TORCH ?= torch==2.13.0

.PHONY: install demo test bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[dev]"
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
