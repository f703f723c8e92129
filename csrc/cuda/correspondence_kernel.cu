// CUDA kernel of ctrlaug::correspondence (supplementary eq. 1-5; spec: correspondence_ref in
// ctrlaug/ops/reference.py). Pure CUDA: no torch headers (see kernels.h).
//
// S[p, i, j] = |tube(clip p, cell i) ∩ tube(video of clip p, cell j)| / |tube(clip p, cell i)|.
// The intersection factorises into 1-D overlaps along t, y and x, so every output element is a
// handful of flops: one thread per output element, grid-stride, int64 indices.
//
// Boxes arrive as float64 (the binding widens float32 boxes, which is exact), as the reference.
// Numerics: everything is computed in float64 exactly as the reference writes it (cell edges
// lo + step*k and lo + step*(k+1) with step = (hi - lo)/n, products left to right, then one
// rounding to float32). The explicit __dmul_rn/__dadd_rn keep nvcc from contracting the edge
// formula into an FMA, so the edges are bit-identical to the reference's float64 edges.
#include <cfloat>
#include <cstdint>

#include <cuda_runtime.h>

#include "kernels.h"

namespace {

// Lower/upper source coordinate of segment k of n equal segments of [lo, hi].
__device__ __forceinline__ void segment(double lo, double hi, int64_t n, int64_t k, double* a,
                                        double* b) {
  const double step = (hi - lo) / static_cast<double>(n);
  *a = __dadd_rn(lo, __dmul_rn(step, static_cast<double>(k)));
  *b = __dadd_rn(lo, __dmul_rn(step, static_cast<double>(k + 1)));
}

__device__ __forceinline__ double overlap(double a0, double a1, double b0, double b1) {
  const double v = fmin(a1, b1) - fmax(a0, b0);
  return v > 0.0 ? v : 0.0;
}

__global__ void correspondence_kernel(const double* __restrict__ clip_boxes,
                                      const double* __restrict__ video_boxes, int64_t P, int64_t Tc,
                                      int64_t Hc, int64_t Wc, int64_t Tv, int64_t Hv, int64_t Wv,
                                      float* __restrict__ out) {
  const int64_t Nc = Tc * Hc * Wc;
  const int64_t Nv = Tv * Hv * Wv;
  const int64_t total = P * Nc * Nv;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < total;
       e += stride) {
    const int64_t j = e % Nv;  // video cell (t, h, w flattened)
    const int64_t rest = e / Nv;
    const int64_t i = rest % Nc;  // clip cell
    const int64_t p = rest / Nc;  // clip index (its video box is row p of video_boxes)

    const double* cb = clip_boxes + p * 7;
    const double* vb = video_boxes + p * 7;

    // Clip cell i = (ci_t, ci_h, ci_w); a flipped view's column w shows unflipped column W-1-w.
    const int64_t ci_w = i % Wc;
    const int64_t ci_h = (i / Wc) % Hc;
    const int64_t ci_t = i / (Wc * Hc);
    const int64_t cx = (cb[6] > 0.5) ? (Wc - 1 - ci_w) : ci_w;
    const int64_t vi_w = j % Wv;
    const int64_t vi_h = (j / Wv) % Hv;
    const int64_t vi_t = j / (Wv * Hv);
    const int64_t vx = (vb[6] > 0.5) ? (Wv - 1 - vi_w) : vi_w;

    double c_t0, c_t1, c_y0, c_y1, c_x0, c_x1;
    segment(cb[0], cb[1], Tc, ci_t, &c_t0, &c_t1);
    segment(cb[2], cb[3], Hc, ci_h, &c_y0, &c_y1);
    segment(cb[4], cb[5], Wc, cx, &c_x0, &c_x1);
    double v_t0, v_t1, v_y0, v_y1, v_x0, v_x1;
    segment(vb[0], vb[1], Tv, vi_t, &v_t0, &v_t1);
    segment(vb[2], vb[3], Hv, vi_h, &v_y0, &v_y1);
    segment(vb[4], vb[5], Wv, vx, &v_x0, &v_x1);

    // inter = (it * ih) * iw and vol = (dt * dh) * dw, in the reference's order.
    const double inter = __dmul_rn(__dmul_rn(overlap(c_t0, c_t1, v_t0, v_t1),
                                             overlap(c_y0, c_y1, v_y0, v_y1)),
                                   overlap(c_x0, c_x1, v_x0, v_x1));
    const double vol = __dmul_rn(__dmul_rn(c_t1 - c_t0, c_y1 - c_y0), c_x1 - c_x0);
    // Degenerate (zero-volume) clip cell -> zero row, as in the reference.
    const double s = vol > 0.0 ? inter / fmax(vol, DBL_MIN) : 0.0;
    out[e] = static_cast<float>(s);
  }
}

}  // namespace

extern "C" cudaError_t ctrlaug_correspondence(const double* clip_boxes, const double* video_boxes,
                                              int64_t P, int64_t Tc, int64_t Hc, int64_t Wc,
                                              int64_t Tv, int64_t Hv, int64_t Wv, float* out,
                                              cudaStream_t stream) {
  if (P < 0 || Tc < 0 || Hc < 0 || Wc < 0 || Tv < 0 || Hv < 0 || Wv < 0) {
    return cudaErrorInvalidValue;
  }
  const int64_t total = P * Tc * Hc * Wc * Tv * Hv * Wv;
  if (total == 0) return cudaSuccess;
  constexpr int kThreads = 256;
  int64_t blocks = (total + kThreads - 1) / kThreads;
  // Grid-stride loop: cap the grid; every element is still visited.
  const int64_t kMaxBlocks = 65536;
  if (blocks > kMaxBlocks) blocks = kMaxBlocks;
  correspondence_kernel<<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
      clip_boxes, video_boxes, P, Tc, Hc, Wc, Tv, Hv, Wv, out);
  return cudaGetLastError();
}
