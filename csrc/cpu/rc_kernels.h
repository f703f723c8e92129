// The micro-kernel interface of the CPU region contrast (csrc/cpu/region_contrast_kernel.cpp), the
// instruction-set paths that implement it, and the run-time choice among them.
//
// A path is a table of four tile operations (RcKernels) that the tiled drivers call:
//   gemm_nt     C[rows, ncols] = A[rows, D] . B^T      (the logits of one tile)
//   gemm_nn_acc O[rows, Dp]  += P[rows, K] . B[K, Dp]   (P.K in the forward, P.Q in the backward)
//   fwd_softmax one online-softmax step over a logits tile
//   bwd_prob    p = exp(l - lse) * coef / tau over a logits tile
//
// Paths (CTRLAUG_CPU_ISA forces one; otherwise the one ctrlaug.ops measured fastest here and
// selected, see isa_chosen below):
//   avx512    AVX-512F register micro-kernels (csrc/cpu/rc_avx512.cpp), 16-lane vectors
//   avx2      AVX2 + FMA register micro-kernels (csrc/cpu/rc_avx2.cpp), 8-lane vectors
//   blas      both GEMMs of every tile handed to the platform BLAS sgemm that torch links (MKL on
//             x86 wheels, which picks its own ISA at run time); the softmax and exp passes come
//             from the widest SIMD path the CPU supports (csrc/cpu/rc_blas.cpp)
//   portable  plain loops, vectorised by the compiler for the baseline ISA (this header)
//   emu512    for tests only, never chosen unless forced: the avx512 path's source with each
//             16-lane vector emulated by two AVX2 vectors (csrc/cpu/rc_avx2.cpp), so that its
//             tiling is tested on CPUs without AVX-512
// avx512 and avx2 share one source (csrc/cpu/rc_simd.h) over a vector-primitive struct; each is
// its own translation unit compiled with a `#pragma GCC target` for its ISA, while the extension
// as a whole is built for the baseline x86-64 ISA. float64 always runs the portable path.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

namespace ctrlaug::cpu::rc {

constexpr int64_t kMR = 6;    // rows per register block (every path pads row blocks to this)
constexpr int64_t kBM = 192;  // query rows per forward task at most (multiple of kMR)
constexpr int64_t kBN = 96;   // key rows per backward task (multiple of kMR)
constexpr int64_t kBC = 128;  // keys (fwd) / queries (bwd) per inner tile (multiple of every nr)
// Dot products are summed in chunks of kDC terms and the chunk sums added in sequence (blocked
// summation): the rounding error then grows like kDC + D/kDC instead of D.
constexpr int64_t kDC = 32;

template <typename T>
constexpr T neg_inf() {
  return -std::numeric_limits<T>::infinity();
}

// One path's tile operations. Layouts:
//   panels = true : gemm_nt's B is packed in panels of nr rows stored d-major
//                   ([ncols/nr][D][nr]; ldb unused), ncols a multiple of nr.
//   panels = false: gemm_nt's B is row-major [ncols][ldb]; columns [ncols, round_up(ncols, nr))
//                   of C are set to 0.
//   Row-major copies (the B of gemm_nn_acc) have D padded to Dp, a multiple of dv (zeros).
// rows is always a multiple of kMR. Logits tiles are padded to a multiple of nr columns.
template <typename T>
struct RcKernels {
  const char* name;
  int64_t nr;
  int64_t dv;
  bool panels;
  void (*gemm_nt)(const T* A, int64_t lda, int64_t rows, const T* B, int64_t ldb, int64_t ncols, int64_t D, T* C,
                  int64_t ldc);
  void (*gemm_nn_acc)(const T* P, int64_t ldp, int64_t rows, int64_t K, const T* B, int64_t ldb, int64_t Dp, T* O,
                      int64_t ldo);
  // S: rows x nvp logits (columns >= nv are padding). On return S holds p = exp(l - m_new) (0 in
  // the padding), the running max m and sum l are updated, and the O rows (null: lse only) are
  // rescaled by exp(m_old - m_new) when the max moved. NaN logits make m NaN (lse and o NaN).
  void (*fwd_softmax)(T* S, int64_t ldS, int64_t rows, int64_t nv, int64_t nvp, T* m, T* l, T* O, int64_t ldo,
                      int64_t Dp);
  // S[r][c] <- exp(S[r][c] - lse[c]) * cf[c] for c < nvp (S holds the logits).
  void (*bwd_prob)(T* S, int64_t ldS, int64_t rows, int64_t nvp, const T* lse, const T* cf);
};

// ------------------------------------------------------------------------------------------------
// Portable path (plain loops), for float and double
// ------------------------------------------------------------------------------------------------
template <typename T>
struct Portable {
  static constexpr int64_t NR = 16;
  static constexpr int64_t DV = 8;

  static void gemm_nt(const T* A, int64_t lda, int64_t rows, const T* Bt, int64_t /*ldb*/, int64_t ncols, int64_t D,
                      T* C, int64_t ldc) {
    for (int64_t p = 0; p < ncols / NR; ++p) {
      const T* B = Bt + p * D * NR;
      for (int64_t r0 = 0; r0 < rows; r0 += kMR) {
        T tot[kMR][NR] = {};
        for (int64_t d0 = 0; d0 < D; d0 += kDC) {  // blocked summation, as the SIMD paths
          T acc[kMR][NR] = {};
          const int64_t d1 = std::min(D, d0 + kDC);
          for (int64_t d = d0; d < d1; ++d) {
            const T* b = B + d * NR;
            for (int64_t i = 0; i < kMR; ++i) {
              const T a = A[(r0 + i) * lda + d];
              for (int64_t j = 0; j < NR; ++j) acc[i][j] += a * b[j];
            }
          }
          for (int64_t i = 0; i < kMR; ++i)
            for (int64_t j = 0; j < NR; ++j) tot[i][j] = d0 == 0 ? acc[i][j] : tot[i][j] + acc[i][j];
        }
        for (int64_t i = 0; i < kMR; ++i)
          for (int64_t j = 0; j < NR; ++j) C[(r0 + i) * ldc + p * NR + j] = tot[i][j];
      }
    }
  }

  static void gemm_nn_acc(const T* P, int64_t ldp, int64_t rows, int64_t K, const T* B, int64_t ldb, int64_t Dp, T* O,
                          int64_t ldo) {
    for (int64_t d0 = 0; d0 < Dp; d0 += DV) {
      for (int64_t r0 = 0; r0 < rows; r0 += kMR) {
        T acc[kMR][DV];
        for (int64_t i = 0; i < kMR; ++i)
          for (int64_t j = 0; j < DV; ++j) acc[i][j] = O[(r0 + i) * ldo + d0 + j];
        for (int64_t c = 0; c < K; ++c) {
          const T* b = B + c * ldb + d0;
          for (int64_t i = 0; i < kMR; ++i) {
            const T a = P[(r0 + i) * ldp + c];
            for (int64_t j = 0; j < DV; ++j) acc[i][j] += a * b[j];
          }
        }
        for (int64_t i = 0; i < kMR; ++i)
          for (int64_t j = 0; j < DV; ++j) O[(r0 + i) * ldo + d0 + j] = acc[i][j];
      }
    }
  }

  static void fwd_softmax(T* S, int64_t ldS, int64_t rows, int64_t nv, int64_t nvp, T* m, T* l, T* O, int64_t ldo,
                          int64_t Dp) {
    for (int64_t r = 0; r < rows; ++r) {
      T* s = S + r * ldS;
      T mx = neg_inf<T>();
      bool nan = false;
      for (int64_t c = 0; c < nv; ++c) {
        mx = s[c] > mx ? s[c] : mx;
        nan |= s[c] != s[c];
      }
      if (nan) mx = std::numeric_limits<T>::quiet_NaN();
      for (int64_t c = nv; c < nvp; ++c) s[c] = T(0);
      const T m_old = m[r];
      const T m_new = (mx > m_old || mx != mx) ? mx : m_old;
      if (m_new == neg_inf<T>()) {  // every logit so far is -inf: nothing to add
        for (int64_t c = 0; c < nv; ++c) s[c] = T(0);
        continue;
      }
      T sum = 0;
      for (int64_t c = 0; c < nv; ++c) {
        s[c] = std::exp(s[c] - m_new);
        sum += s[c];
      }
      const T alpha = std::exp(m_old - m_new);  // 0 on the first tile (m_old = -inf)
      l[r] = l[r] * alpha + sum;
      m[r] = m_new;
      if (O != nullptr && alpha != T(1)) {
        T* o = O + r * ldo;
        for (int64_t d = 0; d < Dp; ++d) o[d] *= alpha;
      }
    }
  }

  static void bwd_prob(T* S, int64_t ldS, int64_t rows, int64_t nvp, const T* lse, const T* cf) {
    for (int64_t r = 0; r < rows; ++r) {
      T* s = S + r * ldS;
      for (int64_t c = 0; c < nvp; ++c) s[c] = std::exp(s[c] - lse[c]) * cf[c];
    }
  }

  static const RcKernels<T>& table() {
    static const RcKernels<T> t{"portable", NR, DV, true, &gemm_nt, &gemm_nn_acc, &fwd_softmax, &bwd_prob};
    return t;
  }
};

// ------------------------------------------------------------------------------------------------
// The paths and the run-time choice (csrc/cpu/isa.cpp)
// ------------------------------------------------------------------------------------------------
enum class Isa { avx512, avx2, blas, portable, emu512 };

// Every path (the automatic choice never takes emu512: isa_chosen).
inline const std::vector<Isa>& all_isas() {
  static const std::vector<Isa> v{Isa::avx512, Isa::avx2, Isa::blas, Isa::portable, Isa::emu512};
  return v;
}
const char* isa_name(Isa isa);
// Whether this build and this CPU can run the path (and why not, when `why` is given).
bool isa_supported(Isa isa, std::string* why = nullptr);
// The path float accumulation runs now, the first of:
//   the calling thread's trial path (isa_trial: the measurement of ctrlaug/ops/_registry.py times
//     each path with it);
//   CTRLAUG_CPU_ISA when set and not "auto" (an unknown or unsupported value is an error naming
//     the choices);
//   the process's selected path (isa_select: the path the measurement chose, or a cached choice);
//   before any selection (a direct torch.ops.ctrlaug call before ctrlaug.ops chose): blas when
//     torch links MKL, else the first supported of avx512, avx2, portable.
// `by`, when given, is set to which of them decided: "trial", "CTRLAUG_CPU_ISA", "selected" or
// "default".
Isa isa_chosen(const char** by = nullptr);
// Set (a path name) or clear ("" or "auto") the process's selected path / this thread's trial path;
// a name that is unknown or cannot run here is an error.
void isa_select(const std::string& name);
void isa_trial(const std::string& name);
const RcKernels<float>& kernels_for(Isa isa);

// The SIMD tables (null when the build has no such path: not x86-64 GCC/Clang), and the BLAS
// table, defined in their own translation units.
const RcKernels<float>* avx2_kernels();
const RcKernels<float>* avx512_kernels();
const RcKernels<float>* emu512_kernels();
const RcKernels<float>* blas_kernels();
bool blas_available();
// Whether the sgemm is MKL's (it exports MKL_Set_Num_Threads_Local, which pins a call to one thread).
bool blas_is_mkl();

}  // namespace ctrlaug::cpu::rc
