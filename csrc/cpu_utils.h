// Small helpers shared by the C++ CPU kernels (csrc/correspondence.cpp, csrc/cpu/).
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>

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

}  // namespace ctrlaug::cpu
