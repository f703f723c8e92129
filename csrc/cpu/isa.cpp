// Run-time choice of the CPU region contrast's instruction-set path (csrc/cpu/rc_kernels.h).
#include <c10/util/Exception.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <string>

#include "rc_kernels.h"

namespace ctrlaug::cpu::rc {
namespace {

constexpr const char* kEnv = "CTRLAUG_CPU_ISA";

bool cpu_has_avx2_fma() {
#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__))
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return has;
#else
  return false;
#endif
}

// __builtin_cpu_supports also checks that the OS saves the AVX-512 register state (XCR0).
bool cpu_has_avx512f() {
#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__))
  static const bool has = __builtin_cpu_supports("avx512f");
  return has;
#else
  return false;
#endif
}

}  // namespace

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::avx512:
      return "avx512";
    case Isa::avx2:
      return "avx2";
    case Isa::blas:
      return "blas";
    case Isa::portable:
      return "portable";
    case Isa::emu512:
      return "emu512";
  }
  return "?";
}

bool isa_supported(Isa isa, std::string* why) {
  auto no = [&](const char* reason) {
    if (why != nullptr) *why = reason;
    return false;
  };
  switch (isa) {
    case Isa::avx512:
      if (avx512_kernels() == nullptr) return no("this build has no x86-64 SIMD paths (not x86-64 GCC/Clang)");
      if (!cpu_has_avx512f()) return no("this CPU (or OS) has no AVX-512F");
      return true;
    case Isa::avx2:
      if (avx2_kernels() == nullptr) return no("this build has no x86-64 SIMD paths (not x86-64 GCC/Clang)");
      if (!cpu_has_avx2_fma()) return no("this CPU has no AVX2 + FMA");
      return true;
    case Isa::blas:
      if (!blas_available()) return no("torch's library exports no BLAS sgemm_ (torch built without BLAS)");
      return true;
    case Isa::portable:
      return true;
    case Isa::emu512:
      if (emu512_kernels() == nullptr) return no("this build has no x86-64 SIMD paths (not x86-64 GCC/Clang)");
      if (!cpu_has_avx2_fma()) return no("this CPU has no AVX2 + FMA (emu512 runs on AVX2)");
      return true;
  }
  return no("unknown path");
}

namespace {

// The path of a name (`what` names the source in the error: the variable or the op).
Isa parse_isa(const char* name, const char* what) {
  for (Isa isa : all_isas()) {
    if (std::strcmp(name, isa_name(isa)) != 0) continue;
    std::string why;
    TORCH_CHECK(isa_supported(isa, &why), what, "=", name, " cannot run here: ", why);
    return isa;
  }
  TORCH_CHECK(false, what, "=", name, " is not a CPU path; choose one of auto, avx512, avx2, blas, portable, emu512");
}

// -1: none. g_selected is process-wide (the measured choice); t_trial is the calling thread's
// own (the measurement times each path with it, without touching what other threads run).
std::atomic<int> g_selected{-1};
thread_local int t_trial = -1;

int isa_slot(const std::string& name, const char* what) {
  if (name.empty() || name == "auto") return -1;
  return static_cast<int>(parse_isa(name.c_str(), what));
}

}  // namespace

void isa_select(const std::string& name) { g_selected.store(isa_slot(name, "cpu_isa_select")); }

void isa_trial(const std::string& name) { t_trial = isa_slot(name, "cpu_isa_trial"); }

Isa isa_chosen(const char** by) {
  auto said = [&](const char* source) {
    if (by != nullptr) *by = source;
  };
  if (t_trial >= 0) {
    said("trial");
    return static_cast<Isa>(t_trial);
  }
  const char* env = std::getenv(kEnv);
  if (env != nullptr && env[0] != '\0' && std::strcmp(env, "auto") != 0) {
    said(kEnv);
    return parse_isa(env, kEnv);
  }
  const int sel = g_selected.load();
  if (sel >= 0) {
    said("selected");
    return static_cast<Isa>(sel);
  }
  // Nothing measured yet (only a direct torch.ops.ctrlaug call before ctrlaug.ops has chosen):
  // blas where torch links MKL, else the widest register path.
  said("default");
  if (blas_is_mkl()) return Isa::blas;
  for (Isa isa : {Isa::avx512, Isa::avx2}) {
    if (isa_supported(isa)) return isa;
  }
  return Isa::portable;
}

const RcKernels<float>& kernels_for(Isa isa) {
  switch (isa) {
    case Isa::avx512:
      return *avx512_kernels();
    case Isa::avx2:
      return *avx2_kernels();
    case Isa::blas:
      return *blas_kernels();
    case Isa::emu512:
      return *emu512_kernels();
    case Isa::portable:
      break;
  }
  return Portable<float>::table();
}

}  // namespace ctrlaug::cpu::rc
