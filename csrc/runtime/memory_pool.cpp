// A caching CPU allocator for inference: inside a pooled scope (a thread-local depth counter, set
// by OptimizedModel's forward), every allocation of at least kMinBytes is served from a cache of
// freed blocks, and every block it served goes back to that cache when freed (wherever, whenever).
//
// Why: glibc serves large blocks with mmap and returns them to the system on free (above its
// dynamic threshold, at most 32 MiB, and by trimming the heap top), so each forward of a model at a
// real batch size touches fresh pages again: measured 13,000 page faults per forward of googlenet,
// 87,000 of inception_resnet_v2 (float32, batch 8), 5-9% of their run time on a 2-core Zen 4.
// ONNX Runtime and OpenVINO keep their own arenas; this is ours. Outside a scope nothing changes:
// allocations go to the allocator that was installed before (ATen's default), unpooled.
//
// The allocator is installed once (c10::SetCPUAllocator) on first use. Every DataPtr it returns has
// data == context and the same deleter, which is what the raw_allocate / raw_deallocate API
// requires (ATen's oneDNN glue allocates through it): the deleter looks the pointer up among the
// pooled blocks and hands anything else to the previous allocator's raw deleter.
#include "runtime/memory_pool.h"

#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>
#include <c10/core/impl/alloc_cpu.h>
#include <c10/util/Exception.h>

#include <pthread.h>

#include <atomic>
#include <cstddef>
#include <map>
#include <string>
#include <mutex>
#include <unordered_map>

namespace inception_fast {
namespace cpu {
namespace {

constexpr size_t kMinBytes = size_t(256) << 10;  // glibc serves smaller blocks from its heap, no faults
constexpr size_t kRound = size_t(64) << 10;       // block sizes are multiples of this

thread_local int tls_depth = 0;
std::atomic<size_t> g_limit{size_t(2) << 30};  // most bytes kept cached (freed blocks), 2 GiB by default

class CachingCPUAllocator final : public c10::Allocator {
 public:
  explicit CachingCPUAllocator(c10::Allocator* base) : base_(base), base_raw_deleter_(base->raw_deleter()) {}

  c10::DataPtr allocate(size_t n) override {
    if (tls_depth == 0 || n < kMinBytes) {
      // The previous allocator's block under this allocator's deleter (which hands it back), so
      // that every DataPtr from here has the deleter raw_deleter() names.
      c10::DataPtr d = base_->allocate(n);
      if (d.get() != d.get_context()) return d;
      void* p = d.release_context();
      return {p, p, &CachingCPUAllocator::Delete, d.device()};
    }
    const size_t size = (n + kRound - 1) / kRound * kRound;
    void* p = nullptr;
    size_t got = size;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      // best fit, at most a quarter larger than asked (a big block is not spent on a small tensor)
      auto it = free_.lower_bound(size);
      if (it != free_.end() && it->first <= size + size / 4) {
        got = it->first;
        p = it->second;
        free_.erase(it);
        cached_bytes_ -= got;
        ++hits_;
      } else {
        ++misses_;
      }
    }
    if (p == nullptr) p = c10::alloc_cpu(got);  // throws c10::Error on out-of-memory
    {
      std::lock_guard<std::mutex> lock(mutex_);
      live_[p] = got;
      live_bytes_ += got;
      ever_used_.store(true, std::memory_order_release);
    }
    return {p, p, &CachingCPUAllocator::Delete, c10::Device(c10::DeviceType::CPU)};
  }

  c10::DeleterFnPtr raw_deleter() const override { return &CachingCPUAllocator::Delete; }

  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }

  static void Delete(void* p);

  void lock() { mutex_.lock(); }
  void unlock() { mutex_.unlock(); }

  void release(void* p) {
    if (ever_used_.load(std::memory_order_acquire)) {
      std::unique_lock<std::mutex> lock(mutex_);
      auto it = live_.find(p);
      if (it != live_.end()) {
        const size_t size = it->second;
        live_.erase(it);
        live_bytes_ -= size;
        if (cached_bytes_ + size <= g_limit.load(std::memory_order_relaxed)) {
          free_.emplace(size, p);
          cached_bytes_ += size;
          return;
        }
        lock.unlock();
        c10::free_cpu(p);
        return;
      }
    }
    base_raw_deleter_(p);  // not ours: allocated by the previous allocator (data == context)
  }

  void empty() {
    std::multimap<size_t, void*> drop;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      drop.swap(free_);
      cached_bytes_ = 0;
    }
    for (auto& kv : drop) c10::free_cpu(kv.second);
  }

  void trim() {
    std::multimap<size_t, void*> drop;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      while (cached_bytes_ > g_limit.load(std::memory_order_relaxed) && !free_.empty()) {  // largest blocks first
        auto it = std::prev(free_.end());
        cached_bytes_ -= it->first;
        drop.emplace(it->first, it->second);
        free_.erase(it);
      }
    }
    for (auto& kv : drop) c10::free_cpu(kv.second);
  }

  PoolStats stats() {
    std::lock_guard<std::mutex> lock(mutex_);
    return {live_bytes_, cached_bytes_, hits_, misses_};
  }

 private:
  c10::Allocator* base_;
  c10::DeleterFnPtr base_raw_deleter_;
  std::mutex mutex_;
  std::multimap<size_t, void*> free_;       // cached blocks by size
  std::unordered_map<void*, size_t> live_;  // blocks handed out (they come back here when freed)
  std::atomic<bool> ever_used_{false};
  size_t live_bytes_ = 0, cached_bytes_ = 0;
  uint64_t hits_ = 0, misses_ = 0;
};

std::atomic<CachingCPUAllocator*> g_pool{nullptr};

void CachingCPUAllocator::Delete(void* p) {
  if (p != nullptr) g_pool.load(std::memory_order_acquire)->release(p);
}

// Installed once, never destroyed: blocks it handed out may be freed at any time, even at exit.
CachingCPUAllocator* pool_or_install() {
  static std::once_flag once;
  static std::string failure;
  std::call_once(once, [] {
    c10::Allocator* base = c10::GetCPUAllocator();
    if (base->raw_deleter() == nullptr) {
      failure = "the installed CPU allocator has no raw deleter";
      return;
    }
    auto* pool = new CachingCPUAllocator(base);
    g_pool.store(pool, std::memory_order_release);
    // A fork while another thread holds the pool's lock would leave the child's copy locked
    // forever (DataLoader workers fork): hold it across the fork, release it on both sides.
    pthread_atfork([] { g_pool.load()->lock(); }, [] { g_pool.load()->unlock(); },
                   [] { g_pool.load()->unlock(); });
    c10::SetCPUAllocator(pool, /*priority=*/0);
    if (c10::GetCPUAllocator() != pool) failure = "another CPU allocator of higher priority is installed";
  });
  TORCH_CHECK(failure.empty(), "inception_fast's CPU memory pool is unavailable: ", failure);
  return g_pool.load(std::memory_order_acquire);
}

}  // namespace

void pool_enter() {
  pool_or_install();
  ++tls_depth;
}

void pool_exit() {
  TORCH_CHECK(tls_depth > 0, "inception_fast: memory pool scope exited more often than entered");
  --tls_depth;
}

void pool_empty() {
  if (auto* pool = g_pool.load(std::memory_order_acquire)) pool->empty();
}

void pool_set_limit(size_t bytes) {
  g_limit.store(bytes, std::memory_order_relaxed);
  if (auto* pool = g_pool.load(std::memory_order_acquire)) pool->trim();
}

size_t pool_limit() { return g_limit.load(std::memory_order_relaxed); }

PoolStats pool_stats() {
  auto* pool = g_pool.load(std::memory_order_acquire);
  return pool != nullptr ? pool->stats() : PoolStats{0, 0, 0, 0};
}

}  // namespace cpu
}  // namespace inception_fast
