// The kernels of branch_conv's CUDA backend, written once as host+device functions of (block,
// thread): csrc/cuda/branch_conv.cu launches them on the GPU, csrc/testing/branch_conv_emulated.cpp
// runs the very same bodies on the CPU, block after block and, between the barriers, thread after
// thread -- which is what a barrier guarantees -- so CI checks their indexing, halos, padding,
// epilogues and slice writes without a GPU.
//
// Three kernels, all NHWC with arbitrary (n, h, w, c) strides, float32 accumulation, bias + ReLU
// (NaN kept) in the epilogue, the result stored through the output's strides -- a channel slice of
// the block output:
//  * conv_point: one output element of a direct convolution (any kernel size, stride, padding).
//  * pool_point: one output element of relu(avg_pool2d(r, 3, 1, 1) + bias) (the average-pool
//    branch, projected first).
//  * the fused tile (tile_reduce, then tile_conv): a block takes a TH x TW tile of one image's
//    output and all output channels. Phase 1 computes the branch's 1x1 reduction
//    r = relu(x . w1 + b1) on the tile's input window (the tile plus its halo) into shared memory,
//    rounded to the storage type as the unfused composition rounds it, zero where the window
//    leaves the image (that is the k x k convolution's zero padding, applied to r); phase 2 is the
//    k x k convolution of r from shared memory, bias + ReLU, into the output slice. The reduced
//    tensor never goes to device memory.
// Each kernel is the simplest form that is right (one thread per output element, the weights read
// from global memory / L1); how fast it is has to be measured on a GPU (python3
// tools/gpucheck.py) before the backend is made the default.
#pragma once

#include <c10/macros/Macros.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>

namespace inception_fast {
namespace branch_conv_kernels {

// ReLU that keeps NaN, as torch.relu does.
C10_HOST_DEVICE inline float relu_nan(float z) { return z < 0.f ? 0.f : z; }

template <typename T>
C10_HOST_DEVICE inline float ld(const T* p) {
  return static_cast<float>(*p);
}

// An NHWC view: element (n, h, w, c) at p[n*sn + h*sh + w*sw + c*sc].
template <typename T>
struct View {
  T* p;
  int64_t sn, sh, sw, sc;
  int n, h, w, c;
  C10_HOST_DEVICE T* at(int in, int ih, int iw, int ic) const {
    return p + in * sn + ih * sh + iw * sw + ic * sc;
  }
};

// (n, h, w, c) of element `index` of v in NHWC order (channels fastest: the order the grid-stride
// kernels walk, so a warp's stores and weight reads are consecutive channels).
struct Nhwc {
  int n, h, w, c;
};

template <typename T>
C10_HOST_DEVICE inline Nhwc nhwc_of(int64_t index, const View<T>& v) {
  const int c = static_cast<int>(index % v.c);
  int64_t m = index / v.c;
  const int w = static_cast<int>(m % v.w);
  m /= v.w;
  return {static_cast<int>(m / v.h), static_cast<int>(m % v.h), w, c};
}

// y = act(conv2d(x, w, b, stride, padding)); w as [KH][KW][C][O] (O contiguous).
template <typename T>
struct ConvArgs {
  View<const T> x;
  View<T> y;
  const T* w;
  const T* b;  // [O] or nullptr
  int kh, kw, sh, sw, ph, pw;
  bool relu;
};

template <typename T>
C10_HOST_DEVICE inline void conv_point(const ConvArgs<T>& a, int64_t index) {
  const int O = a.y.c;
  const auto [n, oh, ow, o] = nhwc_of(index, a.y);
  const int C = a.x.c;
  float acc = 0.f;
  for (int i = 0; i < a.kh; ++i) {
    const int ih = oh * a.sh - a.ph + i;
    if (ih < 0 || ih >= a.x.h) continue;
    for (int j = 0; j < a.kw; ++j) {
      const int iw = ow * a.sw - a.pw + j;
      if (iw < 0 || iw >= a.x.w) continue;
      const T* px = a.x.at(n, ih, iw, 0);
      const T* pw = a.w + (static_cast<int64_t>(i * a.kw + j) * C) * O + o;
      for (int c = 0; c < C; ++c) acc += ld(px + c * a.x.sc) * ld(pw + static_cast<int64_t>(c) * O);
    }
  }
  if (a.b != nullptr) acc += ld(a.b + o);
  if (a.relu) acc = relu_nan(acc);
  *a.y.at(n, oh, ow, o) = static_cast<T>(acc);
}

// y = relu(avg_pool2d(r, 3, 1, 1, count_include_pad) + b), y and r of the same size.
template <typename T>
struct PoolArgs {
  View<const T> r;
  View<T> y;
  const T* b;  // [C] or nullptr
  bool include_pad;
};

template <typename T>
C10_HOST_DEVICE inline void pool_point(const PoolArgs<T>& a, int64_t index) {
  const auto [n, h, w, c] = nhwc_of(index, a.y);
  float acc = 0.f;
  int count = 0;
  for (int i = -1; i <= 1; ++i) {
    for (int j = -1; j <= 1; ++j) {
      const int ih = h + i, iw = w + j;
      if (ih < 0 || ih >= a.r.h || iw < 0 || iw >= a.r.w) continue;
      acc += ld(a.r.at(n, ih, iw, c));
      ++count;
    }
  }
  acc = a.include_pad ? acc / 9.f : acc / static_cast<float>(count > 0 ? count : 1);
  if (a.b != nullptr) acc += ld(a.b + c);
  *a.y.at(n, h, w, c) = static_cast<T>(relu_nan(acc));
}

// The fused 1x1 reduction + k x k convolution of one branch.
//   x: the block input [N, H, W, C]; w1 [C][R] (R contiguous), b1 [R] or nullptr: the branch's
//   1x1; w2 [KH][KW][R][O], b2 [O] or nullptr: its k x k convolution; y: its output slice.
template <typename T>
struct TileArgs {
  View<const T> x;
  View<T> y;
  const T* w1;
  const T* b1;
  const T* w2;
  const T* b2;
  int R;
  int kh, kw, sh, sw, ph, pw;
  int th, tw;            // output tile
  int tiles_h, tiles_w;  // tiles per image
  // the tile's input window: (th - 1) * sh + kh rows, (tw - 1) * sw + kw columns
  C10_HOST_DEVICE int win_h() const { return (th - 1) * sh + kh; }
  C10_HOST_DEVICE int win_w() const { return (tw - 1) * sw + kw; }
  C10_HOST_DEVICE int64_t smem_elems() const { return static_cast<int64_t>(win_h()) * win_w() * R; }
};

// Bytes of shared memory a tile of th x tw takes (r stored in T).
template <typename T>
inline int64_t tile_smem_bytes(int th, int tw, int kh, int kw, int sh, int sw, int R) {
  return static_cast<int64_t>((th - 1) * sh + kh) * ((tw - 1) * sw + kw) * R * static_cast<int64_t>(sizeof(T));
}

struct TilePos {
  int n, oh0, ow0;
};

C10_HOST_DEVICE inline TilePos tile_pos(int block, int tiles_h, int tiles_w, int th, int tw) {
  const int per_image = tiles_h * tiles_w;
  const int n = block / per_image;
  const int t = block % per_image;
  return {n, (t / tiles_w) * th, (t % tiles_w) * tw};
}

// Phase 1: r[(wh * win_w + ww) * R + c] for the tile's window, threads tid, tid + threads, ...
template <typename T>
C10_HOST_DEVICE inline void tile_reduce(const TileArgs<T>& a, int block, int tid, int threads, T* r) {
  const TilePos t = tile_pos(block, a.tiles_h, a.tiles_w, a.th, a.tw);
  const int ww_n = a.win_w();
  const int64_t total = a.smem_elems();
  const int ih0 = t.oh0 * a.sh - a.ph, iw0 = t.ow0 * a.sw - a.pw;
  const int C = a.x.c, R = a.R;
  for (int64_t e = tid; e < total; e += threads) {
    const int c = static_cast<int>(e % R);
    const int64_t p = e / R;
    const int ih = ih0 + static_cast<int>(p / ww_n), iw = iw0 + static_cast<int>(p % ww_n);
    float v = 0.f;  // outside the image: the k x k convolution's zero padding
    if (ih >= 0 && ih < a.x.h && iw >= 0 && iw < a.x.w) {
      const T* px = a.x.at(t.n, ih, iw, 0);
      float acc = 0.f;
      for (int k = 0; k < C; ++k) acc += ld(px + k * a.x.sc) * ld(a.w1 + static_cast<int64_t>(k) * R + c);
      if (a.b1 != nullptr) acc += ld(a.b1 + c);
      v = relu_nan(acc);
    }
    r[e] = static_cast<T>(v);
  }
}

// Phase 2: the tile's outputs (pixel, channel), threads tid, tid + threads, ...
template <typename T>
C10_HOST_DEVICE inline void tile_conv(const TileArgs<T>& a, int block, int tid, int threads, const T* r) {
  const TilePos t = tile_pos(block, a.tiles_h, a.tiles_w, a.th, a.tw);
  const int O = a.y.c, R = a.R, ww_n = a.win_w();
  const int64_t total = static_cast<int64_t>(a.th) * a.tw * O;
  for (int64_t e = tid; e < total; e += threads) {
    const int o = static_cast<int>(e % O);
    const int p = static_cast<int>(e / O);
    const int dh = p / a.tw, dw = p % a.tw;
    const int oh = t.oh0 + dh, ow = t.ow0 + dw;
    if (oh >= a.y.h || ow >= a.y.w) continue;  // the image's last, partial tiles
    float acc = 0.f;
    for (int i = 0; i < a.kh; ++i) {
      for (int j = 0; j < a.kw; ++j) {
        const T* pr = r + (static_cast<int64_t>(dh * a.sh + i) * ww_n + (dw * a.sw + j)) * R;
        const T* pw = a.w2 + (static_cast<int64_t>(i * a.kw + j) * R) * O + o;
        for (int c = 0; c < R; ++c) acc += ld(pr + c) * ld(pw + static_cast<int64_t>(c) * O);
      }
    }
    if (a.b2 != nullptr) acc += ld(a.b2 + o);
    *a.y.at(t.n, oh, ow, o) = static_cast<T>(relu_nan(acc));
  }
}

}  // namespace branch_conv_kernels
}  // namespace inception_fast
