// phases.cpp: the per-phase totals (phases.h).
#include "phases.h"

#include <atomic>
#include <mutex>

namespace gru_native::phases {
namespace {

std::atomic<bool> timing{false};
std::mutex mutex;
Total totals[kCount];

}  // namespace

const char* name(Phase p) {
  switch (p) {
    case kInputProjection: return "input projection";
    case kForwardRecurrence: return "forward recurrence";
    case kBackwardRecurrence: return "backward recurrence";
    case kWeightGradHH: return "dW_hh";
    case kWeightGradIH: return "dW_ih";
    case kInputGrad: return "d(input)";
    case kBiasGrad: return "bias gradients";
    case kDropout: return "dropout";
    case kCount: break;
  }
  return "?";
}

bool enabled() { return timing.load(std::memory_order_relaxed); }

void set_enabled(bool on) { timing.store(on); }

void add(Phase p, double seconds, double multiply_adds) {
  const std::lock_guard<std::mutex> lock(mutex);
  totals[p].calls += 1;
  totals[p].seconds += seconds;
  totals[p].multiply_adds += multiply_adds;
}

Total total(Phase p) {
  const std::lock_guard<std::mutex> lock(mutex);
  return totals[p];
}

void reset() {
  const std::lock_guard<std::mutex> lock(mutex);
  for (Total& t : totals) t = Total();
}

}  // namespace gru_native::phases
