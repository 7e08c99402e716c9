// branch_conv on CUDA: the plan of branch_conv_plan.h with the kernels of branch_conv_kernels.h
// launched on the current stream. The fused tile kernel keeps a branch's reduced tile and its halo
// in shared memory (opting in to more than 48 KB where the tile needs it); the direct convolution
// and the pool are grid-stride loops over output elements, channels fastest (coalesced NHWC stores
// and weight reads). Correct by construction and checked on the CPU through the emulation; not yet
// timed on a GPU, so inception_fast.ops.branch_conv keeps Triton as the default on CUDA tensors
// (this kernel runs under use_backend("cuda")).
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>

#include "cuda/branch_conv_plan.h"
#include "cuda/common.cuh"

namespace inception_fast {
namespace cuda {
namespace {

namespace bk = inception_fast::branch_conv_kernels;

constexpr int kThreads = 256;

template <typename T>
__global__ void __launch_bounds__(kThreads) conv_kernel(bk::ConvArgs<T> a, int64_t total) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    bk::conv_point(a, i);
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads) pool_kernel(bk::PoolArgs<T> a, int64_t total) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    bk::pool_point(a, i);
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads) tile_kernel(bk::TileArgs<T> a) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* r = reinterpret_cast<T*>(smem_raw);
  bk::tile_reduce(a, blockIdx.x, threadIdx.x, blockDim.x, r);
  __syncthreads();
  bk::tile_conv(a, blockIdx.x, threadIdx.x, blockDim.x, r);
}

struct CudaExec {
  int64_t smem_optin;
  int max_blocks;

  int64_t smem_limit() const { return smem_optin; }
  at::Tensor fresh(at::Tensor t) const { return t; }

  int grid_for(int64_t total) const {
    return static_cast<int>(std::min<int64_t>(ceil_div(total, kThreads), max_blocks));
  }

  template <typename T>
  void conv(const bk::ConvArgs<T>& a, int64_t total) {
    conv_kernel<T><<<grid_for(total), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(a, total);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }

  template <typename T>
  void pool(const bk::PoolArgs<T>& a, int64_t total) {
    pool_kernel<T><<<grid_for(total), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(a, total);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }

  template <typename T>
  void tile(const bk::TileArgs<T>& a, int64_t blocks) {
    TORCH_CHECK(blocks < (int64_t{1} << 31), "branch_conv: too many tiles (", blocks, ")");
    const int64_t bytes = a.smem_elems() * static_cast<int64_t>(sizeof(T));
    if (bytes > 48 * 1024) {
      C10_CUDA_CHECK(cudaFuncSetAttribute(tile_kernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                          static_cast<int>(bytes)));
    }
    tile_kernel<T><<<static_cast<unsigned>(blocks), kThreads, static_cast<size_t>(bytes),
                     at::cuda::getCurrentCUDAStream()>>>(a);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
};

at::Tensor branch_conv_cuda(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                            at::IntArrayRef split, at::IntArrayRef pool, at::IntArrayRef depth,
                            at::TensorList conv_weight, const c10::List<std::optional<at::Tensor>>& conv_bias,
                            at::IntArrayRef conv_stride, at::IntArrayRef conv_padding) {
  constexpr const char* op = "inception_fast::branch_conv";
  TORCH_CHECK(x.is_cuda(), op, ": x must be a CUDA tensor for this kernel, got ", x.device());
  const c10::cuda::CUDAGuard guard(x.device());
  const auto* prop = at::cuda::getCurrentDeviceProperties();
  CudaExec ex{static_cast<int64_t>(prop->sharedMemPerBlockOptin), prop->multiProcessorCount * 8};
  return bk::branch_conv_dispatch(ex, op, x, weight, bias, split, pool, depth, conv_weight, conv_bias, conv_stride,
                                  conv_padding);
}

}  // namespace
}  // namespace cuda
}  // namespace inception_fast

TORCH_LIBRARY_IMPL(inception_fast, CUDA, m) {
  m.impl("branch_conv", TORCH_FN(inception_fast::cuda::branch_conv_cuda));
}
