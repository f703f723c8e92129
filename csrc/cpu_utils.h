// Small helpers shared by the C++ CPU kernels (csrc/correspondence.cpp, csrc/region_contrast.cpp).
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__))
// The AVX2/FMA kernels are compiled with function-level target attributes (the extension itself
// is built for the baseline x86-64 ISA) and chosen at run time, see cpu_use_avx2().
#define CTRLAUG_X86_AVX2 1
#else
#define CTRLAUG_X86_AVX2 0
#endif

namespace ctrlaug::cpu {

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
inline int64_t round_up(int64_t a, int64_t b) { return ceil_div(a, b) * b; }

// Threads for an OpenMP region over `tasks` independent tasks: torch's intra-op thread count
// (torch.set_num_threads), never more than the tasks, and 1 when already inside a parallel
// region. The extension shares torch's libgomp (same soname), so this is the same pool.
inline int num_threads_for(int64_t tasks) {
  if (tasks <= 1 || at::in_parallel_region()) return 1;
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), tasks)));
}

// Whether to run the AVX2/FMA kernels: the CPU has both, and CTRLAUG_CPU_PORTABLE is not "1"
// (that switch forces the portable plain-loop kernels, for testing them on an AVX2 machine).
inline bool cpu_use_avx2() {
#if CTRLAUG_X86_AVX2
  const char* env = std::getenv("CTRLAUG_CPU_PORTABLE");
  if (env != nullptr && std::strcmp(env, "1") == 0) return false;
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return has;
#else
  return false;
#endif
}

}  // namespace ctrlaug::cpu
