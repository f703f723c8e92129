// Region-contrast kernels, part 2 of 4: the tensor-core path (bf16 / fp16, sm_80+): shared-memory
// staging with cp.async, the two mma.sync products, the forward and backward kernels and the
// max|coef| pre-pass of the backward. Included only by region_contrast_kernel.cu (design
// overview there). Pure CUDA: no torch headers.
#pragma once

#include <cstddef>
#include <cstdint>

#include "rc_numerics.h"
#include "rc_ptx.cuh"

namespace {

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
// shared memory stays under ~72 KB, so that more than one block fits per SM). DP is D padded to
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

}  // namespace
