// Scalar numerics shared by the region-contrast kernels and their host tests.
//
// Plain C++ with __host__ __device__ when nvcc compiles it, so that the exact code the kernels
// use also compiles with g++ in a host-only test (tests/test_cuda_kernels.py); no CUDA headers.
#pragma once

#include <cfloat>

#if defined(__CUDACC__)
#define CTRLAUG_HD __host__ __device__ __forceinline__
#else
#define CTRLAUG_HD inline
#endif

// Coefficient scaling of the tensor-core backward.
//
// The backward rounds P^T[j, i] = c_i * exp(l_ij - lse_i) to the input type before the second
// product. For fp16 (smallest normal 6.1e-5) the coefficients are first normalised by
// amax = max_i |coef_i| and scaled by p_scale = 2^15, so |c_i| <= 2^15 < 65504 whatever the
// coefficients' magnitude; the accumulated sum is multiplied back at the end:
//
//   a = max(amax, floor),  c_i = coef_i * (p_scale / a),  dk = (acc * (1 / p_scale)) * (a / tau).
//
// The floor keeps every factor finite for every amax >= 0: the unclamped p_scale / amax
// overflows to +inf for amax below ~1e-34 (2^15 / FLT_MAX), and then a zero coefficient gives
// 0 * inf = NaN. With floor = max(FLT_MIN, 2 * p_scale / FLT_MAX) (~1e-34 for fp16, FLT_MIN for
// bf16), p_scale / a <= FLT_MAX / 2 and |c_i| <= p_scale still holds (|coef_i| <= amax <= a);
// below the floor the c_i are merely smaller than p_scale. The division by p_scale is a multiply
// by its exact reciprocal (a power of two) done before the multiply by a / tau, so a / p_scale
// (below FLT_MIN for tiny a) is never formed and cannot be flushed to zero. amax == 0 (every
// coefficient zero) gives in = out = 0, so dk = 0 exactly; a NaN coefficient still gives NaN.
struct RcCoefScale {
  float in;     // multiplies each coefficient before P is rounded to the input type
  float inv_p;  // 1 / p_scale (exact: p_scale is a power of two)
  float out;    // a / tau: multiplies acc * inv_p at the end
};

CTRLAUG_HD RcCoefScale rc_coef_scale(float amax, float p_scale, float inv_tau) {
  RcCoefScale s;
  s.inv_p = 1.0f / p_scale;
  if (!(amax > 0.0f)) {  // amax is a max of |coef| (>= 0): this is amax == 0
    s.in = 0.0f;
    s.out = 0.0f;
    return s;
  }
  const float no_overflow = 2.0f * (p_scale / FLT_MAX);
  const float lowest = no_overflow > FLT_MIN ? no_overflow : FLT_MIN;
  const float a = amax > lowest ? amax : lowest;
  s.in = p_scale / a;
  s.out = a * inv_tau;
  return s;
}

// The coefficient as it enters P: |result| <= p_scale for |coef| <= amax.
CTRLAUG_HD float rc_scaled_coef(float coef, const RcCoefScale& s) { return coef * s.in; }

// Undo the scaling of an accumulated sum of scaled coefficients (and apply 1 / tau).
CTRLAUG_HD float rc_unscale(float acc, const RcCoefScale& s) { return (acc * s.inv_p) * s.out; }
