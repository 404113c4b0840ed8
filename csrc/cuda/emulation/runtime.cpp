// runtime.cpp: the CUDA emulation runtime (see runtime.h): launches, barriers, the emulated
// device, fibers and OS threads.
#include "cuda/emulation/runtime.h"

#include <pthread.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <unordered_map>
#include <vector>

#if !defined(__x86_64__)
#include <ucontext.h>
#endif

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define GRU_EMU_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define GRU_EMU_SANITIZED 1
#endif
#endif
#ifndef GRU_EMU_SANITIZED
#define GRU_EMU_SANITIZED 0
#endif

namespace gru_emu {

thread_local ThreadState* current_thread __attribute__((tls_model("initial-exec"))) = nullptr;

namespace {

// -- configuration -------------------------------------------------------------------------------

int env_int(const char* name, int fallback) {
  const char* value = std::getenv(name);
  if (value == nullptr || *value == '\0') return fallback;
  char* end = nullptr;
  const long v = std::strtol(value, &end, 10);
  if (end == value || *end != '\0' || v < 0 || v > (1L << 30)) {
    std::fprintf(stderr, "gru_native emulation: %s=%s is not a non-negative integer; using %d\n",
                 name, value, fallback);
    return fallback;
  }
  return static_cast<int>(v);
}

struct DeviceConfig {
  int sms, smem_optin, smem_per_sm, regs, cooperative;
};

constexpr int kDefaultDynamicSmem = 48 * 1024;
constexpr int kReservedSmemPerBlock = 1024;
constexpr int kMaxThreadsPerSm = 2048;
constexpr int kMaxBlocksPerSm = 32;
constexpr int kRegistersPerSm = 65536;

DeviceConfig config() {
  DeviceConfig c;
  c.sms = std::max(1, env_int("GRU_NATIVE_EMULATION_SMS", 8));
  c.smem_optin = env_int("GRU_NATIVE_EMULATION_SMEM", 232448);
  c.smem_per_sm = std::max(env_int("GRU_NATIVE_EMULATION_SMEM_PER_SM", 233472),
                           c.smem_optin + kReservedSmemPerBlock);
  c.regs = std::min(255, std::max(16, env_int("GRU_NATIVE_EMULATION_REGS", 64)));
  c.cooperative = env_int("GRU_NATIVE_EMULATION_COOPERATIVE", 1) != 0;
  return c;
}

enum class Mode { kFiber, kOs };

Mode mode() {
  if (GRU_EMU_SANITIZED) return Mode::kOs;  // fibers would hide accesses from the sanitizers
  const char* v = std::getenv("GRU_NATIVE_EMULATION_THREADS");
  if (v != nullptr && std::strcmp(v, "os") == 0) return Mode::kOs;
  if (v != nullptr && *v != '\0' && std::strcmp(v, "fiber") != 0) {
    std::fprintf(stderr, "gru_native emulation: GRU_NATIVE_EMULATION_THREADS=%s: expected "
                 "fiber or os; using fiber\n", v);
  }
  return Mode::kFiber;
}

enum class Order { kAlternate, kForward, kReverse, kRandom };

Order order() {
  const char* v = std::getenv("GRU_NATIVE_EMULATION_ORDER");
  if (v == nullptr || *v == '\0' || std::strcmp(v, "alternate") == 0) return Order::kAlternate;
  if (std::strcmp(v, "forward") == 0) return Order::kForward;
  if (std::strcmp(v, "reverse") == 0) return Order::kReverse;
  if (std::strcmp(v, "random") == 0) return Order::kRandom;
  std::fprintf(stderr, "gru_native emulation: GRU_NATIVE_EMULATION_ORDER=%s: expected "
               "alternate, forward, reverse or random; using alternate\n", v);
  return Order::kAlternate;
}

// -- errors --------------------------------------------------------------------------------------

thread_local cudaError_t last_error = cudaSuccess;
thread_local std::string failure_text;

struct Aborted {};  // unwinds an OS thread of a failed launch

}  // namespace

cudaError_t get_last_error(bool reset) {
  const cudaError_t e = last_error;
  if (reset) last_error = cudaSuccess;
  return e;
}
void set_last_error(cudaError_t err) {
  if (err != cudaSuccess) last_error = err;
}
const char* last_failure() { return failure_text.c_str(); }

const char* error_name(cudaError_t err) {
  switch (err) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorInvalidDeviceFunction: return "cudaErrorInvalidDeviceFunction";
    case cudaErrorInvalidDevice: return "cudaErrorInvalidDevice";
    case cudaErrorLaunchOutOfResources: return "cudaErrorLaunchOutOfResources";
    case cudaErrorLaunchFailure: return "cudaErrorLaunchFailure";
    case cudaErrorCooperativeLaunchTooLarge: return "cudaErrorCooperativeLaunchTooLarge";
    case cudaErrorNotSupported: return "cudaErrorNotSupported";
  }
  return "cudaErrorUnknown";
}

const char* error_string(cudaError_t err) {
  switch (err) {  // CUDA's texts
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorInvalidDeviceFunction: return "invalid device function";
    case cudaErrorInvalidDevice: return "invalid device ordinal";
    case cudaErrorLaunchOutOfResources: return "too many resources requested for launch";
    case cudaErrorLaunchFailure: return "unspecified launch failure";
    case cudaErrorCooperativeLaunchTooLarge:
      return "too many blocks in cooperative launch";
    case cudaErrorNotSupported: return "operation not supported";
  }
  return "unknown error";
}

// -- the device ----------------------------------------------------------------------------------

namespace {

std::mutex attribute_mutex;
std::unordered_map<const void*, int>& max_dynamic_smem() {
  static auto* map = new std::unordered_map<const void*, int>();  // never destroyed
  return *map;
}

int function_max_dynamic_smem(const void* func) {
  std::lock_guard<std::mutex> lock(attribute_mutex);
  auto it = max_dynamic_smem().find(func);
  return it == max_dynamic_smem().end() ? kDefaultDynamicSmem : it->second;
}

int blocks_per_sm(const DeviceConfig& c, int threads, size_t smem) {
  const int warps = (threads + 31) / 32;
  const int by_threads = kMaxThreadsPerSm / (warps * 32);
  const int regs_per_warp = (c.regs * 32 + 255) / 256 * 256;
  const int by_regs = kRegistersPerSm / (regs_per_warp * warps);
  const int by_smem = static_cast<int>(static_cast<size_t>(c.smem_per_sm) /
                                       (smem + kReservedSmemPerBlock));
  return std::max(0, std::min({by_threads, by_regs, by_smem, kMaxBlocksPerSm}));
}

}  // namespace

cudaError_t device_attribute(int* value, cudaDeviceAttr attr, int device) {
  if (device != 0) return cudaErrorInvalidDevice;
  const DeviceConfig c = config();
  switch (attr) {
    case cudaDevAttrMaxThreadsPerBlock: *value = 1024; break;
    case cudaDevAttrMaxBlockDimX: *value = 1024; break;
    case cudaDevAttrMaxGridDimX: *value = 2147483647; break;
    case cudaDevAttrMaxSharedMemoryPerBlock: *value = kDefaultDynamicSmem; break;
    case cudaDevAttrWarpSize: *value = 32; break;
    case cudaDevAttrMaxRegistersPerBlock: *value = kRegistersPerSm; break;
    case cudaDevAttrMultiProcessorCount: *value = c.sms; break;
    case cudaDevAttrL2CacheSize: *value = 50 * 1024 * 1024; break;
    case cudaDevAttrMaxThreadsPerMultiProcessor: *value = kMaxThreadsPerSm; break;
    case cudaDevAttrComputeCapabilityMajor: *value = 9; break;
    case cudaDevAttrComputeCapabilityMinor: *value = 0; break;
    case cudaDevAttrMaxSharedMemoryPerMultiprocessor: *value = c.smem_per_sm; break;
    case cudaDevAttrMaxRegistersPerMultiprocessor: *value = kRegistersPerSm; break;
    case cudaDevAttrCooperativeLaunch: *value = c.cooperative; break;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: *value = c.smem_optin; break;
    case cudaDevAttrMaxBlocksPerMultiprocessor: *value = kMaxBlocksPerSm; break;
    case cudaDevAttrReservedSharedMemoryPerBlock: *value = kReservedSmemPerBlock; break;
    default: return cudaErrorInvalidValue;
  }
  return cudaSuccess;
}

cudaError_t set_function_attribute(const void* func, cudaFuncAttribute attr, int value) {
  cudaError_t err = cudaSuccess;
  if (func == nullptr) {
    err = cudaErrorInvalidDeviceFunction;
  } else if (attr == cudaFuncAttributeMaxDynamicSharedMemorySize) {
    if (value < 0 || value > config().smem_optin) {
      err = cudaErrorInvalidValue;
    } else {
      std::lock_guard<std::mutex> lock(attribute_mutex);
      max_dynamic_smem()[func] = value;
    }
  } else if (attr == cudaFuncAttributePreferredSharedMemoryCarveout) {
    if (value < -1 || value > 100) err = cudaErrorInvalidValue;
  } else {
    err = cudaErrorInvalidValue;
  }
  set_last_error(err);
  return err;
}

cudaError_t function_attributes(cudaFuncAttributes* attr, const void* func) {
  if (func == nullptr) return cudaErrorInvalidDeviceFunction;
  std::memset(attr, 0, sizeof(*attr));
  attr->maxThreadsPerBlock = 1024;
  attr->numRegs = config().regs;
  attr->maxDynamicSharedSizeBytes = function_max_dynamic_smem(func);
  attr->ptxVersion = attr->binaryVersion = 90;
  return cudaSuccess;
}

cudaError_t occupancy(int* blocks, const void* func, int threads, size_t smem) {
  *blocks = 0;
  if (func == nullptr) return cudaErrorInvalidDeviceFunction;
  if (threads <= 0 || threads > 1024) return cudaErrorInvalidValue;
  if (smem > static_cast<size_t>(function_max_dynamic_smem(func))) return cudaSuccess;
  *blocks = blocks_per_sm(config(), threads, smem);
  return cudaSuccess;
}

// -- launches ------------------------------------------------------------------------------------

namespace {

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

}  // namespace

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

namespace {

void init_block(Block& b, const Launch& L, int64_t linear, size_t smem) {
  const int n = L.threads();
  b.group.what = "__syncthreads()";
  b.group.size = n;
  b.index = uint3{static_cast<unsigned>(linear % L.grid.x),
                  static_cast<unsigned>((linear / L.grid.x) % L.grid.y),
                  static_cast<unsigned>(linear / (int64_t(L.grid.x) * L.grid.y))};
  const int nw = (n + 31) / 32;
  b.warps.reset(new Warp[nw]);
  for (int w = 0; w < nw; ++w) {
    b.warps[w].group.what = "a warp-synchronous operation";
    b.warps[w].first_rank = 32 * w;
    b.warps[w].lanes = std::min(32, n - 32 * w);
    b.warps[w].group.size = b.warps[w].lanes;
  }
  b.smem.reset(new unsigned char[std::max<size_t>(smem, 1)]);
  std::memset(b.smem.get(), 0xff, std::max<size_t>(smem, 1));
}

void init_thread(ThreadState& t, Launch& L, Block& b, int rank) {
  t.thread_idx = uint3{rank % L.block.x, (rank / L.block.x) % L.block.y,
                       rank / (L.block.x * L.block.y)};
  t.block_idx = b.index;
  t.block_dim = L.block;
  t.grid_dim = L.grid;
  t.rank = rank;
  t.smem = b.smem.get();
  t.block = &b;
  t.warp = &b.warps[rank / 32];
  t.launch = &L;
}

// The groups a thread belongs to, innermost first.
int groups_of(const ThreadState& t, Group* out[3]) {
  int n = 0;
  out[n++] = &t.warp->group;
  out[n++] = &t.block->group;
  if (t.launch->cooperative) out[n++] = &t.launch->grid_group;
  return n;
}

// ---- fibers ------------------------------------------------------------------------------------

struct Stack {
  void* base = nullptr;
  size_t size = 0;
};

struct Scheduler;

struct Fiber {
  void* sp = nullptr;  // saved stack pointer (x86-64) while suspended
#if !defined(__x86_64__)
  ucontext_t context;
#endif
  Stack stack;
  ThreadState state;
  int64_t key = 0;  // global thread index: the release order
  int color = 0;    // staggers the stack top (stacks a power of two apart alias in the caches)
  bool done = false;
  Scheduler* scheduler = nullptr;
};

}  // namespace
}  // namespace gru_emu

#if defined(__x86_64__)
// Saves the callee-saved registers, MXCSR and the x87 control word on the current stack, stores
// the stack pointer in *save, switches to `load` and restores the same from there.
extern "C" void gru_emu_switch(void** save, void* load);
// A new fiber's first return lands here: r12 holds the fiber, r13 its entry function.
extern "C" void gru_emu_trampoline();
asm(R"(
.text
.globl gru_emu_switch
.hidden gru_emu_switch
.type gru_emu_switch,@function
gru_emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
.size gru_emu_switch,.-gru_emu_switch
.globl gru_emu_trampoline
.hidden gru_emu_trampoline
.type gru_emu_trampoline,@function
gru_emu_trampoline:
  movq %r12, %rdi
  andq $-16, %rsp
  callq *%r13
  ud2
.size gru_emu_trampoline,.-gru_emu_trampoline
)");
#endif

namespace gru_emu {
namespace {

size_t stack_bytes() {
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  const size_t kib = static_cast<size_t>(env_int("GRU_NATIVE_EMULATION_STACK_KIB", 128));
  return std::max<size_t>(kib * 1024, 16 * page) / page * page;
}

// Stacks for fibers, kept per host thread for the next launch; a guard page below each.
struct StackPool {
  std::vector<Stack> free;
  ~StackPool() {
    for (const Stack& s : free) munmap(static_cast<char*>(s.base) - guard(), s.size + guard());
  }
  static size_t guard() { return static_cast<size_t>(sysconf(_SC_PAGESIZE)); }
  Stack take() {
    if (!free.empty()) {
      Stack s = free.back();
      free.pop_back();
      return s;
    }
    const size_t size = stack_bytes();
    void* p = mmap(nullptr, size + guard(), PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) {
      std::fprintf(stderr, "gru_native emulation: cannot map a %zu-byte fiber stack\n", size);
      std::abort();
    }
    mprotect(p, guard(), PROT_NONE);
    return Stack{static_cast<char*>(p) + guard(), size};
  }
  void give(Stack s) { free.push_back(s); }
};

thread_local StackPool stack_pool;

// Runs a launch's fibers on the calling host thread. A fiber that waits at a barrier, or ends,
// switches straight to the next ready fiber (no detour through the scheduler); the scheduler
// runs when none is ready, to start the next thread or to stop.
struct Scheduler {
  Launch* launch = nullptr;
  void* main_sp = nullptr;
#if !defined(__x86_64__)
  ucontext_t main_context;
#endif
  Fiber* running = nullptr;
  std::deque<Fiber*> ready;
  std::vector<Fiber*> finished;  // ended since the scheduler last ran (their stacks are free)
  std::vector<Fiber*> spare;     // ended fibers, for the next threads
  std::vector<std::unique_ptr<Fiber>> owned;
  int64_t live = 0;              // started, not finished

  void resume(Fiber* f) {
    running = f;
    current_thread = &f->state;
#if defined(__x86_64__)
    gru_emu_switch(&main_sp, f->sp);
#else
    swapcontext(&main_context, &f->context);
#endif
    running = nullptr;
    current_thread = nullptr;
    for (Fiber* done : finished) {
      --live;
      spare.push_back(done);
    }
    finished.clear();
  }

  // The running fiber waits (or has ended): on to the next ready fiber, else the scheduler.
  void yield() {
    Fiber* f = running;
    if (f->done) finished.push_back(f);
    Fiber* next = nullptr;
    if (!ready.empty() && !launch->failed.load(std::memory_order_relaxed)) {
      next = ready.front();
      ready.pop_front();
    }
    if (next == f) return;  // the fiber released itself first: it simply goes on
    if (next != nullptr) {
      running = next;
      current_thread = &next->state;
#if defined(__x86_64__)
      gru_emu_switch(&f->sp, next->sp);
#else
      swapcontext(&f->context, &next->context);
#endif
    } else {
#if defined(__x86_64__)
      gru_emu_switch(&f->sp, main_sp);
#else
      swapcontext(&f->context, &main_context);
#endif
    }
    running = f;  // resumed
    current_thread = &f->state;
  }
};

thread_local Scheduler* scheduler = nullptr;

void exit_thread(ThreadState& t);

void fiber_main(Fiber* f) {
  f->state.launch->body->operator()();
  exit_thread(f->state);
  f->done = true;
  f->scheduler->yield();  // never resumed
  std::abort();
}

#if !defined(__x86_64__)
void fiber_entry_ucontext(unsigned lo, unsigned hi) {
  fiber_main(reinterpret_cast<Fiber*>((static_cast<uintptr_t>(hi) << 32) | lo));
}
#endif

void start_fiber(Fiber* f) {
#if defined(__x86_64__)
  uintptr_t top = (reinterpret_cast<uintptr_t>(f->stack.base) + f->stack.size -
                   static_cast<uintptr_t>(f->color % 67) * 64 - (f->color % 7) * 4096) &
                  ~uintptr_t(15);
  uint64_t* sp = reinterpret_cast<uint64_t*>(top);
  *--sp = 0;  // alignment slot above the return address
  *--sp = reinterpret_cast<uint64_t>(&gru_emu_trampoline);  // ret
  *--sp = 0;                                                 // rbp
  *--sp = 0;                                                 // rbx
  *--sp = reinterpret_cast<uint64_t>(f);                     // r12
  *--sp = reinterpret_cast<uint64_t>(&fiber_main);           // r13
  *--sp = 0;                                                 // r14
  *--sp = 0;                                                 // r15
  uint32_t csr[2];
  __asm__ volatile("stmxcsr %0" : "=m"(csr[0]));
  __asm__ volatile("fnstcw %0" : "=m"(csr[1]));
  --sp;
  std::memcpy(sp, csr, 8);  // mxcsr, x87 control word
  f->sp = sp;
#else
  getcontext(&f->context);
  f->context.uc_stack.ss_sp = f->stack.base;
  f->context.uc_stack.ss_size = f->stack.size;
  f->context.uc_link = nullptr;
  const uintptr_t p = reinterpret_cast<uintptr_t>(f);
  makecontext(&f->context, reinterpret_cast<void (*)()>(&fiber_entry_ucontext), 2,
              static_cast<unsigned>(p & 0xffffffffu), static_cast<unsigned>(p >> 32));
#endif
}

// The waiting threads of g resume, in the launch's order for this generation.
void release_fibers(Group& g) {
  Launch& L = *scheduler->launch;
  std::vector<Fiber*>& w = g.waiting;
  const bool reverse = L.order == Order::kReverse ||
                       (L.order == Order::kAlternate && (g.generation & 1));
  if (L.order == Order::kRandom) {
    std::sort(w.begin(), w.end(), [](Fiber* a, Fiber* b) { return a->key < b->key; });
    std::mt19937 rng(L.seed * 1000003u + static_cast<unsigned>(g.generation));
    std::shuffle(w.begin(), w.end(), rng);
  } else {
    // Arrivals mostly come in the order of the last release: then a check (and a reversal)
    // replaces the sort.
    auto up = [](Fiber* a, Fiber* b) { return a->key < b->key; };
    auto down = [](Fiber* a, Fiber* b) { return a->key > b->key; };
    if (std::is_sorted(w.begin(), w.end(), reverse ? up : down)) {
      std::reverse(w.begin(), w.end());
    } else if (!std::is_sorted(w.begin(), w.end(), reverse ? down : up)) {
      if (reverse) std::sort(w.begin(), w.end(), down);
      else std::sort(w.begin(), w.end(), up);
    }
  }
  for (Fiber* f : w) scheduler->ready.push_back(f);
  w.clear();
  g.arrived = 0;
  ++g.generation;
}

// ---- OS threads --------------------------------------------------------------------------------

std::chrono::seconds os_timeout() {
  return std::chrono::seconds(env_int("GRU_NATIVE_EMULATION_TIMEOUT_S", 600));
}

// Releases g's `waiters` waiting threads (g.mutex held).
void release_os(Group& g, Launch& L, int waiters) {
  {
    std::lock_guard<std::mutex> state(L.state_mutex);
    L.blocked -= waiters;
  }
  g.arrived = 0;
  ++g.generation;
  g.cv.notify_all();
}

// Called with g.mutex held by a thread about to wait, or by one exiting: if every thread that is
// still running waits at a barrier, nothing can release them.
bool all_blocked(Launch& L, int64_t blocked_delta, int64_t live_delta) {
  std::lock_guard<std::mutex> state(L.state_mutex);
  L.blocked += blocked_delta;
  L.live += live_delta;
  return L.live > 0 && L.blocked == L.live;
}

// ---- barriers ----------------------------------------------------------------------------------

void arrive(Group& g) {
  ThreadState* t = current_thread;
  Launch& L = *t->launch;
  if (L.mode == Mode::kFiber) {
    Fiber* f = scheduler->running;
    g.waiting.push_back(f);
    if (++g.arrived >= g.size - g.exited) release_fibers(g);
    scheduler->yield();  // a fiber of a failed launch is never resumed
    return;
  }
  std::unique_lock<std::mutex> lock(g.mutex);
  const uint64_t gen = g.generation;
  if (++g.arrived >= g.size - g.exited) {
    release_os(g, L, g.arrived - 1);
    return;
  }
  if (all_blocked(L, 1, 0)) {
    lock.unlock();
    L.fail(std::string("deadlock: every running thread waits at a barrier (the last at ") +
           g.what + "): threads of one group at different barriers?");
    throw Aborted{};
  }
  const auto deadline = std::chrono::steady_clock::now() + os_timeout();
  while (g.generation == gen) {
    if (L.failed.load()) throw Aborted{};
    g.cv.wait_for(lock, std::chrono::milliseconds(20));
    if (g.generation == gen && std::chrono::steady_clock::now() > deadline) {
      lock.unlock();
      L.fail(std::string("a thread waited more than GRU_NATIVE_EMULATION_TIMEOUT_S at ") +
             g.what + " (deadlock: threads wait at different barriers?)");
      throw Aborted{};
    }
  }
}

void exit_thread(ThreadState& t) {
  Group* groups[3];
  const int n = groups_of(t, groups);
  for (int i = 0; i < n; ++i) {
    Group& g = *groups[i];
    if (t.launch->mode == Mode::kFiber) {
      ++g.exited;
      if (g.arrived > 0 && g.arrived >= g.size - g.exited) release_fibers(g);
    } else {
      std::lock_guard<std::mutex> lock(g.mutex);
      ++g.exited;
      if (g.arrived > 0 && g.arrived >= g.size - g.exited) release_os(g, *t.launch, g.arrived);
    }
  }
  if (t.launch->mode == Mode::kOs && all_blocked(*t.launch, 0, -1)) {
    t.launch->fail("deadlock: every running thread waits at a barrier after a thread exited");
  }
}

// Runs the fibers of blocks [first, first + count) of L until all finish or none can go on.
void run_fibers(Launch& L, std::vector<std::unique_ptr<Block>>& blocks, int64_t first) {
  Scheduler s;
  s.launch = &L;
  Scheduler* outer = scheduler;
  ThreadState* outer_thread = current_thread;
  scheduler = &s;
  const int n = L.threads();
  const int64_t total = static_cast<int64_t>(blocks.size()) * n;
  int64_t next = 0;  // the next thread to start, block-major
  while (!L.failed.load()) {
    Fiber* f = nullptr;
    if (!s.ready.empty()) {
      f = s.ready.front();
      s.ready.pop_front();
    } else if (next < total) {
      if (s.spare.empty()) {
        s.owned.push_back(std::make_unique<Fiber>());
        f = s.owned.back().get();
        f->stack = stack_pool.take();
        f->scheduler = &s;
        f->color = static_cast<int>(s.owned.size());
      } else {
        f = s.spare.back();
        s.spare.pop_back();
      }
      Block& b = *blocks[static_cast<size_t>(next / n)];
      init_thread(f->state, L, b, static_cast<int>(next % n));
      f->key = (first + next / n) * n + next % n;
      f->done = false;
      start_fiber(f);
      ++s.live;
      ++next;
    } else {
      break;
    }
    s.resume(f);
  }
  if (!L.failed.load() && s.live > 0) {
    // Nobody can run: threads wait at barriers that cannot complete.
    std::string why = "deadlock: " + std::to_string(s.live) + " threads wait at barriers that "
                      "cannot complete (threads of one group at different barriers?):";
    std::vector<Group*> seen;
    for (auto& owned : s.owned) {
      if (owned->done) continue;
      const ThreadState& t = owned->state;
      for (Group* g : {&t.warp->group, &t.block->group, &L.grid_group}) {
        if (g->waiting.empty() || seen.size() >= 8 ||
            std::find(seen.begin(), seen.end(), g) != seen.end()) {
          continue;
        }
        seen.push_back(g);
        why += " " + std::to_string(g->waiting.size()) + " of " +
               std::to_string(g->size - g->exited) + " at " + g->what + ";";
      }
    }
    L.fail(why);
  }
  // Fibers of a failed launch are abandoned where they wait (kernel frames hold no resources).
  for (auto& owned : s.owned) stack_pool.give(owned->stack);
  scheduler = outer;
  current_thread = outer_thread;
}

struct OsThread {
  ThreadState state;
};

void run_os_thread(OsThread& t) {
  current_thread = &t.state;
  try {
    t.state.launch->body->operator()();
  } catch (const Aborted&) {
  }
  exit_thread(t.state);
  current_thread = nullptr;
}

// OS threads kept for the next launches (creating hundreds per launch costs more than the
// kernels, under ThreadSanitizer most of all). Worker i runs the job's thread i; the job's hand
// over and its end go through the pool's mutex, so each launch happens-before the next.
class OsPool {
 public:
  // Runs every thread of `job` on its own OS thread; returns when all have ended. False if the
  // OS threads could not be started.
  bool run(std::vector<OsThread>& job) {
    std::unique_lock<std::mutex> lock(mutex_);
    while (workers_ < job.size()) {
      if (!start_worker(workers_)) return false;
      ++workers_;
    }
    job_ = &job;
    finished_ = 0;
    ++epoch_;
    start_.notify_all();
    done_.wait(lock, [&] { return finished_ == job.size(); });
    job_ = nullptr;
    return true;
  }

 private:
  struct Start {
    OsPool* pool;
    size_t index;
  };

  bool start_worker(size_t index) {
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, size_t(1) << 20);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_t handle;
    auto* start = new Start{this, index};
    const bool ok = pthread_create(&handle, &attr, &OsPool::main, start) == 0;
    pthread_attr_destroy(&attr);
    if (!ok) delete start;
    return ok;
  }

  static void* main(void* arg) {
    const Start start = *static_cast<Start*>(arg);
    delete static_cast<Start*>(arg);
    OsPool& pool = *start.pool;
    uint64_t seen = 0;
    std::unique_lock<std::mutex> lock(pool.mutex_);
    for (;;) {
      pool.start_.wait(lock, [&] {
        return pool.epoch_ != seen && pool.job_ != nullptr && start.index < pool.job_->size();
      });
      seen = pool.epoch_;
      OsThread& t = (*pool.job_)[start.index];
      lock.unlock();
      run_os_thread(t);
      lock.lock();
      if (++pool.finished_ == pool.job_->size()) pool.done_.notify_one();
    }
  }

  std::mutex mutex_;
  std::condition_variable start_, done_;
  size_t workers_ = 0, finished_ = 0;
  uint64_t epoch_ = 0;
  std::vector<OsThread>* job_ = nullptr;
};

OsPool& os_pool() {
  static OsPool* pool = new OsPool();  // never destroyed: its threads outlive main
  return *pool;
}

void run_os_threads(Launch& L, std::vector<std::unique_ptr<Block>>& blocks) {
  const int n = L.threads();
  std::vector<OsThread> threads(blocks.size() * static_cast<size_t>(n));
  for (size_t b = 0; b < blocks.size(); ++b) {
    for (int r = 0; r < n; ++r) init_thread(threads[b * n + r].state, L, *blocks[b], r);
  }
  // Every thread of the wave counts as running from the start (none can be blocked by one not
  // yet started).
  all_blocked(L, 0, static_cast<int64_t>(threads.size()));
  if (!os_pool().run(threads)) {
    L.fail("cannot start " + std::to_string(threads.size()) + " OS threads");
  }
}

std::mutex os_launch_mutex;  // one OS-thread launch at a time

}  // namespace

cudaError_t launch(const void* func, dim3 grid, dim3 block, size_t smem, bool cooperative,
                   Body body) {
  const int64_t threads = int64_t(block.x) * block.y * block.z;
  cudaError_t err = cudaSuccess;
  if (func == nullptr) {
    err = cudaErrorInvalidDeviceFunction;
  } else if (threads <= 0 || threads > 1024 || block.x > 1024 || block.y > 1024 ||
             block.z > 64 || grid.x == 0 || grid.y == 0 || grid.z == 0 ||
             grid.x > 2147483647u || grid.y > 65535 || grid.z > 65535) {
    err = cudaErrorInvalidConfiguration;
  } else if (smem > static_cast<size_t>(function_max_dynamic_smem(func))) {
    err = cudaErrorInvalidValue;
  } else if (cooperative) {
    const DeviceConfig c = config();
    const int64_t resident =
        int64_t(blocks_per_sm(c, static_cast<int>(threads), smem)) * c.sms;
    if (!c.cooperative) {
      err = cudaErrorNotSupported;
    } else if (int64_t(grid.x) * grid.y * grid.z > resident) {
      err = cudaErrorCooperativeLaunchTooLarge;
    }
  }
  if (err != cudaSuccess) {
    set_last_error(err);
    return err;
  }

  Launch L;
  L.grid = grid;
  L.block = block;
  L.cooperative = cooperative;
  L.body = &body;
  L.mode = mode();
  L.order = order();
  L.seed = static_cast<unsigned>(env_int("GRU_NATIVE_EMULATION_SEED", 0));
  L.grid_group.what = "grid.sync()";
  L.grid_group.size = static_cast<int>(L.blocks() * threads);
  // Blocks resident at once: all of a cooperative grid; otherwise one (fibers) or a few (OS
  // threads, so that blocks also overlap: races between blocks show too).
  const int64_t wave = cooperative ? L.blocks()
                                   : (L.mode == Mode::kFiber
                                          ? 1
                                          : std::max(1, env_int("GRU_NATIVE_EMULATION_OS_BLOCKS",
                                                                2)));
  std::unique_lock<std::mutex> os_lock(os_launch_mutex, std::defer_lock);
  if (L.mode == Mode::kOs) os_lock.lock();
  for (int64_t first = 0; first < L.blocks() && !L.failed.load(); first += wave) {
    const int64_t count = std::min(wave, L.blocks() - first);
    std::vector<std::unique_ptr<Block>> blocks(static_cast<size_t>(count));
    for (int64_t b = 0; b < count; ++b) {
      blocks[b] = std::make_unique<Block>();
      init_block(*blocks[b], L, first + b, smem);
    }
    if (L.mode == Mode::kFiber) {
      run_fibers(L, blocks, first);
    } else {
      run_os_threads(L, blocks);
    }
  }
  if (L.failed.load()) {
    failure_text = L.failure;
    set_last_error(cudaErrorLaunchFailure);
    return cudaErrorLaunchFailure;
  }
  return cudaSuccess;
}

void sync_block() { arrive(current_thread->block->group); }

void sync_grid() {
  ThreadState* t = current_thread;
  if (!t->launch->cooperative) {
    t->launch->fail("grid.sync() in a launch that was not cooperative");
    if (t->launch->mode == Mode::kFiber) {
      scheduler->yield();  // never resumed
      std::abort();
    }
    throw Aborted{};
  }
  arrive(t->launch->grid_group);
}

int lane_id() { return current_thread->rank % 32; }

namespace {
void check_full_mask(unsigned mask) {
  Warp& w = *current_thread->warp;
  const unsigned full = w.lanes == 32 ? 0xffffffffu : ((1u << w.lanes) - 1);
  if ((mask & full) != full) {
    current_thread->launch->fail("a warp-synchronous operation with a partial mask (0x" +
                                 std::to_string(mask) + "): the emulation needs every lane");
    if (current_thread->launch->mode == Mode::kFiber) {
      scheduler->yield();
      std::abort();
    }
    throw Aborted{};
  }
}
}  // namespace

void sync_warp(unsigned mask) {
  check_full_mask(mask);
  arrive(current_thread->warp->group);
}

uint64_t warp_exchange(unsigned mask, uint64_t value, int src) {
  check_full_mask(mask);
  Warp& w = *current_thread->warp;
  const int lane = current_thread->rank - w.first_rank;
  w.slots[lane] = value;
  arrive(w.group);  // every lane has published
  const uint64_t out = (src >= 0 && src < w.lanes) ? w.slots[src] : value;
  arrive(w.group);  // every lane has read before the slots are written again
  return out;
}

}  // namespace gru_emu
