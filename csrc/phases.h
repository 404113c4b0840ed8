// phases.h: where the time of the ops goes, phase by phase (the input projections, the
// recurrences, each gradient product), for the benchmarks' per-phase rates. Off unless a caller
// turns it on (_C._phase_timing); then the driver (gru_stack.h) times each phase of a backend
// that can wait for its own work (a static synchronize(): the CPU backend), and adds the
// multiply-adds each phase did. Totals are kept per process, for every thread together.
#pragma once

#include <chrono>
#include <cstdint>

namespace gru_native::phases {

enum Phase {
  kInputProjection,    // x W_ih^T, every layer and direction
  kForwardRecurrence,  // the forward's steps: h W_hh^T and the gates
  kBackwardRecurrence, // the backward's steps: the gates' gradients and dG_h W_hh
  kWeightGradHH,       // dW_hh = dG_h^T h_{t-1}
  kWeightGradIH,       // dW_ih = dG_i^T x
  kInputGrad,          // d(input) = dG_i W_ih
  kBiasGrad,           // the bias gradients' column sums
  kDropout,            // the masks' products
  kCount
};

// The phase's name, as the benchmarks print it.
const char* name(Phase p);

bool enabled();
void set_enabled(bool on);
// Adds one timed run of a phase: seconds, and its multiply-adds.
void add(Phase p, double seconds, double multiply_adds);

struct Total {
  int64_t calls = 0;
  double seconds = 0, multiply_adds = 0;
};
// The totals since the last reset, and a reset.
Total total(Phase p);
void reset();

// Times its scope as phase p when timing is on and Backend can wait for its work: the backend's
// work is waited for at the end (Backend::synchronize()).
template <typename Backend>
class Scope {
 public:
  Scope(Phase p, double multiply_adds) : phase_(p), madds_(multiply_adds) {
    if constexpr (requires { Backend::synchronize(); }) {
      on_ = enabled();
      if (on_) start_ = std::chrono::steady_clock::now();
    }
  }
  ~Scope() {
    if constexpr (requires { Backend::synchronize(); }) {
      if (!on_) return;
      Backend::synchronize();
      const std::chrono::duration<double> d = std::chrono::steady_clock::now() - start_;
      add(phase_, d.count(), madds_);
    }
  }
  Scope(const Scope&) = delete;
  Scope& operator=(const Scope&) = delete;

 private:
  Phase phase_;
  double madds_;
  bool on_ = false;
  std::chrono::steady_clock::time_point start_;
};

}  // namespace gru_native::phases
