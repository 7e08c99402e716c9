#!/usr/bin/env bash
# Sets up a virtual environment (.venv, or $VENV) with torch and builds inception_fast in place.
# Idempotent: a second run reuses what is there. CUDA kernels are built when torch has CUDA and a
# toolkit is found (CUDA_HOME, default /usr/local/cuda); FORCE_CUDA=0 / 1 skips / insists on them.
# TORCH=2.11.0 (or 2.15.0) sets the venv up on another tested torch, with its torchvision
# (and, on 2.11, the numpy that triton 3.6's interpreter runs with). Above the torch this machine's pip
# configuration caps (2.14.1), run it with PIP_CONFIG_FILE=/dev/null.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
TORCH=${TORCH:-2.14.1}
case "$TORCH" in
  2.11.0) TORCH_PINS=(torch==2.11.0 torchvision==0.26.0 "numpy<2.3") ;;
  2.14.1) TORCH_PINS=(torch==2.14.1 torchvision==0.29.1) ;;
  2.15.0) TORCH_PINS=(torch==2.15.0 torchvision==0.29.2) ;;
  *) echo "scripts/setup.sh: TORCH=$TORCH is not one of the tested versions 2.11.0, 2.14.1, 2.15.0" >&2; exit 2 ;;
esac

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
# shellcheck disable=SC1091
. "$VENV/bin/activate"
python -m pip install -q --upgrade pip setuptools wheel
# torch and its torchvision first, as a pair; then the extension is built against that torch.
python -c "import torch, torchvision, sys; sys.exit(torch.__version__.split('+')[0] != '$TORCH')" 2>/dev/null \
  || python -m pip install -q "${TORCH_PINS[@]}"
python -m pip install -q numpy pybind11 ninja
# INSTALL_ONLY=1: torch and the build tools, nothing built (CI fetches a leg's torch while it builds another)
[ "${INSTALL_ONLY:-0}" = 1 ] && exit 0
# oneDNN (GNU OpenMP build, the runtime torch uses) and its headers, for inception_fast._onednn:
# optimize()'s CPU convolutions on primitives kept between calls. Without them the package builds
# and runs, and optimize() says it uses ATen's oneDNN convolution instead.
if [ "$(uname -m)" = x86_64 ]; then
  python -m pip install -q onednn-cpu-gomp==2023.2.0 onednn-devel-cpu-gomp==2023.2.0 \
    || echo "warning: oneDNN wheels not installed: optimize() will run its CPU convolutions through ATen"
fi
if [ -z "${CUDA_HOME:-}" ] && [ -x /usr/local/cuda/bin/nvcc ]; then export CUDA_HOME=/usr/local/cuda; fi
python -m pip install -q --no-build-isolation -e ".[test]"
# The peers of inception_resnet_v1 and bn_inception (test dependencies) pin ancient torch versions:
# installed without their dependencies, plus what they import. The tests skip them, saying so, when
# they cannot be installed (no network and no local copy).
python -m pip install -q requests six munch tqdm \
  && python -m pip install -q --no-deps facenet-pytorch pretrainedmodels \
  || echo "warning: facenet-pytorch / pretrainedmodels not installed: their peer checks will be skipped"
python - <<'PY'
import torch, inception_fast
from inception_fast import _ext, ops
print(f"inception_fast {inception_fast.__version__} on torch {torch.__version__}: "
      f"_C {'loaded' if _ext.loaded() else 'NOT loaded: ' + str(_ext.LOAD_ERROR)}, "
      f"CUDA kernels {'built' if _ext.has_kernel('bn_stats', 'CUDA') else 'not built'}, "
      f"_onednn {'loaded' if _ext.onednn_loaded() else 'NOT loaded: ' + str(_ext.ONEDNN_ERROR)}, "
      f"backends for CPU tensors: {ops.available_backends('cpu')}")
PY
