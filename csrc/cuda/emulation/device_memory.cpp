// device_memory.cpp: device memory under the CUDA emulation. CPU tensors stand for device memory,
// so the process's CPU allocator (c10::GetCPUAllocator) is wrapped, once this library loads:
//   - a new allocation is filled with 0xff bytes (NaN in every float type), as device memory
//     holds whatever was there before: a kernel that reads what nothing wrote shows;
//   - it sits between two guard regions of 0xff bytes (kGuard each), so that a kernel reading past
//     a tensor's end (a weight times zero padding, say) reads NaN, not a neighbour's numbers;
//   - a tensor freed while work is queued on a stream (streams.cpp) is freed in that stream's
//     order, as torch's CUDA caching allocator reuses memory: the work queued before the free
//     still reads it, the memory is then filled with 0xff (work queued after the free reads NaN),
//     and it goes back to the heap once no work is pending (under graph capture: once the graph
//     is gone).
// Sanitizer builds keep the poison and the stream order but no guards: AddressSanitizer's own
// redzones find reads and writes past the end.
#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>
#include <c10/util/Exception.h>

#include <cstring>
#include <mutex>
#include <unordered_map>
#include <utility>

#include "cuda/emulation/runtime_internal.h"
#include "cuda/torch_cuda.h"

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define GRU_EMU_GUARDS 0
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define GRU_EMU_GUARDS 0
#endif
#endif
#ifndef GRU_EMU_GUARDS
#define GRU_EMU_GUARDS 1
#endif

namespace gru_native::emulation {
namespace {

constexpr size_t kGuard = GRU_EMU_GUARDS ? 1024 : 0;  // bytes before and after each allocation

class DeviceMemory final : public c10::Allocator {
 public:
  explicit DeviceMemory(c10::Allocator* inner) : inner_(inner) {}

  c10::DataPtr allocate(size_t bytes) override {
    c10::DataPtr block = inner_->allocate(bytes + 2 * kGuard);
    auto* base = static_cast<unsigned char*>(block.get());
    if (base == nullptr) return block;
    std::memset(base, 0xff, bytes + 2 * kGuard);
    void* user = base + kGuard;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      blocks_.emplace(user, Entry{std::move(block), bytes});
    }
    return c10::DataPtr(user, user, &release, c10::Device(c10::kCPU));
  }

  c10::DeleterFnPtr raw_deleter() const override { return &release; }

  void copy_data(void* dst, const void* src, std::size_t bytes) const override {
    std::memcpy(dst, src, bytes);
  }

  static DeviceMemory& instance();

 private:
  struct Entry {
    c10::DataPtr block;  // the inner allocation, guards included
    size_t bytes;
  };

  static void release(void* user) {
    DeviceMemory& self = instance();
    auto entry = std::make_shared<Entry>();
    {
      std::lock_guard<std::mutex> lock(self.mutex_);
      auto it = self.blocks_.find(user);
      TORCH_INTERNAL_ASSERT(it != self.blocks_.end(), "gru_native emulation: freeing ", user,
                            ", which this allocator did not allocate");
      *entry = std::move(it->second);
      self.blocks_.erase(it);
    }
    const size_t bytes = entry->bytes;
    gru_emu::retire(
        gru_native::torch_cuda::current_stream(),
        [user, bytes] { std::memset(user, 0xff, bytes); },
        [entry]() mutable { entry->block.clear(); });
  }

  c10::Allocator* inner_;
  std::mutex mutex_;
  std::unordered_map<void*, Entry> blocks_;
};

DeviceMemory& DeviceMemory::instance() {
  // Never destroyed: tensors may be freed during the process's exit.
  static auto* memory = new DeviceMemory(c10::GetCPUAllocator());
  return *memory;
}

const bool installed = [] {
  c10::SetCPUAllocator(&DeviceMemory::instance(), /*priority=*/100);
  return true;
}();

}  // namespace
}  // namespace gru_native::emulation
