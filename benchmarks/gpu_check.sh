#!/usr/bin/env bash
# The GPU check in one command (see inception_fast/gpucheck.py): build in place for this GPU, run
# every test that touches the GPU, time the GPU benchmarks, write logs, JUnit XML, benchmark JSON and
# summary.md to OUTDIR. Non-zero exit, with the failing step and tests named, when anything fails.
#
#   bash benchmarks/gpu_check.sh OUTDIR [--budget SECONDS] [--skip-build] [--no-bench] [--compile MODELS]
#                                       [--models M1,M2,...]   (PYTHON=... picks the interpreter)
set -euo pipefail
cd "$(dirname "$0")/.."
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
exec "${PYTHON:-python3}" -m inception_fast.gpucheck "$@"
