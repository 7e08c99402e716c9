// The caching CPU allocator behind OptimizedModel's forward (memory_pool.cpp says why and how).
#pragma once

#include <cstddef>
#include <cstdint>

namespace inception_fast {
namespace cpu {

struct PoolStats {
  size_t live_bytes;    // pooled blocks in use
  size_t cached_bytes;  // freed blocks kept for reuse
  uint64_t hits, misses;
};

// Enter / leave a pooled scope on this thread (nestable). The first enter installs the allocator;
// it throws c10::Error when it cannot be installed.
void pool_enter();
void pool_exit();
// Free every cached block.
void pool_empty();
// Most bytes kept cached; freed blocks beyond it go back to the system (largest first when lowered).
void pool_set_limit(size_t bytes);
size_t pool_limit();
PoolStats pool_stats();

}  // namespace cpu
}  // namespace inception_fast
