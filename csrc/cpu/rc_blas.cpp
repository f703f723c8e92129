// The BLAS path of the CPU region contrast: each tile's two GEMMs (the logits, and P.K or P.Q) are
// calls of the platform sgemm that torch's own library exports (MKL's on x86 wheels, which chooses
// its kernels for the CPU at run time, AVX-512 included); the online softmax and the backward's
// exp come from the widest SIMD path the CPU supports (isa.cpp). The operands are the same packed
// row-major copies the SIMD paths use for P.K, so this path needs no panel packing at all.
//
// sgemm_ and MKL_Set_Num_Threads_Local (MKL's C entry; the lower-case name is the Fortran one, which
// takes a pointer) are declared weak: the extension loads (and this path is
// reported unavailable) when torch was built without a BLAS that exports them. Each call runs
// single-threaded inside the driver's OpenMP region (MKL_Set_Num_Threads_Local(1) around it).
// The forward's and the backward's logits are computed by different sgemm calls (A = queries in
// the forward, A = keys in the backward), so unlike the SIMD paths they are not guaranteed to be
// bitwise equal; the tolerance rule is what this path is held to.
#include "rc_kernels.h"

extern "C" {
void sgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k, const float* alpha,
            const float* a, const int* lda, const float* b, const int* ldb, const float* beta, float* c,
            const int* ldc) __attribute__((weak));
int MKL_Set_Num_Threads_Local(int n) __attribute__((weak));
}

namespace ctrlaug::cpu::rc {
namespace {

// One sgemm call on a single thread (MKL's own threads would oversubscribe the driver's).
class OneThread {
 public:
  OneThread() : prev_(MKL_Set_Num_Threads_Local != nullptr ? MKL_Set_Num_Threads_Local(1) : 0) {}
  ~OneThread() {
    if (MKL_Set_Num_Threads_Local != nullptr) MKL_Set_Num_Threads_Local(prev_);
  }

 private:
  int prev_;
};

constexpr int64_t kPadTo = 32;  // the widest SIMD path's nr: C's padding columns are zeroed up to it

// Row-major C[rows][ncols] = A[rows][D] . B[ncols][D]^T, i.e. column-major C^T = B . A^T.
void gemm_nt(const float* A, int64_t lda, int64_t rows, const float* B, int64_t ldb, int64_t ncols, int64_t D,
             float* C, int64_t ldc) {
  const int m = static_cast<int>(ncols), n = static_cast<int>(rows), k = static_cast<int>(D);
  const int ia = static_cast<int>(lda), ib = static_cast<int>(ldb), ic = static_cast<int>(ldc);
  const float one = 1.0f, zero = 0.0f;
  {
    OneThread one_thread;
    sgemm_("T", "N", &m, &n, &k, &one, B, &ib, A, &ia, &zero, C, &ic);
  }
  const int64_t pad_end = std::min(ldc, (ncols + kPadTo - 1) / kPadTo * kPadTo);
  if (pad_end > ncols)
    for (int64_t r = 0; r < rows; ++r) std::fill(C + r * ldc + ncols, C + r * ldc + pad_end, 0.0f);
}

// Row-major O[rows][Dp] += P[rows][K] . B[K][Dp], i.e. column-major O^T += B^T . P^T.
void gemm_nn_acc(const float* P, int64_t ldp, int64_t rows, int64_t K, const float* B, int64_t ldb, int64_t Dp,
                 float* O, int64_t ldo) {
  const int m = static_cast<int>(Dp), n = static_cast<int>(rows), k = static_cast<int>(K);
  const int ip = static_cast<int>(ldp), ib = static_cast<int>(ldb), io = static_cast<int>(ldo);
  const float one = 1.0f;
  OneThread one_thread;
  sgemm_("N", "N", &m, &n, &k, &one, B, &ib, P, &ip, &one, O, &io);
}

}  // namespace

bool blas_available() { return sgemm_ != nullptr; }

bool blas_is_mkl() { return sgemm_ != nullptr && MKL_Set_Num_Threads_Local != nullptr; }

const RcKernels<float>* blas_kernels() {
  if (!blas_available()) return nullptr;
  static const RcKernels<float> t = [] {
    const RcKernels<float>* simd = isa_supported(Isa::avx512) ? avx512_kernels()
                                   : isa_supported(Isa::avx2) ? avx2_kernels()
                                                              : &Portable<float>::table();
    return RcKernels<float>{"blas", simd->nr, simd->dv, false, &gemm_nt, &gemm_nn_acc, simd->fwd_softmax,
                            simd->bwd_prob};
  }();
  return &t;
}

}  // namespace ctrlaug::cpu::rc
