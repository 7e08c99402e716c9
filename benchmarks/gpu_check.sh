#!/usr/bin/env bash
# The GPU check in one command (see tools/gpucheck.py): build in place for this GPU, a smoke pass over
# every GPU kernel and model, the tests that touch the GPU, a short training run and the benchmarks,
# within a time budget counted from this script's start; at most 8 files (summary.md first) in OUT.
#
#   bash benchmarks/gpu_check.sh OUT [--budget SECONDS] [--skip STEPS] [--models M1,M2,...]
#                                    [--compile MODELS] [--scratch DIR] [--dry-run]
#                                    (PYTHON=... picks the interpreter)
set -euo pipefail
cd "$(dirname "$0")/.."
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
# exec: the check then runs as this process, whose start its budget counts from
exec "${PYTHON:-python3}" tools/gpucheck.py "$@"
