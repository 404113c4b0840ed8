// host_cache.cpp: see host_cache.h.
#include "cpu/host_cache.h"

#include <ATen/EmptyTensor.h>
#include <c10/core/CPUAllocator.h>
#include <c10/util/Exception.h>

#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>

namespace gru_native::cpu {
namespace {

// Requests below this go to c10's CPU allocator (glibc reuses such blocks itself).
constexpr size_t kMinCachedBytes = size_t(1) << 20;
// Free blocks held at most; beyond this, freed blocks go back to the system.
constexpr size_t kMaxCachedBytes = size_t(1) << 30;
constexpr size_t kAlignment = 64;

class HostCache {
 public:
  // The smallest free block that fits and is at most `bytes + bytes / slack_divisor` long, or
  // a new one.
  void* take(size_t bytes, size_t slack_divisor, size_t& capacity) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      auto it = free_.lower_bound(bytes);
      if (it != free_.end() && it->first <= bytes + bytes / slack_divisor) {
        capacity = it->first;
        void* p = it->second;
        free_.erase(it);
        free_bytes_ -= capacity;
        return p;
      }
    }
    capacity = (bytes + kAlignment - 1) / kAlignment * kAlignment;
    void* p = std::aligned_alloc(kAlignment, capacity);
    TORCH_CHECK(p != nullptr, "gru_native: out of memory allocating ", capacity, " bytes");
    return p;
  }

  void give_back(void* p, size_t capacity) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (free_bytes_ + capacity <= kMaxCachedBytes) {
        free_.emplace(capacity, p);
        free_bytes_ += capacity;
        return;
      }
    }
    std::free(p);
  }

  int64_t release() {
    std::multimap<size_t, void*> blocks;
    size_t bytes;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      blocks.swap(free_);
      bytes = free_bytes_;
      free_bytes_ = 0;
    }
    for (auto& block : blocks) std::free(block.second);
    return static_cast<int64_t>(bytes);
  }

  int64_t free_bytes() {
    std::lock_guard<std::mutex> lock(mutex_);
    return static_cast<int64_t>(free_bytes_);
  }

 private:
  std::mutex mutex_;
  std::multimap<size_t, void*> free_;
  size_t free_bytes_ = 0;
};

// Never destroyed: tensors may be freed during interpreter shutdown, after static destructors.
HostCache& cache() {
  static HostCache* instance = new HostCache();
  return *instance;
}

struct Block {
  void* data;
  size_t capacity;
};

void return_block(void* context) {
  auto* block = static_cast<Block*>(context);
  cache().give_back(block->data, block->capacity);
  delete block;
}

// A CPU allocator: large blocks from the cache, small ones from c10's. The storage of a tensor
// it allocated keeps it, so a resize goes through it too. A block handed out may be longer than
// asked by up to bytes / slack_divisor: twice as long for the ops' own tensors (freed within
// the call or with the graph), an eighth longer for the tensors they return, which the caller
// may keep.
class CachingAllocator final : public c10::Allocator {
 public:
  explicit CachingAllocator(size_t slack_divisor) : slack_divisor_(slack_divisor) {}
  c10::DataPtr allocate(size_t bytes) override {
    if (bytes < kMinCachedBytes) return c10::GetDefaultCPUAllocator()->allocate(bytes);
    size_t capacity = 0;
    void* data = cache().take(bytes, slack_divisor_, capacity);
    return {data, new Block{data, capacity}, &return_block, c10::Device(c10::kCPU)};
  }
  void copy_data(void* dest, const void* src, std::size_t count) const override {
    if (count > 0) std::memcpy(dest, src, count);
  }

 private:
  size_t slack_divisor_;
};

// Never destroyed, like the cache: a tensor may be resized during interpreter shutdown.
c10::Allocator* internal_allocator() {
  static CachingAllocator* instance = new CachingAllocator(1);
  return instance;
}
c10::Allocator* result_allocator() {
  static CachingAllocator* instance = new CachingAllocator(8);
  return instance;
}

at::Tensor empty_with(c10::Allocator* allocator, at::IntArrayRef sizes, at::ScalarType dtype) {
  return at::detail::empty_generic(sizes, allocator, c10::DispatchKeySet(c10::DispatchKey::CPU),
                                   dtype, std::nullopt);
}

}  // namespace

at::Tensor cached_empty(at::IntArrayRef sizes, at::ScalarType dtype) {
  return empty_with(internal_allocator(), sizes, dtype);
}

at::Tensor cached_result(at::IntArrayRef sizes, at::ScalarType dtype) {
  return empty_with(result_allocator(), sizes, dtype);
}

int64_t release_cached_blocks() { return cache().release(); }

int64_t cached_bytes() { return cache().free_bytes(); }

}  // namespace gru_native::cpu
