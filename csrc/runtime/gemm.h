// The GEMM under conv1x1 on the CPU: oneDNN's matmul for float32 where it is there, ATen's mm
// (MKL) otherwise.
#pragma once

#include <ATen/ATen.h>

#include <optional>

namespace inception_fast {
namespace cpu {

// a @ b (+ bias, a row vector added to every row), for 2-D a [M, K] and b [K, N] of one dtype and
// device. Float32 CPU products go to oneDNN's matmul (an operand that is neither row-major nor
// transposed is copied first); other dtypes and devices, or oneDNN turned off
// (torch.backends.mkldnn, INCEPTION_FAST_ONEDNN_MATMUL=0) or not usable on this CPU or torch build,
// to at::mm / at::addmm.
at::Tensor mm(const at::Tensor& a, const at::Tensor& b, const std::optional<at::Tensor>& bias = std::nullopt);

// Whether mm sends a float32 [M, K] x [K, N] product of compact operands to oneDNN here (for tests
// and the benchmarks' report).
bool onednn_matmul_available();

}  // namespace cpu
}  // namespace inception_fast
