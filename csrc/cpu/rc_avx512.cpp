// The AVX-512 path of the CPU region contrast: the shared SIMD micro-kernels (rc_simd.h) over
// 16-lane __m512 vectors (AVX-512F only), compiled for avx512f by the target pragma below (the
// rest of the extension is built for the baseline x86-64 ISA; csrc/cpu/isa.cpp calls this only on
// a CPU, and an OS, with AVX-512F). The vector primitives are the AVX2 path's, one for one, with
// lane masks in __mmask16 registers instead of all-ones vector lanes.
#include "rc_kernels.h"

#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>

#pragma GCC push_options
#pragma GCC target("avx512f,avx2,fma")
// GCC 12's _mm512_reduce_* and max/min intrinsics start from _mm512_undefined_ps(), which
// -Wmaybe-uninitialized reports inside the system header; the values are never read.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace ctrlaug::cpu::rc::avx512 {
namespace {

struct V {
  using reg = __m512;
  using mask = __mmask16;
  static constexpr int W = 16;
  static reg load(const float* p) { return _mm512_loadu_ps(p); }
  static void store(float* p, reg x) { _mm512_storeu_ps(p, x); }
  static reg set1(float x) { return _mm512_set1_ps(x); }
  static reg zero() { return _mm512_setzero_ps(); }
  static reg bcast(const float* p) { return _mm512_set1_ps(*p); }
  static reg fma(reg a, reg b, reg c) { return _mm512_fmadd_ps(a, b, c); }
  static reg add(reg a, reg b) { return _mm512_add_ps(a, b); }
  static reg sub(reg a, reg b) { return _mm512_sub_ps(a, b); }
  static reg mul(reg a, reg b) { return _mm512_mul_ps(a, b); }
  static reg max(reg a, reg b) { return _mm512_max_ps(a, b); }
  static mask no_lanes() { return 0; }
  static mask nan_lanes(reg x) { return _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q); }
  static mask mask_or(mask a, mask b) { return static_cast<mask>(a | b); }
  static bool any(mask a) { return a != 0; }

  static reg exp(reg x) {
    const reg lo = _mm512_set1_ps(-87.33654f);  // below: result 0 (also for -inf)
    const reg hi = _mm512_set1_ps(88.0f);       // above: clamped (never reached by <= 0 exponents)
    const mask underflow = _mm512_cmp_ps_mask(x, lo, _CMP_LT_OQ);
    x = _mm512_max_ps(lo, x);  // operand order keeps a NaN x (max/min return the 2nd operand on NaN)
    x = _mm512_min_ps(hi, x);
    const reg n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                       _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    reg r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);  // ln2 = 0.693359375 - 2.12194440e-4
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    reg p = _mm512_set1_ps(1.0f / 5040.0f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 720.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    // 2^n for n in [-126, 127] by building the exponent field directly.
    const __m512i e = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23);
    return _mm512_maskz_mov_ps(static_cast<mask>(~underflow), _mm512_mul_ps(p, _mm512_castsi512_ps(e)));
  }

  static float hmax(reg v) { return _mm512_reduce_max_ps(v); }
  static float hsum(reg v) { return _mm512_reduce_add_ps(v); }
};

#include "rc_simd.h"

}  // namespace
}  // namespace ctrlaug::cpu::rc::avx512

#pragma GCC diagnostic pop
#pragma GCC pop_options

namespace ctrlaug::cpu::rc {
const RcKernels<float>* avx512_kernels() {
  namespace k = avx512;
  static const RcKernels<float> t{"avx512",        k::NR, k::DV, true, &k::gemm_nt, &k::gemm_nn_acc,
                                  &k::fwd_softmax, &k::bwd_prob};
  return &t;
}
}  // namespace ctrlaug::cpu::rc

#else
namespace ctrlaug::cpu::rc {
const RcKernels<float>* avx512_kernels() { return nullptr; }
}  // namespace ctrlaug::cpu::rc
#endif
