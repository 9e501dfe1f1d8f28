#!/usr/bin/env bash
# carseg against the GPU image's software, on this CPU machine: Python 3.12 and torch 2.11
# (the image's), with the training packages at the versions ../shared/device/fetch-wheels.sh
# stages for it. Builds the C++ core, carseg_infer and the bindings against torch 2.11 (build
# folder build/torch211) and runs the C++ tests and the Python tests of the runtime, the
# bindings, carseg_infer and the exporter there, so that no GPU minute goes to an API
# difference between torch 2.14 (this project's pin) and 2.11.
#
#     make torch211   (about 3 GB of wheels the first time; later runs reuse .venv-torch211)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
VENV=${VENV:-.venv-torch211}
PY312=${PY312:-$(command -v python3.12 || echo /root/.pyenv/versions/3.12.1/bin/python3.12)}
BUILD=build/torch211
if [ ! -x "$VENV/bin/python" ]; then
  "$PY312" -m venv "$VENV"
fi
PY=$VENV/bin/python
if [ ! -f "$VENV/.installed" ]; then
  "$PY" -m pip install -q --upgrade pip
  # The GPU image's torch and torchvision; the rest as fetch-wheels.sh stages it (or, where it
  # stages none, as the image or this project has it).
  "$PY" -m pip install -q torch==2.11.0 torchvision==0.26.0 \
    catalyst-pdm==22.4.1 accelerate==0.27.2 hydra-slayer==0.5.0 tensorboardX==2.6.5 \
    segmentation-models-pytorch==0.6.0 albumentations==2.0.8 scikit-build-core==1.1.2 \
    pybind11 cmake ninja onnx==1.23.1 onnxruntime==1.30.0 onnxscript==0.7.2 \
    opencv-python-headless pillow pandas pyyaml tensorboard tqdm timm pytest
  touch "$VENV/.installed"
fi
"$PY" -c "import sys, torch; print(sys.version.split()[0], 'torch', torch.__version__)"
"$PY" -m pip install -q --no-build-isolation --no-deps -e . \
  --config-settings=build-dir=$BUILD --config-settings=cmake.define.CARSEG_BUILD_TESTS=ON
"$VENV/bin/ctest" --test-dir "$BUILD" --output-on-failure -j2
OMP_NUM_THREADS=2 "$PY" -m pytest -q -p no:cacheprovider tests/cpp tests/runtime tests/export \
  tests/io tests/test_architecture.py -k "not triton"
