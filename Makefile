# carseg: `make demo` runs the main job end to end; `make test` runs every test.
# Both set everything up on a fresh machine (venv, pinned packages, Debian packages when
# root, the C++ build) and are quick the second time.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
BUILD := build/py
DEBS := libstb-dev libturbojpeg0-dev zlib1g-dev libgtest-dev nlohmann-json3-dev curl \
  chromium chromium-driver
CPP_SOURCES := $(shell find cpp cmake -type f -not -name "*.pyc" 2>/dev/null) CMakeLists.txt pyproject.toml
DATA ?=
export OMP_NUM_THREADS ?= 2

.PHONY: setup test test-py test-cpp demo clean help gpu-check gpu-rehearsal torch211
help:
	@echo "make demo   synthetic data -> train -> export -> C++ inference -> benchmark"
	@echo "make test   every test (pytest + ctest)"
	@echo "make setup  only the set-up (venv, packages, build)"
	@echo "make gpu-check      on a GPU machine: build, train, export, test and time on CUDA"
	@echo "make gpu-rehearsal  the same check on this CPU, through every step a CPU can take"
	@echo "make torch211       build and test against the GPU image's Python 3.12 + torch 2.11"

setup: $(VENV)/.installed

$(VENV)/.debs:
	@missing=""; for p in $(DEBS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then echo "== apt-get install$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else echo "missing Debian packages:$$missing (run as root, or: sudo apt-get install$$missing)"; exit 1; fi; \
	fi
	@mkdir -p $(VENV) && touch $@

$(VENV)/.deps: requirements/base.txt requirements/build.txt requirements/test.txt requirements/scale.txt | $(VENV)/.debs
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "== pip install (pinned)"
	@$(PIP) install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location"; test $${PIPESTATUS[0]} -eq 0
	@$(PIP) install -q -r requirements/base.txt -r requirements/build.txt -r requirements/test.txt \
	  -r requirements/scale.txt 2>&1 | grep -v "^WARNING: Location"; test $${PIPESTATUS[0]} -eq 0
	@$(PY) -c "import torch, torchvision, catalyst, segmentation_models_pytorch, albumentations, \
	  onnx, onnxruntime, onnxscript, pybind11, pytest, ray.serve, ray.data, tritonclient.grpc" \
	  || { echo "package install failed: an import above did not work"; exit 1; }
	@touch $@

$(VENV)/.installed: $(VENV)/.deps $(CPP_SOURCES)
	@bash cmake/fetch-onnxruntime-headers.sh build/ort/include
	@echo "== pip install --no-build-isolation -e . (builds the C++ core when present)"
	@$(PIP) install -q --no-build-isolation -e . \
	  --config-settings=cmake.define.CARSEG_BUILD_TESTS=ON 2>&1 | grep -v "^WARNING: Location" ; \
	  test $${PIPESTATUS[0]} -eq 0
	@touch $@

TOOLS_HINT := @echo "== the tools are in .venv: run 'source .venv/bin/activate' in each new shell (carseg, carseg_infer, catalyst-run, python -m export)"

test: setup test-py test-cpp
	$(TOOLS_HINT)

test-py: setup
	$(PY) -m pytest -q

test-cpp: setup
	@test -f $(BUILD)/CTestTestfile.cmake || { echo "no C++ tests in $(BUILD): the build did not \
	  configure them (rm $(VENV)/.installed and run make test again)"; exit 1; }
	$(VENV)/bin/ctest --test-dir $(BUILD) --output-on-failure -j2

demo: setup
	@$(PY) python/demo.py $(if $(DATA),--data $(DATA),)
	$(TOOLS_HINT)

# The GPU check (benchmarks/gpu/check.sh): on the GPU image it installs what it needs from
# .whl/ and .debs/ (../shared/device/fetch-wheels.sh); results in out/gpu-check/.
gpu-check:
	bash benchmarks/gpu/check.sh

gpu-rehearsal: setup
	DEVICE=cpu PY=$(PY) SKIP_BUILD=1 BUILD=$(BUILD) QUICK=1 bash benchmarks/gpu/check.sh

torch211:
	bash benchmarks/gpu/torch211.sh

clean:
	rm -rf build demo
