// launch.cpp: launches (runtime.h): the checks CUDA makes, the blocks and warps, the waves of
// resident blocks run as fibers or OS threads; and the barriers and warp exchanges the kernels
// call, for either.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <vector>

#include "cuda/emulation/runtime_internal.h"

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

// -- how a launch runs its threads, from the environment -----------------------------------------

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

// -- launches ------------------------------------------------------------------------------------

void init_block(Block& b, const Launch& L, int64_t linear, size_t smem) {
  const int n = L.threads();
  b.group.what = "__syncthreads()";
  b.group.size = n;
  b.linear = linear;
  b.live = n;
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
  b.smem_bytes = std::max<size_t>(smem, 1);
  b.smem.reset(new unsigned char[b.smem_bytes]);
  std::memset(b.smem.get(), 0xff, b.smem_bytes);
}

std::mutex os_launch_mutex;  // one OS-thread launch at a time

}  // namespace

void init_thread(ThreadState& t, Launch& L, Block& b, int rank) {
  t.thread_idx = uint3{rank % L.block.x, (rank / L.block.x) % L.block.y,
                       rank / (L.block.x * L.block.y)};
  t.block_idx = b.index;
  t.block_dim = L.block;
  t.grid_dim = L.grid;
  t.rank = rank;
  t.grid_syncs = 0;
  t.smem = b.smem.get();
  t.block = &b;
  t.warp = &b.warps[rank / 32];
  t.launch = &L;
}

std::string block_name(const Block& b, const Launch& L) {
  if (L.grid.y == 1 && L.grid.z == 1) return "block " + std::to_string(b.index.x);
  return "block (" + std::to_string(b.index.x) + ", " + std::to_string(b.index.y) + ", " +
         std::to_string(b.index.z) + ")";
}

void thread_exited(ThreadState& t, int grid_arrived) {
  Launch& L = *t.launch;
  if (--t.block->live != 0 || !L.cooperative) return;
  ++L.blocks_exited;
  if (grid_arrived > 0) {
    L.fail(std::string(kernel_name(L.func)) + ": " + block_name(*t.block, L) +
           " exited while other blocks wait at grid.sync() (" + std::to_string(grid_arrived) +
           " threads): on a GPU they wait for it forever");
  }
}

namespace {

// Runs a checked launch's blocks: in waves of blocks resident together, in an order shuffled by
// GRU_NATIVE_EMULATION_SEED, so that the blocks of a wave interleave at their barriers.
cudaError_t execute(const void* func, dim3 grid, dim3 block, size_t smem, bool cooperative,
                    const Body& body) {
  const int threads = static_cast<int>(block.x * block.y * block.z);
  Launch L;
  L.func = func;
  L.grid = grid;
  L.block = block;
  L.cooperative = cooperative;
  L.body = &body;
  L.mode = mode();
  L.order = order();
  L.seed = static_cast<unsigned>(env_int("GRU_NATIVE_EMULATION_SEED", 0));
  L.grid_group.what = "grid.sync()";
  L.grid_group.size = static_cast<int>(L.blocks() * threads);
  // Blocks resident at once: all of a cooperative grid; otherwise as many as the device holds
  // (fibers) or a few (OS threads: each CUDA thread is one).
  const DeviceConfig c = config();
  const int64_t wave =
      cooperative ? L.blocks()
      : L.mode == Mode::kFiber
          ? std::max<int64_t>(
                1, int64_t(blocks_per_sm(c, kernel_registers(func), threads, smem)) * c.sms)
          : std::max(1, env_int("GRU_NATIVE_EMULATION_OS_BLOCKS", 2));
  std::vector<int64_t> order(static_cast<size_t>(L.blocks()));
  for (size_t i = 0; i < order.size(); ++i) order[i] = static_cast<int64_t>(i);
  std::mt19937 rng(L.seed * 7919u + 17u);
  std::unique_lock<std::mutex> os_lock(os_launch_mutex, std::defer_lock);
  if (L.mode == Mode::kOs) os_lock.lock();
  for (int64_t first = 0; first < L.blocks() && !L.failed.load(); first += wave) {
    const int64_t count = std::min(wave, L.blocks() - first);
    std::shuffle(order.begin() + first, order.begin() + first + count, rng);
    std::vector<std::unique_ptr<Block>> blocks(static_cast<size_t>(count));
    for (int64_t b = 0; b < count; ++b) {
      blocks[b] = std::make_unique<Block>();
      init_block(*blocks[b], L, order[first + b], smem);
    }
    if (L.mode == Mode::kFiber) {
      run_fibers(L, blocks);
    } else {
      run_os_threads(L, blocks);
    }
  }
  if (L.failed.load()) {
    set_last_failure(L.failure);
    return cudaErrorLaunchFailure;
  }
  return cudaSuccess;
}

}  // namespace

cudaError_t launch(const void* func, dim3 grid, dim3 block, size_t smem, bool cooperative,
                   cudaStream_t stream, Body body) {
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
  } else if (int64_t(kernel_registers(func)) * threads > 65536) {
    err = cudaErrorLaunchOutOfResources;
  } else if (cooperative) {
    const DeviceConfig c = config();
    const int64_t resident =
        int64_t(blocks_per_sm(c, kernel_registers(func), static_cast<int>(threads), smem)) *
        c.sms;
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
  return enqueue(stream, Work{"a kernel launch", true, [=, body = std::move(body)] {
                                return execute(func, grid, block, smem, cooperative, body);
                              }});
}

// -- barriers ------------------------------------------------------------------------------------

namespace {

void arrive(Group& g) {
  Launch& L = *current_thread->launch;
  if (L.mode == Mode::kFiber) {
    arrive_fiber(g);
  } else {
    arrive_os(g, L);
  }
}

// The calling thread's launch has failed: the thread goes no further.
[[noreturn]] void abandon(const Launch& L) {
  if (L.mode == Mode::kFiber) abandon_fiber();
  abandon_os_thread();
}

}  // namespace

void sync_block() { arrive(current_thread->block->group); }

void sync_grid() {
  ThreadState* t = current_thread;
  Launch& L = *t->launch;
  if (!L.cooperative) {
    L.fail(std::string(kernel_name(L.func)) + ": grid.sync() in a launch that was not cooperative");
    abandon(L);
  }
  if (L.blocks_exited.load() > 0) {
    L.fail(std::string(kernel_name(L.func)) + ": " + block_name(*t->block, L) +
           " reached a grid.sync() after " + std::to_string(L.blocks_exited.load()) +
           " block(s) had exited: on a GPU it waits for them forever");
    abandon(L);
  }
  arrive(L.grid_group);
  ++t->grid_syncs;
}

int lane_id() { return current_thread->rank % 32; }

namespace {
void check_full_mask(unsigned mask) {
  Warp& w = *current_thread->warp;
  const unsigned full = w.lanes == 32 ? 0xffffffffu : ((1u << w.lanes) - 1);
  if ((mask & full) != full) {
    current_thread->launch->fail("a warp-synchronous operation with a partial mask (0x" +
                                 std::to_string(mask) + "): the emulation needs every lane");
    abandon(*current_thread->launch);
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
