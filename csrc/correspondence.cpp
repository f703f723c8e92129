// CPU (OpenMP) kernel of ctrlaug::correspondence (supplementary eq. 1-5; contract: docs/design.md §2).
//
//   S[p, i, j] = |tube(clip p, cell i) ∩ tube(video p, cell j)| / |tube(clip p, cell i)|
//
// The tubes are axis-aligned boxes, so the intersection volume factorises into 1-D overlaps:
//   inter(i, j) = ov_t[ti][tj] * ov_y[hi][hj] * ov_x[wi][wj],   vol(i) = len_t[ti] * len_y[hi] * len_x[wi].
// Per box pair p we build the three small overlap tables (Tc x Tv, H x Hv, W x Wv) once and then
// write the Nc x Nv outer product, instead of the reference's [P, Nc, Nv, 6] float64 tensors.
//
// Numerics: everything is float64 and mirrors correspondence_ref operation for operation (cell
// edges lo + step*k with step = (hi - lo)/n; min/max/clamp that propagate NaN; inter = (t*y)*x;
// vol = (t*y)*x; inter / max(vol, DBL_MIN) when vol > 0, else 0), then one rounding to float32.
// So the result is bit-identical to the reference (the tables are not pre-divided by the cell
// length: that would save one division per element but move results by up to 1 ulp).
//
// Speed: the work is one division and two multiplies per output element, so writing the output
// bounds it. Timings against correspondence_ref: bench/RESULTS.md.

#include <ATen/ATen.h>
#include <torch/library.h>

#include <cfloat>
#include <cmath>
#include <limits>
#include <vector>

#include "cpu_utils.h"

namespace ctrlaug::cpu {
namespace {

// torch.minimum / torch.maximum / clamp_min(0) semantics: a NaN operand gives NaN.
inline double nan_min(double a, double b) { return (a != a || b != b) ? std::numeric_limits<double>::quiet_NaN() : (a < b ? a : b); }
inline double nan_max(double a, double b) { return (a != a || b != b) ? std::numeric_limits<double>::quiet_NaN() : (a > b ? a : b); }
inline double clamp0(double v) { return v < 0.0 ? 0.0 : v; }  // NaN stays NaN

// Edges of n equal segments of [lo, hi], exactly as cell_bounds_ref computes them.
void segment_edges(double lo, double hi, int64_t n, bool reverse, double* e_lo, double* e_hi) {
  const double step = (hi - lo) / static_cast<double>(n);
  for (int64_t k = 0; k < n; ++k) {
    const int64_t src = reverse ? n - 1 - k : k;  // a mirrored view's column k is unflipped column n-1-k
    e_lo[k] = lo + step * static_cast<double>(src);
    e_hi[k] = lo + step * static_cast<double>(src + 1);
  }
}

// ov[a][b] = clamp0(min(c_hi[a], v_hi[b]) - max(c_lo[a], v_lo[b])); len[a] = c_hi[a] - c_lo[a].
void overlap_table(const double* c_lo, const double* c_hi, int64_t nc, const double* v_lo, const double* v_hi,
                   int64_t nv, double* ov, double* len) {
  for (int64_t a = 0; a < nc; ++a) {
    len[a] = c_hi[a] - c_lo[a];
    for (int64_t b = 0; b < nv; ++b) ov[a * nv + b] = clamp0(nan_min(c_hi[a], v_hi[b]) - nan_max(c_lo[a], v_lo[b]));
  }
}

at::Tensor correspondence_cpu(const at::Tensor& clip_boxes, const at::Tensor& video_boxes, c10::IntArrayRef clip_grid,
                              c10::IntArrayRef video_grid) {
  TORCH_CHECK(clip_boxes.device().is_cpu() && video_boxes.device().is_cpu(),
              "ctrlaug::correspondence (CPU): clip_boxes and video_boxes must be CPU tensors, got ",
              clip_boxes.device(), " and ", video_boxes.device());
  TORCH_CHECK(clip_boxes.dim() == 2 && clip_boxes.size(1) == 7,
              "ctrlaug::correspondence: clip_boxes must have shape [P, 7] (t0, t1, y0, y1, x0, x1, flip), got ",
              clip_boxes.sizes());
  TORCH_CHECK(video_boxes.dim() == 2 && video_boxes.size(1) == 7,
              "ctrlaug::correspondence: video_boxes must have shape [P, 7] (t0, t1, y0, y1, x0, x1, flip), got ",
              video_boxes.sizes());
  TORCH_CHECK(clip_boxes.size(0) == video_boxes.size(0),
              "ctrlaug::correspondence: clip_boxes and video_boxes need the same number of rows P (row p of "
              "video_boxes is the video of clip p), got ",
              clip_boxes.size(0), " and ", video_boxes.size(0));
  TORCH_CHECK(at::isFloatingType(clip_boxes.scalar_type()) && at::isFloatingType(video_boxes.scalar_type()),
              "ctrlaug::correspondence: boxes must be floating point, got ", clip_boxes.scalar_type(), " and ",
              video_boxes.scalar_type());
  TORCH_CHECK(clip_grid.size() == 3 && video_grid.size() == 3,
              "ctrlaug::correspondence: clip_grid and video_grid must be (T, H, W), got lengths ", clip_grid.size(),
              " and ", video_grid.size());
  for (int a = 0; a < 3; ++a) {
    TORCH_CHECK(clip_grid[a] > 0 && video_grid[a] > 0,
                "ctrlaug::correspondence: grid entries must be positive, got clip_grid=", clip_grid,
                " video_grid=", video_grid);
  }

  const int64_t P = clip_boxes.size(0);
  const int64_t Tc = clip_grid[0], Hc = clip_grid[1], Wc = clip_grid[2];
  const int64_t Tv = video_grid[0], Hv = video_grid[1], Wv = video_grid[2];
  const int64_t Nc = Tc * Hc * Wc, Nv = Tv * Hv * Wv;
  auto out = at::empty({P, Nc, Nv}, clip_boxes.options().dtype(at::kFloat));
  if (P == 0 || Nc == 0 || Nv == 0) return out;

  // Boxes are read as float64 (float32 -> float64 is exact, as in the reference).
  const at::Tensor cb = clip_boxes.to(at::kDouble).contiguous();
  const at::Tensor vb = video_boxes.to(at::kDouble).contiguous();
  const double* cbp = cb.data_ptr<double>();
  const double* vbp = vb.data_ptr<double>();
  float* outp = out.data_ptr<float>();

  // Work per box pair is Nc * Nv outputs (4096 at 2x4x4 vs 8x4x4); parallel over pairs, with
  // contiguous chunks so each thread writes one contiguous slab of the output.
  const int nt = num_threads_for(P * Nc * Nv >= (1 << 15) ? P : 1);
#pragma omp parallel num_threads(nt)
  {
    // Per-thread scratch: edges for both boxes and the three overlap tables.
    std::vector<double> buf(2 * (Tc + Hc + Wc + Tv + Hv + Wv) + Tc * Tv + Hc * Hv + Wc * Wv + Tc + Hc + Wc);
    double* ct_lo = buf.data();
    double* ct_hi = ct_lo + Tc;
    double* cy_lo = ct_hi + Tc;
    double* cy_hi = cy_lo + Hc;
    double* cx_lo = cy_hi + Hc;
    double* cx_hi = cx_lo + Wc;
    double* vt_lo = cx_hi + Wc;
    double* vt_hi = vt_lo + Tv;
    double* vy_lo = vt_hi + Tv;
    double* vy_hi = vy_lo + Hv;
    double* vx_lo = vy_hi + Hv;
    double* vx_hi = vx_lo + Wv;
    double* ov_t = vx_hi + Wv;
    double* ov_y = ov_t + Tc * Tv;
    double* ov_x = ov_y + Hc * Hv;
    double* len_t = ov_x + Wc * Wv;
    double* len_y = len_t + Tc;
    double* len_x = len_y + Hc;

#pragma omp for schedule(static)
    for (int64_t p = 0; p < P; ++p) {
      const double* c = cbp + p * 7;
      const double* v = vbp + p * 7;
      segment_edges(c[0], c[1], Tc, false, ct_lo, ct_hi);
      segment_edges(c[2], c[3], Hc, false, cy_lo, cy_hi);
      segment_edges(c[4], c[5], Wc, c[6] > 0.5, cx_lo, cx_hi);
      segment_edges(v[0], v[1], Tv, false, vt_lo, vt_hi);
      segment_edges(v[2], v[3], Hv, false, vy_lo, vy_hi);
      segment_edges(v[4], v[5], Wv, v[6] > 0.5, vx_lo, vx_hi);
      overlap_table(ct_lo, ct_hi, Tc, vt_lo, vt_hi, Tv, ov_t, len_t);
      overlap_table(cy_lo, cy_hi, Hc, vy_lo, vy_hi, Hv, ov_y, len_y);
      overlap_table(cx_lo, cx_hi, Wc, vx_lo, vx_hi, Wv, ov_x, len_x);

      float* row = outp + p * Nc * Nv;
      for (int64_t ti = 0; ti < Tc; ++ti) {
        for (int64_t hi = 0; hi < Hc; ++hi) {
          for (int64_t wi = 0; wi < Wc; ++wi, row += Nv) {
            const double vol = (len_t[ti] * len_y[hi]) * len_x[wi];
            if (!(vol > 0.0)) {  // degenerate (or NaN) clip cell: zero row, as the reference
              std::fill(row, row + Nv, 0.0f);
              continue;
            }
            const double den = vol < DBL_MIN ? DBL_MIN : vol;  // clamp_min(finfo.tiny)
            const double* ot = ov_t + ti * Tv;
            const double* oy = ov_y + hi * Hv;
            const double* ox = ov_x + wi * Wv;
            float* o = row;
            for (int64_t tj = 0; tj < Tv; ++tj) {
              for (int64_t hj = 0; hj < Hv; ++hj, o += Wv) {
                const double ty = ot[tj] * oy[hj];
                for (int64_t wj = 0; wj < Wv; ++wj) o[wj] = static_cast<float>((ty * ox[wj]) / den);
              }
            }
          }
        }
      }
    }
  }
  return out;
}

}  // namespace
}  // namespace ctrlaug::cpu

TORCH_LIBRARY_IMPL(ctrlaug, CPU, m) { m.impl("correspondence", &ctrlaug::cpu::correspondence_cpu); }
