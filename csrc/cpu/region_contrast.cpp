// Binding of the CPU region contrast: the ops ctrlaug::region_contrast_fwd / region_contrast_bwd
// (schemas in csrc/ctrlaug.cpp) check their arguments, pick the instruction-set path
// (csrc/cpu/rc_kernels.h; CTRLAUG_CPU_ISA forces one) and run the tiled drivers of
// csrc/cpu/region_contrast_kernel.cpp. cpu_isa_info (the op ctrlaug::cpu_isa_info) reports the paths
// (`python -m ctrlaug.ops`, the benchmark JSON).

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <cmath>
#include <limits>
#include <optional>
#include <string>
#include <tuple>
#include <type_traits>

#include "region_contrast_kernel.h"

namespace ctrlaug::cpu {
namespace {

// float64 runs the portable loops; every other dtype accumulates in float on the chosen path.
template <typename T>
const rc::RcKernels<T>& kernels() {
  if constexpr (std::is_same_v<T, double>) {
    return rc::Portable<double>::table();
  } else {
    return rc::kernels_for(rc::isa_chosen());
  }
}

// =============================================================================================
// Op entry points
// =============================================================================================
bool supported_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kBFloat16 || t == at::kHalf;
}

void check_operand(const at::Tensor& t, const char* name, const at::Tensor& queries, const char* op) {
  TORCH_CHECK(t.device().is_cpu(), "ctrlaug::", op, " (CPU): ", name, " must be a CPU tensor, got ", t.device());
  TORCH_CHECK(t.dim() == 2, "ctrlaug::", op, ": ", name, " must be 2-D [rows, D], got shape ", t.sizes());
  TORCH_CHECK(t.size(1) == queries.size(1), "ctrlaug::", op, ": ", name, " has D=", t.size(1),
              " but queries have D=", queries.size(1));
  TORCH_CHECK(t.scalar_type() == queries.scalar_type(), "ctrlaug::", op, ": ", name, " dtype ", t.scalar_type(),
              " differs from queries dtype ", queries.scalar_type(), " (cast them to one dtype first)");
}

void check_queries_tau(const at::Tensor& queries, double tau, const char* op) {
  TORCH_CHECK(queries.device().is_cpu(), "ctrlaug::", op, " (CPU): queries must be a CPU tensor, got ",
              queries.device());
  TORCH_CHECK(queries.dim() == 2, "ctrlaug::", op, ": queries must be 2-D [M, D], got shape ", queries.sizes());
  TORCH_CHECK(supported_dtype(queries.scalar_type()), "ctrlaug::", op,
              ": dtype must be float32, float64, bfloat16 or float16, got ", queries.scalar_type());
  TORCH_CHECK(std::isfinite(tau) && tau > 0.0, "ctrlaug::", op, ": tau must be a finite positive number, got ", tau);
}

std::tuple<at::Tensor, at::Tensor> region_contrast_fwd_cpu(const at::Tensor& queries, const at::Tensor& keys,
                                                           const std::optional<at::Tensor>& queue, double tau,
                                                           bool with_grad) {
  const char* op = "region_contrast_fwd";
  check_queries_tau(queries, tau, op);
  check_operand(keys, "keys", queries, op);
  const bool has_queue = queue.has_value() && queue->defined();
  if (has_queue) check_operand(*queue, "queue", queries, op);

  const at::Tensor q = queries.contiguous();
  const at::Tensor k = keys.contiguous();
  const at::Tensor qu = has_queue ? queue->contiguous() : at::Tensor();
  const int64_t M = q.size(0), D = q.size(1), N = k.size(0), Nq = has_queue ? qu.size(0) : 0;
  const auto acc = q.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const auto opts = q.options().dtype(acc);
  at::Tensor lse = at::empty({M}, opts);
  at::Tensor o = with_grad ? at::empty({M, D}, opts) : at::empty({0, D}, opts);
  if (M == 0) return {lse, o};
  if (N + Nq == 0) {  // empty key pool: logsumexp of nothing, as torch.logsumexp / softmax @ [0, D]
    lse.fill_(-std::numeric_limits<double>::infinity());
    if (with_grad) o.zero_();
    return {lse, o};
  }

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, q.scalar_type(), "region_contrast_fwd_cpu", [&] {
    using T = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    const scalar_t* qp = q.data_ptr<scalar_t>();
    const scalar_t* kp = k.data_ptr<scalar_t>();
    const scalar_t* qup = has_queue ? qu.data_ptr<scalar_t>() : nullptr;
    T* lp = lse.data_ptr<T>();
    T* op_ = with_grad ? o.data_ptr<T>() : nullptr;
    rc::forward<scalar_t, T>(kernels<T>(), qp, M, kp, N, qup, Nq, D, static_cast<T>(1.0 / tau), with_grad, lp, op_);
  });
  return {lse, o};
}

at::Tensor region_contrast_bwd_cpu(const at::Tensor& queries, const at::Tensor& keys, const at::Tensor& lse,
                                   const at::Tensor& coef, double tau) {
  const char* op = "region_contrast_bwd";
  check_queries_tau(queries, tau, op);
  check_operand(keys, "keys", queries, op);
  const int64_t M = queries.size(0), D = queries.size(1), N = keys.size(0);
  auto check_row_vector = [&](const at::Tensor& t, const char* name) {
    TORCH_CHECK(t.device().is_cpu(), "ctrlaug::", op, " (CPU): ", name, " must be a CPU tensor, got ", t.device());
    TORCH_CHECK(t.dim() == 1 && t.size(0) == M, "ctrlaug::", op, ": ", name, " must have shape [M] = [", M,
                "], got ", t.sizes());
    TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, "ctrlaug::", op, ": ", name,
                " must be float32 or float64, got ", t.scalar_type());
  };
  check_row_vector(lse, "lse");
  check_row_vector(coef, "coef");
  const auto acc = queries.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor dk = at::empty({N, D}, queries.options().dtype(acc));
  if (N == 0) return dk;
  if (M == 0 || D == 0) return dk.zero_();

  const at::Tensor q = queries.contiguous();
  const at::Tensor k = keys.contiguous();
  const at::Tensor l = lse.to(acc).contiguous();
  const at::Tensor c = coef.to(acc).contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, q.scalar_type(), "region_contrast_bwd_cpu", [&] {
    using T = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    const scalar_t* qp = q.data_ptr<scalar_t>();
    const scalar_t* kp = k.data_ptr<scalar_t>();
    const T* lp = l.data_ptr<T>();
    const T* cp = c.data_ptr<T>();
    T* dp = dk.data_ptr<T>();
    rc::backward<scalar_t, T>(kernels<T>(), qp, M, kp, N, D, lp, cp, static_cast<T>(1.0 / tau), dp);
  });
  return dk;
}

}  // namespace

// JSON: {"chosen": the path float32 runs now (or "error: ..." for a bad CTRLAUG_CPU_ISA),
//        "chosen_by": "CTRLAUG_CPU_ISA", "selected", "trial" or "default" (rc::isa_chosen),
//        "paths": {name: "ok" or why it cannot run here}, "blas_library": "mkl", "other" or "none"
//        (the sgemm the blas path calls; auto takes blas only for "mkl"), "float64": "portable"}.
std::string cpu_isa_info() {
  std::string chosen;
  const char* by = "";
  try {
    chosen = rc::isa_name(rc::isa_chosen(&by));
  } catch (const c10::Error& e) {
    chosen = std::string("error: ") + e.what_without_backtrace();
  }
  auto quote = [](const std::string& s) {
    std::string out = "\"";
    for (char c : s) {
      if (c == '"' || c == '\\') out += '\\';
      if (c != '\n') out += c;
    }
    return out + "\"";
  };
  std::string paths;
  for (rc::Isa isa : rc::all_isas()) {
    std::string why;
    const bool ok = rc::isa_supported(isa, &why);
    if (!paths.empty()) paths += ", ";
    paths += quote(rc::isa_name(isa)) + ": " + quote(ok ? "ok" : why);
  }
  const char* blas = rc::blas_is_mkl() ? "mkl" : rc::blas_available() ? "other" : "none";
  return "{\"chosen\": " + quote(chosen) + ", \"chosen_by\": " + quote(by) + ", \"paths\": {" + paths +
         "}, \"blas_library\": " + quote(blas) +
         ", \"float64\": \"portable\"}";
}

void cpu_isa_select(const std::string& name) { rc::isa_select(name); }

void cpu_isa_trial(const std::string& name) { rc::isa_trial(name); }

}  // namespace ctrlaug::cpu

TORCH_LIBRARY_IMPL(ctrlaug, CPU, m) {
  m.impl("region_contrast_fwd", &ctrlaug::cpu::region_contrast_fwd_cpu);
  m.impl("region_contrast_bwd", &ctrlaug::cpu::region_contrast_bwd_cpu);
}
