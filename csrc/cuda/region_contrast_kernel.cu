// CUDA kernels of ctrlaug::region_contrast_fwd / region_contrast_bwd (spec: *_ref in
// ctrlaug/ops/reference.py). Pure CUDA: no torch headers (see kernels.h for the C interface).
//
// Forward  (flash-attention forward with V = K, never materialising the [M, N] logits):
//   l = q k^T / tau over [keys; queue];  lse_i = logsumexp_j l_ij;  o_i = softmax(l_i) @ [keys; queue]
// Backward (dense part of dL/dkeys, no atomics):
//   dk_j = (1/tau) * sum_i coef_i * exp(l_ij - lse_i) * q_i
//
// Two implementations, picked per call by the host dispatcher at the bottom of this file:
//
// 1. Tensor-core path (bf16 / fp16, D % 8 == 0, 16-byte aligned rows, a kernel image built for
//    sm_80 or newer; see CTRLAUG_RC_TC and tc_supported): mma.sync.m16n8k16 with
//    fp32 accumulators, operands fed by ldmatrix from shared memory, tiles staged with cp.async
//    (double buffered). 4 warps per block; each warp owns 16*MT rows of the "row" operand
//    (queries in the forward, keys in the backward) and streams 64 (32 for D > 128) columns of
//    the other operand per step. The score accumulator of QK^T is re-used in registers as the A
//    operand of the second product (the m16n8 C layout of two adjacent n-tiles is exactly the
//    m16k16 A layout), so P never touches shared memory.
//    Numerics: scores and all sums in fp32; exp via ex2.approx with log2(e)/tau folded into one
//    multiply. P is rounded to the input type for the second product (as every flash kernel);
//    for fp16, P is scaled by 2^15 before the rounding (and the scale removed at the end) so that
//    the small probabilities of a long key axis stay in fp16's normal range. In the backward the
//    coefficients are normalised by max|coef| (a tiny pre-pass) for the same reason.
//
// 2. SIMT path (float32 for exact fp32 math, and any dtype or device that excludes path 1):
//    plain fp32 FMA loops over shared-memory tiles, 8 threads per row.
//
// Both paths split the long axis (keys in the forward, queries in the backward) over
// blockIdx.y when the row blocks alone cannot fill the GPU (M = 16384 queries give only 128
// blocks of 128 rows on a 132-SM H100). Split partials go to a workspace and are merged by a
// second kernel: (lse_s, o_s) -> lse = logsumexp_s lse_s, o = sum_s exp(lse_s - lse) o_s in the
// forward, a plain sum in the backward.
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "kernels.h"
#include "rc_numerics.h"

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

constexpr int kThreads = 128;  // 4 warps per block, every kernel of this file
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

// ------------------------------------------------------------------------------------------
// Tensor-core building blocks. Shared tiles are row-major [rows][DP + 8] elements: the 16-byte
// pad makes the 8 row addresses of every ldmatrix fall in 8 distinct 16-byte bank groups
// (row stride = 16 mod 128 bytes) and keeps every row 16-byte aligned for cp.async.
// ------------------------------------------------------------------------------------------

// Stage ROWS rows [v0, v0 + ROWS) of the virtual matrix [p0 (n0 rows); p1 (n1 rows)] (each row
// D elements, contiguous) into smem. Rows past n0 + n1 and columns in [D, DP) are zero-filled,
// so padded operands contribute exactly 0 to every product. Requires D % 8 == 0 and 16-byte
// aligned p0/p1; `dummy` is any valid global address (never read: src_bytes = 0).
template <typename T, int DP, int ROWS>
__device__ __forceinline__ void stage_rows_async(T* smem, const T* p0, int64_t n0, const T* p1,
                                                 int64_t n1, int64_t v0, int D, const T* dummy) {
  constexpr int LDS = DP + 8;
  constexpr int CPR = DP / 8;  // 16-byte chunks per row
  constexpr int CHUNKS = ROWS * CPR;
#pragma unroll 4
  for (int c = threadIdx.x; c < CHUNKS; c += kThreads) {
    const int r = c / CPR;
    const int col = (c % CPR) * 8;
    const int64_t v = v0 + r;
    const T* src = dummy;
    int bytes = 0;
    if (col < D) {
      if (v < n0) {
        src = p0 + v * D + col;
        bytes = 16;
      } else if (v < n0 + n1) {
        src = p1 + (v - n0) * D + col;
        bytes = 16;
      }
    }
    cp_async16(smem + r * LDS + col, src, bytes);
  }
}

// acc[MT][NT][4] = A B^T restricted to k < D, where A = the warp's 16*MT rows of sA and
// B = NT*8 rows of sB (both [rows][DP + 8]). Accumulates into acc (caller zeroes it).
template <typename T, int DP, int MT, int NT>
__device__ __forceinline__ void mma_abt(float (&acc)[MT][NT][4], const T* sA, const T* sB, int D,
                                        int lane) {
  constexpr int LDS = DP + 8;
  static_assert(NT % 2 == 0, "NT must be even");
#pragma unroll
  for (int kk = 0; kk < DP / 16; ++kk) {
    if (kk * 16 < D) {  // k-steps entirely inside the zero padding are skipped
      uint32_t a[MT][4];
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        // matrices: rows 0-7 | rows 8-15 at k 0-7, then the same at k 8-15 -> a[0..3]
        ldsm_x4(a[mt], sA + (mt * 16 + (lane & 15)) * LDS + kk * 16 + (lane >> 4) * 8);
      }
#pragma unroll
      for (int np = 0; np < NT / 2; ++np) {
        uint32_t b[4];
        // matrices: (B rows 0-7, k 0-7), (rows 0-7, k 8-15), (rows 8-15, k 0-7), (rows 8-15, k 8-15)
        // -> b0/b1 of n-tile 2np, b0/b1 of n-tile 2np+1
        ldsm_x4(b, sB + (np * 16 + (lane & 7) + ((lane >> 4) << 3)) * LDS + kk * 16 +
                       ((lane >> 3) & 1) * 8);
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
          mma16816<T>(acc[mt][2 * np], a[mt], b[0], b[1]);
          mma16816<T>(acc[mt][2 * np + 1], a[mt], b[2], b[3]);
        }
      }
    }
  }
}

// acc[MT][DP/8][4] += P V restricted to output columns < D (rounded up to 16), where
// P[MT][NT][4] is a score accumulator of mma_abt (rows = the warp's rows, columns = NT*8 rows
// of sV) and V = those NT*8 rows of sV ([rows][DP + 8]). P is rounded to T here.
template <typename T, int DP, int MT, int NT>
__device__ __forceinline__ void mma_pv(float (&acc)[MT][DP / 8][4], const float (&p)[MT][NT][4],
                                       const T* sV, int D, int lane) {
  constexpr int LDS = DP + 8;
#pragma unroll
  for (int kk = 0; kk < NT / 2; ++kk) {
    // C layout of n-tiles 2kk, 2kk+1 == A layout of the k-step kk (see mma16816).
    uint32_t a[MT][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
      a[mt][0] = Elt<T>::pack(p[mt][2 * kk][0], p[mt][2 * kk][1]);
      a[mt][1] = Elt<T>::pack(p[mt][2 * kk][2], p[mt][2 * kk][3]);
      a[mt][2] = Elt<T>::pack(p[mt][2 * kk + 1][0], p[mt][2 * kk + 1][1]);
      a[mt][3] = Elt<T>::pack(p[mt][2 * kk + 1][2], p[mt][2 * kk + 1][3]);
    }
#pragma unroll
    for (int dp = 0; dp < DP / 16; ++dp) {
      if (dp * 16 < D) {
        uint32_t b[4];
        // V is [k = row][n = column] row-major, so B comes from transposed 8x8 loads:
        // matrices (rows 0-7, cols 0-7), (rows 8-15, cols 0-7), (rows 0-7, cols 8-15),
        // (rows 8-15, cols 8-15) -> b0/b1 of d-tile 2dp, b0/b1 of d-tile 2dp+1.
        ldsm_x4_trans(b, sV + (kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * LDS + dp * 16 +
                             (lane >> 4) * 8);
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
          mma16816<T>(acc[mt][2 * dp], a[mt], b[0], b[1]);
          mma16816<T>(acc[mt][2 * dp + 1], a[mt], b[2], b[3]);
        }
      }
    }
  }
}

// Tile shapes of the tensor-core kernels (chosen so that acc + scores fit in 255 registers and
// shared memory stays under ~72 KB, i.e. 2-3 blocks per SM on A100/H100). DP is D padded to
// 64, 128 or 256:
//   DP <= 128: 4 warps x 32 rows (MT = 2) = 128 rows per block, 64 streamed columns per step;
//   DP  = 256: 4 warps x 16 rows (MT = 1) =  64 rows per block, 32 streamed columns per step.
template <int DP>
struct TcCfg {
  static constexpr int MT = DP <= 128 ? 2 : 1;
  static constexpr int BM = 64 * MT;            // rows per block (queries fwd, keys bwd)
  static constexpr int BN = DP <= 128 ? 64 : 32;  // streamed rows per step (keys fwd, queries bwd)
  static constexpr int LDS = DP + 8;
  template <typename T>
  static constexpr size_t fwd_smem() {
    return static_cast<size_t>(BM + 2 * BN) * LDS * sizeof(T);
  }
  template <typename T>
  static constexpr size_t bwd_smem() {
    return static_cast<size_t>(BM + 2 * BN) * LDS * sizeof(T) + 2 * 2 * BN * sizeof(float);
  }
};

// ------------------------------------------------------------------------------------------
// Forward, tensor cores.
// Grid (ceil(M / BM), splits). Block (x, s) owns query rows [x*BM, x*BM + BM) and key tiles
// [s*tiles_per_split, min(tiles, (s+1)*tiles_per_split)) of the virtual key matrix
// [keys (N rows); queue (Nq rows)] (every split is non-empty by construction of the plan).
// Writes lse_out[s*M + row] (natural log) and o_out[(s*M + row)*D + d] (normalised by the
// split's own sum), so with one split they are the final outputs.
// Online softmax in the log2 domain: s' = (q.k) * log2(e)/tau, m = running max of s',
// l = running sum of 2^(s' - m); each row lives in one quad (4 lanes), so row reductions are
// two xor-shuffles. l is kept per lane and quad-reduced once at the end (every lane of a quad
// rescales by the same alpha).
// ------------------------------------------------------------------------------------------
template <typename T, int DP, bool WITH_O>
__global__ void __launch_bounds__(kThreads)
    rc_fwd_tc_kernel(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ kq,
                     int64_t M, int64_t N, int64_t Ntot, int D, float scale_log2,
                     int64_t tiles_per_split, float* __restrict__ lse_out,
                     float* __restrict__ o_out) {
#if CTRLAUG_RC_TC
  using Cfg = TcCfg<DP>;
  constexpr int MT = Cfg::MT, BM = Cfg::BM, BN = Cfg::BN, LDS = Cfg::LDS;
  constexpr int NT = BN / 8;  // n-tiles of the score block
  constexpr int DT = DP / 8;  // n-tiles of the output block

  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* sQ = reinterpret_cast<T*>(smem_raw);  // [BM][LDS]
  T* sK = sQ + BM * LDS;                   // [2][BN][LDS]

  const int warp = threadIdx.x >> 5;
  const int lane = threadIdx.x & 31;
  const int g = lane >> 2;  // row within an m16 tile (and +8)
  const int tq = lane & 3;  // column pair within an n8 tile
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * BM;
  const int64_t split = blockIdx.y;
  const int64_t tiles = (Ntot + BN - 1) / BN;
  const int64_t t_begin = split * tiles_per_split;
  int64_t t_end = t_begin + tiles_per_split;
  if (t_end > tiles) t_end = tiles;

  // Prologue: Q block and the first key tile, one commit group.
  stage_rows_async<T, DP, BM>(sQ, q, M, nullptr, 0, row0, D, q);
  stage_rows_async<T, DP, BN>(sK, k, N, kq, Ntot - N, t_begin * BN, D, q);
  cp_async_commit();

  float m_run[MT][2], l_run[MT][2];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      m_run[mt][h] = -INFINITY;
      l_run[mt][h] = 0.0f;
    }
  }
  float o_acc[MT][WITH_O ? DT : 1][4];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int dt = 0; dt < (WITH_O ? DT : 1); ++dt)
#pragma unroll
      for (int e = 0; e < 4; ++e) o_acc[mt][dt][e] = 0.0f;

  const T* sQw = sQ + warp * (16 * MT) * LDS;  // this warp's query rows

  for (int64_t t = t_begin; t < t_end; ++t) {
    const int buf = static_cast<int>((t - t_begin) & 1);
    // Prefetch the next tile into the other buffer (its last reader finished at the trailing
    // __syncthreads of the previous iteration). Always commit, possibly an empty group, so
    // that wait_group<1> below always means "everything but the newest group has landed".
    if (t + 1 < t_end) {
      stage_rows_async<T, DP, BN>(sK + (buf ^ 1) * BN * LDS, k, N, kq, Ntot - N, (t + 1) * BN, D,
                                  q);
    }
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();

    const T* sKb = sK + buf * BN * LDS;
    float s[MT][NT][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int nt = 0; nt < NT; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) s[mt][nt][e] = 0.0f;
    mma_abt<T, DP, MT, NT>(s, sQw, sKb, D, lane);

    const int64_t n0 = t * BN;
    const bool partial = n0 + BN > Ntot;  // only the very last tile has padded keys
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {  // h = 0: row g (c[0..1]); h = 1: row g + 8 (c[2..3])
        float mx = -INFINITY;
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            float v = s[mt][nt][2 * h + e] * scale_log2;
            if (partial && n0 + nt * 8 + 2 * tq + e >= Ntot) v = -INFINITY;  // padded key
            s[mt][nt][2 * h + e] = v;
            mx = fmaxf(mx, v);
          }
        }
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
        // Column 0 of every tile is a real key, so m_new is finite and alpha = 2^(-inf) = 0 on
        // the first tile.
        const float m_new = fmaxf(m_run[mt][h], mx);
        const float alpha = fast_exp2(m_run[mt][h] - m_new);
        m_run[mt][h] = m_new;
        float sum = 0.0f;
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            const float p = fast_exp2(s[mt][nt][2 * h + e] - m_new);
            sum += p;
            s[mt][nt][2 * h + e] = p * Elt<T>::kPScale;
          }
        }
        l_run[mt][h] = l_run[mt][h] * alpha + sum;
        if (WITH_O) {
#pragma unroll
          for (int dt = 0; dt < (WITH_O ? DT : 1); ++dt) {
            o_acc[mt][dt][2 * h] *= alpha;
            o_acc[mt][dt][2 * h + 1] *= alpha;
          }
        }
      }
    }
    if constexpr (WITH_O) {
      mma_pv<T, DP, MT, NT>(o_acc, s, sKb, D, lane);  // o += P K (V = K)
    }
    __syncthreads();  // all warps are done with sK[buf] before it is refilled
  }
  cp_async_wait<0>();  // nothing left in flight at exit (the last group is empty)

  // Epilogue.
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      float l = l_run[mt][h];
      l += __shfl_xor_sync(0xffffffffu, l, 1);
      l += __shfl_xor_sync(0xffffffffu, l, 2);
      const int64_t row = row0 + warp * (16 * MT) + mt * 16 + g + 8 * h;
      if (row < M) {
        const int64_t orow = split * M + row;
        if (tq == 0) lse_out[orow] = (m_run[mt][h] + log2f(l)) * kLn2;
        if (WITH_O) {
          const float inv = 1.0f / (l * Elt<T>::kPScale);
#pragma unroll
          for (int dt = 0; dt < (WITH_O ? DT : 1); ++dt) {
            const int d = dt * 8 + 2 * tq;
            if (d < D) {  // D is even, so d + 1 < D too
              float2 v = make_float2(o_acc[mt][dt][2 * h] * inv, o_acc[mt][dt][2 * h + 1] * inv);
              *reinterpret_cast<float2*>(o_out + orow * D + d) = v;
            }
          }
        }
      }
    }
  }
#else
  __trap();  // pre-sm_80 image: never launched (tc_supported)
#endif
}

// Per-query statistics of query tile t (rows t*BN ...) into shared memory with plain loads
// (made visible to the other warps by the __syncthreads that precedes their first use):
// l2 = lse * log2(e) and c = the scaled coef (rc_numerics.h); padded queries get l2 = +inf,
// c = 0, so their P = 0 * 2^-inf = 0 exactly.
template <int BN>
__device__ __forceinline__ void stage_query_stats(float* l2, float* c, const float* lse,
                                                  const float* coef, int64_t M, int64_t t,
                                                  const RcCoefScale& cs) {
  for (int i = threadIdx.x; i < BN; i += kThreads) {
    const int64_t qi = t * BN + i;
    const bool valid = qi < M;
    l2[i] = valid ? lse[qi] * kLog2e : INFINITY;
    c[i] = valid ? rc_scaled_coef(coef[qi], cs) : 0.0f;
  }
}

// ------------------------------------------------------------------------------------------
// Backward, tensor cores.
// Grid (ceil(N / BM), splits). Block (x, s) owns keys [x*BM, x*BM + BM) (rows of the A
// operand) and loops over its split's query tiles, recomputing the transposed logit tile
// S^T = K Q^T from lse:  P^T[j, i] = c_i * 2^(S^T[j, i] * log2(e)/tau - lse_i * log2(e)),
// with c_i = (coef_i / max|coef|) * kPScale (rc_coef_scale: finite for any max|coef|), then
// dk += P^T Q. Padded queries get c = 0 and
// lse = +inf (so their P is exactly 0); padded keys are computed on zeros and never stored.
// Writes dk_out[(s*N + key)*D + d], already scaled back by max|coef| / (kPScale * tau).
// ------------------------------------------------------------------------------------------
template <typename T, int DP>
__global__ void __launch_bounds__(kThreads)
    rc_bwd_tc_kernel(const T* __restrict__ q, const T* __restrict__ k,
                     const float* __restrict__ lse, const float* __restrict__ coef,
                     const float* __restrict__ coef_absmax, int64_t M, int64_t N, int D,
                     float scale_log2, float inv_tau, int64_t tiles_per_split,
                     float* __restrict__ dk_out) {
#if CTRLAUG_RC_TC
  using Cfg = TcCfg<DP>;
  constexpr int MT = Cfg::MT, BM = Cfg::BM, BN = Cfg::BN, LDS = Cfg::LDS;
  constexpr int NT = BN / 8;
  constexpr int DT = DP / 8;

  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* sK = reinterpret_cast<T*>(smem_raw);                  // [BM][LDS]   keys of this block
  T* sQ = sK + BM * LDS;                                   // [2][BN][LDS] query tiles
  float* sL2 = reinterpret_cast<float*>(sQ + 2 * BN * LDS);  // [2][BN] lse * log2(e)
  float* sC = sL2 + 2 * BN;                                // [2][BN] scaled coef

  const int warp = threadIdx.x >> 5;
  const int lane = threadIdx.x & 31;
  const int g = lane >> 2;
  const int tq = lane & 3;
  const int64_t key0 = static_cast<int64_t>(blockIdx.x) * BM;
  const int64_t split = blockIdx.y;
  const int64_t tiles = (M + BN - 1) / BN;
  const int64_t t_begin = split * tiles_per_split;
  int64_t t_end = t_begin + tiles_per_split;
  if (t_end > tiles) t_end = tiles;

  const RcCoefScale cs = rc_coef_scale(*coef_absmax, Elt<T>::kPScale, inv_tau);

  stage_rows_async<T, DP, BM>(sK, k, N, nullptr, 0, key0, D, q);
  stage_rows_async<T, DP, BN>(sQ, q, M, nullptr, 0, t_begin * BN, D, q);
  cp_async_commit();
  stage_query_stats<BN>(sL2, sC, lse, coef, M, t_begin, cs);

  float acc[MT][DT][4];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int dt = 0; dt < DT; ++dt)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[mt][dt][e] = 0.0f;

  const T* sKw = sK + warp * (16 * MT) * LDS;  // this warp's key rows

  for (int64_t t = t_begin; t < t_end; ++t) {
    const int buf = static_cast<int>((t - t_begin) & 1);
    if (t + 1 < t_end) {
      stage_rows_async<T, DP, BN>(sQ + (buf ^ 1) * BN * LDS, q, M, nullptr, 0, (t + 1) * BN, D,
                                  q);
      stage_query_stats<BN>(sL2 + (buf ^ 1) * BN, sC + (buf ^ 1) * BN, lse, coef, M, t + 1, cs);
    }
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();

    const T* sQb = sQ + buf * BN * LDS;
    const float* l2 = sL2 + buf * BN;
    const float* cc = sC + buf * BN;
    float s[MT][NT][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int nt = 0; nt < NT; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) s[mt][nt][e] = 0.0f;
    mma_abt<T, DP, MT, NT>(s, sKw, sQb, D, lane);  // s[key][query] = k . q

#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int col = nt * 8 + 2 * tq + e;  // query within the tile
        const float lq = l2[col];
        const float cq = cc[col];
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
          s[mt][nt][e] = cq * fast_exp2(fmaf(s[mt][nt][e], scale_log2, -lq));
          s[mt][nt][2 + e] = cq * fast_exp2(fmaf(s[mt][nt][2 + e], scale_log2, -lq));
        }
      }
    }
    mma_pv<T, DP, MT, NT>(acc, s, sQb, D, lane);  // dk[key][d] += P^T[key][query] q[query][d]
    __syncthreads();  // sQ[buf], sL2[buf], sC[buf] are refilled two iterations later
  }
  cp_async_wait<0>();

#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int64_t key = key0 + warp * (16 * MT) + mt * 16 + g + 8 * h;
      if (key < N) {
        float* dst = dk_out + (split * N + key) * D;
#pragma unroll
        for (int dt = 0; dt < DT; ++dt) {
          const int d = dt * 8 + 2 * tq;
          if (d < D) {
            *reinterpret_cast<float2*>(dst + d) =
                make_float2(rc_unscale(acc[mt][dt][2 * h], cs), rc_unscale(acc[mt][dt][2 * h + 1], cs));
          }
        }
      }
    }
  }
#else
  __trap();  // pre-sm_80 image: never launched (tc_supported)
#endif
}

// max_i |coef_i| -> *out (one block).
__global__ void rc_absmax_kernel(const float* __restrict__ coef, int64_t M,
                                 float* __restrict__ out) {
  __shared__ float red[kThreads];
  float m = 0.0f;
  for (int64_t i = threadIdx.x; i < M; i += kThreads) m = fmaxf(m, fabsf(coef[i]));
  red[threadIdx.x] = m;
  __syncthreads();
  for (int s = kThreads / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) red[threadIdx.x] = fmaxf(red[threadIdx.x], red[threadIdx.x + s]);
    __syncthreads();
  }
  if (threadIdx.x == 0) *out = red[0];
}

// ------------------------------------------------------------------------------------------
// SIMT kernels (fp32 math). Block = 16 rows x 8 threads per row; the 8 threads of a row are 8
// consecutive lanes of one warp, so row reductions are xor-shuffles 1, 2, 4. Thread (r, sub)
// scores columns sub + 8j of the tile and accumulates output columns sub + 8jj.
// The P-times-tile product (simt_accumulate_pv) runs over the tile's rows outside and the
// thread's output columns inside: one shared load of P feeds DP/8 FMAs (about one shared load
// per FMA in all, instead of two).
//
// Shared-memory banks (32 banks of 4 bytes; a warp = 4 rows r x 8 lanes sub):
//   sQ/sK rows have stride LD = DP + 1, so the column walks of the dot products (lanes of
//   different rows at the same d) hit distinct banks;
//   sP rows have stride LDP = BN + 8: the 4 rows of a warp start 8 banks apart, so the writes
//   (r, sub + 8j) cover 32 distinct banks and the reads (r, kk) (one address per row,
//   broadcast to its 8 lanes) 4 distinct banks. A stride of BN (32 or 16 floats) put the 4 rows
//   on the same bank (a 4-way conflict on every read); BN + 1 fixes the reads but leaves a
//   4-way conflict on the writes.
// ------------------------------------------------------------------------------------------
template <int DP>
struct SimtCfg {
  static constexpr int BM = 16;                    // rows per block
  static constexpr int BN = DP >= 256 ? 16 : 32;   // streamed rows per tile (static smem < 48 KB)
  static constexpr int LD = DP + 1;                // +1 float: conflict-free column walks
  static constexpr int LDP = BN + 8;               // row stride of sP (see above)
};

// acc[jj] += sum_kk p_row[kk] * sV[kk * LD + sub + 8 * jj] over the BN rows of the tile: row kk
// outside, so each P value is loaded once for DPT FMAs (same summation order per acc[jj] as a
// column-by-column loop, so the same result).
template <int BN, int LD, int DPT>
__device__ __forceinline__ void simt_accumulate_pv(float (&acc)[DPT], const float* p_row,
                                                   const float* sV, int sub) {
#pragma unroll 4
  for (int kk = 0; kk < BN; ++kk) {
    const float p = p_row[kk];
    const float* vrow = sV + kk * LD + sub;
#pragma unroll
    for (int jj = 0; jj < DPT; ++jj) acc[jj] = fmaf(p, vrow[8 * jj], acc[jj]);
  }
}

template <typename T, int DP, bool WITH_O>
__global__ void __launch_bounds__(kThreads)
    rc_fwd_simt_kernel(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ kq,
                       int64_t M, int64_t N, int64_t Ntot, int D, float scale_log2,
                       int64_t tiles_per_split, float* __restrict__ lse_out,
                       float* __restrict__ o_out) {
  using Cfg = SimtCfg<DP>;
  constexpr int BM = Cfg::BM, BN = Cfg::BN, LD = Cfg::LD, LDP = Cfg::LDP;
  constexpr int KPT = BN / 8;  // scores per thread per tile
  constexpr int DPT = DP / 8;  // output columns per thread
  __shared__ float sQ[BM * LD];
  __shared__ float sK[BN * LD];
  __shared__ float sP[BM * LDP];

  const int r = threadIdx.x >> 3;
  const int sub = threadIdx.x & 7;
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * BM;
  const int64_t split = blockIdx.y;
  const int64_t tiles = (Ntot + BN - 1) / BN;
  const int64_t t_begin = split * tiles_per_split;
  int64_t t_end = t_begin + tiles_per_split;
  if (t_end > tiles) t_end = tiles;

  for (int idx = threadIdx.x; idx < BM * DP; idx += kThreads) {
    const int rr = idx / DP, c = idx % DP;
    const int64_t gr = row0 + rr;
    sQ[rr * LD + c] = (gr < M && c < D) ? Elt<T>::to_float(q[gr * D + c]) : 0.0f;
  }

  float m_run = -INFINITY, l_run = 0.0f;
  float o[WITH_O ? DPT : 1];
#pragma unroll
  for (int jj = 0; jj < (WITH_O ? DPT : 1); ++jj) o[jj] = 0.0f;

  for (int64_t t = t_begin; t < t_end; ++t) {
    const int64_t n0 = t * BN;
    __syncthreads();  // previous tile fully consumed (and sQ written on the first pass)
    for (int idx = threadIdx.x; idx < BN * DP; idx += kThreads) {
      const int rr = idx / DP, c = idx % DP;
      const int64_t v = n0 + rr;
      float val = 0.0f;
      if (v < Ntot && c < D) {
        val = Elt<T>::to_float(v < N ? k[v * D + c] : kq[(v - N) * D + c]);
      }
      sK[rr * LD + c] = val;
    }
    __syncthreads();

    float s[KPT];
    float mx = -INFINITY;
#pragma unroll
    for (int j = 0; j < KPT; ++j) {
      const int kk = sub + 8 * j;
      float dot = 0.0f;
      for (int d = 0; d < D; ++d) dot = fmaf(sQ[r * LD + d], sK[kk * LD + d], dot);
      s[j] = (n0 + kk < Ntot) ? dot * scale_log2 : -INFINITY;
      mx = fmaxf(mx, s[j]);
    }
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 4));
    const float m_new = fmaxf(m_run, mx);  // finite: column 0 of the tile is a real key
    const float alpha = fast_exp2(m_run - m_new);
    m_run = m_new;
    float sum = 0.0f;
#pragma unroll
    for (int j = 0; j < KPT; ++j) {
      const float p = fast_exp2(s[j] - m_new);
      sum += p;
      sP[r * LDP + sub + 8 * j] = p;
    }
    l_run = l_run * alpha + sum;
    if constexpr (WITH_O) {
      __syncwarp();  // row r of sP is written and read by the same 8 lanes of one warp
#pragma unroll
      for (int jj = 0; jj < DPT; ++jj) o[jj] *= alpha;
      simt_accumulate_pv<BN, LD, DPT>(o, sP + r * LDP, sK, sub);  // o += P K (V = K)
    }
  }

  l_run += __shfl_xor_sync(0xffffffffu, l_run, 1);
  l_run += __shfl_xor_sync(0xffffffffu, l_run, 2);
  l_run += __shfl_xor_sync(0xffffffffu, l_run, 4);
  const int64_t row = row0 + r;
  if (row < M) {
    const int64_t orow = split * M + row;
    if (sub == 0) lse_out[orow] = (m_run + log2f(l_run)) * kLn2;
    if (WITH_O) {
      const float inv = 1.0f / l_run;
#pragma unroll
      for (int jj = 0; jj < (WITH_O ? DPT : 1); ++jj) {
        const int c = sub + 8 * jj;
        if (c < D) o_out[orow * D + c] = o[jj] * inv;
      }
    }
  }
}

template <typename T, int DP>
__global__ void __launch_bounds__(kThreads)
    rc_bwd_simt_kernel(const T* __restrict__ q, const T* __restrict__ k,
                       const float* __restrict__ lse, const float* __restrict__ coef, int64_t M,
                       int64_t N, int D, float scale_log2, float inv_tau, int64_t tiles_per_split,
                       float* __restrict__ dk_out) {
  using Cfg = SimtCfg<DP>;
  constexpr int BM = Cfg::BM, BN = Cfg::BN, LD = Cfg::LD, LDP = Cfg::LDP;
  constexpr int KPT = BN / 8;
  constexpr int DPT = DP / 8;
  __shared__ float sK[BM * LD];  // this block's keys
  __shared__ float sQ[BN * LD];  // current query tile
  __shared__ float sP[BM * LDP];
  __shared__ float sL2[BN];
  __shared__ float sC[BN];

  const int r = threadIdx.x >> 3;
  const int sub = threadIdx.x & 7;
  const int64_t key0 = static_cast<int64_t>(blockIdx.x) * BM;
  const int64_t split = blockIdx.y;
  const int64_t tiles = (M + BN - 1) / BN;
  const int64_t t_begin = split * tiles_per_split;
  int64_t t_end = t_begin + tiles_per_split;
  if (t_end > tiles) t_end = tiles;

  for (int idx = threadIdx.x; idx < BM * DP; idx += kThreads) {
    const int rr = idx / DP, c = idx % DP;
    const int64_t gk = key0 + rr;
    sK[rr * LD + c] = (gk < N && c < D) ? Elt<T>::to_float(k[gk * D + c]) : 0.0f;
  }

  float acc[DPT];
#pragma unroll
  for (int jj = 0; jj < DPT; ++jj) acc[jj] = 0.0f;

  for (int64_t t = t_begin; t < t_end; ++t) {
    const int64_t m0 = t * BN;
    __syncthreads();
    for (int idx = threadIdx.x; idx < BN * DP; idx += kThreads) {
      const int rr = idx / DP, c = idx % DP;
      const int64_t gq = m0 + rr;
      sQ[rr * LD + c] = (gq < M && c < D) ? Elt<T>::to_float(q[gq * D + c]) : 0.0f;
    }
    for (int i = threadIdx.x; i < BN; i += kThreads) {
      const int64_t gq = m0 + i;
      sL2[i] = gq < M ? lse[gq] * kLog2e : INFINITY;  // padded query: P = 0 * 2^-inf = 0
      sC[i] = gq < M ? coef[gq] : 0.0f;
    }
    __syncthreads();

#pragma unroll
    for (int j = 0; j < KPT; ++j) {
      const int qq = sub + 8 * j;
      float dot = 0.0f;
      for (int d = 0; d < D; ++d) dot = fmaf(sK[r * LD + d], sQ[qq * LD + d], dot);
      sP[r * LDP + qq] = sC[qq] * fast_exp2(fmaf(dot, scale_log2, -sL2[qq]));
    }
    __syncwarp();  // row r of sP is written and read by the same 8 lanes of one warp
    simt_accumulate_pv<BN, LD, DPT>(acc, sP + r * LDP, sQ, sub);  // dk += P^T Q
  }

  const int64_t key = key0 + r;
  if (key < N) {
    float* dst = dk_out + (split * N + key) * D;
#pragma unroll
    for (int jj = 0; jj < DPT; ++jj) {
      const int c = sub + 8 * jj;
      if (c < D) dst[c] = acc[jj] * inv_tau;
    }
  }
}

// ------------------------------------------------------------------------------------------
// Split merges and trivial fills.
// ------------------------------------------------------------------------------------------

// One warp per row: lse = logsumexp_s lse_s, o = sum_s exp(lse_s - lse) * o_s.
template <bool WITH_O>
__global__ void __launch_bounds__(kThreads)
    rc_fwd_combine_kernel(const float* __restrict__ ws_lse, const float* __restrict__ ws_o,
                          int64_t M, int D, int S, float* __restrict__ lse,
                          float* __restrict__ o) {
  const int lane = threadIdx.x & 31;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * (kThreads / 32) + (threadIdx.x >> 5);
  if (row >= M) return;  // whole warp leaves together
  float mx = -INFINITY;
  for (int s = lane; s < S; s += 32) mx = fmaxf(mx, ws_lse[s * M + row]);
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, off));
  float sum = 0.0f;
  for (int s = lane; s < S; s += 32) sum += expf(ws_lse[s * M + row] - mx);
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, off);
  const float total = mx + logf(sum);
  if (lane == 0) lse[row] = total;
  if (WITH_O) {
    constexpr int kPer = CTRLAUG_RC_MAX_D / 32;
    float acc[kPer];
#pragma unroll
    for (int j = 0; j < kPer; ++j) acc[j] = 0.0f;
    for (int s = 0; s < S; ++s) {
      const float w = expf(ws_lse[s * M + row] - total);
      const float* src = ws_o + (s * M + row) * D;
#pragma unroll
      for (int j = 0; j < kPer; ++j) {
        const int d = lane + 32 * j;
        if (d < D) acc[j] = fmaf(w, src[d], acc[j]);
      }
    }
#pragma unroll
    for (int j = 0; j < kPer; ++j) {
      const int d = lane + 32 * j;
      if (d < D) o[row * D + d] = acc[j];
    }
  }
}

// dk[e] = sum_s ws[s * count + e].
__global__ void rc_sum_splits_kernel(const float* __restrict__ ws, int64_t count, int S,
                                     float* __restrict__ out) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < count;
       e += stride) {
    float a = 0.0f;
    for (int s = 0; s < S; ++s) a += ws[s * count + e];
    out[e] = a;
  }
}

// Empty key pool: lse = -inf, o = 0 (what logsumexp / softmax @ [] give).
__global__ void rc_fill_empty_kernel(int64_t M, int64_t D, float* __restrict__ lse,
                                     float* __restrict__ o) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < M;
       e += stride) {
    lse[e] = -INFINITY;
    if (o != nullptr) {
      for (int64_t d = 0; d < D; ++d) o[e * D + d] = 0.0f;
    }
  }
}

// ------------------------------------------------------------------------------------------
// Host side: plans and launches.
// ------------------------------------------------------------------------------------------

inline int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }
inline size_t align256(size_t x) { return (x + 255) & ~static_cast<size_t>(255); }

struct Plan {
  int64_t blocks = 0;           // grid.x
  int splits = 1;               // grid.y
  int64_t tiles_per_split = 0;  // tiles of the streamed axis per split
};

// Number of splits of the streamed axis: minimise (waves of blocks) x (tiles per block), with a
// 1% surcharge per extra split standing in for the merge pass and its workspace traffic.
// Every split gets at least one tile.
inline Plan make_plan(int64_t blocks, int64_t tiles, int slots) {
  Plan p;
  p.blocks = blocks;
  p.splits = 1;
  p.tiles_per_split = tiles;
  if (slots < 1) slots = 1;
  double best = -1.0;
  const int64_t max_s = tiles < 128 ? tiles : 128;
  for (int64_t s = 1; s <= max_s; ++s) {
    const int64_t tps = cdiv(tiles, s);
    if (cdiv(tiles, tps) != s) continue;  // same partition as a smaller s
    const int64_t waves = cdiv(blocks * s, slots);
    const double cost = static_cast<double>(waves) * static_cast<double>(tps) *
                        (1.0 + 0.01 * static_cast<double>(s - 1));
    if (best < 0.0 || cost < best) {
      best = cost;
      p.splits = static_cast<int>(s);
      p.tiles_per_split = tps;
    }
  }
  return p;
}

// Concurrent blocks the current device can hold for `kernel` (raises the dynamic shared-memory
// limit first when the kernel needs more than the default 48 KB).
template <typename Kernel>
cudaError_t device_slots(Kernel kernel, size_t smem, int* slots) {
  int dev = 0;
  cudaError_t err = cudaGetDevice(&dev);
  if (err != cudaSuccess) return err;
  int sms = 0;
  err = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev);
  if (err != cudaSuccess) return err;
  if (smem > 48 * 1024) {
    err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                               static_cast<int>(smem));
    if (err != cudaSuccess) return err;
  }
  if (smem > 0) {
    // Hint: give the unified L1/shared array to shared memory so that 2-3 blocks fit per SM.
    err = cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout,
                               static_cast<int>(cudaSharedmemCarveoutMaxShared));
    if (err != cudaSuccess) return err;
  }
  int per_sm = 0;
  err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreads, smem);
  if (err != cudaSuccess) return err;
  *slots = sms * (per_sm > 0 ? per_sm : 1);
  return cudaSuccess;
}

struct FwdArgs {
  const void* q;
  const void* k;
  const void* kq;
  int64_t M, N, Nq, D;
  float tau;
  bool with_grad;
  float* lse;
  float* o;
  void* ws;
  size_t ws_bytes;
  cudaStream_t stream;
};

struct BwdArgs {
  const void* q;
  const void* k;
  const float* lse;
  const float* coef;
  int64_t M, N, D;
  float tau;
  float* dk;
  void* ws;
  size_t ws_bytes;
  cudaStream_t stream;
};

inline size_t fwd_ws_bytes(const Plan& p, int64_t M, int64_t D, bool with_o) {
  if (p.splits <= 1) return 0;
  size_t b = align256(sizeof(float) * static_cast<size_t>(p.splits) * M);
  if (with_o) b += align256(sizeof(float) * static_cast<size_t>(p.splits) * M * D);
  return b;
}

inline size_t bwd_ws_bytes(const Plan& p, int64_t N, int64_t D, bool tc) {
  size_t b = tc ? 256 : 0;  // [0, 256): max|coef| for the tensor-core path
  if (p.splits > 1) b += align256(sizeof(float) * static_cast<size_t>(p.splits) * N * D);
  return b;
}

inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

inline float log2e_over(float tau) {
  return static_cast<float>(1.4426950408889634 / static_cast<double>(tau));
}

// Forward for one (type, padded D, with_grad, path): plan, then (unless `need` is non-null, in
// which case only the workspace size is reported) launch and merge.
template <typename T, int DP, bool WO, bool TC>
cudaError_t fwd_run(const FwdArgs& a, size_t* need) {
  using Kernel = void (*)(const T*, const T*, const T*, int64_t, int64_t, int64_t, int, float,
                          int64_t, float*, float*);
  Kernel kernel;
  int BM, BN;
  size_t smem;
  if constexpr (TC) {
    kernel = rc_fwd_tc_kernel<T, DP, WO>;
    BM = TcCfg<DP>::BM;
    BN = TcCfg<DP>::BN;
    smem = TcCfg<DP>::template fwd_smem<T>();
  } else {
    kernel = rc_fwd_simt_kernel<T, DP, WO>;
    BM = SimtCfg<DP>::BM;
    BN = SimtCfg<DP>::BN;
    smem = 0;
  }
  const int64_t Ntot = a.N + a.Nq;
  int slots = 0;
  cudaError_t err = device_slots(kernel, smem, &slots);
  if (err != cudaSuccess) return err;
  const Plan p = make_plan(cdiv(a.M, BM), cdiv(Ntot, BN), slots);
  const size_t bytes = fwd_ws_bytes(p, a.M, a.D, WO);
  if (need != nullptr) {
    *need = bytes;
    return cudaSuccess;
  }
  if (a.ws_bytes < bytes || (bytes > 0 && a.ws == nullptr)) return cudaErrorInvalidValue;
  if (p.blocks > 0x7fffffffLL) return cudaErrorInvalidConfiguration;
  float* lse_dst = a.lse;
  float* o_dst = a.o;
  const size_t lse_part = align256(sizeof(float) * static_cast<size_t>(p.splits) * a.M);
  if (p.splits > 1) {
    lse_dst = static_cast<float*>(a.ws);
    o_dst = WO ? reinterpret_cast<float*>(static_cast<char*>(a.ws) + lse_part) : nullptr;
  }
  const dim3 grid(static_cast<unsigned>(p.blocks), static_cast<unsigned>(p.splits));
  kernel<<<grid, kThreads, smem, a.stream>>>(
      static_cast<const T*>(a.q), static_cast<const T*>(a.k), static_cast<const T*>(a.kq), a.M,
      a.N, Ntot, static_cast<int>(a.D), log2e_over(a.tau), p.tiles_per_split, lse_dst, o_dst);
  err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  if (p.splits > 1) {
    const int64_t rows_per_block = kThreads / 32;
    rc_fwd_combine_kernel<WO><<<static_cast<unsigned>(cdiv(a.M, rows_per_block)), kThreads, 0,
                                a.stream>>>(lse_dst, o_dst, a.M, static_cast<int>(a.D), p.splits,
                                            a.lse, a.o);
    err = cudaGetLastError();
  }
  return err;
}

// Backward for one (type, padded D, path).
template <typename T, int DP, bool TC>
cudaError_t bwd_run(const BwdArgs& a, size_t* need) {
  int BM, BN;
  size_t smem;
  cudaError_t err;
  int slots = 0;
  if constexpr (TC) {
    BM = TcCfg<DP>::BM;
    BN = TcCfg<DP>::BN;
    smem = TcCfg<DP>::template bwd_smem<T>();
    err = device_slots(rc_bwd_tc_kernel<T, DP>, smem, &slots);
  } else {
    BM = SimtCfg<DP>::BM;
    BN = SimtCfg<DP>::BN;
    smem = 0;
    err = device_slots(rc_bwd_simt_kernel<T, DP>, smem, &slots);
  }
  if (err != cudaSuccess) return err;
  const Plan p = make_plan(cdiv(a.N, BM), cdiv(a.M, BN), slots);
  const size_t bytes = bwd_ws_bytes(p, a.N, a.D, TC);
  if (need != nullptr) {
    *need = bytes;
    return cudaSuccess;
  }
  if (a.ws_bytes < bytes || (bytes > 0 && a.ws == nullptr)) return cudaErrorInvalidValue;
  if (p.blocks > 0x7fffffffLL) return cudaErrorInvalidConfiguration;
  char* ws = static_cast<char*>(a.ws);
  float* dk_dst = a.dk;
  if (p.splits > 1) dk_dst = reinterpret_cast<float*>(ws + (TC ? 256 : 0));
  const dim3 grid(static_cast<unsigned>(p.blocks), static_cast<unsigned>(p.splits));
  const float inv_tau = static_cast<float>(1.0 / static_cast<double>(a.tau));
  if constexpr (TC) {
    float* amax = reinterpret_cast<float*>(ws);
    rc_absmax_kernel<<<1, kThreads, 0, a.stream>>>(a.coef, a.M, amax);
    err = cudaGetLastError();
    if (err != cudaSuccess) return err;
    rc_bwd_tc_kernel<T, DP><<<grid, kThreads, smem, a.stream>>>(
        static_cast<const T*>(a.q), static_cast<const T*>(a.k), a.lse, a.coef, amax, a.M, a.N,
        static_cast<int>(a.D), log2e_over(a.tau), inv_tau, p.tiles_per_split, dk_dst);
  } else {
    rc_bwd_simt_kernel<T, DP><<<grid, kThreads, 0, a.stream>>>(
        static_cast<const T*>(a.q), static_cast<const T*>(a.k), a.lse, a.coef, a.M, a.N,
        static_cast<int>(a.D), log2e_over(a.tau), inv_tau, p.tiles_per_split, dk_dst);
  }
  err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  if (p.splits > 1) {
    const int64_t count = a.N * a.D;
    int64_t blocks = cdiv(count, 256);
    if (blocks > 65536) blocks = 65536;
    rc_sum_splits_kernel<<<static_cast<unsigned>(blocks), 256, 0, a.stream>>>(dk_dst, count,
                                                                              p.splits, a.dk);
    err = cudaGetLastError();
  }
  return err;
}

// Padded feature width (a compile-time tile parameter): 64, 128 or 256. Smaller D run in the
// DP = 64 kernels: the k-steps and output tiles past D are skipped at run time, so only the
// zero-filled staging is wasted; one instantiation fewer keeps nvcc time (which the GPU machine
// pays on every fresh build) down.
template <typename T, bool TC>
cudaError_t fwd_by_d(const FwdArgs& a, size_t* need) {
  if (a.with_grad) {
    if (a.D <= 64) return fwd_run<T, 64, true, TC>(a, need);
    if (a.D <= 128) return fwd_run<T, 128, true, TC>(a, need);
    return fwd_run<T, 256, true, TC>(a, need);
  }
  if (a.D <= 64) return fwd_run<T, 64, false, TC>(a, need);
  if (a.D <= 128) return fwd_run<T, 128, false, TC>(a, need);
  return fwd_run<T, 256, false, TC>(a, need);
}

template <typename T, bool TC>
cudaError_t bwd_by_d(const BwdArgs& a, size_t* need) {
  if (a.D <= 64) return bwd_run<T, 64, TC>(a, need);
  if (a.D <= 128) return bwd_run<T, 128, TC>(a, need);
  return bwd_run<T, 256, TC>(a, need);
}

// Tensor cores need 16-byte rows (D % 8 == 0) and 16-byte aligned bases for cp.async.
inline bool fwd_tc_ok(const FwdArgs& a) {
  return a.D % 8 == 0 && aligned16(a.q) && (a.N == 0 || aligned16(a.k)) &&
         (a.Nq == 0 || aligned16(a.kq));
}

// Whether the tensor-core kernels may run on the current device: the kernel image the runtime
// loads for it must come from a device pass with __CUDA_ARCH__ >= 800 (its ptxVersion), which
// rules out pre-Ampere devices and arch lists whose only image this device can load is older
// (then CTRLAUG_RC_TC compiled the kernels to a trap). Cached per device; a device for which
// the build holds no image at all reports the runtime's error (no SIMT image exists either).
cudaError_t tc_supported(bool* ok) {
  constexpr int kCached = 64;
  static std::atomic<int> cache[kCached];  // 0 unknown, 1 no, 2 yes (zero-initialised)
  int dev = 0;
  cudaError_t err = cudaGetDevice(&dev);
  if (err != cudaSuccess) return err;
  const int known = (dev >= 0 && dev < kCached) ? cache[dev].load(std::memory_order_relaxed) : 0;
  if (known != 0) {
    *ok = known == 2;
    return cudaSuccess;
  }
  cudaFuncAttributes attr;
  err = cudaFuncGetAttributes(&attr, rc_fwd_tc_kernel<__nv_bfloat16, 64, false>);
  if (err != cudaSuccess) return err;
  *ok = attr.ptxVersion >= 80;
  if (dev >= 0 && dev < kCached) cache[dev].store(*ok ? 2 : 1, std::memory_order_relaxed);
  return cudaSuccess;
}

cudaError_t fwd_dispatch(int dtype, const FwdArgs& a, size_t* need) {
  bool tc = false;
  if (dtype == CTRLAUG_BFLOAT16 || dtype == CTRLAUG_FLOAT16) {
    const cudaError_t err = tc_supported(&tc);
    if (err != cudaSuccess) return err;
    tc = tc && fwd_tc_ok(a);
  }
  switch (dtype) {
    case CTRLAUG_FLOAT32:
      return fwd_by_d<float, false>(a, need);
    case CTRLAUG_BFLOAT16:
      return tc ? fwd_by_d<__nv_bfloat16, true>(a, need) : fwd_by_d<__nv_bfloat16, false>(a, need);
    case CTRLAUG_FLOAT16:
      return tc ? fwd_by_d<__half, true>(a, need) : fwd_by_d<__half, false>(a, need);
    default:
      return cudaErrorInvalidValue;
  }
}

cudaError_t bwd_dispatch(int dtype, const BwdArgs& a, size_t* need) {
  bool tc = false;
  if (dtype == CTRLAUG_BFLOAT16 || dtype == CTRLAUG_FLOAT16) {
    const cudaError_t err = tc_supported(&tc);
    if (err != cudaSuccess) return err;
    tc = tc && a.D % 8 == 0 && aligned16(a.q) && aligned16(a.k);
  }
  switch (dtype) {
    case CTRLAUG_FLOAT32:
      return bwd_by_d<float, false>(a, need);
    case CTRLAUG_BFLOAT16:
      return tc ? bwd_by_d<__nv_bfloat16, true>(a, need) : bwd_by_d<__nv_bfloat16, false>(a, need);
    case CTRLAUG_FLOAT16:
      return tc ? bwd_by_d<__half, true>(a, need) : bwd_by_d<__half, false>(a, need);
    default:
      return cudaErrorInvalidValue;
  }
}

inline bool valid_tau(float tau) { return tau > 0.0f && tau < INFINITY; }

}  // namespace

// ------------------------------------------------------------------------------------------
// C interface (kernels.h).
// ------------------------------------------------------------------------------------------

extern "C" cudaError_t ctrlaug_region_contrast_fwd_workspace(int dtype, const void* queries,
                                                             const void* keys, const void* queue,
                                                             int64_t M, int64_t N, int64_t Nq,
                                                             int64_t D, bool with_grad,
                                                             size_t* bytes) {
  if (bytes == nullptr) return cudaErrorInvalidValue;
  *bytes = 0;
  if (M < 0 || N < 0 || Nq < 0 || D < 1 || D > CTRLAUG_RC_MAX_D) return cudaErrorInvalidValue;
  if (M == 0 || N + Nq == 0) return cudaSuccess;
  const FwdArgs a{queries, keys, queue, M, N, Nq, D, 1.0f, with_grad, nullptr, nullptr,
                  nullptr, 0, nullptr};
  return fwd_dispatch(dtype, a, bytes);
}

extern "C" cudaError_t ctrlaug_region_contrast_fwd(int dtype, const void* queries,
                                                   const void* keys, const void* queue, int64_t M,
                                                   int64_t N, int64_t Nq, int64_t D, float tau,
                                                   bool with_grad, float* lse, float* o,
                                                   void* workspace, size_t workspace_bytes,
                                                   cudaStream_t stream) {
  if (M < 0 || N < 0 || Nq < 0 || D < 1 || D > CTRLAUG_RC_MAX_D || !valid_tau(tau)) {
    return cudaErrorInvalidValue;
  }
  if (M == 0) return cudaSuccess;
  if (lse == nullptr || (with_grad && o == nullptr)) return cudaErrorInvalidValue;
  if (N + Nq == 0) {  // empty key pool: logsumexp = -inf, softmax @ [] = 0
    int64_t blocks = cdiv(M, 256);
    if (blocks > 65536) blocks = 65536;
    rc_fill_empty_kernel<<<static_cast<unsigned>(blocks), 256, 0, stream>>>(
        M, D, lse, with_grad ? o : nullptr);
    return cudaGetLastError();
  }
  const FwdArgs a{queries, keys, queue, M, N, Nq, D, tau, with_grad, lse, with_grad ? o : nullptr,
                  workspace, workspace_bytes, stream};
  return fwd_dispatch(dtype, a, nullptr);
}

extern "C" cudaError_t ctrlaug_region_contrast_bwd_workspace(int dtype, const void* queries,
                                                             const void* keys, int64_t M,
                                                             int64_t N, int64_t D,
                                                             size_t* bytes) {
  if (bytes == nullptr) return cudaErrorInvalidValue;
  *bytes = 0;
  if (M < 0 || N < 0 || D < 1 || D > CTRLAUG_RC_MAX_D) return cudaErrorInvalidValue;
  if (M == 0 || N == 0) return cudaSuccess;
  const BwdArgs a{queries, keys, nullptr, nullptr, M, N, D, 1.0f, nullptr, nullptr, 0, nullptr};
  return bwd_dispatch(dtype, a, bytes);
}

extern "C" cudaError_t ctrlaug_region_contrast_bwd(int dtype, const void* queries,
                                                   const void* keys, const float* lse,
                                                   const float* coef, int64_t M, int64_t N,
                                                   int64_t D, float tau, float* dk,
                                                   void* workspace, size_t workspace_bytes,
                                                   cudaStream_t stream) {
  if (M < 0 || N < 0 || D < 1 || D > CTRLAUG_RC_MAX_D || !valid_tau(tau)) {
    return cudaErrorInvalidValue;
  }
  if (N == 0) return cudaSuccess;
  if (dk == nullptr) return cudaErrorInvalidValue;
  if (M == 0) {  // no queries: dk = 0
    return cudaMemsetAsync(dk, 0, sizeof(float) * static_cast<size_t>(N) * D, stream);
  }
  const BwdArgs a{queries, keys, lse, coef, M, N, D, tau, dk, workspace, workspace_bytes, stream};
  return bwd_dispatch(dtype, a, nullptr);
}
