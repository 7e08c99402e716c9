// CPU kernels of scaled_residual_add and its backward: one flat pass over tensors that share
// their strides (any memory format), act(x + scale * r) computed in float32.
#include "common.h"

#include <torch/library.h>

#include <tuple>

namespace inception_fast {
namespace cpu {
namespace {

constexpr int64_t kGrain = 32768;

template <typename T, typename A = acc_t<T>>
IF_CPU_CLONES void residual_forward(const T* __restrict__ x, const T* __restrict__ r, T* __restrict__ y,
                                    int64_t n, A scale, bool apply_relu) {
  if (apply_relu) {
    for (int64_t i = 0; i < n; ++i) y[i] = from_acc<T>(relu(to_acc(x[i]) + scale * to_acc(r[i])));
  } else {
    for (int64_t i = 0; i < n; ++i) y[i] = from_acc<T>(to_acc(x[i]) + scale * to_acc(r[i]));
  }
}

template <typename T, typename A = acc_t<T>>
IF_CPU_CLONES void residual_backward(const T* __restrict__ g, const T* __restrict__ out, T* __restrict__ gx,
                                     T* __restrict__ gr, int64_t n, A scale, bool apply_relu) {
  if (apply_relu) {
    for (int64_t i = 0; i < n; ++i) {
      const A go = to_acc(g[i]);
      const A gv = to_acc(out[i]) > A(0) ? go : A(0);
      gx[i] = from_acc<T>(gv);
      gr[i] = from_acc<T>(scale * gv);
    }
  } else {
    for (int64_t i = 0; i < n; ++i) {
      const A gv = to_acc(g[i]);
      gx[i] = from_acc<T>(gv);
      gr[i] = from_acc<T>(scale * gv);
    }
  }
}

void check_flat(const at::Tensor& x, const char* op, const char* name) {
  TORCH_CHECK(x.device().is_cpu(), op, ": ", name, " must be a CPU tensor for this kernel, got ", x.device());
  check_float_dtype(x, op, name);
  TORCH_CHECK(x.is_non_overlapping_and_dense(), op, ": ", name,
              " must be dense and non-overlapping (contiguous in some memory format), got strides ",
              x.strides());
}

at::Tensor scaled_residual_add(const at::Tensor& x, const at::Tensor& residual, double scale, bool relu) {
  const char* op = "inception_fast::scaled_residual_add";
  check_flat(x, op, "x");
  check_same(residual, x, op, "residual");
  at::Tensor y = at::empty_like(x);  // keeps x's strides
  const int64_t n = x.numel();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "scaled_residual_add", [&] {
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* rp = residual.data_ptr<scalar_t>();
    scalar_t* yp = y.data_ptr<scalar_t>();
    at::parallel_for(0, n, kGrain, [&](int64_t i0, int64_t i1) {
      residual_forward(xp + i0, rp + i0, yp + i0, i1 - i0, static_cast<acc_t<scalar_t>>(scale), relu);
    });
  });
  return y;
}

std::tuple<at::Tensor, at::Tensor> scaled_residual_add_backward(const at::Tensor& grad_out, const at::Tensor& out,
                                                                double scale, bool relu) {
  const char* op = "inception_fast::scaled_residual_add_backward";
  check_flat(out, op, "out");
  check_same(grad_out, out, op, "grad_out");
  at::Tensor gx = at::empty_like(out), gr = at::empty_like(out);
  const int64_t n = out.numel();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "scaled_residual_add_backward", [&] {
    const scalar_t* gp = grad_out.data_ptr<scalar_t>();
    const scalar_t* op_ = out.data_ptr<scalar_t>();
    scalar_t* gxp = gx.data_ptr<scalar_t>();
    scalar_t* grp = gr.data_ptr<scalar_t>();
    at::parallel_for(0, n, kGrain, [&](int64_t i0, int64_t i1) {
      residual_backward(gp + i0, op_ + i0, gxp + i0, grp + i0, i1 - i0, static_cast<acc_t<scalar_t>>(scale), relu);
    });
  });
  return {gx, gr};
}

}  // namespace

TORCH_LIBRARY_IMPL(inception_fast, CPU, m) {
  m.impl("scaled_residual_add", &scaled_residual_add);
  m.impl("scaled_residual_add_backward", &scaled_residual_add_backward);
}

}  // namespace cpu
}  // namespace inception_fast
