// fibers.cpp: CUDA threads as fibers (runtime.h, GRU_NATIVE_EMULATION_THREADS=fiber): each has
// its own stack and runs on the calling host thread until it waits at a barrier or ends. The
// context switch (x86-64 assembly, ucontext elsewhere), the stack pool and the scheduler.
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "cuda/emulation/runtime_internal.h"

#if !defined(__x86_64__)
#include <ucontext.h>
#endif

namespace gru_emu {

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

}  // namespace

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

namespace {

thread_local Scheduler* scheduler = nullptr;

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

// The thread has ended: the barriers of its groups no longer wait for it.
void exit_thread(ThreadState& t) {
  thread_exited(t, t.launch->grid_group.arrived);
  Group* groups[3];
  const int n = groups_of(t, groups);
  for (int i = 0; i < n; ++i) {
    Group& g = *groups[i];
    ++g.exited;
    if (g.arrived > 0 && g.arrived >= g.size - g.exited) release_fibers(g);
  }
}

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

}  // namespace

void arrive_fiber(Group& g) {
  Fiber* f = scheduler->running;
  g.waiting.push_back(f);
  if (++g.arrived >= g.size - g.exited) release_fibers(g);
  scheduler->yield();  // a fiber of a failed launch is never resumed
}

void abandon_fiber() {
  scheduler->yield();
  std::abort();
}

// Runs the fibers of `blocks` of L until all finish or none can go on.
void run_fibers(Launch& L, std::vector<std::unique_ptr<Block>>& blocks) {
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
      f->state.stack_lo = static_cast<const char*>(f->stack.base);
      f->state.stack_hi = f->state.stack_lo + f->stack.size;
      f->key = b.linear * n + next % n;
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

}  // namespace gru_emu
