// Why not at::mm alone: on this project's CPUs MKL's sgemm runs the small-M products of an Inception
// block on a small map at 40-80% of what oneDNN's matmul reaches, and the weight gradients (whose
// reduction runs over the few rows N*H*W, e.g. 8 at a 1x1 map) at 15-50% (measured on a 2-core Zen 4,
// hot cache: IR-v2's 1x1 GEMMs of one 75x75 training step 66.9 ms with mm, 60.1 ms with oneDNN;
// Inception-v4's 51.0 and 32.3 ms). ATen sends only bfloat16/float16 products to oneDNN.
//
// ATen exports its oneDNN matmul (at::native::mkldnn_matmul) but ships no header for it, and its
// signature is not a public API: it is looked up by name at run time, and when it is missing, or
// refuses this CPU (it wants AVX-512 BW/VL/DQ or AVX-NE-CONVERT for float32), mm says so once and
// uses at::mm. INCEPTION_FAST_ONEDNN_MATMUL=0 (read once, at the first GEMM) turns it off.
#include "runtime/gemm.h"

#include <ATen/Context.h>
#include <c10/util/Exception.h>

#include <cstdlib>
#include <string>

#if defined(__linux__)
#include <dlfcn.h>
#endif

namespace inception_fast {
namespace cpu {
namespace {

// at::native::mkldnn_matmul(mat1, mat2, result, beta, alpha): result = beta * result + alpha * mat1 @ mat2.
using MatmulFn = void (*)(const at::Tensor&, const at::Tensor&, const at::Tensor&, float, float);

MatmulFn find_matmul(std::string* why) {
#if defined(__linux__)
  void* lib = dlopen("libtorch_cpu.so", RTLD_LAZY | RTLD_NOLOAD);
  if (lib == nullptr) {
    *why = "libtorch_cpu.so is not loaded under that name";
    return nullptr;
  }
  void* sym = dlsym(lib, "_ZN2at6native13mkldnn_matmulERKNS_6TensorES3_S3_ff");
  dlclose(lib);  // only drops the reference dlopen took; torch keeps the library loaded
  if (sym == nullptr) *why = "this torch build does not export at::native::mkldnn_matmul";
  return reinterpret_cast<MatmulFn>(sym);
#else
  *why = "looked up only on Linux";
  return nullptr;
#endif
}

// The matmul, once it has computed a small product right on this machine; null (after one warning)
// otherwise.
MatmulFn usable_matmul() {
  static const MatmulFn fn = []() -> MatmulFn {
    std::string why;
    const char* env = std::getenv("INCEPTION_FAST_ONEDNN_MATMUL");
    if (env != nullptr && std::string(env) == "0") return nullptr;  // turned off by the user: no warning
    MatmulFn f = find_matmul(&why);
    if (f != nullptr) {
      try {
        const at::Tensor a = at::arange(6, at::kFloat).view({2, 3});
        const at::Tensor b = at::arange(12, at::kFloat).view({3, 4});
        const at::Tensor out = at::empty({2, 4}, at::kFloat);
        f(a, b, out, 0.f, 1.f);
        if (!at::equal(out, at::mm(a, b))) {
          why = "it gave a wrong product in the start-up check";
          f = nullptr;
        }
      } catch (const c10::Error& e) {
        why = e.what_without_backtrace();
        f = nullptr;
      }
    }
    if (f == nullptr) {
      TORCH_WARN("inception_fast: oneDNN's float32 matmul is not usable here (", why,
                 "); conv1x1 runs its GEMMs with ATen's mm, which is slower on small maps");
    }
    return f;
  }();
  return fn;
}

// Row-major, or the transpose of a row-major matrix: what oneDNN takes without a copy.
bool compact(const at::Tensor& t) {
  return (t.stride(1) == 1 && t.stride(0) == t.size(1)) || (t.stride(0) == 1 && t.stride(1) == t.size(0));
}

}  // namespace

bool onednn_matmul_available() { return at::globalContext().userEnabledMkldnn() && usable_matmul() != nullptr; }

at::Tensor mm(const at::Tensor& a_in, const at::Tensor& b_in, const std::optional<at::Tensor>& bias) {
  const bool candidate = a_in.is_cpu() && a_in.scalar_type() == at::kFloat && b_in.scalar_type() == at::kFloat &&
                         a_in.size(0) > 1 && a_in.size(1) > 1 && b_in.size(1) > 1 &&
                         at::globalContext().userEnabledMkldnn();
  const MatmulFn f = candidate ? usable_matmul() : nullptr;
  if (f == nullptr) return bias.has_value() ? at::addmm(*bias, a_in, b_in) : at::mm(a_in, b_in);
  // oneDNN takes row-major or transposed operands; anything else (a strided slice) is copied once,
  // as ATen's own oneDNN path does.
  const at::Tensor a = compact(a_in) ? a_in : a_in.contiguous();
  const at::Tensor b = compact(b_in) ? b_in : b_in.contiguous();
  at::Tensor out;
  if (bias.has_value()) {
    out = bias->expand({a.size(0), b.size(1)}).contiguous();  // the product is added to it (beta = 1)
    f(a, b, out, 1.f, 1.f);
  } else {
    out = at::empty({a.size(0), b.size(1)}, a.options());
    f(a, b, out, 0.f, 1.f);
  }
  return out;
}

}  // namespace cpu
}  // namespace inception_fast
