// streams.cpp: streams and the work queued on them (host_api.h). Kernel launches, copies, memsets
// and host functions wait in their stream's queue, in order, and run when the host synchronises
// (cudaStreamSynchronize, cudaDeviceSynchronize, a copy to pageable host memory, cudaMemcpy; and
// the emulated torch seam's hand_back at the end of every op, where torch's CPU side would read
// the results). So work that reads host memory the host has already freed, or freed device memory,
// runs after the free, as it may on a GPU. While a stream captures, its work goes into a graph
// instead; a graph launch queues the graph's work again, as often as it is launched.
#include <atomic>
#include <cstring>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "cuda/emulation/runtime_internal.h"

namespace gru_emu {

// Memory freed while captured work used it: released when the graph and its instances are gone.
struct Keep {
  std::mutex mutex;
  std::vector<std::function<void()>> releases;
  ~Keep() {
    for (auto& release : releases) release();
  }
};

}  // namespace gru_emu

struct CUgraph_st {
  std::vector<gru_emu::Work> work;
  std::shared_ptr<gru_emu::Keep> keep = std::make_shared<gru_emu::Keep>();
};
struct CUgraphExec_st {
  std::vector<gru_emu::Work> work;
  std::shared_ptr<gru_emu::Keep> keep;
};
struct CUstream_st {
  std::mutex mutex;      // the queue and the capture
  std::mutex running;    // held while the queue runs: one host thread at a time, in order
  std::deque<gru_emu::Work> queue;
  CUgraph_st* capture = nullptr;  // the graph being captured
  bool invalidated = false;       // the capture did something a capture may not
};

namespace gru_emu {
namespace {

std::atomic<int64_t> pending{0};  // work queued on every stream, not yet run

std::mutex registry_mutex;
std::vector<CUstream_st*>& registry() {
  static auto* streams = new std::vector<CUstream_st*>();  // never destroyed
  return *streams;
}
CUstream_st& legacy_stream() {
  static CUstream_st* s = [] {
    auto* created = new CUstream_st();
    std::lock_guard<std::mutex> lock(registry_mutex);
    registry().push_back(created);
    return created;
  }();
  return *s;
}
CUstream_st& resolve(cudaStream_t s) {
  if (s == nullptr || s == cudaStreamLegacy || s == cudaStreamPerThread) return legacy_stream();
  return *s;
}

// Releases of memory freed in stream order: run once no work is pending.
std::mutex retired_mutex;
std::vector<std::function<void()>> retired;

void release_if_idle() {
  if (pending.load() != 0) return;
  std::vector<std::function<void()>> now;
  {
    std::lock_guard<std::mutex> lock(retired_mutex);
    now.swap(retired);
  }
  for (auto& release : now) release();
  release_freed_host_memory();
}

// Runs s's queue. After a failure the rest of the device work is dropped (a GPU's context is
// lost), the bookkeeping still runs. Returns the first failure.
cudaError_t run_queue(CUstream_st& s) {
  std::lock_guard<std::mutex> running(s.running);
  cudaError_t first = cudaSuccess;
  for (;;) {
    Work w;
    {
      std::lock_guard<std::mutex> lock(s.mutex);
      if (s.queue.empty()) break;
      w = std::move(s.queue.front());
      s.queue.pop_front();
    }
    if (first == cudaSuccess || !w.device) {
      const cudaError_t err = w.run();
      if (err != cudaSuccess && first == cudaSuccess) first = err;
    }
    --pending;
  }
  return first;
}

// A call that would wait for the device, on a capturing stream: the capture is invalidated.
cudaError_t refuse_in_capture(CUstream_st& s) {
  std::lock_guard<std::mutex> lock(s.mutex);
  if (s.capture == nullptr) return cudaSuccess;
  s.invalidated = true;
  set_last_error(cudaErrorStreamCaptureUnsupported);
  return cudaErrorStreamCaptureUnsupported;
}

cudaError_t finish(cudaError_t err) {
  release_if_idle();
  set_last_error(err);
  return err;
}

}  // namespace

cudaError_t enqueue(cudaStream_t stream, Work w) {
  CUstream_st& s = resolve(stream);
  std::lock_guard<std::mutex> lock(s.mutex);
  if (s.capture != nullptr) {
    s.capture->work.push_back(std::move(w));
  } else {
    ++pending;
    s.queue.push_back(std::move(w));
  }
  return cudaSuccess;
}

bool work_pending() { return pending.load() != 0; }

void retire(cudaStream_t stream, std::function<void()> poison, std::function<void()> release) {
  CUstream_st& s = resolve(stream);
  std::unique_lock<std::mutex> lock(s.mutex);
  if (s.capture != nullptr) {  // a replay reuses the memory at this point of the stream
    s.capture->work.push_back(Work{"poisoning freed memory", false, [poison] {
                                     poison();
                                     return cudaSuccess;
                                   }});
    std::lock_guard<std::mutex> keep(s.capture->keep->mutex);
    s.capture->keep->releases.push_back(std::move(release));
    return;
  }
  if (pending.load() == 0) {  // nothing queued can still read it
    lock.unlock();
    release();
    return;
  }
  ++pending;
  s.queue.push_back(Work{"poisoning freed memory", false, [poison] {
                           poison();
                           return cudaSuccess;
                         }});
  lock.unlock();
  std::lock_guard<std::mutex> retired_lock(retired_mutex);
  retired.push_back(std::move(release));
}

cudaError_t stream_create(cudaStream_t* stream) {
  auto* s = new CUstream_st();
  std::lock_guard<std::mutex> lock(registry_mutex);
  registry().push_back(s);
  *stream = s;
  return cudaSuccess;
}

cudaError_t stream_destroy(cudaStream_t stream) {
  if (&resolve(stream) == &legacy_stream()) return cudaErrorInvalidResourceHandle;
  if (refuse_in_capture(*stream) != cudaSuccess) return cudaErrorStreamCaptureUnsupported;
  const cudaError_t err = run_queue(*stream);  // its work completes, as on a GPU
  {
    std::lock_guard<std::mutex> lock(registry_mutex);
    auto& all = registry();
    for (size_t i = 0; i < all.size(); ++i) {
      if (all[i] == stream) all.erase(all.begin() + static_cast<std::ptrdiff_t>(i));
    }
  }
  delete stream;
  return finish(err);
}

cudaError_t synchronize(cudaStream_t stream) {
  CUstream_st& s = resolve(stream);
  if (refuse_in_capture(s) != cudaSuccess) return cudaErrorStreamCaptureUnsupported;
  return finish(run_queue(s));
}

cudaError_t synchronize_all() {
  std::vector<CUstream_st*> all;
  legacy_stream();
  {
    std::lock_guard<std::mutex> lock(registry_mutex);
    all = registry();
  }
  cudaError_t first = cudaSuccess;
  for (CUstream_st* s : all) {
    {
      std::lock_guard<std::mutex> lock(s->mutex);
      if (s->capture != nullptr) continue;  // its work is a graph's, not the device's
    }
    const cudaError_t err = run_queue(*s);
    if (first == cudaSuccess) first = err;
  }
  return finish(first);
}

cudaError_t begin_capture(cudaStream_t stream, cudaStreamCaptureMode) {
  CUstream_st& s = resolve(stream);
  if (&s == &legacy_stream()) return cudaErrorStreamCaptureUnsupported;
  // Work queued before the capture is not part of it: it may as well have run already.
  const cudaError_t err = run_queue(s);
  if (err != cudaSuccess) return finish(err);
  std::lock_guard<std::mutex> lock(s.mutex);
  if (s.capture != nullptr) return cudaErrorIllegalState;
  s.capture = new CUgraph_st();
  s.invalidated = false;
  return cudaSuccess;
}

cudaError_t end_capture(cudaStream_t stream, cudaGraph_t* graph) {
  CUstream_st& s = resolve(stream);
  std::lock_guard<std::mutex> lock(s.mutex);
  *graph = nullptr;
  if (s.capture == nullptr) return cudaErrorIllegalState;
  CUgraph_st* captured = s.capture;
  s.capture = nullptr;
  if (s.invalidated) {
    delete captured;
    return cudaErrorStreamCaptureInvalidated;
  }
  *graph = captured;
  return cudaSuccess;
}

cudaError_t capture_status(cudaStream_t stream, cudaStreamCaptureStatus* status) {
  CUstream_st& s = resolve(stream);
  std::lock_guard<std::mutex> lock(s.mutex);
  *status = s.capture == nullptr ? cudaStreamCaptureStatusNone
            : s.invalidated      ? cudaStreamCaptureStatusInvalidated
                                 : cudaStreamCaptureStatusActive;
  return cudaSuccess;
}

cudaError_t graph_instantiate(cudaGraphExec_t* exec, cudaGraph_t graph) {
  if (graph == nullptr) return cudaErrorInvalidValue;
  *exec = new CUgraphExec_st{graph->work, graph->keep};
  return cudaSuccess;
}

cudaError_t graph_launch(cudaGraphExec_t exec, cudaStream_t stream) {
  if (exec == nullptr) return cudaErrorInvalidValue;
  for (const Work& w : exec->work) {
    // Each queued copy keeps the graph's memory until it has run.
    enqueue(stream, Work{w.what, w.device, [run = w.run, keep = exec->keep] { return run(); }});
  }
  return cudaSuccess;
}

cudaError_t graph_destroy(cudaGraph_t graph) {
  delete graph;
  return cudaSuccess;
}

cudaError_t graph_exec_destroy(cudaGraphExec_t exec) {
  delete exec;
  return cudaSuccess;
}

// -- copies and memsets --------------------------------------------------------------------------

namespace {

// The copy, when its turn comes: unless its pinned host side (host_src, host_dst) has been freed
// since it was queued.
cudaError_t copy_now(void* dst, const void* src, size_t bytes, bool host_src, bool host_dst) {
  for (const auto& [p, side] : {std::pair<const void*, const char*>{host_src ? src : nullptr,
                                                                    "source"},
                                std::pair<const void*, const char*>{host_dst ? dst : nullptr,
                                                                    "destination"}}) {
    const std::string why = p == nullptr ? "" : freed_pinned(p, bytes);
    if (!why.empty()) {
      set_last_failure("a copy of " + std::to_string(bytes) + " bytes ran after its " + side +
                       " was freed: " + why);
      return cudaErrorIllegalAddress;
    }
  }
  std::memmove(dst, src, bytes);
  return cudaSuccess;
}

}  // namespace

cudaError_t memcpy_async(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind,
                         cudaStream_t stream) {
  if (bytes == 0) return cudaSuccess;
  if (dst == nullptr || src == nullptr || kind < cudaMemcpyHostToHost || kind > cudaMemcpyDefault) {
    set_last_error(cudaErrorInvalidValue);
    return cudaErrorInvalidValue;
  }
  CUstream_st& s = resolve(stream);
  const bool host_src = kind == cudaMemcpyHostToDevice || kind == cudaMemcpyHostToHost;
  const bool host_dst = kind == cudaMemcpyDeviceToHost || kind == cudaMemcpyHostToHost;
  if ((host_src && !is_pinned(src)) || (host_dst && !is_pinned(dst))) {
    // Pageable host memory: the host takes part in the copy, which a capture cannot record.
    if (refuse_in_capture(s) != cudaSuccess) return cudaErrorStreamCaptureUnsupported;
    if (host_dst && !is_pinned(dst)) {  // the copy completes before the call returns
      const cudaError_t err = run_queue(s);
      if (err != cudaSuccess) return finish(err);
      return finish(copy_now(dst, src, bytes, false, false));
    }
    // From pageable memory: staged before the call returns (the host may then reuse it).
    auto staged = std::make_shared<std::vector<unsigned char>>(
        static_cast<const unsigned char*>(src), static_cast<const unsigned char*>(src) + bytes);
    return enqueue(stream, Work{"cudaMemcpyAsync", true, [dst, staged, bytes, host_dst] {
                                  return copy_now(dst, staged->data(), bytes, false, host_dst);
                                }});
  }
  return enqueue(stream, Work{"cudaMemcpyAsync", true, [=] {
                                return copy_now(dst, src, bytes, host_src, host_dst);
                              }});
}

cudaError_t memcpy_sync(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind) {
  if (bytes == 0) return cudaSuccess;
  if (dst == nullptr || src == nullptr || kind < cudaMemcpyHostToHost || kind > cudaMemcpyDefault) {
    set_last_error(cudaErrorInvalidValue);
    return cudaErrorInvalidValue;
  }
  const cudaError_t err = synchronize_all();  // the legacy stream waits for the others
  if (err != cudaSuccess) return err;
  return finish(copy_now(dst, src, bytes, false, false));
}

cudaError_t memset_2d_async(void* dst, size_t pitch, int value, size_t width, size_t height,
                            cudaStream_t stream) {
  if (width == 0 || height == 0) return cudaSuccess;
  if (dst == nullptr || (height > 1 && pitch < width)) {
    set_last_error(cudaErrorInvalidValue);
    return cudaErrorInvalidValue;
  }
  return enqueue(stream, Work{"cudaMemsetAsync", true, [=] {
                                for (size_t r = 0; r < height; ++r) {
                                  std::memset(static_cast<unsigned char*>(dst) + r * pitch,
                                              value, width);
                                }
                                return cudaSuccess;
                              }});
}

cudaError_t launch_host_func(cudaStream_t stream, cudaHostFn_t fn, void* user_data) {
  if (fn == nullptr) return cudaErrorInvalidValue;
  return enqueue(stream, Work{"a host function", true, [fn, user_data] {
                                fn(user_data);
                                return cudaSuccess;
                              }});
}

}  // namespace gru_emu
