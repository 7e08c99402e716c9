// Test support, not a kernel: compiled into inception_fast._C so that the Python tests
// (tests/test_branch_conv.py) can check branch_conv's CUDA kernels on a machine without a GPU.
//
// _branch_conv_emulated: branch_conv's CUDA backend run on the CPU, for tests. The plan is the
// CUDA backend's (csrc/cuda/branch_conv_plan.h) and the kernels are its very bodies
// (csrc/cuda/branch_conv_kernels.h); only the executor differs: a grid-stride kernel becomes a loop
// over its elements, and the fused tile kernel runs each block with its own shared-memory buffer,
// every thread through phase 1, then every thread through phase 2 -- what __syncthreads()
// guarantees between them. `smem_bytes` plays the device's shared memory per block, so tests can
// make the plan pick small tiles, or no tile.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <vector>

#include "cuda/branch_conv_plan.h"

namespace inception_fast {
namespace testing {
namespace {

namespace bk = inception_fast::branch_conv_kernels;

constexpr int kThreads = 256;  // the CUDA launch's block size

struct EmulatedExec {
  int64_t smem_bytes;

  int64_t smem_limit() const { return smem_bytes; }
  at::Tensor fresh(at::Tensor t) const { return t.fill_(std::numeric_limits<float>::quiet_NaN()); }

  template <typename T>
  void conv(const bk::ConvArgs<T>& a, int64_t total) {
    at::parallel_for(0, total, 2048, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) bk::conv_point(a, i);
    });
  }

  template <typename T>
  void pool(const bk::PoolArgs<T>& a, int64_t total) {
    at::parallel_for(0, total, 2048, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) bk::pool_point(a, i);
    });
  }

  template <typename T>
  void tile(const bk::TileArgs<T>& a, int64_t blocks) {
    at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
      std::vector<T> smem(static_cast<size_t>(a.smem_elems()));
      for (int64_t b = begin; b < end; ++b) {
        // shared memory as the device leaves it: garbage, here NaN, so a read of an element phase
        // 1 did not write shows
        std::fill(smem.begin(), smem.end(), static_cast<T>(std::numeric_limits<float>::quiet_NaN()));
        for (int t = 0; t < kThreads; ++t) bk::tile_reduce(a, static_cast<int>(b), t, kThreads, smem.data());
        for (int t = 0; t < kThreads; ++t) bk::tile_conv(a, static_cast<int>(b), t, kThreads, smem.data());
      }
    });
  }
};

at::Tensor branch_conv_emulated(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                                at::IntArrayRef split, at::IntArrayRef pool, at::IntArrayRef depth,
                                at::TensorList conv_weight, const c10::List<std::optional<at::Tensor>>& conv_bias,
                                at::IntArrayRef conv_stride, at::IntArrayRef conv_padding, int64_t smem_bytes) {
  constexpr const char* op = "inception_fast::_branch_conv_emulated";
  TORCH_CHECK(x.device().is_cpu(), op, ": x must be a CPU tensor (this is the CUDA kernels' emulation), got ",
              x.device());
  TORCH_CHECK(smem_bytes >= 0, op, ": smem_bytes must be >= 0, got ", smem_bytes);
  EmulatedExec ex{smem_bytes};
  return bk::branch_conv_dispatch(ex, op, x, weight, bias, split, pool, depth, conv_weight, conv_bias, conv_stride,
                                  conv_padding);
}

}  // namespace

TORCH_LIBRARY_IMPL(inception_fast, CPU, m) { m.impl("_branch_conv_emulated", &branch_conv_emulated); }

}  // namespace testing
}  // namespace inception_fast
