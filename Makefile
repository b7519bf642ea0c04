# Two commands for a newcomer: `make demo` and `make test`. Both create/reuse .venv.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.mlpdeploy-installed
EXTRAS := dev,hf,triton,rtx
DEMO_DIR := out/demo
PYTEST_WORKERS ?= 2

.PHONY: setup demo test test-slow bench models ort-kernels clean

setup: $(STAMP)

# torch is pinned through constraints.txt to the exact CPU wheel the project is tested with.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[$(EXTRAS)]"
	touch $(STAMP)

demo: setup
	$(VENV)/bin/mlpdeploy compile llama-small --pass fuse-gated-mlp -o $(DEMO_DIR)

test: setup
	$(PY) -m pytest -q -n $(PYTEST_WORKERS) --durations=15

test-slow: setup
	$(PY) -m pytest -q -n $(PYTEST_WORKERS) -m slow --durations=15

BENCH_STAMP := $(VENV)/.mlpdeploy-bench-installed

$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[$(EXTRAS),bench]"
	touch $(BENCH_STAMP)

bench: setup $(BENCH_STAMP)
	$(PY) bench/run_all.py

models: setup
	$(PY) -m mlpdeploy.zoo.train all

# Opt-in: mlpdeploy's compiled ONNX Runtime CPU kernels (needs a C compiler); `build --ort-kernels` builds them too.
ort-kernels: setup
	$(PY) -m mlpdeploy.plugins.ort.library --output build/ort-kernels

clean:
	rm -rf out build dist *.egg-info .pytest_cache
