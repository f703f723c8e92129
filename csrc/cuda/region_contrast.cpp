// CUDA dispatch of ctrlaug::region_contrast_fwd / region_contrast_bwd (schemas: csrc/ctrlaug.cpp).
// Checks, makes inputs contiguous, allocates outputs and the launchers' workspace through the
// caching allocator, and calls the raw-pointer launchers of region_contrast_kernel.cu on the
// current stream. Autograd lives in ctrlaug/ops/region_contrast.py, not here.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cmath>
#include <limits>
#include <optional>
#include <tuple>

#include "kernels.h"

namespace ctrlaug {
namespace {

int rc_dtype_code(at::ScalarType t, const char* op) {
  switch (t) {
    case at::kFloat:
      return CTRLAUG_FLOAT32;
    case at::kBFloat16:
      return CTRLAUG_BFLOAT16;
    case at::kHalf:
      return CTRLAUG_FLOAT16;
    default:
      TORCH_CHECK(false, op, ": queries/keys must be float32, bfloat16 or float16 (float64 is CPU-only), got ", t);
  }
  return -1;
}

void check_tau(double tau, const char* op) {
  TORCH_CHECK(std::isfinite(tau) && tau > 0.0, op, ": tau must be a finite number > 0, got ", tau);
}

void check_features(const at::Tensor& t, const char* name, const at::Tensor& queries,
                    const char* op) {
  TORCH_CHECK(t.is_cuda(), op, ": ", name, " must be a CUDA tensor, got device ", t.device());
  TORCH_CHECK(t.device() == queries.device(), op, ": ", name, " is on ", t.device(),
              " but queries are on ", queries.device());
  TORCH_CHECK(t.dim() == 2, op, ": ", name, " must be 2-D [rows, D], got shape ", t.sizes());
  TORCH_CHECK(t.scalar_type() == queries.scalar_type(), op, ": ", name, " dtype ",
              t.scalar_type(), " differs from queries dtype ", queries.scalar_type());
  TORCH_CHECK(t.size(1) == queries.size(1), op, ": ", name, " has D = ", t.size(1),
              " but queries have D = ", queries.size(1));
}

void check_queries(const at::Tensor& queries, const char* op) {
  TORCH_CHECK(queries.is_cuda(), op, ": queries must be a CUDA tensor, got device ",
              queries.device());
  TORCH_CHECK(queries.dim() == 2, op, ": queries must be 2-D [M, D], got shape ",
              queries.sizes());
  const int64_t D = queries.size(1);
  TORCH_CHECK(D <= CTRLAUG_RC_MAX_D, op, ": feature dimension D must be at most ",
              CTRLAUG_RC_MAX_D, " for the CUDA kernels, got ", D);
}

void check_row_stat(const at::Tensor& t, const char* name, const at::Tensor& queries,
                    const char* op) {
  TORCH_CHECK(t.is_cuda() && t.device() == queries.device(), op, ": ", name,
              " must be on the queries' device ", queries.device(), ", got ", t.device());
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, op, ": ", name,
              " must be float32 or float64 (used as float32), got ", t.scalar_type());
  TORCH_CHECK(t.dim() == 1 && t.size(0) == queries.size(0), op, ": ", name,
              " must have shape [M] = [", queries.size(0), "], got ", t.sizes());
}

std::tuple<at::Tensor, at::Tensor> region_contrast_fwd_cuda(const at::Tensor& queries,
                                                            const at::Tensor& keys,
                                                            const std::optional<at::Tensor>& queue,
                                                            double tau, bool with_grad) {
  constexpr const char* op = "ctrlaug::region_contrast_fwd (CUDA)";
  check_queries(queries, op);
  check_features(keys, "keys", queries, op);
  const bool has_queue = queue.has_value() && queue->defined();
  if (has_queue) check_features(*queue, "queue", queries, op);
  check_tau(tau, op);
  const int code = rc_dtype_code(queries.scalar_type(), op);

  const c10::cuda::CUDAGuard guard(queries.device());
  const at::Tensor q = queries.contiguous();
  const at::Tensor k = keys.contiguous();
  const at::Tensor kq = has_queue ? queue->contiguous() : at::Tensor();
  const int64_t M = q.size(0), D = q.size(1), N = k.size(0);
  const int64_t Nq = has_queue ? kq.size(0) : 0;
  const void* kq_ptr = has_queue ? kq.data_ptr() : nullptr;

  const auto f32 = q.options().dtype(at::kFloat);
  at::Tensor lse = at::empty({M}, f32);
  at::Tensor o = with_grad ? at::empty({M, D}, f32) : at::empty({0, D}, f32);
  if (M == 0) return {lse, o};
  if (D == 0) {  // every logit is 0: lse = log(N + Nq) (-inf for an empty pool), o is [M, 0]
    lse.fill_(N + Nq > 0 ? std::log(static_cast<double>(N + Nq))
                         : -std::numeric_limits<double>::infinity());
    return {lse, o};
  }

  size_t ws_bytes = 0;
  cudaError_t err = ctrlaug_region_contrast_fwd_workspace(code, q.data_ptr(), k.data_ptr(), kq_ptr,
                                                          M, N, Nq, D, with_grad, &ws_bytes);
  TORCH_CHECK(err == cudaSuccess, op, ": planning failed: ", cudaGetErrorString(err));
  at::Tensor ws;
  if (ws_bytes > 0) ws = at::empty({static_cast<int64_t>(ws_bytes)}, q.options().dtype(at::kByte));

  err = ctrlaug_region_contrast_fwd(code, q.data_ptr(), k.data_ptr(), kq_ptr, M, N, Nq, D,
                                    static_cast<float>(tau), with_grad, lse.data_ptr<float>(),
                                    with_grad ? o.data_ptr<float>() : nullptr,
                                    ws_bytes > 0 ? ws.data_ptr() : nullptr, ws_bytes,
                                    at::cuda::getCurrentCUDAStream().stream());
  TORCH_CHECK(err == cudaSuccess, op, ": kernel launch failed: ", cudaGetErrorString(err));
  return {lse, o};
}

at::Tensor region_contrast_bwd_cuda(const at::Tensor& queries, const at::Tensor& keys,
                                    const at::Tensor& lse, const at::Tensor& coef, double tau) {
  constexpr const char* op = "ctrlaug::region_contrast_bwd (CUDA)";
  check_queries(queries, op);
  check_features(keys, "keys", queries, op);
  check_row_stat(lse, "lse", queries, op);
  check_row_stat(coef, "coef", queries, op);
  check_tau(tau, op);
  const int code = rc_dtype_code(queries.scalar_type(), op);

  const c10::cuda::CUDAGuard guard(queries.device());
  const at::Tensor q = queries.contiguous();
  const at::Tensor k = keys.contiguous();
  const at::Tensor l = lse.to(at::kFloat).contiguous();
  const at::Tensor c = coef.to(at::kFloat).contiguous();
  const int64_t M = q.size(0), D = q.size(1), N = k.size(0);

  at::Tensor dk = at::empty({N, D}, q.options().dtype(at::kFloat));
  if (N == 0) return dk;
  if (D == 0) return dk;  // [N, 0]

  size_t ws_bytes = 0;
  cudaError_t err =
      ctrlaug_region_contrast_bwd_workspace(code, q.data_ptr(), k.data_ptr(), M, N, D, &ws_bytes);
  TORCH_CHECK(err == cudaSuccess, op, ": planning failed: ", cudaGetErrorString(err));
  at::Tensor ws;
  if (ws_bytes > 0) ws = at::empty({static_cast<int64_t>(ws_bytes)}, q.options().dtype(at::kByte));

  err = ctrlaug_region_contrast_bwd(code, q.data_ptr(), k.data_ptr(), l.data_ptr<float>(),
                                    c.data_ptr<float>(), M, N, D, static_cast<float>(tau),
                                    dk.data_ptr<float>(), ws_bytes > 0 ? ws.data_ptr() : nullptr,
                                    ws_bytes, at::cuda::getCurrentCUDAStream().stream());
  TORCH_CHECK(err == cudaSuccess, op, ": kernel launch failed: ", cudaGetErrorString(err));
  return dk;
}

}  // namespace

TORCH_LIBRARY_IMPL(ctrlaug, CUDA, m) {
  m.impl("region_contrast_fwd", &region_contrast_fwd_cuda);
  m.impl("region_contrast_bwd", &region_contrast_bwd_cuda);
}

}  // namespace ctrlaug
