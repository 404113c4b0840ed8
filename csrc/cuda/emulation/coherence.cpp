// coherence.cpp: what the emulation's one coherent memory would hide: per launch, which block
// wrote each address (2-byte granules, the smallest element), and the loads and stores of another
// block's write that a GPU does not order or may serve from a stale cache line:
//   - in an ordinary launch, any access to another block's write (its blocks are not ordered;
//     atomics against atomics excepted);
//   - in a cooperative launch, an access before the grid.sync() that orders the write (the
//     writer had passed as many grid.sync() calls as the reader, or more);
//   - after that grid.sync(), a plain load or __ldg of it: only __ldcg, volatile and atomic loads
//     bypass the L1 (or read-only) cache, which may hold the line from before the write.
// The first finding fails the launch with both blocks, the address and the access in the
// message. Only kernels compiled with the instrumentation call this (checks/tsan_hooks.cpp: the
// checks driver's coherence run); a thread's own stack and its block's shared memory are skipped.
#include <mutex>
#include <sstream>
#include <string>
#include <unordered_map>

#include "cuda/emulation/runtime_internal.h"

namespace gru_emu {

struct Writer {
  int64_t block;
  int grid_syncs;
  bool atomic;
};

struct WriteLog {
  std::unordered_map<uintptr_t, Writer> granules;  // address / 2 -> its last writer
};

void destroy(WriteLog* log) { delete log; }

namespace {

// The access's thread, or nullptr if nothing is to be checked (host code, its own stack, its
// block's shared memory).
ThreadState* checked(const void* p) {
  ThreadState* t = current_thread;
  if (t == nullptr || t->launch == nullptr) return nullptr;
  const char* c = static_cast<const char*>(p);
  if (c >= t->stack_lo && c < t->stack_hi) return nullptr;
  const char* smem = reinterpret_cast<const char*>(t->smem);
  if (c >= smem && c < smem + t->block->smem_bytes) return nullptr;
  return t;
}

const char* access_name(Access how, bool store) {
  switch (how) {
    case Access::kPlain: return store ? "a store" : "a plain load (or __ldg)";
    case Access::kVolatile: return store ? "a volatile store" : "a volatile load";
    case Access::kAtomic: return store ? "an atomic store" : "an atomic load (or __ldcg)";
  }
  return "";
}

void report(ThreadState& t, const void* p, Access how, bool store, const Writer& w,
            const char* why) {
  Launch& L = *t.launch;
  std::ostringstream text;
  text << kernel_name(L.func) << ": " << block_name(*t.block, L) << " (thread " << t.rank
       << ", after " << t.grid_syncs << " grid.sync) " << access_name(how, store) << " at " << p
       << " that block " << w.block << " wrote (after " << w.grid_syncs << " grid.sync) in "
       << "this launch: " << why;
  L.fail(text.str());
}

void check(const void* p, size_t bytes, Access how, bool store) {
  ThreadState* t = checked(p);
  if (t == nullptr || bytes == 0) return;
  Launch& L = *t->launch;
  const int64_t me = t->block->linear;
  std::lock_guard<std::mutex> lock(L.writes_mutex);
  if (!L.writes) L.writes.reset(new WriteLog());
  auto& granules = L.writes->granules;
  const uintptr_t first = reinterpret_cast<uintptr_t>(p) / 2;
  const uintptr_t last = (reinterpret_cast<uintptr_t>(p) + bytes - 1) / 2;
  for (uintptr_t g = first; g <= last; ++g) {
    auto it = granules.find(g);
    if (it != granules.end() && it->second.block != me && !L.failed.load()) {
      const Writer& w = it->second;
      const bool both_atomic = how == Access::kAtomic && w.atomic;
      if (!L.cooperative && !both_atomic) {
        report(*t, p, how, store, w,
               "the blocks of an ordinary launch are not ordered (a race between blocks)");
      } else if (L.cooperative && w.grid_syncs >= t->grid_syncs && !both_atomic) {
        report(*t, p, how, store, w, "no grid.sync() orders the two (a race between blocks)");
      } else if (L.cooperative && !store && how == Access::kPlain) {
        report(*t, p, how, store, w,
               "a plain load may hit a stale L1 line of it after grid.sync(); another block's "
               "data needs __ldcg (or a volatile or atomic load)");
      }
    }
    if (store) granules[g] = Writer{me, t->grid_syncs, how == Access::kAtomic};
  }
}

}  // namespace

void check_load(const void* p, size_t bytes, Access how) { check(p, bytes, how, false); }
void check_store(const void* p, size_t bytes, Access how) { check(p, bytes, how, true); }

}  // namespace gru_emu
