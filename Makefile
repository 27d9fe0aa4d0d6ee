# Two commands: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# torch first and pinned: the CPU build of 2.13.0 is on these machines' disk; an unpinned torch
# (or torchvision resolved alone) pulls several GB of CUDA packages.
TORCH  ?= torch==2.13.0

.PHONY: install bytecode lint test test-matrix demo bench gpu-wheels gpu-check gpu-standin clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)" -e ".[dev,hf,track]"
	# mup declares torchvision, and PyPI's build cannot load beside the CPU torch; nothing we use
	# imports it, but transformers does whenever it is installed. Remove it.
	$(BIN)/python -m pip uninstall -y -q torchvision
	touch $@

# Some machines (these among them) set PYTHONDONTWRITEBYTECODE=1: no process then caches the project's
# bytecode, and each of the ~150 processes of `make test` (a dozen per demo grid) compiles the sources it
# imports again, ~0.45 s each. Written here instead (compileall skips files that are up to date).
bytecode: install
	$(BIN)/python -m compileall -q -x '/\.|/runs/' .

# Static checks first (seconds): formatting, lint, and the one-way layers of DESIGN.md.
lint: install
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/lint-imports

# One pytest-xdist worker per core, at most 4 (each holds torch and the tiny models). Whole modules go
# to the workers (loadscope: a module's fixtures, e.g. the real Slurm cluster, are built once), the
# longest first (their `duration` marks; tests/conftest.py), so the workers end together.
WORKERS ?= $(shell n=$$(nproc); [ $$n -gt 4 ] && n=4; echo $$n)

test: lint bytecode
	$(BIN)/python -m pytest -q -rs -n $(WORKERS) --dist loadscope --no-loadscope-reorder tests  # -rs: each skipped test and why (e.g. no Slurm here, how to get it)

# The suite under every thread count and CPU kernel family: torch's own kernels (ATEN_CPU_CAPABILITY),
# MKL's GEMMs (MKL_ENABLE_INSTRUCTIONS) and numpy's OpenBLAS (OPENBLAS_CORETYPE) at AVX-512, AVX2
# (as on older AMD EPYC) and the portable baseline, so no test depends on summation order.
KERNELS := avx512,AVX512,SkylakeX avx2,AVX2,Haswell default,SSE4_2,Prescott
test-matrix: install
	for k in $(KERNELS); do for threads in 1 2; do \
	  set -- $$(echo $$k | tr , ' '); \
	  echo "== ATEN_CPU_CAPABILITY=$$1 MKL_ENABLE_INSTRUCTIONS=$$2 OPENBLAS_CORETYPE=$$3 threads=$$threads"; \
	  ATEN_CPU_CAPABILITY=$$1 MKL_ENABLE_INSTRUCTIONS=$$2 OPENBLAS_CORETYPE=$$3 OVERTRAIN_TEST_THREADS=$$threads \
	    $(BIN)/python -m pytest -q -p no:cacheprovider tests || exit 1; \
	done; done

# The tiny-LM study (honestly "cannot tell" at this scale), then the paper's section-4 mechanism on a
# linear network (seconds: docs/theory.md), whose verdict shows catastrophic overtraining happen.
demo: bytecode
	$(BIN)/python -m overtrain grid run configs/grids/demo.yaml print_report=true
	$(BIN)/python -m overtrain theory configs/theory/demo.yaml
	$(BIN)/python -m overtrain report runs/theory-demo out=runs/theory-demo/report

bench: install
	$(BIN)/python benchmarks/run_all.py

# Here, before any device time (benchmarks/README.md, "GPU check"): the wheels the GPU machine lacks,
# into .whl/, then checked as a set (exit 1 with what is wrong: the device call would fail).
gpu-wheels: install
	$(BIN)/python benchmarks/gpu_wheels.py download

# On a GPU machine (benchmarks/README.md, "GPU check"): CUDA tests, throughput against the targets, one
# results file in benchmarks/results/; no venv: the machine's python3 and torch, the wheels carried
# in .whl/. `benchmarks/gpu_check.py --dry-run` (in `make test`) checks the same steps on CPU.
gpu-check:
	bash benchmarks/gpu_run.sh $(GPU_CHECK_ARGS)

# Here, minutes: the GPU image stood in for (Python 3.12, torch 2.11's CUDA build without a GPU,
# numpy 2, an older protobuf), the carried wheels installed as on the GPU machine, the dry run.
gpu-standin: gpu-wheels
	bash benchmarks/gpu_standin.sh

clean:
	rm -rf runs out .pytest_cache
