// launch_record.cpp: the record of the CUDA kernels' launches (kernels.cuh, "what ran"), which
// tests read to check that the path they force is the one that ran. Host code only: one copy for
// the CUDA build and the emulated one. While the record is off, a launch pays one atomic load.
#include <atomic>
#include <mutex>
#include <vector>

#include "cuda/kernels.cuh"

namespace gru_native::cuda {
namespace {

std::atomic<bool> recording{false};
std::mutex record_mutex;
std::vector<LaunchRecord>& records() {
  static auto* kept = new std::vector<LaunchRecord>();  // never destroyed (exit-time launches)
  return *kept;
}
int64_t dropped = 0;

}  // namespace

void start_launch_record() {
  const std::lock_guard<std::mutex> lock(record_mutex);
  records().clear();
  dropped = 0;
  recording.store(true);
}

std::vector<LaunchRecord> stop_launch_record() {
  const std::lock_guard<std::mutex> lock(record_mutex);
  recording.store(false);
  std::vector<LaunchRecord> out;
  out.swap(records());
  return out;
}

int64_t dropped_launches() {
  const std::lock_guard<std::mutex> lock(record_mutex);
  return dropped;
}

bool recording_launches() { return recording.load(std::memory_order_relaxed); }

void record_launch(const LaunchRecord& record) {
  if (!recording_launches()) return;
  const std::lock_guard<std::mutex> lock(record_mutex);
  if (!recording.load()) return;
  if (records().size() < kMaxLaunchRecords) {
    records().push_back(record);
  } else {
    ++dropped;
  }
}

}  // namespace gru_native::cuda
