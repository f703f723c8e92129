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
// blockIdx.y when the row blocks alone cannot fill the GPU (fewer blocks than the device holds at
// once: SMs x resident blocks per SM, device_slots). Split partials go to a workspace and are
// merged by a second kernel: (lse_s, o_s) -> lse = logsumexp_s lse_s,
// o = sum_s exp(lse_s - lse) o_s in the forward, a plain sum in the backward.
//
// This file holds part 4 of 4, the split merges and the host side (launch planning, path choice,
// the C interface of kernels.h); the device code is in three headers, included below so that all
// templates stay in this one translation unit:
//   rc_ptx.cuh   constants, element types, PTX wrappers;
//   rc_mma.cuh   the tensor-core path (1.);
//   rc_simt.cuh  the SIMT path (2.).
#include <atomic>
#include <cstddef>
#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "kernels.h"
#include "rc_ptx.cuh"
#include "rc_mma.cuh"
#include "rc_simt.cuh"

namespace {

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
// zero-filled staging is wasted; one instantiation fewer keeps the nvcc time of every fresh
// build down.
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
