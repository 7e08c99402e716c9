// CUDA kernels of the scaled residual add ops (schemas in csrc/ops.cpp):
// scaled_residual_add (y = act(x + scale * residual), Inception-ResNet's residual connection)
// and scaled_residual_add_backward.
//
// Any shape: the tensors are read as flat arrays, which is valid when they are dense (no gaps,
// no overlap) and map every index to the same memory offset; the outputs are allocated with
// the strides of an input, so they share that mapping. 16-byte vectors when every data pointer
// is aligned to 16 bytes, one element per access otherwise. Arithmetic is float32; ReLU keeps
// NaN.
#include <torch/library.h>

#include "common.cuh"

namespace inception_fast {
namespace cuda {
namespace {

// Grid-stride kernels: one full wave of resident blocks, kUnroll vectors in flight per thread.
constexpr int kThreads = 256;
constexpr int kUnroll = 2;

template <typename T, int VEC, bool kRelu>
__global__ void __launch_bounds__(kThreads)
    scaled_residual_add_kernel(const T* __restrict__ x, const T* __restrict__ residual,
                               T* __restrict__ y, int64_t numel, float scale) {
  const int64_t nvec = numel / VEC;
  const int64_t nthreads = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  for (int64_t v0 = tid; v0 < nvec; v0 += kUnroll * nthreads) {
    Pack<T, VEC> xs[kUnroll];
    Pack<T, VEC> rs[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t v = v0 + u * nthreads;
      if (v < nvec) {
        xs[u] = load_pack<T, VEC>(x + v * VEC);
        rs[u] = load_pack<T, VEC>(residual + v * VEC);
      }
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t v = v0 + u * nthreads;
      if (v < nvec) {
        float out[VEC];
#pragma unroll
        for (int e = 0; e < VEC; ++e) {
          const float s =
              fmaf(scale, static_cast<float>(rs[u].v[e]), static_cast<float>(xs[u].v[e]));
          out[e] = kRelu ? relu_keep_nan(s) : s;
        }
        store_floats<T, VEC>(y + v * VEC, out);
      }
    }
  }
  // The numel % VEC elements after the last whole vector.
  const int64_t tail = numel - nvec * VEC;
  if (tid < tail) {
    const int64_t e = nvec * VEC + tid;
    const float s = fmaf(scale, static_cast<float>(residual[e]), static_cast<float>(x[e]));
    y[e] = static_cast<T>(kRelu ? relu_keep_nan(s) : s);
  }
}

// Without ReLU the mask is all ones and `out` is not read at all.
template <typename T, int VEC, bool kRelu>
__global__ void __launch_bounds__(kThreads)
    scaled_residual_add_backward_kernel(const T* __restrict__ grad_out, const T* __restrict__ out,
                                        T* __restrict__ grad_x, T* __restrict__ grad_residual,
                                        int64_t numel, float scale) {
  const int64_t nvec = numel / VEC;
  const int64_t nthreads = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  for (int64_t v0 = tid; v0 < nvec; v0 += kUnroll * nthreads) {
    Pack<T, VEC> gs[kUnroll];
    Pack<T, VEC> os[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t v = v0 + u * nthreads;
      if (v < nvec) {
        gs[u] = load_pack<T, VEC>(grad_out + v * VEC);
        if constexpr (kRelu) {
          os[u] = load_pack<T, VEC>(out + v * VEC);
        }
      }
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t v = v0 + u * nthreads;
      if (v < nvec) {
        float gx[VEC], gr[VEC];
#pragma unroll
        for (int e = 0; e < VEC; ++e) {
          // A select, not grad * mask: a masked-out gradient is 0 even where grad_out is
          // inf/NaN, as in torch's threshold_backward.
          float g = static_cast<float>(gs[u].v[e]);
          if constexpr (kRelu) {
            g = static_cast<float>(os[u].v[e]) > 0.f ? g : 0.f;
          }
          gx[e] = g;
          gr[e] = scale * g;
        }
        store_floats<T, VEC>(grad_x + v * VEC, gx);
        store_floats<T, VEC>(grad_residual + v * VEC, gr);
      }
    }
  }
  const int64_t tail = numel - nvec * VEC;
  if (tid < tail) {
    const int64_t e = nvec * VEC + tid;
    float g = static_cast<float>(grad_out[e]);
    if constexpr (kRelu) {
      g = static_cast<float>(out[e]) > 0.f ? g : 0.f;
    }
    grad_x[e] = static_cast<T>(g);
    grad_residual[e] = static_cast<T>(scale * g);
  }
}

// True when a and b can be read as one flat array each with element i of one matching element
// i of the other: both dense and non-overlapping, with equal strides wherever the size is not 1
// (a size-1 dimension's stride never enters an offset).
bool same_dense_layout(const at::Tensor& a, const at::Tensor& b) {
  if (!a.is_non_overlapping_and_dense() || !b.is_non_overlapping_and_dense() ||
      a.sizes() != b.sizes()) {
    return false;
  }
  for (int64_t d = 0; d < a.dim(); ++d) {
    if (a.size(d) != 1 && a.stride(d) != b.stride(d)) {
      return false;
    }
  }
  return true;
}

// Blocks of a flat grid-stride launch: one full wave, fewer when there is less work.
template <typename Kernel>
unsigned flat_blocks(Kernel kernel, int64_t numel, int vec) {
  const int64_t wave = static_cast<int64_t>(sm_count()) * blocks_per_sm(kernel, kThreads);
  const int64_t needed = ceil_div(numel / vec, static_cast<int64_t>(kThreads) * kUnroll);
  return static_cast<unsigned>(std::max<int64_t>(1, std::min(wave, needed)));
}

template <typename T, int VEC, bool kRelu>
void launch_forward(const at::Tensor& x, const at::Tensor& residual, at::Tensor& y,
                    float scale) {
  const auto kernel = scaled_residual_add_kernel<T, VEC, kRelu>;
  kernel<<<flat_blocks(kernel, x.numel(), VEC), kThreads, 0,
           at::cuda::getCurrentCUDAStream()>>>(x.const_data_ptr<T>(),
                                               residual.const_data_ptr<T>(),
                                               y.mutable_data_ptr<T>(), x.numel(), scale);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T, int VEC, bool kRelu>
void launch_backward(const at::Tensor& grad_out, const at::Tensor& out, at::Tensor& grad_x,
                     at::Tensor& grad_residual, float scale) {
  const auto kernel = scaled_residual_add_backward_kernel<T, VEC, kRelu>;
  kernel<<<flat_blocks(kernel, grad_out.numel(), VEC), kThreads, 0,
           at::cuda::getCurrentCUDAStream()>>>(
      grad_out.const_data_ptr<T>(), out.const_data_ptr<T>(), grad_x.mutable_data_ptr<T>(),
      grad_residual.mutable_data_ptr<T>(), grad_out.numel(), scale);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

bool all_vector_aligned(std::initializer_list<const at::Tensor*> ts) {
  for (const at::Tensor* t : ts) {
    if (!is_vector_aligned(*t)) {
      return false;
    }
  }
  return true;
}

at::Tensor scaled_residual_add_cuda(const at::Tensor& x, const at::Tensor& residual,
                                    double scale, bool relu) {
  constexpr const char* kOp = "scaled_residual_add";
  check_cuda_floating(x, kOp, "x");
  check_cuda_floating(residual, kOp, "residual");
  check_like(residual, x, kOp, "residual", "x");
  TORCH_CHECK(x.is_non_overlapping_and_dense(), kOp,
              ": x must be dense (e.g. contiguous in some memory format), got sizes ", x.sizes(),
              " and strides ", x.strides());
  TORCH_CHECK(same_dense_layout(x, residual), kOp,
              ": residual must have the memory layout of x (strides ", x.strides(), "), got ",
              residual.strides());
  const c10::cuda::CUDAGuard device_guard(x.device());
  at::Tensor y = at::empty_like(x);
  TORCH_INTERNAL_ASSERT(same_dense_layout(y, x), kOp, ": empty_like did not keep x's strides");
  if (x.numel() == 0) {
    return y;
  }
  const float s = static_cast<float>(scale);
  INCEPTION_FAST_DISPATCH(x.scalar_type(), "scaled_residual_add_cuda", [&] {
    constexpr int kVec = kVectorBytes / static_cast<int>(sizeof(scalar_t));
    const bool vec = all_vector_aligned({&x, &residual, &y});
    if (relu) {
      vec ? launch_forward<scalar_t, kVec, true>(x, residual, y, s)
          : launch_forward<scalar_t, 1, true>(x, residual, y, s);
    } else {
      vec ? launch_forward<scalar_t, kVec, false>(x, residual, y, s)
          : launch_forward<scalar_t, 1, false>(x, residual, y, s);
    }
  });
  return y;
}

std::tuple<at::Tensor, at::Tensor> scaled_residual_add_backward_cuda(const at::Tensor& grad_out,
                                                                     const at::Tensor& out,
                                                                     double scale, bool relu) {
  constexpr const char* kOp = "scaled_residual_add_backward";
  check_cuda_floating(out, kOp, "out");
  check_cuda_floating(grad_out, kOp, "grad_out");
  check_like(grad_out, out, kOp, "grad_out", "out");
  TORCH_CHECK(out.is_non_overlapping_and_dense(), kOp,
              ": out must be dense (e.g. contiguous in some memory format), got sizes ",
              out.sizes(), " and strides ", out.strides());
  TORCH_CHECK(same_dense_layout(out, grad_out), kOp,
              ": grad_out must have the memory layout of out (strides ", out.strides(), "), got ",
              grad_out.strides());
  const c10::cuda::CUDAGuard device_guard(out.device());
  at::Tensor grad_x = at::empty_like(out);
  at::Tensor grad_residual = at::empty_like(out);
  TORCH_INTERNAL_ASSERT(same_dense_layout(grad_x, out) && same_dense_layout(grad_residual, out),
                        kOp, ": empty_like did not keep out's strides");
  if (out.numel() == 0) {
    return std::make_tuple(grad_x, grad_residual);
  }
  const float s = static_cast<float>(scale);
  INCEPTION_FAST_DISPATCH(out.scalar_type(), "scaled_residual_add_backward_cuda", [&] {
    constexpr int kVec = kVectorBytes / static_cast<int>(sizeof(scalar_t));
    const bool vec = all_vector_aligned({&grad_out, &out, &grad_x, &grad_residual});
    if (relu) {
      vec ? launch_backward<scalar_t, kVec, true>(grad_out, out, grad_x, grad_residual, s)
          : launch_backward<scalar_t, 1, true>(grad_out, out, grad_x, grad_residual, s);
    } else {
      vec ? launch_backward<scalar_t, kVec, false>(grad_out, out, grad_x, grad_residual, s)
          : launch_backward<scalar_t, 1, false>(grad_out, out, grad_x, grad_residual, s);
    }
  });
  return std::make_tuple(grad_x, grad_residual);
}

}  // namespace
}  // namespace cuda
}  // namespace inception_fast

TORCH_LIBRARY_IMPL(inception_fast, CUDA, m) {
  m.impl("scaled_residual_add", TORCH_FN(inception_fast::cuda::scaled_residual_add_cuda));
  m.impl("scaled_residual_add_backward",
         TORCH_FN(inception_fast::cuda::scaled_residual_add_backward_cuda));
}
