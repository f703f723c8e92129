// Region-contrast kernels, part 3 of 4: the SIMT path (fp32 FMA loops over shared-memory tiles;
// float32 inputs, and bf16 / fp16 where the tensor-core path cannot run). Included only by
// region_contrast_kernel.cu (design overview there). Pure CUDA: no torch headers.
#pragma once

#include <cstdint>

#include "rc_ptx.cuh"

namespace {

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
//   broadcast to its 8 lanes) 4 distinct banks. A stride of BN (32 or 16 floats) would put the
//   4 rows on the same bank (a 4-way conflict on every read); BN + 1 would fix the reads but
//   leave a 4-way conflict on the writes.
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

}  // namespace
