// Two independent bf16 convolutions of the models (batch 1, nhwc, oneDNN 3.2 primitives kept): one
// after the other on oneDNN's 2 OpenMP threads each, against side by side, each single-threaded
// inside one 2-thread region (oneDNN runs a primitive on the calling thread there), and side by side
// with primitives made for one thread. Whether an Inception block's branches on a thread each would
// beat oneDNN's own split of each convolution at batch 1 (they do not: see
// benchmarks/results/cpu_limits_epyc-zen4_2core.txt). Says MISMATCH where the two ways of running the
// same primitives do not give the same outputs.
//
//   V=.venv; g++ -O2 -fopenmp -std=c++17 benchmarks/onednn_pair.cpp -I$V/include -L$V/lib \
//     -l:libdnnl.so.3 -Wl,-rpath,$V/lib -o /tmp/onednn_pair && OMP_NUM_THREADS=2 /tmp/onednn_pair
#include <dnnl.hpp>
#include <omp.h>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <vector>
#include <algorithm>
#include <cstdint>
#include <cmath>
using namespace dnnl;
using tag = memory::format_tag;
using dt = memory::data_type;

struct Conv {
  convolution_forward prim;
  memory src, wei, bia, dst, scratch;
  std::vector<uint16_t> sbuf, dbuf; std::vector<float> bbuf; std::vector<uint8_t> wbuf, scbuf;
  Conv(engine& eng, int ic, int oc, int h, int kh, int kw, int ph, int pw) {
    memory::desc s({1, ic, h, h}, dt::bf16, tag::nhwc), d({1, oc, h, h}, dt::bf16, tag::nhwc);
    memory::desc w({oc, ic, kh, kw}, dt::bf16, tag::any), b({oc}, dt::f32, tag::a);
    post_ops po; po.append_eltwise(algorithm::eltwise_relu, 0.f, 0.f);
    primitive_attr attr; attr.set_post_ops(po); attr.set_scratchpad_mode(scratchpad_mode::user);
    convolution_forward::primitive_desc pd(eng, prop_kind::forward_inference, algorithm::convolution_direct, s, w, b, d,
                                           {1, 1}, {ph, pw}, {ph, pw}, attr);
    prim = convolution_forward(pd);
    sbuf.assign(s.get_size() / 2, 0x3f80); dbuf.assign(d.get_size() / 2, 0);
    for (size_t i = 0; i < sbuf.size(); ++i) sbuf[i] = 0x3f00 + (i * 7919) % 255;  // values in [0.5, 1)
    bbuf.assign(oc, 0.1f); wbuf.assign(pd.weights_desc().get_size(), 0);
    for (size_t i = 0; i + 1 < wbuf.size(); i += 2) { uint16_t v = 0x3c00 + (i * 31) % 255; if (i % 4) v |= 0x8000; std::memcpy(&wbuf[i], &v, 2); }
    scbuf.assign(std::max<size_t>(pd.scratchpad_desc().get_size(), 64), 0);
    src = memory(s, eng, sbuf.data()); dst = memory(d, eng, dbuf.data()); bia = memory(b, eng, bbuf.data());
    wei = memory(pd.weights_desc(), eng, wbuf.data()); scratch = memory(pd.scratchpad_desc(), eng, scbuf.data());
  }
  void run(stream& st) {
    prim.execute(st, {{DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, wei}, {DNNL_ARG_BIAS, bia}, {DNNL_ARG_DST, dst},
                      {DNNL_ARG_SCRATCHPAD, scratch}});
  }
  double checksum() { double s = 0; for (auto v : dbuf) { uint32_t b = uint32_t(v) << 16; float f; std::memcpy(&f, &b, 4); s += f; } return s; }
};

double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

int main(int argc, char** argv) {
  engine eng(engine::kind::cpu, 0);
  struct Case { const char* name; int ic, oc, h, kh, kw, ph, pw; int ic2, oc2, h2, kh2, kw2, ph2, pw2; };
  std::vector<Case> cases = {
    {"v3 E: 1x3 + 3x1 384->384 on 8x8", 384, 384, 8, 1, 3, 0, 1, 384, 384, 8, 3, 1, 1, 0},
    {"v3 E: 3x3 448->384 + 1x1 2048->192 on 8x8", 448, 384, 8, 3, 3, 1, 1, 2048, 192, 8, 1, 1, 0, 0},
    {"v3 C: 7x1 192->192 + 1x7 160->160 on 17x17", 192, 192, 17, 7, 1, 3, 0, 160, 160, 17, 1, 7, 0, 3},
    {"v3 A: 5x5 48->64 + 3x3 64->96 on 35x35", 48, 64, 35, 5, 5, 2, 2, 64, 96, 35, 3, 3, 1, 1},
    {"IR-v2 8: 1x3 192->224 + 3x1 224->256 on 8x8", 192, 224, 8, 1, 3, 0, 1, 224, 256, 8, 3, 1, 1, 0},
  };
  for (auto& c : cases) {
    Conv a(eng, c.ic, c.oc, c.h, c.kh, c.kw, c.ph, c.pw), b(eng, c.ic2, c.oc2, c.h2, c.kh2, c.kw2, c.ph2, c.pw2);
    omp_set_num_threads(1);  // primitives made for one thread (their blocking chosen for it)
    Conv a1(eng, c.ic, c.oc, c.h, c.kh, c.kw, c.ph, c.pw), b1(eng, c.ic2, c.oc2, c.h2, c.kh2, c.kw2, c.ph2, c.pw2);
    omp_set_num_threads(2);
    double best_par1 = 1e9;
    stream s0(eng);
    std::vector<stream> ss; ss.emplace_back(eng); ss.emplace_back(eng);
    const int reps = 200;
    double best_seq = 1e9, best_par = 1e9, seq_a = 1e9, seq_b = 1e9;
    for (int round = 0; round < 7; ++round) {
      double t = now();
      for (int r = 0; r < reps; ++r) { a.run(s0); b.run(s0); }
      best_seq = std::min(best_seq, (now() - t) / reps);
      double cs_seq = a.checksum() + b.checksum();
      std::fill(a.dbuf.begin(), a.dbuf.end(), 0); std::fill(b.dbuf.begin(), b.dbuf.end(), 0);
      t = now();
      for (int r = 0; r < reps; ++r) {
#pragma omp parallel num_threads(2)
        { if (omp_get_thread_num() == 0) a.run(ss[0]); else b.run(ss[1]); }
      }
      best_par = std::min(best_par, (now() - t) / reps);
      double cs_par = a.checksum() + b.checksum();
      if (std::fabs(cs_par - cs_seq) > 1e-6 * std::fabs(cs_seq)) std::printf("MISMATCH %g %g\n", cs_seq, cs_par);
      t = now();
      for (int r = 0; r < reps; ++r) {
#pragma omp parallel num_threads(2)
        { if (omp_get_thread_num() == 0) a1.run(ss[0]); else b1.run(ss[1]); }
      }
      best_par1 = std::min(best_par1, (now() - t) / reps);
      t = now(); for (int r = 0; r < reps; ++r) a.run(s0); seq_a = std::min(seq_a, (now() - t) / reps);
      t = now(); for (int r = 0; r < reps; ++r) b.run(s0); seq_b = std::min(seq_b, (now() - t) / reps);
    }
    std::printf("%-46s one after the other (2 threads each) %7.1f us (%.1f + %.1f), side by side (1 thread each) %7.1f us: %.3fx; primitives made for 1 thread %7.1f us: %.3fx\n",
                c.name, 1e6 * best_seq, 1e6 * seq_a, 1e6 * seq_b, 1e6 * best_par, best_seq / best_par, 1e6 * best_par1, best_seq / best_par1);
  }
}
