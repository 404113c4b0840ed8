// host_memory.cpp: pinned host memory (cudaHostAlloc, cudaMallocHost, cudaFreeHost; host_api.h).
// Asynchronous copies from and to it are queued (streams.cpp), so the emulation remembers which
// blocks are pinned and which were freed: cudaFreeHost fills a block with 0xff bytes (NaN in every
// float type) at once, and a queued copy that meets a freed block fails (cudaErrorIllegalAddress,
// with the block in the message) instead of reading it. The memory itself goes back to the heap
// once no work is pending; the freed ranges are remembered a while longer, for graph replays.
#include <cstdlib>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "cuda/emulation/runtime_internal.h"

namespace gru_emu {
namespace {

struct Freed {
  uintptr_t begin, end;
};

constexpr size_t kRememberedRanges = 4096;

std::mutex mutex;
std::map<uintptr_t, size_t>& live() {  // begin -> bytes
  static auto* blocks = new std::map<uintptr_t, size_t>();  // never destroyed
  return *blocks;
}
std::deque<Freed>& freed() {
  static auto* ranges = new std::deque<Freed>();
  return *ranges;
}
std::vector<void*>& unreleased() {  // freed, poisoned, not yet back to the heap
  static auto* blocks = new std::vector<void*>();
  return *blocks;
}

// The live block holding p, or live().end() (mutex held).
std::map<uintptr_t, size_t>::const_iterator live_block(uintptr_t p) {
  auto it = live().upper_bound(p);
  if (it == live().begin()) return live().end();
  --it;
  return p < it->first + it->second ? it : live().end();
}

}  // namespace

cudaError_t host_alloc(void** ptr, size_t bytes, unsigned flags) {
  if (ptr == nullptr || flags > 0x0f) return cudaErrorInvalidValue;
  void* p = std::malloc(bytes == 0 ? 1 : bytes);
  if (p == nullptr) {
    *ptr = nullptr;
    return cudaErrorMemoryAllocation;
  }
  std::memset(p, 0xff, bytes);  // not initialised
  const uintptr_t begin = reinterpret_cast<uintptr_t>(p), end = begin + bytes;
  std::lock_guard<std::mutex> lock(mutex);
  live()[begin] = bytes;
  auto& ranges = freed();  // the heap handed the range out again: no longer a freed block
  for (size_t i = 0; i < ranges.size();) {
    if (ranges[i].begin < end && begin < ranges[i].end) {
      ranges.erase(ranges.begin() + static_cast<std::ptrdiff_t>(i));
    } else {
      ++i;
    }
  }
  *ptr = p;
  return cudaSuccess;
}

cudaError_t host_free(void* ptr) {
  if (ptr == nullptr) return cudaSuccess;
  std::lock_guard<std::mutex> lock(mutex);
  auto it = live().find(reinterpret_cast<uintptr_t>(ptr));
  if (it == live().end()) return cudaErrorInvalidValue;
  std::memset(ptr, 0xff, it->second);
  freed().push_back(Freed{it->first, it->first + it->second});
  if (freed().size() > kRememberedRanges) freed().pop_front();
  live().erase(it);
  unreleased().push_back(ptr);
  return cudaSuccess;
}

bool is_pinned(const void* p) {
  std::lock_guard<std::mutex> lock(mutex);
  return live_block(reinterpret_cast<uintptr_t>(p)) != live().end();
}

std::string freed_pinned(const void* p, size_t bytes) {
  const uintptr_t begin = reinterpret_cast<uintptr_t>(p), end = begin + bytes;
  std::lock_guard<std::mutex> lock(mutex);
  for (const Freed& f : freed()) {
    if (f.begin < end && begin < f.end) {
      return "pinned host memory [" + std::to_string(f.begin) + ", +" +
             std::to_string(f.end - f.begin) + ") was freed with cudaFreeHost (or handed back " +
             "to a caching host allocator without recording the stream that uses it)";
    }
  }
  return "";
}

void release_freed_host_memory() {
  std::vector<void*> now;
  {
    std::lock_guard<std::mutex> lock(mutex);
    now.swap(unreleased());
  }
  for (void* p : now) std::free(p);
}

}  // namespace gru_emu
