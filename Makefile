# Two commands: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# torch first and pinned: the CPU build of 2.13.0 is on these machines' disk; an unpinned torch
# (or torchvision resolved alone) pulls several GB of CUDA packages.
TORCH  ?= torch==2.13.0

.PHONY: install test demo bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)" -e ".[dev,hf]"
	# mup declares torchvision, and PyPI's build cannot load beside the CPU torch; nothing we use
	# imports it, but transformers does whenever it is installed. Remove it.
	$(BIN)/python -m pip uninstall -y -q torchvision
	touch $@

test: install
	$(BIN)/python -m pytest -q tests

demo: install
	$(BIN)/python -m overtrain grid run configs/grids/demo.yaml --report

bench: install
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf runs out .pytest_cache
