#!/usr/bin/env bash
# The GPU check, in one command, on a fresh CUDA machine that has torch, triton and nvcc (no
# internet needed): build the extension in place, run every test that touches the GPU (CUDA and
# Triton kernels against the float64 references, opcheck, compile), time the ops on the GPU, and
# leave logs, JUnit XML and benchmark JSON in OUTDIR. Exit status: non-zero if the build or any
# test failed (the failing tests are listed at the end).
#
#   bash benchmarks/gpu_check.sh OUTDIR
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: bash benchmarks/gpu_check.sh OUTDIR}
mkdir -p "$out"
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-$(python3 -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())")}
export PYTHONUNBUFFERED=1
status=0

python3 - <<'PY' | tee "$out/env.txt"
import platform, torch
try:
    import triton; tv = triton.__version__
except Exception as e:
    tv = f"unavailable ({e})"
print(f"gpu: {torch.cuda.get_device_name()}  capability {torch.cuda.get_device_capability()}")
print(f"torch {torch.__version__}  cuda {torch.version.cuda}  triton {tv}  python {platform.python_version()}")
PY

echo "=== build (TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST)"
if ! python3 setup.py build_ext --inplace >"$out/build.log" 2>&1; then
  tail -n 60 "$out/build.log"; echo "GPU CHECK FAILED: build"; exit 1
fi
python3 -c "from inception_fast import _ext; assert _ext.has_kernel('bn_stats', 'CUDA'), _ext.LOAD_ERROR or 'no CUDA kernels'" || exit 1

echo "=== tests on the GPU"
python3 -m pytest tests/ -q -p no:cacheprovider -k "cuda" -rf --junitxml="$out/tests.xml" 2>&1 | tee "$out/tests.log" | tail -n 40
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

echo "=== op benchmarks on the GPU"
INCEPTION_FAST_BENCH_DEVICE=cuda python3 -m pytest benchmarks/ --benchmark-only -q -p no:cacheprovider \
  --benchmark-json="$out/bench_ops.json" --benchmark-columns=median >"$out/bench.log" 2>&1 || status=1
sed -n '/speed-up over eager/,/GB\/s counts/p' "$out/bench.log" | tee "$out/table.txt"

if [ $status -ne 0 ]; then
  echo "GPU CHECK FAILED:"; grep -E "^(FAILED|ERROR)" "$out/tests.log" || tail -n 30 "$out/bench.log"
fi
exit $status
