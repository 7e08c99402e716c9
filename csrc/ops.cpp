// The schemas of every inception_fast op, declared once, here. Each backend only registers an
// implementation, in a file of its own folder named after the op: csrc/cpu/<op>.cpp (CPU),
// csrc/cuda/<op>.cu (CUDA), csrc/autograd/<op>.cpp (Autograd, autocast), csrc/composite/<op>.cpp
// (one definition for every device), csrc/onednn/<op>.cpp (CPU, in the optional module
// inception_fast._onednn, which loads only after this one). The Python side, inception_fast/ops/<op>.py,
// adds the fake kernels, the autograd formulas and the Triton variants, which it derives from these
// schemas rather than writing them again.
//
// An op's backward and helper ops (its weight transform, its statistics) share the op's files: one
// file per op family, named after the op users call (bn_relu for bn_stats, bn_relu_apply and the
// rest; winograd_conv1d for winograd_weight1d). Code that serves every op lives apart: csrc/runtime/
// (the CPU memory pool, the GEMM choice, the Python module and the native replay) and
// csrc/testing/ (the CPU emulation of CUDA kernels that tests run).
//
// Conventions shared by all kernels:
//  * activations are 4-D (N, C, H, W), contiguous either in NCHW or in channels_last; the
//    output keeps the input's memory format (no layout copy);
//  * activations are float32, float16 or bfloat16 (and float64 on the CPU, for gradcheck);
//    per-channel vectors (weight, bias, mean, invstd, the reduced sums) are contiguous [C] in the
//    arithmetic type: float32, or float64 for float64 activations;
//  * ReLU propagates NaN (a NaN pre-activation gives NaN, as torch.relu does).
#include <torch/library.h>

#include "runtime/gemm.h"

TORCH_LIBRARY(inception_fast, m) {
  // Per-channel mean and biased variance of x over (N, H, W), float32.
  m.def("bn_stats(Tensor x) -> (Tensor mean, Tensor var)");
  // y = relu((x - mean) * invstd * weight + bias); weight/bias None mean 1/0.
  // `training` does not change the forward: it tells the autograd formula that mean/invstd are
  // the batch statistics of x (so the gradient flows to x through them), not constants.
  m.def(
      "bn_relu_apply(Tensor x, Tensor? weight, Tensor? bias, Tensor mean, Tensor invstd, "
      "bool training) -> Tensor");
  // With dz = grad_out * (pre-activation > 0), recomputed from x exactly as the forward did:
  // sum_dz[c] = sum(dz), sum_dz_xmu[c] = sum(dz * (x - mean)), float32.
  m.def(
      "bn_relu_backward_reduce(Tensor grad_out, Tensor x, Tensor? weight, Tensor? bias, "
      "Tensor mean, Tensor invstd) -> (Tensor sum_dz, Tensor sum_dz_xmu)");
  // grad_x. Without the sums (eval): dz * weight * invstd. With them (training; the sums may
  // already be all-reduced across processes and `count` is then the global N*H*W):
  // weight * invstd * (dz - sum_dz / count - (x - mean) * invstd^2 * sum_dz_xmu / count).
  m.def(
      "bn_relu_backward_elemt(Tensor grad_out, Tensor x, Tensor? weight, Tensor? bias, "
      "Tensor mean, Tensor invstd, Tensor? sum_dz, Tensor? sum_dz_xmu, int count) -> Tensor");
  // The batch statistics of a training step: bn_stats(x) as mean and invstd = rsqrt(var + eps), and
  // the running statistics updated in place when given (running = (1 - momentum) * running +
  // momentum * batch, the variance unbiased, as nn.BatchNorm2d does); mean and invstd float32.
  m.def(
      "bn_stats_train(Tensor x, Tensor(a!)? running_mean, Tensor(b!)? running_var, float momentum, "
      "float eps) -> (Tensor mean, Tensor invstd)");
  // A training step's forward of bn_relu in one call: the batch statistics of x (bn_stats), the
  // running statistics updated in place when given (running = (1 - momentum) * running + momentum
  // * batch, the variance unbiased, as nn.BatchNorm2d does), then bn_relu_apply with them. Defined
  // in terms of bn_stats_train and bn_relu_apply (CompositeImplicitAutograd), so its gradient is
  // bn_relu_apply's.
  m.def(
      "bn_relu_train(Tensor x, Tensor? weight, Tensor? bias, Tensor(a!)? running_mean, "
      "Tensor(b!)? running_var, float momentum, float eps) -> Tensor");
  // y = act(x + scale * residual), act = ReLU if relu else identity; any shape, x and
  // residual of the same shape, dtype and memory format.
  m.def("scaled_residual_add(Tensor x, Tensor residual, float scale, bool relu) -> Tensor");
  // From the forward's output alone: mask = out > 0 (relu) or 1;
  // grad_x = grad_out * mask, grad_residual = scale * grad_out * mask.
  m.def(
      "scaled_residual_add_backward(Tensor grad_out, Tensor out, float scale, bool relu) "
      "-> (Tensor grad_x, Tensor grad_residual)");
  // y = conv2d(x, weight, bias) for a [O, C, 1, 1] weight (stride 1, no padding, one group), as one
  // GEMM: channels_last output for a channels_last x (or a 1x1 map), NCHW for an NCHW x.
  m.def("conv1x1(Tensor x, Tensor weight, Tensor? bias) -> Tensor");
  // The gradients of conv1x1 that output_mask asks for (x, weight, bias), undefined otherwise; with
  // output_mask[1] false, x's values are not read (only its shape and layout).
  m.def(
      "conv1x1_backward(Tensor grad_out, Tensor x, Tensor weight, bool[3] output_mask) "
      "-> (Tensor grad_x, Tensor grad_weight, Tensor grad_bias)");
  // y = conv2d(x, weight, bias, stride, padding) (one group, no dilation) as im2col + one GEMM, for
  // the small maps where that beats the convolution primitive; channels_last output. CPU.
  m.def("conv_im2col(Tensor x, Tensor weight, Tensor? bias, int[2] stride, int[2] padding) -> Tensor");
  // The gradients of conv_im2col that output_mask asks for (x, weight, bias), undefined otherwise;
  // grad_x and grad_weight channels_last.
  m.def(
      "conv_im2col_backward(Tensor grad_out, Tensor x, Tensor weight, int[2] stride, int[2] padding, "
      "bool[3] output_mask) -> (Tensor grad_x, Tensor grad_weight, Tensor grad_bias)");
  // y = max_pool2d(x, kernel_size, stride, padding, ceil_mode) (no dilation), without indices; y in
  // x's memory format. Same output size, NaN propagation and padding rules as ATen's.
  m.def("max_pool(Tensor x, int[2] kernel_size, int[2] stride, int[2] padding, bool ceil_mode) -> Tensor");
  // grad_x of max_pool: each grad_out element added to the input position of its window's maximum,
  // recomputed from x (the first maximum in row-major window order, or the last NaN: ATen's index).
  m.def(
      "max_pool_backward(Tensor grad_out, Tensor x, int[2] kernel_size, int[2] stride, int[2] padding, "
      "bool ceil_mode) -> Tensor");
  // An Inception block's branches that start at its input, for inference (BatchNorm folded into the
  // weights and biases). r = conv1x1(x, weight) has one channel segment per branch (`split`), each
  // branch i in turn:
  //   pool[i] = 0: a = relu(r_i + bias_i);
  //   pool[i] = 1 / 2: a = relu(avg_pool2d(r_i, 3, 1, 1, count_include_pad = pool[i] == 1) + bias_i)
  //                (the projection first, then the pool: both linear, so this is the branch's
  //                pool -> 1x1 conv, on the narrower tensor);
  //   pool[i] = 3: a = relu(conv1x1(max_pool2d(x, 3, 1, 1), weight_i) + bias_i) (max does not commute);
  // then depth[i] convolutions a = relu(conv2d(a, conv_weight[j], conv_bias[j], conv_stride[2j:2j+2],
  // conv_padding[2j:2j+2])), j running over all branches' convolutions in order. out = the branches'
  // results concatenated along the channels (each written into its channel slice); they must share
  // their spatial size. channels_last output.
  m.def(
      "branch_conv(Tensor x, Tensor weight, Tensor? bias, int[] split, int[] pool, int[] depth, "
      "Tensor[] conv_weight, Tensor?[] conv_bias, int[] conv_stride, int[] conv_padding) -> Tensor");
  // An optimize()d model's input in one pass: y = x.to(dtype) in channels_last (or NCHW) layout, a
  // new tensor, and nan_rows[n] = whether x[n] holds a NaN (bool [N]). x is a 4-D float batch of any
  // strides; dtype is float32, bfloat16 or float16 (rounded to nearest even, as .to() does).
  m.def("prepare_input(Tensor x, ScalarType dtype, bool channels_last) -> (Tensor y, Tensor nan_rows)");
  // The tail of an average-pool branch that optimize() projects first: y = relu(avg_pool2d(r, 3,
  // stride 1, padding 1, count_include_pad) + bias) in one pass, channels_last, r's dtype (float32,
  // bfloat16, float16); bias a vector of r's channels (any float dtype) or None.
  m.def("avg_pool3x3_bias_relu(Tensor r, Tensor? bias, bool count_include_pad) -> Tensor");
  // torch.cat(xs, 1) for 4-D tensors of one dtype, batch and spatial size, the output channels_last:
  // optimize()'s concatenation of an Inception block's branches (inference; no autograd).
  m.def("channel_cat(Tensor[] xs) -> Tensor");
  // The classifier's pooling: y[n, c] = mean of x[n, c, :, :] for a 4-D float map (any strides),
  // summed in float32 (float64 for float64) and rounded once to x's dtype; y is (N, C), contiguous.
  m.def("global_avg_pool(Tensor x) -> Tensor");
  // A 3x3 convolution, stride 1, padding 0 or 1, as Winograd's F(2x2, 3x3) (csrc/cpu/winograd_conv3x3.cpp):
  // x (N, C, H, W) float32, u (16, C, K) the weight transformed by winograd_weight, bias (K) or None;
  // y = act(conv2d(x, weight, bias, 1, padding)) channels_last, act ReLU when relu (NaN kept).
  m.def("winograd_conv3x3(Tensor x, Tensor u, Tensor? bias, int padding, bool relu) -> Tensor");
  // A 1 x r (dim 3) or r x 1 (dim 2) convolution, r = 7 or 3, stride 1, zero padding along dim only, as
  // Winograd's F(4, r) (csrc/cpu/winograd_conv1d.cpp): x (N, C, H, W) float32, u (A, C, K) the weight
  // transformed by winograd_weight1d (A = 10 for r = 7, 6 for r = 3), bias (K) or None;
  // y = act(conv2d(x, weight, bias, 1, padding along dim)) channels_last, act ReLU when relu (NaN kept).
  m.def("winograd_conv1d(Tensor x, Tensor u, Tensor? bias, int dim, int padding, bool relu) -> Tensor");
  // The weight of winograd_conv1d: (K, C, 1, r) or (K, C, r, 1) -> (A, C, K) float32, computed in float64.
  m.def("winograd_weight1d(Tensor weight) -> Tensor");
  // optimize()'s CPU convolution on a oneDNN primitive kept per geometry (csrc/onednn/onednn_conv.cpp, in
  // inception_fast._onednn; without that module the schemas are here and have no kernel). The weight
  // (O, C, kh, kw; float32 or bfloat16) reordered into the layout of the primitive for this input size,
  // stride, padding, bias and post-op, as uint8 bytes meaningful to that primitive only.
  m.def(
      "onednn_conv_pack(Tensor weight, int[] input_size, int[] stride, int[] padding, bool has_bias, "
      "int post_op) -> Tensor");
  // y = act(conv2d(x, w, bias, stride, padding) [+ other]) in channels_last, w the weight of size
  // weight_size that onednn_conv_pack packed for x's geometry; post_op bit 1: ReLU, bit 2: add `other`
  // (before the ReLU: the Inception-ResNet residual). Inference (no autograd).
  m.def(
      "onednn_conv(Tensor x, Tensor packed, int[] weight_size, Tensor? bias, int[] stride, int[] padding, "
      "int post_op, Tensor? other) -> Tensor");
  // branch_conv's CUDA backend (csrc/cuda/branch_conv.cu) run on the CPU: its plan and its kernels'
  // bodies, block by block and thread by thread (csrc/testing/branch_conv_emulated.cpp), with
  // `smem_bytes` of shared memory per block. For tests: CI has no GPU.
  m.def(
      "_branch_conv_emulated(Tensor x, Tensor weight, Tensor? bias, int[] split, int[] pool, int[] depth, "
      "Tensor[] conv_weight, Tensor?[] conv_bias, int[] conv_stride, int[] conv_padding, int smem_bytes) -> Tensor");
  // Whether conv1x1's float32 GEMMs run on oneDNN's matmul here (see runtime/gemm.cpp), else ATen's mm.
  m.def("_onednn_matmul_available() -> bool", &inception_fast::cpu::onednn_matmul_available);
}
