// CUDA dispatch of ctrlaug::correspondence (schema: csrc/ctrlaug.cpp; kernel:
// correspondence_kernel.cu). Checks, makes the boxes contiguous, allocates the output and calls
// the raw-pointer launcher on the current stream.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "kernels.h"

namespace ctrlaug {
namespace {

void check_boxes(const at::Tensor& b, const char* name, const char* op) {
  TORCH_CHECK(b.is_cuda(), op, ": ", name, " must be a CUDA tensor, got device ", b.device());
  TORCH_CHECK(at::isFloatingType(b.scalar_type()), op, ": ", name,
              " must be floating point, got ", b.scalar_type());
  TORCH_CHECK(b.dim() == 2 && b.size(1) == 7, op, ": ", name,
              " must have shape [P, 7] (t0, t1, y0, y1, x0, x1, flip), got ", b.sizes());
}

void check_grid(at::IntArrayRef grid, const char* name, const char* op) {
  TORCH_CHECK(grid.size() == 3, op, ": ", name, " must be (T, H, W), got ", grid.size(),
              " values");
  for (const int64_t v : grid) {
    // > 0 as on the CPU (csrc/correspondence.cpp) and in ctrlaug.ops, which validates first.
    TORCH_CHECK(v > 0, op, ": ", name, " entries must be positive, got ", grid);
  }
}

at::Tensor correspondence_cuda(const at::Tensor& clip_boxes, const at::Tensor& video_boxes,
                               at::IntArrayRef clip_grid, at::IntArrayRef video_grid) {
  constexpr const char* op = "ctrlaug::correspondence (CUDA)";
  check_boxes(clip_boxes, "clip_boxes", op);
  check_boxes(video_boxes, "video_boxes", op);
  TORCH_CHECK(clip_boxes.device() == video_boxes.device(), op, ": clip_boxes are on ",
              clip_boxes.device(), " but video_boxes are on ", video_boxes.device());
  TORCH_CHECK(clip_boxes.size(0) == video_boxes.size(0), op,
              ": clip_boxes and video_boxes need the same number of rows P (row p of video_boxes "
              "is the video of clip p), got ",
              clip_boxes.size(0), " and ", video_boxes.size(0));
  check_grid(clip_grid, "clip_grid", op);
  check_grid(video_grid, "video_grid", op);

  const c10::cuda::CUDAGuard guard(clip_boxes.device());
  // Boxes are read as float64, as the reference does (widening float32 is exact).
  const at::Tensor cb = clip_boxes.to(at::kDouble).contiguous();
  const at::Tensor vb = video_boxes.to(at::kDouble).contiguous();
  const int64_t P = cb.size(0);
  const int64_t Nc = clip_grid[0] * clip_grid[1] * clip_grid[2];
  const int64_t Nv = video_grid[0] * video_grid[1] * video_grid[2];
  at::Tensor out = at::empty({P, Nc, Nv}, cb.options().dtype(at::kFloat));
  if (out.numel() == 0) return out;

  const cudaError_t err = ctrlaug_correspondence(
      cb.data_ptr<double>(), vb.data_ptr<double>(), P, clip_grid[0], clip_grid[1], clip_grid[2],
      video_grid[0], video_grid[1], video_grid[2], out.data_ptr<float>(),
      at::cuda::getCurrentCUDAStream().stream());
  TORCH_CHECK(err == cudaSuccess, op, ": kernel launch failed: ", cudaGetErrorString(err));
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(ctrlaug, CUDA, m) { m.impl("correspondence", &correspondence_cuda); }

}  // namespace ctrlaug
