// The AVX2 + FMA path of the CPU region contrast: the shared SIMD micro-kernels (rc_simd.h) over
// 8-lane __m256 vectors, compiled for avx2,fma by the target pragma below (the rest of the
// extension is built for the baseline x86-64 ISA; csrc/cpu/isa.cpp calls this only on a CPU
// that has both).
//
// Also the test path "emu512": the same rc_simd.h source with 16-lane vectors, each a pair of
// __m256, so that the AVX-512 path's tiling (32-key panels, D padded to 16, 16-wide column strips)
// runs and is tested on CPUs without AVX-512. Only the 16-lane primitives of rc_avx512.cpp differ
// from it. It is never chosen unless CTRLAUG_CPU_ISA=emu512 forces it (it spills registers).
#include "rc_kernels.h"

#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>

#pragma GCC push_options
#pragma GCC target("avx2,fma")

namespace ctrlaug::cpu::rc::avx2 {
namespace {

struct V {
  using reg = __m256;
  using mask = __m256;  // all-ones lanes
  static constexpr int W = 8;
  static reg load(const float* p) { return _mm256_loadu_ps(p); }
  static void store(float* p, reg x) { _mm256_storeu_ps(p, x); }
  static reg set1(float x) { return _mm256_set1_ps(x); }
  static reg zero() { return _mm256_setzero_ps(); }
  static reg bcast(const float* p) { return _mm256_broadcast_ss(p); }
  static reg fma(reg a, reg b, reg c) { return _mm256_fmadd_ps(a, b, c); }
  static reg add(reg a, reg b) { return _mm256_add_ps(a, b); }
  static reg sub(reg a, reg b) { return _mm256_sub_ps(a, b); }
  static reg mul(reg a, reg b) { return _mm256_mul_ps(a, b); }
  static reg max(reg a, reg b) { return _mm256_max_ps(a, b); }
  static mask no_lanes() { return _mm256_setzero_ps(); }
  static mask nan_lanes(reg x) { return _mm256_cmp_ps(x, x, _CMP_UNORD_Q); }
  static mask mask_or(mask a, mask b) { return _mm256_or_ps(a, b); }
  static bool any(mask a) { return _mm256_movemask_ps(a) != 0; }

  static reg exp(reg x) {
    const reg lo = _mm256_set1_ps(-87.33654f);  // below: result 0 (also for -inf)
    const reg hi = _mm256_set1_ps(88.0f);       // above: clamped (never reached by <= 0 exponents)
    const reg underflow = _mm256_cmp_ps(x, lo, _CMP_LT_OQ);
    x = _mm256_max_ps(lo, x);  // operand order keeps a NaN x (max/min return the 2nd operand on NaN)
    x = _mm256_min_ps(hi, x);
    const reg n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                  _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    reg r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);  // ln2 = 0.693359375 - 2.12194440e-4
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    reg p = _mm256_set1_ps(1.0f / 5040.0f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 720.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 120.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    // 2^n for n in [-126, 127] by building the exponent field directly.
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_andnot_ps(underflow, _mm256_mul_ps(p, _mm256_castsi256_ps(e)));
  }

  static float hmax(reg v) {
    __m128 a = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    a = _mm_max_ps(a, _mm_movehl_ps(a, a));
    a = _mm_max_ss(a, _mm_movehdup_ps(a));
    return _mm_cvtss_f32(a);
  }

  static float hsum(reg v) {
    __m128 a = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    a = _mm_add_ps(a, _mm_movehl_ps(a, a));
    a = _mm_add_ss(a, _mm_movehdup_ps(a));
    return _mm_cvtss_f32(a);
  }
};

#include "rc_simd.h"

}  // namespace
}  // namespace ctrlaug::cpu::rc::avx2

namespace ctrlaug::cpu::rc::emu512 {
namespace {

struct V {
  using A = avx2::V;
  struct reg {
    __m256 lo, hi;
  };
  using mask = reg;
  static constexpr int W = 16;
  static reg load(const float* p) { return {A::load(p), A::load(p + 8)}; }
  static void store(float* p, reg x) {
    A::store(p, x.lo);
    A::store(p + 8, x.hi);
  }
  static reg set1(float x) { return {A::set1(x), A::set1(x)}; }
  static reg zero() { return {A::zero(), A::zero()}; }
  static reg bcast(const float* p) {
    const __m256 x = A::bcast(p);
    return {x, x};
  }
  static reg fma(reg a, reg b, reg c) { return {A::fma(a.lo, b.lo, c.lo), A::fma(a.hi, b.hi, c.hi)}; }
  static reg add(reg a, reg b) { return {A::add(a.lo, b.lo), A::add(a.hi, b.hi)}; }
  static reg sub(reg a, reg b) { return {A::sub(a.lo, b.lo), A::sub(a.hi, b.hi)}; }
  static reg mul(reg a, reg b) { return {A::mul(a.lo, b.lo), A::mul(a.hi, b.hi)}; }
  static reg max(reg a, reg b) { return {A::max(a.lo, b.lo), A::max(a.hi, b.hi)}; }
  static mask no_lanes() { return zero(); }
  static mask nan_lanes(reg x) { return {A::nan_lanes(x.lo), A::nan_lanes(x.hi)}; }
  static mask mask_or(mask a, mask b) { return {A::mask_or(a.lo, b.lo), A::mask_or(a.hi, b.hi)}; }
  static bool any(mask a) { return A::any(a.lo) || A::any(a.hi); }
  static reg exp(reg x) { return {A::exp(x.lo), A::exp(x.hi)}; }
  static float hmax(reg v) { return A::hmax(A::max(v.lo, v.hi)); }
  static float hsum(reg v) { return A::hsum(A::add(v.lo, v.hi)); }
};

#include "rc_simd.h"

}  // namespace
}  // namespace ctrlaug::cpu::rc::emu512

#pragma GCC pop_options

namespace ctrlaug::cpu::rc {
const RcKernels<float>* avx2_kernels() {
  namespace k = avx2;
  static const RcKernels<float> t{"avx2",         k::NR, k::DV, true, &k::gemm_nt, &k::gemm_nn_acc,
                                  &k::fwd_softmax, &k::bwd_prob};
  return &t;
}

const RcKernels<float>* emu512_kernels() {
  namespace k = emu512;
  static const RcKernels<float> t{"emu512",        k::NR, k::DV, true, &k::gemm_nt, &k::gemm_nn_acc,
                                  &k::fwd_softmax, &k::bwd_prob};
  return &t;
}
}  // namespace ctrlaug::cpu::rc

#else
namespace ctrlaug::cpu::rc {
const RcKernels<float>* avx2_kernels() { return nullptr; }
const RcKernels<float>* emu512_kernels() { return nullptr; }
}  // namespace ctrlaug::cpu::rc
#endif
