// Region-contrast kernels, part 1 of 4: shared constants, element types and the PTX wrappers
// (ex2.approx, cp.async, ldmatrix, mma.sync m16n8k16). Included only by
// region_contrast_kernel.cu, which is the one translation unit of these kernels (the templates
// of rc_mma.cuh and rc_simt.cuh are instantiated by its launch planning); see that file for the
// design overview. Pure CUDA: no torch headers.
#pragma once

#include <cstdint>
#include <cstring>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

// cp.async, ldmatrix and bf16 mma.sync need sm_80. Device passes for older architectures (nvcc 13
// still targets sm_75) compile the tensor-core kernels to a trap, so that an arch list such as
// "7.5;8.0;9.0" builds; the host dispatcher never launches them from such an image
// (tc_supported). The host pass (no __CUDA_ARCH__) sees the full kernels.
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
#define CTRLAUG_RC_TC 1
#else
#define CTRLAUG_RC_TC 0
#pragma nv_diag_suppress 177  // "declared but never referenced": the tensor-core helpers
#endif

namespace {

constexpr int kThreads = 128;  // 4 warps per block, every region-contrast kernel
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

// ------------------------------------------------------------------------------------------
// Small device helpers
// ------------------------------------------------------------------------------------------

// 2^x with the hardware approximation (max 2 ulp), whatever the -use_fast_math setting;
// ex2.approx(-inf) = +0, which the masking relies on.
__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

template <typename T>
struct Elt;

template <>
struct Elt<float> {
  static __device__ __forceinline__ float to_float(float v) { return v; }
};

template <>
struct Elt<__nv_bfloat16> {
  // bf16 has fp32's exponent range: P needs no scaling.
  static constexpr float kPScale = 1.0f;
  static __device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
  // Two floats -> one .b32 holding (lo, hi) as mma expects (lower column in the low half).
  static __device__ __forceinline__ uint32_t pack(float lo, float hi) {
    __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
    uint32_t u;
    memcpy(&u, &h, sizeof(u));
    return u;
  }
};

template <>
struct Elt<__half> {
  // fp16's smallest normal is 6.1e-5: probabilities of a 1M-key softmax (~1e-6) would be
  // subnormal. P <= 1 is scaled by 2^15 (max 32768 < 65504) before rounding.
  static constexpr float kPScale = 32768.0f;
  static __device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
  static __device__ __forceinline__ uint32_t pack(float lo, float hi) {
    __half2 h = __floats2half2_rn(lo, hi);
    uint32_t u;
    memcpy(&u, &h, sizeof(u));
    return u;
  }
};

__device__ __forceinline__ uint32_t smem_u32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16-byte async global->shared copy; src_bytes = 0 writes 16 zero bytes and reads nothing.
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, int src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_u32(smem)), "l"(gmem),
               "r"(src_bytes)
               : "memory");
}
__device__ __forceinline__ void cp_async_commit() {
  asm volatile("cp.async.commit_group;\n" ::: "memory");
}
// Wait until at most N committed groups are still in flight.
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

// Four 8x8 b16 matrices; lanes 8m..8m+7 give the row addresses of matrix m, register m of
// every lane receives its slice of matrix m (row lane/4, columns 2*(lane%4) + {0,1}).
__device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_u32(p)));
}
// Same, transposed: register m receives (rows 2*(lane%4) + {0,1}, column lane/4) of matrix m.
__device__ __forceinline__ void ldsm_x4_trans(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_u32(p)));
}

// c[16x8] += a[16x16] * b[16x8], fp32 accumulators.
// a: a[0] = (row g, k 2t..2t+1), a[1] = (row g+8, k 2t..), a[2] = (row g, k 2t+8..),
//    a[3] = (row g+8, k 2t+8..);  b0 = (k 2t..2t+1, col g), b1 = (k 2t+8.., col g);
// c: c[0..1] = (row g, cols 2t, 2t+1), c[2..3] = (row g+8, cols 2t, 2t+1);
// with g = lane/4, t = lane%4.
template <typename T>
__device__ __forceinline__ void mma16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                         uint32_t b1);

template <>
__device__ __forceinline__ void mma16816<__nv_bfloat16>(float (&c)[4], const uint32_t (&a)[4],
                                                        uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

template <>
__device__ __forceinline__ void mma16816<__half>(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                                 uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

}  // namespace
