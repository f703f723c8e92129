// The tiled drivers of the CPU region contrast (csrc/cpu/region_contrast_kernel.cpp), called by the
// op binding (csrc/cpu/region_contrast.cpp) with the tile operations of one path (rc_kernels.h).
// S is the input dtype (float, double, at::BFloat16, at::Half), T the accumulation type (double
// for double inputs, float otherwise); the drivers are instantiated for exactly those pairs.
#pragma once

#include <cstdint>

#include "rc_kernels.h"

namespace ctrlaug::cpu::rc {

// lse_i = log sum_j exp(l_ij) and, when with_grad, o_i = sum_j softmax(l_i)_j k_j, over the N keys
// then the Nq queue rows, with l_ij = <q_i, k_j> * inv_tau.
template <typename S, typename T>
void forward(const RcKernels<T>& kern, const S* q, int64_t M, const S* k, int64_t N, const S* qu, int64_t Nq,
             int64_t D, T inv_tau, bool with_grad, T* lse_out, T* o_out);

// dk_j = inv_tau * sum_i coef_i exp(l_ij - lse_i) q_i over the N keys (not the queue).
template <typename S, typename T>
void backward(const RcKernels<T>& kern, const S* q, int64_t M, const S* k, int64_t N, int64_t D, const T* lse,
              const T* coef, T inv_tau, T* dk_out);

}  // namespace ctrlaug::cpu::rc
