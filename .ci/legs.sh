#!/usr/bin/env bash
# The torch 2.11 and 2.15 legs' set-up, run by .ci/run in the background: each leg's torch is
# installed at once (downloads, while the main leg compiles), then, once the main leg's build is done
# (the file $LEGS/main-built), the extension is built in each leg's copy of the tree with one
# compiler job (the main leg's tests leave most of a core idle): torch 2.11 with the CUDA kernels for
# sm_90 (compiled and linked: a typo in csrc/cuda fails CI, not a user's GPU box), torch 2.15 with
# the CPU kernels.
set -euo pipefail
LEGS=$1
(cd "$LEGS/torch-2.11" && TORCH=2.11.0 INSTALL_ONLY=1 bash scripts/setup.sh) > "$LEGS/torch-2.11.log" 2>&1 &
fetch_211=$!
(cd "$LEGS/torch-2.15" && PIP_CONFIG_FILE=/dev/null TORCH=2.15.0 INSTALL_ONLY=1 bash scripts/setup.sh) \
  > "$LEGS/torch-2.15.log" 2>&1 &
fetch_215=$!
wait "$fetch_211" || { echo "installing torch 2.11 failed:"; tail -30 "$LEGS/torch-2.11.log"; exit 1; }
wait "$fetch_215" || { echo "installing torch 2.15 failed:"; tail -30 "$LEGS/torch-2.15.log"; exit 1; }
echo "[legs] torch installed in both legs"
until [ -e "$LEGS/main-built" ]; do sleep 5; done
echo "[legs] building the torch 2.11 leg (CUDA sm_90)"
(cd "$LEGS/torch-2.11" && MAX_JOBS=1 TORCH=2.11.0 FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST="9.0" bash scripts/setup.sh)
echo "[legs] building the torch 2.15 leg"
(cd "$LEGS/torch-2.15" && MAX_JOBS=1 PIP_CONFIG_FILE=/dev/null TORCH=2.15.0 FORCE_CUDA=0 bash scripts/setup.sh)
echo "[legs] built"
