// runtime_internal.h: what the emulation runtime's files (runtime.h's implementation) share, and
// nothing of it is seen by the kernels:
//   device_model.cpp  the emulated device: its configuration, attributes, occupancy, errors;
//   launch.cpp        launches, barriers and warp exchanges, for either way of running threads;
//   fibers.cpp        CUDA threads as fibers on the calling host thread (the default);
//   os_threads.cpp    CUDA threads as OS threads (the sanitizer runs).
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "cuda/emulation/runtime.h"

namespace gru_emu {

// -- the emulated device (device_model.cpp) ------------------------------------------------------

// The environment variable `name` as an integer, or `fallback` if it is unset or empty, or (with
// a message) not an integer from 0 to 2^30.
int env_int(const char* name, int fallback);

struct DeviceConfig {
  int sms, smem_optin, smem_per_sm, regs, cooperative;
};

// Read from the environment at every call (a test may change it between launches).
DeviceConfig config();
// cudaFuncAttributeMaxDynamicSharedMemorySize as last set for func (48 KiB if never).
int function_max_dynamic_smem(const void* func);
// Blocks of `threads` threads and `smem` bytes of dynamic shared memory resident on one SM.
int blocks_per_sm(const DeviceConfig& c, int threads, size_t smem);
// Keeps what made a launch fail, for last_failure() on this host thread.
void set_last_failure(const std::string& why);

// -- launches (launch.cpp) -----------------------------------------------------------------------

// What a launch's CUDA threads are (GRU_NATIVE_EMULATION_THREADS).
enum class Mode { kFiber, kOs };
// The order in which the threads a barrier releases resume (fibers).
enum class Order { kAlternate, kForward, kReverse, kRandom };

struct Fiber;

// Threads that meet at one barrier: a warp, a block, or a cooperative grid.
struct Group {
  const char* what = "";
  int size = 0, exited = 0, arrived = 0;
  uint64_t generation = 0;
  std::vector<Fiber*> waiting;  // fibers
  std::mutex mutex;             // OS threads
  std::condition_variable cv;
};

struct Warp {
  Group group;
  int first_rank = 0, lanes = 0;
  uint64_t slots[32] = {};
};

struct Block {
  Group group;
  std::unique_ptr<Warp[]> warps;
  std::unique_ptr<unsigned char[]> smem;
  uint3 index{0, 0, 0};
};

struct Launch {
  dim3 grid, block;
  bool cooperative = false;
  const Body* body = nullptr;
  Mode mode = Mode::kFiber;
  Order order = Order::kAlternate;
  unsigned seed = 0;
  Group grid_group;  // cooperative launches
  // OS threads: how many have started and not exited, and how many of those wait at a barrier
  // (all of them: a deadlock).
  std::mutex state_mutex;
  int64_t live = 0, blocked = 0;
  std::atomic<bool> failed{false};
  std::mutex failure_mutex;
  std::string failure;
  int threads() const { return static_cast<int>(block.x * block.y * block.z); }
  int64_t blocks() const { return int64_t(grid.x) * grid.y * grid.z; }

  void fail(const std::string& why) {
    std::lock_guard<std::mutex> lock(failure_mutex);
    if (!failed.load()) failure = why;
    failed.store(true);
  }
};

// Makes t thread `rank` of block b of launch L.
void init_thread(ThreadState& t, Launch& L, Block& b, int rank);

// The groups a thread belongs to, innermost first.
inline int groups_of(const ThreadState& t, Group* out[3]) {
  int n = 0;
  out[n++] = &t.warp->group;
  out[n++] = &t.block->group;
  if (t.launch->cooperative) out[n++] = &t.launch->grid_group;
  return n;
}

// -- the two ways of running a launch's threads (fibers.cpp, os_threads.cpp) ---------------------
// run_*: runs every thread of `blocks` (resident together) until all have ended or L fails
//   (a deadlock fails it); run_fibers' `first` is the linear index of blocks[0] in the grid.
// arrive_*: the calling thread waits at g until g's threads that have not exited all arrive.
// abandon_*: the calling thread of a failed launch stops for good.

void run_fibers(Launch& L, std::vector<std::unique_ptr<Block>>& blocks, int64_t first);
void arrive_fiber(Group& g);
[[noreturn]] void abandon_fiber();  // never resumed

void run_os_threads(Launch& L, std::vector<std::unique_ptr<Block>>& blocks);
void arrive_os(Group& g, Launch& L);
[[noreturn]] void abandon_os_thread();  // unwinds to where the OS thread started the body

}  // namespace gru_emu
