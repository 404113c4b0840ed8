// runtime_internal.h: what the emulation runtime's files (runtime.h's implementation) share, and
// nothing of it is seen by the kernels:
//   device_model.cpp  the emulated device: its configuration, attributes, occupancy, errors, the
//                     kernels' register counts;
//   launch.cpp        launches, barriers and warp exchanges, for either way of running threads;
//   fibers.cpp        CUDA threads as fibers on the calling host thread (the default);
//   os_threads.cpp    CUDA threads as OS threads (the sanitizer runs);
//   streams.cpp       streams, the work queued on them, graph capture, copies and memsets;
//   host_memory.cpp   pinned host memory;
//   coherence.cpp     which block wrote what in a launch, and the loads that may not see it.
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
  int sms, smem_optin, smem_per_sm, cooperative;
};

// Read from the environment at every call (a test may change it between launches).
DeviceConfig config();
// cudaFuncAttributeMaxDynamicSharedMemorySize as last set for func (48 KiB if never).
int function_max_dynamic_smem(const void* func);
// Blocks of `threads` threads of `regs` registers each and `smem` bytes of dynamic shared memory
// resident on one SM.
int blocks_per_sm(const DeviceConfig& c, int regs, int threads, size_t smem);

// A kernel's registers per thread, as ptxas allocates them for sm_90 (the table
// registers.inc, which kernels_emulated.cpp registers), and its name for messages.
struct KernelInfo {
  const void* func;
  const char* name;
  int regs;
};
// Registers `n` kernels; returns true (for a static initialiser).
bool register_kernels(const KernelInfo* kernels, size_t n);
// Registers per thread of func: its table entry, else kUnlistedRegisters (the checks driver's
// own kernels).
constexpr int kUnlistedRegisters = 32;
int kernel_registers(const void* func);
// func's name in the table, else "a kernel".
const char* kernel_name(const void* func);
// Keeps what made a launch fail, for last_failure() on this host thread.
void set_last_failure(const std::string& why);

// -- streams (streams.cpp) and pinned host memory (host_memory.cpp) ------------------------------

// One piece of work queued on a stream: a kernel launch, a copy, a memset, a host function.
struct Work {
  const char* what = "";
  bool device = true;  // false: bookkeeping that runs even after an earlier failure
  std::function<cudaError_t()> run;
};

// Queues w on stream (nullptr: the legacy default stream), or records it into the graph the
// stream captures.
cudaError_t enqueue(cudaStream_t stream, Work w);
// Whether any stream has queued work that has not run.
bool work_pending();
// Memory freed at this point of stream's order: poison() runs when the work queued on it so far
// has run (at once if nothing is pending), release() once no work is pending at all; under
// capture, poison() is part of the graph and release() waits until the graph is gone.
void retire(cudaStream_t stream, std::function<void()> poison, std::function<void()> release);

bool is_pinned(const void* p);
// Why [p, p + bytes) may no longer be copied: it lies in pinned memory freed since; else "".
std::string freed_pinned(const void* p, size_t bytes);
// Freed pinned blocks go back to the heap (no work is pending).
void release_freed_host_memory();

// -- the coherence check (coherence.cpp) ---------------------------------------------------------

// How a load or store reached memory: a plain access (or __ldg: the caches may serve a stale
// line), a volatile one, an atomic one (__ldcg is one here: runtime.h).
enum class Access { kPlain, kVolatile, kAtomic };
// Called for every access of an instrumented kernel (checks/tsan_hooks.cpp): records which block
// of the launch wrote each address, and fails the launch on a load or store of another block's
// write that nothing orders (an ordinary launch; no grid.sync() between) or that a cacheable
// load reads after grid.sync().
void check_load(const void* p, size_t bytes, Access how);
void check_store(const void* p, size_t bytes, Access how);
struct WriteLog;
void destroy(WriteLog* log);
struct WriteLogDeleter {
  void operator()(WriteLog* log) const { destroy(log); }
};

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
  size_t smem_bytes = 0;
  uint3 index{0, 0, 0};
  int64_t linear = 0;           // index in the grid
  std::atomic<int> live{0};     // threads that have not exited
};

struct Launch {
  const void* func = nullptr;
  dim3 grid, block;
  bool cooperative = false;
  const Body* body = nullptr;
  Mode mode = Mode::kFiber;
  Order order = Order::kAlternate;
  unsigned seed = 0;
  Group grid_group;  // cooperative launches
  // Blocks of a cooperative launch whose threads have all exited: a grid.sync() the others
  // reach would wait for them forever.
  std::atomic<int64_t> blocks_exited{0};
  // Which block wrote what (instrumented kernels only: coherence.cpp), made at the first store.
  std::mutex writes_mutex;
  std::unique_ptr<WriteLog, WriteLogDeleter> writes;
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

// A thread of L has exited (before its groups count it out): if it was its block's last thread
// and another block waits at grid.sync(), L fails. grid_arrived: threads waiting at grid.sync()
// (read under the grid group's lock by the caller in OS-thread mode).
void thread_exited(ThreadState& t, int grid_arrived);

// A block's name for messages: "block 3" or "block (3, 1, 0)".
std::string block_name(const Block& b, const Launch& L);

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
//   (a deadlock fails it); threads start in the order of `blocks` (block-major).
// arrive_*: the calling thread waits at g until g's threads that have not exited all arrive.
// abandon_*: the calling thread of a failed launch stops for good.

void run_fibers(Launch& L, std::vector<std::unique_ptr<Block>>& blocks);
void arrive_fiber(Group& g);
[[noreturn]] void abandon_fiber();  // never resumed

void run_os_threads(Launch& L, std::vector<std::unique_ptr<Block>>& blocks);
void arrive_os(Group& g, Launch& L);
[[noreturn]] void abandon_os_thread();  // unwinds to where the OS thread started the body

}  // namespace gru_emu
