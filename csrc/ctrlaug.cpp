// The one schema block for every ctrlaug op. Device implementations live beside it:
//   csrc/<op>.cpp            TORCH_LIBRARY_IMPL(ctrlaug, CPU, m)   (C++ / OpenMP)
//   csrc/cuda/<op>.cpp       TORCH_LIBRARY_IMPL(ctrlaug, CUDA, m)  (binding over csrc/cuda/<op>_kernel.cu)
// Fake (meta) kernels are registered in Python (ctrlaug/ops/_registry.py). Autograd lives only in
// the torch.autograd.Function of ctrlaug/ops/<op>.py; these ops are non-differentiable blocks.
#include <Python.h>
#include <torch/library.h>

#include <string>

namespace ctrlaug::cpu {
std::string cpu_isa_info();  // csrc/cpu/region_contrast.cpp
void cpu_isa_select(const std::string& name);
void cpu_isa_trial(const std::string& name);
}

extern "C" {
// `import ctrlaug._C` loads this shared object, which runs the static registrations below.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(ctrlaug, m) {
  // S[p, i, j] = |clip cell i ∩ video cell j| / |clip cell i| (supplementary eq. 1-5).
  // clip_boxes, video_boxes: [P, 7] float32; grids: (T, H, W). Returns [P, Tc*H*W, Tv*Hv*Wv] f32.
  m.def("correspondence(Tensor clip_boxes, Tensor video_boxes, int[] clip_grid, int[] video_grid) -> Tensor");
  // Dense row statistics of l = q k^T / tau over [keys; queue]:
  //   lse [M] f32, and o [M, D] f32 = softmax(l) @ [keys; queue] when with_grad, else [0, D].
  m.def("region_contrast_fwd(Tensor queries, Tensor keys, Tensor? queue, float tau, bool with_grad) -> (Tensor, Tensor)");
  // Dense part of dL/dkeys: dk [N, D] f32 = (1/tau) * (coef[:, None] * exp(l - lse[:, None]))^T @ q.
  m.def("region_contrast_bwd(Tensor queries, Tensor keys, Tensor lse, Tensor coef, float tau) -> Tensor");
  // The CPU region contrast's instruction-set paths as JSON (no tensors, so one kernel for every
  // device): {"chosen": path float32 runs now, "paths": {name: "ok" or why not}, "float64": ...}.
  m.def("cpu_isa_info() -> str", &ctrlaug::cpu::cpu_isa_info);
  // Select the path auto takes in this process (ctrlaug/ops/_registry.py's measured choice), or
  // for the calling thread only while the measurement times it; "" or "auto" clears. An unknown
  // path, or one this CPU cannot run, is an error. CTRLAUG_CPU_ISA overrides the selection (not a trial).
  m.def("cpu_isa_select(str name) -> ()", &ctrlaug::cpu::cpu_isa_select);
  m.def("cpu_isa_trial(str name) -> ()", &ctrlaug::cpu::cpu_isa_trial);
}
