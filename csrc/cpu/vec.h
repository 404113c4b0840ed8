// vec.h: the CPU kernels' SIMD layer: at::vec's instruction set chosen to match the compiler's
// target, the lane types a row of hidden units is processed in (whole vectors, a masked or scalar
// tail), the conversions of the half types (bfloat16, float16) to and from the float lanes their
// math runs in, and the activations on them. Header-only, internal to the CPU kernels' files (an
// unnamed namespace: each includes it first).
//
// at::vec picks its implementation from CPU_CAPABILITY_*, which must be defined before its
// headers are first read: include this file before any ATen header.
#pragma once

// ATen's vec headers define VECTOR_WIDTH: if they were read already, they were read without the
// instruction set chosen below (and a CPU_CAPABILITY from elsewhere would contradict it).
#if defined(VECTOR_WIDTH) || defined(CPU_CAPABILITY)
#error "cpu/vec.h must be included before any ATen header: it chooses at::vec's instruction set"
#endif

// The instruction set the compiler targets (-march=native by default, the x86-64 baseline with
// GRU_NATIVE_PORTABLE=1). GRU_NATIVE_VEC_ISA names it for vector_isa().
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512DQ__) && \
    defined(__AVX512VL__)
#define CPU_CAPABILITY AVX512
#define CPU_CAPABILITY_AVX512
#define GRU_NATIVE_VEC_ISA "AVX512"
#elif defined(__AVX2__) && defined(__FMA__)
#define CPU_CAPABILITY AVX2
#define CPU_CAPABILITY_AVX2
#define GRU_NATIVE_VEC_ISA "AVX2"
#else
#define CPU_CAPABILITY DEFAULT
#define GRU_NATIVE_VEC_ISA "DEFAULT"
#endif

#include <ATen/OpMathType.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

namespace gru_native::cpu {
namespace {

template <typename scalar_t>
using Vec = at::vec::Vectorized<scalar_t>;

// The type an element type's math runs in: float for bfloat16 and float16 (converted on load,
// rounded to nearest even on store), the type itself for float and double.
template <typename T>
using Math = at::opmath_type<T>;

// A whole vector of Math<S> from p[0, Vec<Math<S>>::size()), and back.
inline Vec<float> load_math(const float* p) { return Vec<float>::loadu(p); }
inline Vec<double> load_math(const double* p) { return Vec<double>::loadu(p); }
inline void store_math(float* p, const Vec<float>& v) { v.store(p); }
inline void store_math(double* p, const Vec<double>& v) { v.store(p); }
#if defined(CPU_CAPABILITY_AVX2) || defined(CPU_CAPABILITY_AVX512)
// A float vector's worth of 16-bit elements, and the F16C conversions of that width.
#if defined(CPU_CAPABILITY_AVX512)
#define GRU_NATIVE_F16C(op) _mm512_##op
using FloatBits = __m512;
using HalfWord = __m256i;
#else
#define GRU_NATIVE_F16C(op) _mm256_##op
using FloatBits = __m256;
using HalfWord = __m128i;
#endif
inline FloatBits half_to_float(HalfWord h) { return GRU_NATIVE_F16C(cvtph_ps)(h); }
inline HalfWord float_to_half(FloatBits f) {
  return GRU_NATIVE_F16C(cvtps_ph)(f, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
}
#undef GRU_NATIVE_F16C
inline HalfWord load_halfword(const void* p) {
  HalfWord v;
  std::memcpy(&v, p, sizeof(v));  // an unaligned vector load
  return v;
}
inline void store_halfword(void* p, HalfWord v) { std::memcpy(p, &v, sizeof(v)); }
#if defined(CPU_CAPABILITY_AVX512)
inline Vec<float> load_math(const c10::BFloat16* p) {
  FloatBits o;
  at::vec::cvtbf16_fp32(load_halfword(p), o);
  return o;
}
#else
// The 8 bfloat16 in both halves of a register (vbroadcasti128: a load, no ALU), each 16 bits
// moved to the top of its 32-bit lane with zeros below by one byte shuffle: the float values
// cvtbf16_fp32 gives (vpmovzxwd, then vpslld), one vector instruction fewer per 8 weights.
inline Vec<float> load_math(const c10::BFloat16* p) {
  const __m256i w = _mm256_broadcastsi128_si256(load_halfword(p));
  const __m256i to_high = _mm256_setr_epi8(-1, -1, 0, 1, -1, -1, 2, 3, -1, -1, 4, 5, -1, -1, 6, 7,
                                           -1, -1, 8, 9, -1, -1, 10, 11, -1, -1, 12, 13, -1, -1,
                                           14, 15);
  return _mm256_castsi256_ps(_mm256_shuffle_epi8(w, to_high));
}
#endif
inline Vec<float> load_math(const c10::Half* p) { return half_to_float(load_halfword(p)); }
inline void store_math(c10::BFloat16* p, const Vec<float>& v) {
  store_halfword(p, at::vec::cvtfp32_bf16(FloatBits(v)));
}
inline void store_math(c10::Half* p, const Vec<float>& v) {
  store_halfword(p, float_to_half(FloatBits(v)));
}
#else
template <typename S, typename = std::enable_if_t<!std::is_same_v<S, Math<S>>>>
inline Vec<float> load_math(const S* p) {
  float buf[Vec<float>::size()];
  for (int64_t i = 0; i < Vec<float>::size(); ++i) buf[i] = static_cast<float>(p[i]);
  return Vec<float>::loadu(buf);
}
template <typename S, typename = std::enable_if_t<!std::is_same_v<S, Math<S>>>>
inline void store_math(S* p, const Vec<float>& v) {
  float buf[Vec<float>::size()];
  v.store(buf);
  for (int64_t i = 0; i < Vec<float>::size(); ++i) p[i] = static_cast<S>(buf[i]);
}
#endif

// One scalar with the part of at::vec::Vectorized's interface the kernels use, so that the same
// code handles the tail of a row that is shorter than a vector (a partial Vectorized load or
// store goes through memcpy, which costs more than the arithmetic at small sizes).
template <typename T>
struct ScalarLane {
  T v;
  ScalarLane() = default;
  ScalarLane(T x) : v(x) {}  // NOLINT: implicit, like Vectorized's broadcast
  static constexpr int64_t size() { return 1; }
  static ScalarLane loadu(const T* p) { return ScalarLane(*p); }
  void store(T* p) const { *p = v; }
  ScalarLane neg() const { return ScalarLane(-v); }
  ScalarLane exp() const { return ScalarLane(std::exp(v)); }
  ScalarLane tanh() const { return ScalarLane(std::tanh(v)); }
  ScalarLane reciprocal() const { return ScalarLane(T(1) / v); }
  friend ScalarLane operator+(ScalarLane a, ScalarLane b) { return ScalarLane(a.v + b.v); }
  friend ScalarLane operator-(ScalarLane a, ScalarLane b) { return ScalarLane(a.v - b.v); }
  friend ScalarLane operator*(ScalarLane a, ScalarLane b) { return ScalarLane(a.v * b.v); }
};

// tanh for float lanes, cheaper than Sleef's tanh (one exp and one division instead), with an
// error of at most a few ulp (tests/test_ops.py::test_cpu_activation_accuracy checks it):
//   |x| <  0.5: the odd Taylor series to x^15 (truncation error < 1e-8 relative there);
//   |x| >= 0.5: 1 - 2 / (exp(2|x|) + 1), where there is no cancellation to speak of;
// with the sign of x put back. NaN stays NaN, +-inf gives +-1, -0 gives -0.
constexpr float kTanhSeries[8] = {1.0f,
                                  -1.0f / 3.0f,
                                  2.0f / 15.0f,
                                  -17.0f / 315.0f,
                                  62.0f / 2835.0f,
                                  -1382.0f / 155925.0f,
                                  21844.0f / 6081075.0f,
                                  -929569.0f / 638512875.0f};
constexpr float kTanhSeriesBound = 0.5f;

inline Vec<float> fast_tanh(const Vec<float>& x) {
  using V = Vec<float>;
  const V ax = x.abs();
  const V x2 = x * x;
  V p(kTanhSeries[7]);
  for (int i = 6; i >= 0; --i) p = at::vec::fmadd(p, x2, V(kTanhSeries[i]));
  const V small = p * ax;
  const V big = V(1.0f) - V(2.0f) / ((ax + ax).exp() + V(1.0f));
  const V t = V::blendv(big, small, ax < V(kTanhSeriesBound));
  return t | (x & V(-0.0f));
}

inline float fast_tanh(float x) {
  const float ax = std::fabs(x);
  float t;
  if (ax < kTanhSeriesBound) {
    const float x2 = x * x;
    float p = kTanhSeries[7];
    for (int i = 6; i >= 0; --i) p = std::fma(p, x2, kTanhSeries[i]);
    t = p * ax;
  } else {
    t = 1.0f - 2.0f / (std::exp(ax + ax) + 1.0f);
  }
  return std::copysign(t, x);
}

// Activations on a lane type: sigmoid as ATen evaluates it, 1 / (1 + exp(-x)) (Sleef exp on
// vectors, std::exp on scalars); tanh as above for float, Sleef / std::tanh for double.
template <typename V>
struct VecAct {
  static inline V sigmoid(const V& x) { return (V(1) + x.neg().exp()).reciprocal(); }
  static inline V tanh(const V& x) { return x.tanh(); }
};
template <>
struct VecAct<Vec<float>> {
  using V = Vec<float>;
  static inline V sigmoid(const V& x) { return (V(1) + x.neg().exp()).reciprocal(); }
  static inline V tanh(const V& x) { return fast_tanh(x); }
};
template <>
struct VecAct<ScalarLane<float>> {
  using V = ScalarLane<float>;
  static inline V sigmoid(const V& x) { return V(1.0f / (1.0f + std::exp(-x.v))); }
  static inline V tanh(const V& x) { return V(fast_tanh(x.v)); }
};

// Lanes: how a block of consecutive units is loaded and stored. T is the math type (float or
// double) and V the value type the math runs on; loads and stores take any element type whose
// math type is T (a half type converts). FullLane: a whole vector. MaskedLane: the last
// n < V::size() units of a row, with masked loads and stores (AVX2, AVX512; the half types
// through a small buffer), so a row's tail takes the same vector path (and the same math) as the
// rest. OneLane: one unit, on ScalarLane (the portable build's tail).
template <typename T>
struct FullLane {
  using V = Vec<T>;
  template <typename S>
  V load(const S* p) const {
    return load_math(p);
  }
  template <typename S>
  void store(S* p, const V& v) const {
    store_math(p, v);
  }
};

template <typename T>
struct OneLane {
  using V = ScalarLane<T>;
  template <typename S>
  V load(const S* p) const {
    return V(static_cast<T>(*p));
  }
  template <typename S>
  void store(S* p, const V& v) const {
    *p = static_cast<S>(v.v);
  }
};

// The first n elements of a half type's vector through a buffer (AVX2 has no 16-bit masked
// loads and stores): zeros past n on load, p[n, ...) untouched on store.
template <typename S>
inline Vec<float> load_first_half(const S* p, int64_t n) {
  S buf[Vec<float>::size()] = {};
  std::copy(p, p + n, buf);
  return load_math(buf);
}
template <typename S>
inline void store_first_half(S* p, const Vec<float>& v, int64_t n) {
  S buf[Vec<float>::size()];
  store_math(buf, v);
  std::copy(buf, buf + n, p);
}

// The half types' loads and stores of a masked float lane of n units.
struct HalfTail {
  int64_t n;
  template <typename S>
  Vec<float> load(const S* p) const {
    return load_first_half(p, n);
  }
  template <typename S>
  void store(S* p, const Vec<float>& v) const {
    store_first_half(p, v, n);
  }
};

#if defined(CPU_CAPABILITY_AVX2)
constexpr bool kMaskedLanes = true;
template <typename T>
struct MaskedLane;
template <>
struct MaskedLane<float> : HalfTail {
  using V = Vec<float>;
  __m256i mask;
  explicit MaskedLane(int64_t n_)
      : HalfTail{n_},
        mask(_mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(n_)),
                                _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7))) {}
  using HalfTail::load;
  using HalfTail::store;
  V load(const float* p) const { return V(_mm256_maskload_ps(p, mask)); }
  void store(float* p, const V& v) const { _mm256_maskstore_ps(p, mask, v); }
};
template <>
struct MaskedLane<double> {
  using V = Vec<double>;
  __m256i mask;
  explicit MaskedLane(int64_t n)
      : mask(_mm256_cmpgt_epi64(_mm256_set1_epi64x(n), _mm256_setr_epi64x(0, 1, 2, 3))) {}
  V load(const double* p) const { return V(_mm256_maskload_pd(p, mask)); }
  void store(double* p, const V& v) const { _mm256_maskstore_pd(p, mask, v); }
};
#elif defined(CPU_CAPABILITY_AVX512)
constexpr bool kMaskedLanes = true;
template <typename T>
struct MaskedLane;
template <>
struct MaskedLane<float> : HalfTail {
  using V = Vec<float>;
  __mmask16 mask;
  explicit MaskedLane(int64_t n_)
      : HalfTail{n_}, mask(static_cast<__mmask16>((1u << n_) - 1)) {}
  using HalfTail::load;
  using HalfTail::store;
  V load(const float* p) const { return V(_mm512_maskz_loadu_ps(mask, p)); }
  void store(float* p, const V& v) const { _mm512_mask_storeu_ps(p, mask, v); }
};
template <>
struct MaskedLane<double> {
  using V = Vec<double>;
  __mmask8 mask;
  explicit MaskedLane(int64_t n) : mask(static_cast<__mmask8>((1u << n) - 1)) {}
  V load(const double* p) const { return V(_mm512_maskz_loadu_pd(mask, p)); }
  void store(double* p, const V& v) const { _mm512_mask_storeu_pd(p, mask, v); }
};
#else
constexpr bool kMaskedLanes = false;
template <typename T>
using MaskedLane = OneLane<T>;  // never used
#endif

// Calls f(lane, j) for consecutive blocks [j, j + lane width) covering [0, width).
template <typename T, typename F>
inline void for_each_lane(int64_t width, const F& f) {
  constexpr int64_t kV = Vec<T>::size();
  int64_t j = 0;
  for (; j + kV <= width; j += kV) f(FullLane<T>(), j);
  if (j == width) return;
  if constexpr (kMaskedLanes) {
    f(MaskedLane<T>(width - j), j);
  } else {
    for (; j < width; ++j) f(OneLane<T>(), j);
  }
}

// p[0, n) in a vector of Math<T>, zeros past n; n < Vec<Math<T>>::size().
template <typename T>
inline Vec<Math<T>> load_first(const T* p, int64_t n) {
  if constexpr (!std::is_same_v<T, Math<T>>) {
    return load_first_half(p, n);
  } else if constexpr (kMaskedLanes) {
    return MaskedLane<T>(n).load(p);
  } else {
    return Vec<T>::loadu(p, n);
  }
}

// The register type under at::vec's vector of T (__m512 under Vectorized<float> with AVX-512), or
// the class itself where there is none. A microkernel's array of accumulators is declared in it:
// GCC 12 keeps an array of the class in memory, storing every accumulator to the stack after each
// FMA (the float GEMM's 12 x 2 tile: 24 stores per 24 FMAs, 0.84x MKL's rate on a Zen 4), where
// an array of the register type stays in registers.
#if defined(CPU_CAPABILITY_AVX512)
using RawFloat = __m512;
using RawDouble = __m512d;
constexpr bool kRawRegisters = true;
#elif defined(CPU_CAPABILITY_AVX2)
using RawFloat = __m256;
using RawDouble = __m256d;
constexpr bool kRawRegisters = true;
#else
using RawFloat = Vec<float>;
using RawDouble = Vec<double>;
constexpr bool kRawRegisters = false;
#endif
// (Specialised, not std::conditional_t: a vector type as a template argument loses its
// attributes.)
template <typename T>
struct RawVec {
  using type = Vec<T>;
  static constexpr bool kRegister = false;
};
template <>
struct RawVec<float> {
  using type = RawFloat;
  static constexpr bool kRegister = kRawRegisters;
};
template <>
struct RawVec<double> {
  using type = RawDouble;
  static constexpr bool kRegister = kRawRegisters;
};
template <typename T>
using Raw = typename RawVec<T>::type;

// v, held in a register from here on: the compiler may no longer fold its load into each FMA
// that uses it (a load per FMA: with RB rows of A, RB loads of each vector of W). Where a tile
// reads each vector of W for two rows or more this takes the loads from 14 to 8 per step (2 x 6
// tile): 1.05-1.25x on products whose W is in L2 (benchmarks/NOTES.md section 10).
template <typename V>
inline V in_register(V v) {
  using T = typename V::value_type;
  if constexpr (!RawVec<T>::kRegister) {
    return v;  // no register type under it (a portable build, or a half type's vector)
  } else {
    // "v": any vector register the target has (xmm/ymm/zmm 0-15, or 0-31 with AVX-512).
    Raw<T> raw = static_cast<Raw<T>>(v);
    __asm__("" : "+v"(raw));
    return V(raw);
  }
}

}  // namespace
}  // namespace gru_native::cpu
