// os_threads.cpp: CUDA threads as OS threads (runtime.h, GRU_NATIVE_EMULATION_THREADS=os, and
// always in sanitizer builds): barriers are a mutex and a condition variable, so that
// ThreadSanitizer sees every unordered pair of accesses; the threads come from a pool kept for the
// next launches.
#include <pthread.h>

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "cuda/emulation/runtime_internal.h"

namespace gru_emu {
namespace {

struct Aborted {};  // unwinds an OS thread of a failed launch

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

// The thread has ended: the barriers of its groups no longer wait for it.
void exit_thread(ThreadState& t) {
  {
    std::lock_guard<std::mutex> lock(t.launch->grid_group.mutex);
    thread_exited(t, t.launch->grid_group.arrived);
  }
  Group* groups[3];
  const int n = groups_of(t, groups);
  for (int i = 0; i < n; ++i) {
    Group& g = *groups[i];
    std::lock_guard<std::mutex> lock(g.mutex);
    ++g.exited;
    if (g.arrived > 0 && g.arrived >= g.size - g.exited) release_os(g, *t.launch, g.arrived);
  }
  if (all_blocked(*t.launch, 0, -1)) {
    t.launch->fail("deadlock: every running thread waits at a barrier after a thread exited");
  }
}

struct OsThread {
  ThreadState state;
};

// This OS thread's stack.
std::pair<const char*, const char*> own_stack() {
  thread_local std::pair<const char*, const char*> bounds = [] {
    pthread_attr_t attr;
    void* base = nullptr;
    size_t size = 0;
    if (pthread_getattr_np(pthread_self(), &attr) == 0) {
      pthread_attr_getstack(&attr, &base, &size);
      pthread_attr_destroy(&attr);
    }
    return std::pair<const char*, const char*>(static_cast<const char*>(base),
                                               static_cast<const char*>(base) + size);
  }();
  return bounds;
}

void run_os_thread(OsThread& t) {
  std::tie(t.state.stack_lo, t.state.stack_hi) = own_stack();
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

}  // namespace

void arrive_os(Group& g, Launch& L) {
  std::unique_lock<std::mutex> lock(g.mutex);
  if (&g == &L.grid_group && L.blocks_exited.load() > 0) {  // under the lock thread_exited takes
    lock.unlock();
    L.fail(std::string(kernel_name(L.func)) + ": a grid.sync() after " +
           std::to_string(L.blocks_exited.load()) +
           " block(s) had exited: on a GPU it waits for them forever");
    throw Aborted{};
  }
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

void abandon_os_thread() { throw Aborted{}; }

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

}  // namespace gru_emu
