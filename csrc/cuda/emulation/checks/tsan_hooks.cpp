// tsan_hooks.cpp: the calls GCC's ThreadSanitizer instrumentation puts before every load, store
// and atomic of a translation unit compiled with -fsanitize=thread (and
// --param=tsan-distinguish-volatile=1, --param=tsan-instrument-func-entry-exit=0), answered here
// by the emulation's coherence check (coherence.cpp) instead of by ThreadSanitizer's runtime,
// which is not linked. .ci/cuda_emulation's coherence run compiles the kernels (and the checks
// driver's own) that way and links this file: every access of a kernel then tells the check what
// it touched and how. The atomics do what they are asked (sequentially consistent), then report.
#include <cstddef>
#include <cstdint>

#include "cuda/emulation/runtime_internal.h"

using gru_emu::Access;

namespace {

inline void load(const volatile void* p, size_t n, Access how) {
  gru_emu::check_load(const_cast<const void*>(p), n, how);
}
inline void store(const volatile void* p, size_t n, Access how) {
  gru_emu::check_store(const_cast<const void*>(p), n, how);
}

}  // namespace

extern "C" {

void __tsan_init() {}
void __tsan_func_entry(void*) {}
void __tsan_func_exit() {}
void __tsan_vptr_update(void**, void*) {}
void __tsan_vptr_read(void**) {}

#define GRU_EMU_ACCESS(n)                                                                   \
  void __tsan_read##n(void* p) { load(p, n, Access::kPlain); }                              \
  void __tsan_write##n(void* p) { store(p, n, Access::kPlain); }                            \
  void __tsan_unaligned_read##n(void* p) { load(p, n, Access::kPlain); }                    \
  void __tsan_unaligned_write##n(void* p) { store(p, n, Access::kPlain); }                  \
  void __tsan_volatile_read##n(void* p) { load(p, n, Access::kVolatile); }                  \
  void __tsan_volatile_write##n(void* p) { store(p, n, Access::kVolatile); }                \
  void __tsan_unaligned_volatile_read##n(void* p) { load(p, n, Access::kVolatile); }        \
  void __tsan_unaligned_volatile_write##n(void* p) { store(p, n, Access::kVolatile); }
GRU_EMU_ACCESS(1)
GRU_EMU_ACCESS(2)
GRU_EMU_ACCESS(4)
GRU_EMU_ACCESS(8)
GRU_EMU_ACCESS(16)
#undef GRU_EMU_ACCESS

void __tsan_read_range(void* p, unsigned long n) { load(p, n, Access::kPlain); }
void __tsan_write_range(void* p, unsigned long n) { store(p, n, Access::kPlain); }

void __tsan_atomic_thread_fence(int) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
void __tsan_atomic_signal_fence(int) { __atomic_signal_fence(__ATOMIC_SEQ_CST); }

#define GRU_EMU_ATOMIC(bits, T)                                                               \
  T __tsan_atomic##bits##_load(const volatile T* a, int) {                                    \
    load(a, sizeof(T), Access::kAtomic);                                                      \
    return __atomic_load_n(a, __ATOMIC_SEQ_CST);                                              \
  }                                                                                           \
  void __tsan_atomic##bits##_store(volatile T* a, T v, int) {                                 \
    store(a, sizeof(T), Access::kAtomic);                                                     \
    __atomic_store_n(a, v, __ATOMIC_SEQ_CST);                                                 \
  }                                                                                           \
  GRU_EMU_RMW(bits, T, exchange, __atomic_exchange_n)                                         \
  GRU_EMU_RMW(bits, T, fetch_add, __atomic_fetch_add)                                         \
  GRU_EMU_RMW(bits, T, fetch_sub, __atomic_fetch_sub)                                         \
  GRU_EMU_RMW(bits, T, fetch_and, __atomic_fetch_and)                                         \
  GRU_EMU_RMW(bits, T, fetch_or, __atomic_fetch_or)                                           \
  GRU_EMU_RMW(bits, T, fetch_xor, __atomic_fetch_xor)                                         \
  GRU_EMU_RMW(bits, T, fetch_nand, __atomic_fetch_nand)                                       \
  int __tsan_atomic##bits##_compare_exchange_strong(volatile T* a, T* c, T v, int, int) {     \
    load(a, sizeof(T), Access::kAtomic);                                                      \
    store(a, sizeof(T), Access::kAtomic);                                                     \
    return __atomic_compare_exchange_n(a, c, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);   \
  }                                                                                           \
  int __tsan_atomic##bits##_compare_exchange_weak(volatile T* a, T* c, T v, int, int) {       \
    load(a, sizeof(T), Access::kAtomic);                                                      \
    store(a, sizeof(T), Access::kAtomic);                                                     \
    return __atomic_compare_exchange_n(a, c, v, true, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);    \
  }                                                                                           \
  T __tsan_atomic##bits##_compare_exchange_val(volatile T* a, T c, T v, int, int) {           \
    load(a, sizeof(T), Access::kAtomic);                                                      \
    store(a, sizeof(T), Access::kAtomic);                                                     \
    __atomic_compare_exchange_n(a, &c, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);         \
    return c;                                                                                 \
  }
#define GRU_EMU_RMW(bits, T, name, builtin)                                                   \
  T __tsan_atomic##bits##_##name(volatile T* a, T v, int) {                                   \
    load(a, sizeof(T), Access::kAtomic);                                                      \
    store(a, sizeof(T), Access::kAtomic);                                                     \
    return builtin(a, v, __ATOMIC_SEQ_CST);                                                   \
  }
GRU_EMU_ATOMIC(8, int8_t)
GRU_EMU_ATOMIC(16, int16_t)
GRU_EMU_ATOMIC(32, int32_t)
GRU_EMU_ATOMIC(64, int64_t)
#undef GRU_EMU_RMW
#undef GRU_EMU_ATOMIC

}  // extern "C"
