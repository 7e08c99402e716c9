// inception_fast._onednn: optimize()'s CPU convolutions on oneDNN primitives the extension keeps.
//
// Why: ATen's oneDNN convolution (mkldnn::_convolution_pointwise, through ideep) builds the
// convolution's primitive descriptor again on every call. For the brgemm kernels that is 15-50 us
// of descriptor work (blocking choice, batch tables), against 45 us of arithmetic for a 192->64 1x1
// convolution at 28x28 in bf16: at batch 1 a third of the model's convolution time. Here the
// primitive is created once per geometry (input shape, weight shape, stride, padding, dtypes,
// post-ops) and kept; a call looks it up and executes it on the tensors' memory.
//
// Two ops, their schemas in csrc/ops.cpp (inception_fast._C, which importing this module imports):
//   onednn_conv_pack(weight, input_size, stride, padding, has_bias, post_op) -> packed
//     the weight reordered into the layout the primitive for that geometry wants (uint8 bytes);
//   onednn_conv(x, packed, weight_size, bias, stride, padding, post_op, other) -> y
//     y = act(conv(x, w) + bias [+ other]) in channels_last; post_op bit 1: ReLU, bit 2: add `other`
//     (before the ReLU, a binary post-op: the Inception-ResNet residual).
// The packed bytes are only meaningful to the primitive of the same geometry, which is what the
// caller passes; their size is checked against the primitive's weight layout.
//
// oneDNN comes from the onednn-cpu-gomp wheel (GNU OpenMP, the runtime torch's wheels use, so both
// share one thread pool); torch's own copy of oneDNN is internal to libtorch_cpu and not callable.
#include <ATen/ATen.h>
#include <torch/extension.h>
#include <torch/library.h>

#include <dnnl.hpp>

#include <array>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

namespace inception_fast {
namespace onednn {
namespace {

using dnnl::memory;
constexpr int64_t kRelu = 1, kAdd = 2;
constexpr size_t kMaxEntries = 4096;  // geometries kept; a model fed many shapes starts over

dnnl::engine& cpu_engine() {
  static dnnl::engine eng(dnnl::engine::kind::cpu, 0);
  return eng;
}

memory::data_type dnnl_type(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return memory::data_type::f32;
    case at::kBFloat16: return memory::data_type::bf16;
    default: TORCH_CHECK(false, "inception_fast::onednn_conv: dtype ", t, " is not supported (float32, bfloat16)");
  }
}

// Everything a primitive depends on: (N, C, H, W), (O, KH, KW), stride, padding, dtype, has_bias,
// bias dtype, post_op. A fixed-size array, so that a call's lookup allocates nothing.
constexpr int kKeyLen = 15;
using Key = std::array<int64_t, kKeyLen>;

struct Geometry {
  Key key;
  int64_t n, c, h, w, o, kh, kw, sh, sw, ph, pw, oh, ow;
  at::ScalarType dtype, bias_dtype;
  bool has_bias;
  int64_t post_op;
  memory::dims src() const { return {n, c, h, w}; }
  memory::dims wei() const { return {o, c, kh, kw}; }
  memory::dims dst() const { return {n, o, oh, ow}; }
};

Geometry geometry(at::IntArrayRef input_size, at::IntArrayRef weight_size, at::IntArrayRef stride,
                  at::IntArrayRef padding, at::ScalarType dtype, bool has_bias, at::ScalarType bias_dtype,
                  int64_t post_op) {
  TORCH_CHECK(input_size.size() == 4, "inception_fast::onednn_conv: the input must be 4-D (N, C, H, W), got ",
              input_size.size(), "-D");
  TORCH_CHECK(weight_size.size() == 4, "inception_fast::onednn_conv: the weight must be 4-D, got ", weight_size);
  TORCH_CHECK(stride.size() == 2 && padding.size() == 2, "inception_fast::onednn_conv: stride and padding take 2 values");
  TORCH_CHECK(post_op >= 0 && post_op <= (kRelu | kAdd), "inception_fast::onednn_conv: post_op is a mask of 1 (ReLU) and 2 (add), got ",
              post_op);
  TORCH_CHECK(input_size[1] == weight_size[1], "inception_fast::onednn_conv: the input has ", input_size[1],
              " channels, the weight expects ", weight_size[1]);
  for (int i = 0; i < 2; ++i) {
    TORCH_CHECK(stride[i] >= 1 && padding[i] >= 0, "inception_fast::onednn_conv: bad stride / padding ", stride, " ", padding);
  }
  TORCH_CHECK(input_size[2] + 2 * padding[0] >= weight_size[2] && input_size[3] + 2 * padding[1] >= weight_size[3],
              "inception_fast::onednn_conv: the input (", input_size[2], "x", input_size[3], " with padding ", padding,
              ") is smaller than the kernel (", weight_size[2], "x", weight_size[3], ")");
  Geometry g;
  g.n = input_size[0], g.c = input_size[1], g.h = input_size[2], g.w = input_size[3];
  g.o = weight_size[0], g.kh = weight_size[2], g.kw = weight_size[3];
  g.sh = stride[0], g.sw = stride[1], g.ph = padding[0], g.pw = padding[1];
  g.oh = (g.h + 2 * g.ph - g.kh) / g.sh + 1;  // oneDNN floors (src + l + r - k) / stride as ATen does
  g.ow = (g.w + 2 * g.pw - g.kw) / g.sw + 1;
  g.dtype = dtype;
  g.has_bias = has_bias;
  g.bias_dtype = has_bias ? bias_dtype : dtype;
  g.post_op = post_op;
  g.key = {g.n, g.c, g.h, g.w, g.o, g.kh, g.kw, g.sh, g.sw, g.ph, g.pw, static_cast<int64_t>(dtype), has_bias,
           static_cast<int64_t>(g.bias_dtype), post_op};
  return g;
}

struct Entry {
  dnnl::convolution_forward prim;
  memory::desc src, wei, dst, bias, other, scratch;
  uint64_t wei_tag;  // layout_tag(wei)
  uint64_t id;       // unique over the process (the per-thread memory objects are kept under it)
};

// FNV-1a over 64-bit values: the cache's key hash and the packed weights' layout tag.
struct Fnv {
  uint64_t h = 1469598103934665603ull;
  void mix(int64_t v) { h = (h ^ static_cast<uint64_t>(v)) * 1099511628211ull; }
};

struct KeyHash {
  size_t operator()(const Key& k) const {
    Fnv f;
    for (int64_t v : k) f.mix(v);
    return static_cast<size_t>(f.h);
  }
};

// The packed bytes end with this tag of the layout they are in, so a weight packed for a primitive
// with another layout is refused instead of read wrongly.
constexpr int64_t kTagBytes = sizeof(uint64_t);

uint64_t layout_tag(const memory::desc& d) {
  Fnv f;
  f.mix(static_cast<int64_t>(d.get_data_type()));
  f.mix(static_cast<int64_t>(d.get_format_kind()));
  for (const auto& dims : {d.get_dims(), d.get_strides(), d.get_inner_blks(), d.get_inner_idxs()}) {
    f.mix(static_cast<int64_t>(dims.size()));
    for (auto v : dims) f.mix(v);
  }
  return f.h;
}

std::mutex g_mutex;
// shared: a caller keeps its entry while another thread may start the cache over
std::unordered_map<Key, std::shared_ptr<const Entry>, KeyHash> g_cache;
uint64_t g_next_id = 0;  // under g_mutex

std::shared_ptr<const Entry> entry_for(const Geometry& g) {
  std::lock_guard<std::mutex> lock(g_mutex);
  auto it = g_cache.find(g.key);
  if (it != g_cache.end()) return it->second;
  if (g_cache.size() >= kMaxEntries) g_cache.clear();
  const auto t = dnnl_type(g.dtype);
  auto made = std::make_shared<Entry>();
  Entry& e = *made;
  e.id = g_next_id++;
  e.src = memory::desc(g.src(), t, memory::format_tag::nhwc);
  e.dst = memory::desc(g.dst(), t, memory::format_tag::nhwc);
  e.other = e.dst;
  e.bias = memory::desc({g.o}, dnnl_type(g.bias_dtype), memory::format_tag::a);
  const memory::desc wei_any(g.wei(), t, memory::format_tag::any);
  const memory::dims strides{g.sh, g.sw}, pads{g.ph, g.pw};
  dnnl::post_ops po;
  if (g.post_op & kAdd) po.append_binary(dnnl::algorithm::binary_add, e.other);
  if (g.post_op & kRelu) po.append_eltwise(dnnl::algorithm::eltwise_relu, 0.f, 0.f);
  dnnl::primitive_attr attr;
  attr.set_post_ops(po);
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  try {
    auto pd = g.has_bias
        ? dnnl::convolution_forward::primitive_desc(cpu_engine(), dnnl::prop_kind::forward_inference,
                                                    dnnl::algorithm::convolution_direct, e.src, wei_any, e.bias, e.dst,
                                                    strides, pads, pads, attr)
        : dnnl::convolution_forward::primitive_desc(cpu_engine(), dnnl::prop_kind::forward_inference,
                                                    dnnl::algorithm::convolution_direct, e.src, wei_any, e.dst,
                                                    strides, pads, pads, attr);
    e.wei = pd.weights_desc();
    e.wei_tag = layout_tag(e.wei);
    e.scratch = pd.scratchpad_desc();
    e.prim = dnnl::convolution_forward(pd);
  } catch (const dnnl::error& err) {
    TORCH_CHECK(false, "inception_fast::onednn_conv: oneDNN has no convolution for input ", g.src(), ", weight ",
                g.wei(), ": ", err.what());
  }
  return g_cache.emplace(g.key, std::move(made)).first->second;
}

dnnl::stream& cpu_stream() {  // one per thread: a stream is not meant to be shared between threads
  thread_local dnnl::stream s(cpu_engine());
  return s;
}

void* ptr(const at::Tensor& t) { return const_cast<void*>(t.const_data_ptr()); }

// This thread's memory objects for one primitive (their handles set on each call: creating them
// and the argument map anew cost a dozen heap allocations a call), and its scratchpad, grown as
// needed: a call's overhead is the lookup and the execution, which matters at batch 1, where a
// model is ~100 convolutions of tens of microseconds.
struct Bound {
  memory src, dst, bias, other, scratch, wei;
  const void* wei_ptr = nullptr;  // the packed weights wei was made on
};

struct ThreadState {
  std::unordered_map<uint64_t, Bound> bound;  // by Entry::id
  std::unique_ptr<void, void (*)(void*)> scratch{nullptr, &std::free};
  size_t scratch_bytes = 0;

  void* scratchpad(size_t bytes) {
    if (bytes > scratch_bytes) {
      const size_t size = (bytes + 4095) / 4096 * 4096;
      void* p = std::aligned_alloc(4096, size);
      TORCH_CHECK(p != nullptr, "inception_fast::onednn_conv: out of memory for a ", size, "-byte scratchpad");
      scratch.reset(p);
      scratch_bytes = size;
    }
    return scratch.get();
  }

  Bound& bind(const Entry& e) {
    auto it = bound.find(e.id);
    if (it != bound.end()) return it->second;
    if (bound.size() >= kMaxEntries) bound.clear();
    auto& eng = cpu_engine();
    Bound b;
    b.src = memory(e.src, eng, DNNL_MEMORY_NONE);
    b.dst = memory(e.dst, eng, DNNL_MEMORY_NONE);
    b.bias = memory(e.bias, eng, DNNL_MEMORY_NONE);
    b.other = memory(e.other, eng, DNNL_MEMORY_NONE);
    b.scratch = memory(e.scratch, eng, DNNL_MEMORY_NONE);
    return bound.emplace(e.id, std::move(b)).first->second;
  }
};

ThreadState& thread_state() {
  thread_local ThreadState s;
  return s;
}

at::Tensor conv_pack(const at::Tensor& weight, at::IntArrayRef input_size, at::IntArrayRef stride,
                     at::IntArrayRef padding, bool has_bias, int64_t post_op) {
  TORCH_CHECK(weight.device().is_cpu(), "inception_fast::onednn_conv_pack: the weight must be on the CPU");
  const Geometry g = geometry(input_size, weight.sizes(), stride, padding, weight.scalar_type(), has_bias,
                              weight.scalar_type(), post_op);
  const auto entry = entry_for(g);
  const Entry& e = *entry;
  at::Tensor w = weight.contiguous();
  const int64_t bytes = static_cast<int64_t>(e.wei.get_size());
  at::Tensor packed = at::empty({bytes + kTagBytes}, weight.options().dtype(at::kByte));
  memory src(memory::desc(g.wei(), dnnl_type(g.dtype), memory::format_tag::oihw), cpu_engine(), ptr(w));
  memory dst(e.wei, cpu_engine(), packed.data_ptr());
  dnnl::reorder(src, dst).execute(cpu_stream(), src, dst);
  cpu_stream().wait();
  std::memcpy(packed.data_ptr<uint8_t>() + bytes, &e.wei_tag, sizeof(e.wei_tag));
  return packed;
}

at::Tensor conv(const at::Tensor& x, const at::Tensor& packed, at::IntArrayRef weight_size,
                const std::optional<at::Tensor>& bias, at::IntArrayRef stride, at::IntArrayRef padding, int64_t post_op,
                const std::optional<at::Tensor>& other) {
  TORCH_CHECK(x.device().is_cpu(), "inception_fast::onednn_conv: the input must be on the CPU, got ", x.device());
  TORCH_CHECK(packed.device().is_cpu() && packed.scalar_type() == at::kByte && packed.dim() == 1,
              "inception_fast::onednn_conv: `packed` must be the 1-D uint8 tensor onednn_conv_pack returns");
  const bool has_bias = bias.has_value() && bias->defined();
  if (has_bias) {
    TORCH_CHECK(bias->device().is_cpu() && bias->dim() == 1 && bias->size(0) == weight_size[0],
                "inception_fast::onednn_conv: the bias must be a CPU vector of ", weight_size[0], " values");
  }
  const Geometry g = geometry(x.sizes(), weight_size, stride, padding, x.scalar_type(), has_bias,
                              has_bias ? bias->scalar_type() : x.scalar_type(), post_op);
  if (g.n == 0) return at::empty({g.n, g.o, g.oh, g.ow}, x.options().memory_format(at::MemoryFormat::ChannelsLast));
  const auto entry = entry_for(g);
  const Entry& e = *entry;
  const int64_t bytes = static_cast<int64_t>(e.wei.get_size());
  uint64_t tag = 0;
  if (packed.numel() == bytes + kTagBytes && packed.is_contiguous()) {
    std::memcpy(&tag, packed.const_data_ptr<uint8_t>() + bytes, sizeof(tag));
  }
  TORCH_CHECK(packed.numel() == bytes + kTagBytes && tag == e.wei_tag,
              "inception_fast::onednn_conv: `packed` (", packed.numel(), " bytes) is not this convolution's weight layout (",
              bytes + kTagBytes, " bytes): pack the weight for this input size with onednn_conv_pack");
  const bool add = (post_op & kAdd) != 0;
  TORCH_CHECK(add == (other.has_value() && other->defined()),
              "inception_fast::onednn_conv: `other` is given exactly when post_op has the add bit (2)");
  const auto cl = at::MemoryFormat::ChannelsLast;
  at::Tensor xc = x.contiguous(cl);
  at::Tensor y = at::empty({g.n, g.o, g.oh, g.ow}, x.options().memory_format(cl));
  at::Tensor oc;
  if (add) {
    TORCH_CHECK(other->sizes() == y.sizes() && other->scalar_type() == x.scalar_type() && other->device().is_cpu(),
                "inception_fast::onednn_conv: `other` must match the output (", y.sizes(), ", ", x.scalar_type(),
                "), got ", other->sizes(), ", ", other->scalar_type());
    oc = other->contiguous(cl);
  }
  at::Tensor bc = has_bias ? bias->contiguous() : at::Tensor();
  ThreadState& ts = thread_state();
  Bound& b = ts.bind(e);
  if (b.wei_ptr != ptr(packed)) {  // (a memory object made on the weights once per buffer: no zero-padding pass a call)
    b.wei = memory(e.wei, cpu_engine(), ptr(packed));
    b.wei_ptr = ptr(packed);
  }
  b.src.set_data_handle(ptr(xc));
  b.dst.set_data_handle(y.data_ptr());
  b.scratch.set_data_handle(ts.scratchpad(e.scratch.get_size()));
  dnnl_exec_arg_t args[6] = {{DNNL_ARG_SRC, b.src.get()}, {DNNL_ARG_WEIGHTS, b.wei.get()}, {DNNL_ARG_DST, b.dst.get()},
                             {DNNL_ARG_SCRATCHPAD, b.scratch.get()}};
  int nargs = 4;
  if (has_bias) {
    b.bias.set_data_handle(ptr(bc));
    args[nargs++] = {DNNL_ARG_BIAS, b.bias.get()};
  }
  if (add) {
    b.other.set_data_handle(ptr(oc));
    args[nargs++] = {DNNL_ARG_ATTR_MULTIPLE_POST_OP(0) | DNNL_ARG_SRC_1, b.other.get()};
  }
  dnnl::error::wrap_c_api(dnnl_primitive_execute(e.prim.get(), cpu_stream().get(), nargs, args),
                          "inception_fast::onednn_conv: could not execute the convolution");
  cpu_stream().wait();
  return y;
}

}  // namespace

int64_t cache_size() {
  std::lock_guard<std::mutex> lock(g_mutex);
  return static_cast<int64_t>(g_cache.size());
}

TORCH_LIBRARY_IMPL(inception_fast, CPU, m) {
  m.impl("onednn_conv_pack", &conv_pack);
  m.impl("onednn_conv", &conv);
}

}  // namespace onednn
}  // namespace inception_fast

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  // The schemas of the two ops are inception_fast._C's (csrc/ops.cpp): this module only registers their
  // CPU kernels, so it loads _C first, and does not load without it.
  try {
    pybind11::module_::import("inception_fast._C");
  } catch (const pybind11::error_already_set& e) {
    throw pybind11::import_error("inception_fast._onednn needs inception_fast._C, which declares its schemas: " +
                                 pybind11::str(e.type().attr("__name__")).cast<std::string>() + ": " +
                                 pybind11::str(e.value()).cast<std::string>());
  }
  // Built against one oneDNN's headers, run with whatever libdnnl.so.3 the loader found: they must agree.
  const dnnl_version_t* v = dnnl_version();
  if (v->major != DNNL_VERSION_MAJOR || v->minor != DNNL_VERSION_MINOR) {
    throw pybind11::import_error("inception_fast._onednn was built against oneDNN " + std::to_string(DNNL_VERSION_MAJOR) +
                                 "." + std::to_string(DNNL_VERSION_MINOR) + " but loaded libdnnl " +
                                 std::to_string(v->major) + "." + std::to_string(v->minor));
  }
  m.def("cache_size", &inception_fast::onednn::cache_size, "Convolution primitives kept.");
  m.attr("DNNL_VERSION") = std::to_string(v->major) + "." + std::to_string(v->minor) + "." + std::to_string(v->patch);
}
