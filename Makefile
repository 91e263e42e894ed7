# deepclust developer commands. `make demo` and `make test` set up .venv themselves.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.deepclust-installed
PYTEST_ARGS ?=
# GPU machine: its provisioned python3 already has torch, triton, PyG and pytest.
GPU_PYTHON ?= python3

.PHONY: venv demo test test-gpu bench bench-gpu ctest gpu-compile clean results results-run

$(STAMP): pyproject.toml setup.py requirements-dev.txt $(wildcard csrc/*) $(wildcard kernels/*)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q -r requirements-dev.txt
	$(PY) -m pip install -q --no-build-isolation -e '.[test]'
	$(PY) -c "import torch; assert torch.__version__.startswith('2.13.0'), torch.__version__"
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/deepclust demo

test: $(STAMP)
	$(PY) -m pytest -n 2 --dist loadgroup $(PYTEST_ARGS)

# The README's results table. `results-run` runs every recipe of bench/models.py (two at a time,
# one thread each; about 1.5 hours on 2 CPU cores) into bench/results/models and regenerates the
# table; `results` re-runs every recorded result and holds it to its file (tests/results, marked
# slow/data/results, deselected in `make test`). Narrow either with ONLY=, e.g. ONLY=usps.
results: $(STAMP)
	$(PY) -m pytest -n 2 --dist loadgroup --results tests/results $(if $(ONLY),-k "$(ONLY)") $(PYTEST_ARGS)

results-run: $(STAMP)
	$(PY) -m bench.models --jobs 2 $(if $(ONLY),--only $(ONLY))
	$(VENV)/bin/deepclust report

# On a GPU machine: install nothing but the project, run the suite compiled on CUDA.
test-gpu:
	$(GPU_PYTHON) -m pip install -q -e . --no-deps --no-build-isolation
	env -u TRITON_INTERPRET $(GPU_PYTHON) -m pytest -p no:cacheprovider $(PYTEST_ARGS)

# Peers for the benchmarks. pyagc's own requirements (ogb, pytorch-frame) are taken without
# theirs so that pip cannot swap the CPU torch for a CUDA build; lightly needs torchvision,
# which does not import beside the CPU torch, so its rows run only where torchvision exists.
BENCH_STAMP := $(VENV)/.deepclust-bench
$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install -q matplotlib pyyaml pandas six outdated pot
	$(PY) -m pip install -q --no-deps pyagc ogb pytorch-frame
	$(PY) -c "import torch; assert torch.__version__.startswith('2.13.0'), torch.__version__"
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(PY) -m bench.run_all
	$(PY) -m bench.plot

bench-gpu:
	$(GPU_PYTHON) -m bench.run_all

# The one command to run first on a new GPU machine (install, tests compiled on CUDA, headline
# benchmarks fp32/bf16; under 6 minutes): log.txt, summary.md, summary.json, junit.xml and
# bench.csv in OUT. `gpu-check-dry` runs the same script's plumbing on the CPU (interpreter).
.PHONY: gpu-check gpu-check-dry
gpu-check:
	$(GPU_PYTHON) -m bench.gpu_check --out $(or $(OUT),build/gpu-check)

gpu-check-dry: $(STAMP)
	$(PY) -m bench.gpu_check --dry --out $(or $(OUT),build/gpu-check-dry)

# The GPU compile gate (no GPU needed): every Triton kernel at every configuration its launcher
# picks for the tests' and benchmarks' sizes, compiled for sm_80 and sm_90 with the pinned Triton
# and with Triton 3.6.0 (the GPU machine's, installed apart), plus the CUDA extension with nvcc.
# Fails on a compile error, shared memory over the limit, or a spill in a benchmark
# configuration; writes bench/results/compile.csv. Triton's cache makes a second run quick.
TRITON_ALT ?= 3.6.0
TRITON_ALT_DIR := build/triton-$(TRITON_ALT)
$(TRITON_ALT_DIR)/.installed: $(STAMP)
	$(PY) -m pip install -q --no-deps --target $(TRITON_ALT_DIR) triton==$(TRITON_ALT)
	touch $@

gpu-compile: $(STAMP) $(TRITON_ALT_DIR)/.installed
	$(PY) -m bench.gpu_compile --triton-path $(TRITON_ALT_DIR) $(GPU_COMPILE_ARGS)

# C++ unit tests of the extension's CPU kernels, built with CMake against the venv's libtorch.
ctest: $(STAMP)
	cmake -S . -B build/cmake -DCMAKE_PREFIX_PATH=$$($(PY) -c 'import torch;print(torch.utils.cmake_prefix_path)')
	cmake --build build/cmake -j2
	ctest --test-dir build/cmake --output-on-failure

clean:
	rm -rf $(VENV) build *.egg-info
