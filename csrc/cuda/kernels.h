// C interface of the ctrlaug CUDA kernels (csrc/cuda/*_kernel.cu).
//
// Pure C++: no torch/ATen headers, so the .cu files compile with a bare nvcc and the torch
// bindings (csrc/cuda/<op>.cpp) only pass raw pointers, sizes and a stream. Every launcher
// returns the first CUDA error it saw (launch or argument error), cudaSuccess otherwise; it never
// synchronises. All tensors are dense, row-major and contiguous; sizes are int64 and all index
// arithmetic inside the kernels is int64 (M*N and rows*D exceed 2^31 at the headline shapes).
#pragma once

#include <cstddef>
#include <cstdint>

#include <cuda_runtime.h>

// Element type of queries / keys / queue.
enum ctrlaug_dtype : int {
  CTRLAUG_FLOAT32 = 0,
  CTRLAUG_BFLOAT16 = 1,
  CTRLAUG_FLOAT16 = 2,
};

// Largest feature dimension the region-contrast kernels accept.
#define CTRLAUG_RC_MAX_D 256

#ifdef __cplusplus
extern "C" {
#endif

// ---------------------------------------------------------------------------------------------
// correspondence (csrc/cuda/correspondence_kernel.cu)
// clip_boxes, video_boxes: [P, 7] float64 (t0, t1, y0, y1, x0, x1, flip), device pointers (the
// binding widens float32 boxes to float64, exactly, as the reference does).
// out: [P, Tc*Hc*Wc, Tv*Hv*Wv] float32. Computed in float64, rounded once (as the reference).
// ---------------------------------------------------------------------------------------------
cudaError_t ctrlaug_correspondence(const double* clip_boxes, const double* video_boxes, int64_t P,
                                   int64_t Tc, int64_t Hc, int64_t Wc, int64_t Tv, int64_t Hv,
                                   int64_t Wv, float* out, cudaStream_t stream);

// ---------------------------------------------------------------------------------------------
// region_contrast (csrc/cuda/region_contrast_kernel.cu)
//
// Forward: l = q k^T / tau over the N rows of `keys` then the Nq rows of `queue` (two pointers,
// never concatenated; queue may be null when Nq == 0, keys may be null when N == 0).
//   lse [M] f32 = logsumexp_j l[i, j];  o [M, D] f32 = softmax(l_i) @ [keys; queue] (with_grad).
// o may be null when with_grad is false.
//
// The forward splits the key range over several thread blocks when the query count alone does
// not fill the GPU; the partial (lse, o) are merged by a second kernel and need a float32
// workspace in device memory. Call ..._fwd_workspace first (same arguments), allocate at least
// *bytes (may be 0; then pass workspace = nullptr), then ..._fwd. The plan depends on the
// current device (SM count), so both calls must run with the same current device.
// ---------------------------------------------------------------------------------------------
cudaError_t ctrlaug_region_contrast_fwd_workspace(int dtype, const void* queries, const void* keys,
                                                  const void* queue, int64_t M, int64_t N,
                                                  int64_t Nq, int64_t D, bool with_grad,
                                                  size_t* bytes);

cudaError_t ctrlaug_region_contrast_fwd(int dtype, const void* queries, const void* keys,
                                        const void* queue, int64_t M, int64_t N, int64_t Nq,
                                        int64_t D, float tau, bool with_grad, float* lse, float* o,
                                        void* workspace, size_t workspace_bytes,
                                        cudaStream_t stream);

// Backward (dense part of dL/dkeys; the queue gets no gradient):
//   dk [N, D] f32 = (1/tau) * sum_i coef_i * exp(q_i . k_j / tau - lse_i) * q_i.
// lse, coef: [M] float32. Same workspace protocol as the forward (the split here is over the
// queries; the tensor-core path also keeps max|coef| there, so the workspace is never empty
// for bf16/fp16).
// ---------------------------------------------------------------------------------------------
cudaError_t ctrlaug_region_contrast_bwd_workspace(int dtype, const void* queries, const void* keys,
                                                  int64_t M, int64_t N, int64_t D, size_t* bytes);

cudaError_t ctrlaug_region_contrast_bwd(int dtype, const void* queries, const void* keys,
                                        const float* lse, const float* coef, int64_t M, int64_t N,
                                        int64_t D, float tau, float* dk, void* workspace,
                                        size_t workspace_bytes, cudaStream_t stream);

#ifdef __cplusplus
}  // extern "C"
#endif
