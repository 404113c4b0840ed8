// threads.h: how the CPU recurrence spreads one layer over threads. One parallel region per
// layer runs the whole sequence; its threads are split over the directions (each direction on
// its own group of threads when there are enough) and then over hidden units, each thread owning
// a slice of one direction's units; the threads of a group meet at one barrier per step.
// Header-only, internal to kernels.cpp (an unnamed namespace: include it from that file only).
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <thread>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "gru_cell.h"

namespace gru_native::cpu {
namespace {

// A barrier for the threads of one direction: spin briefly, then yield.
class SpinBarrier {
 public:
  void init(int n) {
    n_ = n;
    count_.store(0);
    generation_.store(0);
  }
  void wait() {
    if (n_ <= 1) return;
    const int gen = generation_.load(std::memory_order_acquire);
    if (count_.fetch_add(1, std::memory_order_acq_rel) == n_ - 1) {
      count_.store(0, std::memory_order_relaxed);
      generation_.fetch_add(1, std::memory_order_acq_rel);
      return;
    }
    for (int spins = 0; generation_.load(std::memory_order_acquire) == gen; ++spins) {
      if (spins > 4096) std::this_thread::yield();
    }
  }

 private:
  int n_ = 1;
  alignas(64) std::atomic<int> count_{0};
  alignas(64) std::atomic<int> generation_{0};
};

// How a layer is spread over threads: `groups` thread groups (one per direction when the
// directions run side by side, else one group running the directions in turn), each of
// `per_group` threads owning a slice of the hidden units.
struct ThreadPlan {
  int groups = 1;
  int per_group = 1;
  int threads() const { return groups * per_group; }
};

// Below these amounts of work, more threads cost more (region start, barriers) than they save.
constexpr int64_t kMinStepWorkPerThread = 24 * 1024;  // multiply-adds per step and thread
constexpr int64_t kMinLayerWorkPerGroup = 96 * 1024;  // multiply-adds per direction and layer

// row_k: per step, rows times the reduction length of the step's GEMMs (N * H for the
// recurrence alone, N * (C + H) with the input projection).
ThreadPlan plan_threads(int available, int D, int64_t T, int64_t row_k, int64_t H,
                        int64_t slice_align) {
  ThreadPlan plan;
  const int64_t step_work = row_k * kGates * H;
  if (available <= 1 || step_work * T < kMinLayerWorkPerGroup) return plan;
  plan.groups = (D == 2 && available >= 2) ? 2 : 1;
  const int64_t by_threads = available / plan.groups;
  const int64_t by_width = std::max<int64_t>(1, H / slice_align);
  const int64_t by_work = std::max<int64_t>(1, step_work / kMinStepWorkPerThread);
  plan.per_group = static_cast<int>(std::min({by_threads, by_width, by_work}));
  return plan;
}

// Slice q of Q over [0, H), boundaries on multiples of `align` units (whole cache lines).
inline void slice_bounds(int64_t H, int q, int Q, int64_t align, int64_t& j0, int64_t& j1) {
  const int64_t blocks = (H + align - 1) / align;
  j0 = std::min(H, (blocks * q / Q) * align);
  j1 = std::min(H, (blocks * (q + 1) / Q) * align);
}

// Runs body(group, index_in_group, barrier) on plan.threads() threads (inline when 1).
template <typename Body>
void run_plan(const ThreadPlan& plan, const Body& body) {
  SpinBarrier barriers[2];
  for (auto& b : barriers) b.init(plan.per_group);
  if (plan.threads() == 1) {
    body(0, 0, barriers[0]);
    return;
  }
#ifdef _OPENMP
  const int want = plan.threads();
  std::atomic<bool> short_team{false};
#pragma omp parallel num_threads(want)
  {
    // A nested or capped runtime may give fewer threads than asked: then the calling thread
    // runs the whole plan alone, below.
    if (omp_get_num_threads() == want) {
      const int tid = omp_get_thread_num();
      body(tid / plan.per_group, tid % plan.per_group, barriers[tid / plan.per_group]);
    } else if (omp_get_thread_num() == 0) {
      short_team.store(true);
    }
  }
  if (!short_team.load()) return;
#endif
  // One thread: every slice of every group, in turn (q = -1).
  SpinBarrier alone;
  alone.init(1);
  for (int g = 0; g < plan.groups; ++g) body(g, -1, alone);
}

// The directions a thread group runs: its own when directions run side by side, else all.
inline void group_directions(int groups, int group, int D, int& d_begin, int& d_end) {
  if (groups == D) {
    d_begin = group;
    d_end = group + 1;
  } else {
    d_begin = 0;
    d_end = D;
  }
}

}  // namespace
}  // namespace gru_native::cpu
