// CPU (OpenMP) kernels of ctrlaug::region_contrast_fwd / region_contrast_bwd: the dense part of
// the region-contrast loss (paper eq. 3-4, docs/design.md §2), fused and tiled so that the [M, N]
// logits matrix is never materialised. Semantics: region_contrast_{fwd,bwd}_ref in
// ctrlaug/ops/reference.py.
//
//   fwd: l_ij = <q_i, k_j> / tau over the N keys then the Nq queue rows;
//        lse_i = log sum_j exp(l_ij);  o_i = sum_j softmax(l_i)_j k_j          (o only if with_grad)
//   bwd: dk_j = (1/tau) sum_i coef_i exp(l_ij - lse_i) q_i                      (in-batch keys only)
//
// Numerics
//   * Accumulation type T: float for float32/bfloat16/float16 inputs (half types are converted to
//     float once, when the operands are packed), double for float64 inputs. Outputs are T.
//   * Forward is a flash-style online log-sum-exp over key tiles: per query row a running max m,
//     running sum s = sum exp(l - m) and running o = sum exp(l - m) k; when a tile raises the max,
//     s and o are rescaled by exp(m_old - m_new). At the end lse = m + log s and o /= s. All
//     exponents are <= 0, so nothing overflows for any tau or input scale (tau = 0.01 with
//     unnormalised q, k stays finite). Key-split partial results (small M) are merged with the
//     same rescaling.
//   * The queries are scaled by 1/tau when packed (rounded once, the same way in both passes), so
//     the logits product yields l directly: no scaling pass over the tiles, and the backward's
//     recomputed l is bitwise the forward's (same operands, same summation order).
//   * Backward recomputes each logits tile from the saved lse: p = exp(l - lse) * coef / tau.
//   * float exp on the AVX2 path: Cody-Waite reduction x = n ln2 + r, |r| <= ln2/2, degree-7
//     Taylor polynomial (truncation < 6e-9 relative), scale by 2^n through the exponent bits;
//     about 1-2 ulp, 0 below -87.3 (exp underflow), NaN propagates. double uses std::exp.
//
// Tiling (per task)
//   forward : a block of at most BM = 192 query rows (packed to float, scaled by 1/tau,
//             zero-padded to a multiple of 6) against key tiles of BC = 128 keys. One tile:
//               S[BM, BC]   = Qblk . Kt_tile          (register micro-kernel 6 rows x 16 keys)
//               online softmax of S rows in place -> P; rescale o rows when the max moved
//               O[BM, D]   += P . Kr_tile             (register micro-kernel 6 rows x 16 dims)
//             The keys (and queue) are packed once per call, in two layouts: Kt = panels of 16
//             keys stored d-major ([N/16][D][16], so the logits kernel loads 16 keys' d-th
//             values as two vectors and broadcasts one query value), and Kr = row-major with D
//             padded to a multiple of 8 (for the P.K product; the keys themselves, not a copy,
//             for float32/float64 keys with D % 8 == 0 and no queue). Extra memory (1 or 2) *
//             (N+Nq) * D floats (16 MiB at N=32768, D=128) versus 3 x 256 MiB dense matrices in
//             the eager reference.
//             Tasks are query blocks (parallel over M), equal in size and a multiple of the
//             thread count; with fewer than 4 blocks per thread the key range is split too and
//             the partial (m, s, o) are merged.
//   backward: the mirror image: a block of BN = 96 keys (one task; its thread owns those dk
//             rows, no atomics) against query tiles of 128: S^T = Kblk . Qt_tile, P = exp(...),
//             dK += P . Qr_tile. When there are fewer key blocks than 2 x threads, the query range
//             is split and the partial dk are summed.
//   Working set of one forward task at D=128: Qblk 96 KiB + S 96 KiB + O 96 KiB + one key tile
//   (2 x 64 KiB) in L2 (1 MiB/core here); the micro-kernels' streams (one 8 KiB key panel, or a
//   128x16 slice of Kr) sit in L1. Both micro-kernels keep 12 ymm accumulators (6 rows x 2
//   vectors) and issue 8 loads per 12 FMAs. 192-row forward blocks halve the key streaming per
//   FLOP against 96 (each task reads all packed keys once).
//   Why not hand the tiles to MKL (at::mm_out) or use PyTorch's CPU flash attention
//   (aten::_scaled_dot_product_flash_attention_for_cpu with V = K, which gives the same lse and
//   o): the two GEMM micro-kernels run at about sgemm speed and take most of the kernel's cycles
//   (perf), so neither could be faster here. The measurements behind this (fractions of MKL
//   sgemm, the perf profile, the flash-attention comparison), the wall times and the comparison
//   with torch.compile: bench/RESULTS.md. Tried and dropped earlier: BC in {64, 256}, unrolling
//   the micro-kernel loops by 4, software prefetch of the next tile (no measurable change).
//
// Portable path: the same tiling with plain loops (vectorised by the compiler for the baseline
// ISA), used for float64, for CPUs without AVX2/FMA, and when CTRLAUG_CPU_PORTABLE=1.

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <cmath>
#include <limits>
#include <optional>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "cpu_utils.h"

#if CTRLAUG_X86_AVX2
#include <immintrin.h>
#endif

namespace ctrlaug::cpu {
namespace {

constexpr int64_t kMR = 6;    // rows per register block (both micro-kernels)
constexpr int64_t kNR = 16;   // keys per packed panel / columns per logits register block
constexpr int64_t kDV = 8;    // D of the row-major copies is padded to a multiple of this
constexpr int64_t kBM = 192;  // query rows per forward task at most (multiple of kMR)
constexpr int64_t kBN = 96;   // key rows per backward task (multiple of kMR)
constexpr int64_t kBC = 128;  // keys (fwd) / queries (bwd) per inner tile (multiple of kNR)
// Dot products are summed in chunks of kDC terms, and the chunk sums added in sequence (blocked
// summation): the rounding error then grows like kDC + D/kDC instead of D. A plain sequential
// FMA chain over D=128..512 had 1.6-1.8x the mean logit error of MKL's sgemm; with chunks of 32
// it is below MKL's, for a few per cent of time (12 extra vector adds per 6x16x32 block).
constexpr int64_t kDC = 32;

template <typename T>
constexpr T neg_inf() {
  return -std::numeric_limits<T>::infinity();
}

// =============================================================================================
// Portable micro-kernels (plain loops; float64 and the non-AVX2 fallback)
// =============================================================================================
template <typename T>
struct PortableOps {
  // C[r][c] = sum_d A[r][d] * Bt[c/16][d][c%16] for r < rows (multiple of 6), c < 16*npan.
  static void gemm_nt(const T* A, int64_t lda, int64_t rows, const T* Bt, int64_t npan, int64_t D, T* C,
                      int64_t ldc) {
    for (int64_t p = 0; p < npan; ++p) {
      const T* B = Bt + p * D * kNR;
      for (int64_t r0 = 0; r0 < rows; r0 += kMR) {
        T tot[kMR][kNR] = {};
        for (int64_t d0 = 0; d0 < D; d0 += kDC) {  // same blocked summation as the AVX2 kernel
          T acc[kMR][kNR] = {};
          const int64_t d1 = std::min(D, d0 + kDC);
          for (int64_t d = d0; d < d1; ++d) {
            const T* b = B + d * kNR;
            for (int64_t i = 0; i < kMR; ++i) {
              const T a = A[(r0 + i) * lda + d];
              for (int64_t j = 0; j < kNR; ++j) acc[i][j] += a * b[j];
            }
          }
          for (int64_t i = 0; i < kMR; ++i)
            for (int64_t j = 0; j < kNR; ++j) tot[i][j] = d0 == 0 ? acc[i][j] : tot[i][j] + acc[i][j];
        }
        for (int64_t i = 0; i < kMR; ++i)
          for (int64_t j = 0; j < kNR; ++j) C[(r0 + i) * ldc + p * kNR + j] = tot[i][j];
      }
    }
  }

  // O[r][d] += sum_{c<K} P[r][c] * B[c][d] for r < rows (multiple of 6), d < Dp (multiple of 8).
  static void gemm_nn_acc(const T* P, int64_t ldp, int64_t rows, int64_t K, const T* B, int64_t ldb, int64_t Dp, T* O,
                          int64_t ldo) {
    for (int64_t d0 = 0; d0 < Dp; d0 += kDV) {
      for (int64_t r0 = 0; r0 < rows; r0 += kMR) {
        T acc[kMR][kDV];
        for (int64_t i = 0; i < kMR; ++i)
          for (int64_t j = 0; j < kDV; ++j) acc[i][j] = O[(r0 + i) * ldo + d0 + j];
        for (int64_t c = 0; c < K; ++c) {
          const T* b = B + c * ldb + d0;
          for (int64_t i = 0; i < kMR; ++i) {
            const T a = P[(r0 + i) * ldp + c];
            for (int64_t j = 0; j < kDV; ++j) acc[i][j] += a * b[j];
          }
        }
        for (int64_t i = 0; i < kMR; ++i)
          for (int64_t j = 0; j < kDV; ++j) O[(r0 + i) * ldo + d0 + j] = acc[i][j];
      }
    }
  }

  // Online-softmax step over one logits tile (see fwd_softmax in Avx2Ops for the contract).
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
      if (nan) mx = std::numeric_limits<T>::quiet_NaN();  // NaN logits give NaN lse and o, as the reference
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

  // S[r][c] <- exp(S[r][c] - lse[c]) * cf[c]  for c < nvp (S holds the logits l).
  static void bwd_prob(T* S, int64_t ldS, int64_t rows, int64_t nvp, const T* lse, const T* cf) {
    for (int64_t r = 0; r < rows; ++r) {
      T* s = S + r * ldS;
      for (int64_t c = 0; c < nvp; ++c) s[c] = std::exp(s[c] - lse[c]) * cf[c];
    }
  }
};

// =============================================================================================
// AVX2 + FMA micro-kernels (float). Compiled with a target attribute, chosen at run time.
// =============================================================================================
#if CTRLAUG_X86_AVX2
#pragma GCC push_options
#pragma GCC target("avx2,fma")

inline __m256 exp256(__m256 x) {
  const __m256 lo = _mm256_set1_ps(-87.33654f);  // below: result 0 (also for -inf)
  const __m256 hi = _mm256_set1_ps(88.0f);       // above: clamped (never reached by <= 0 exponents)
  const __m256 underflow = _mm256_cmp_ps(x, lo, _CMP_LT_OQ);
  x = _mm256_max_ps(lo, x);  // operand order keeps a NaN x (max/min return the 2nd operand on NaN)
  x = _mm256_min_ps(hi, x);
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);  // ln2 = 0.693359375 - 2.12194440e-4
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.0f / 5040.0f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 720.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 120.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  // 2^n for n in [-126, 127] by building the exponent field directly.
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_andnot_ps(underflow, _mm256_mul_ps(p, _mm256_castsi256_ps(e)));
}

inline float hmax256(__m256 v) {
  __m128 a = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  a = _mm_max_ps(a, _mm_movehl_ps(a, a));
  a = _mm_max_ss(a, _mm_movehdup_ps(a));
  return _mm_cvtss_f32(a);
}

inline float hsum256(__m256 v) {
  __m128 a = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  a = _mm_add_ps(a, _mm_movehl_ps(a, a));
  a = _mm_add_ss(a, _mm_movehdup_ps(a));
  return _mm_cvtss_f32(a);
}

// 6 x NV*8 block of O += P . B over K: acc in registers, P broadcast, B rows loaded as vectors.
template <int NV>
inline void nn_block(const float* P, int64_t ldp, int64_t K, const float* B, int64_t ldb, float* O, int64_t ldo) {
  __m256 acc[kMR][NV];
#pragma GCC unroll 6
  for (int i = 0; i < kMR; ++i)
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v) acc[i][v] = _mm256_loadu_ps(O + i * ldo + 8 * v);
  const float* p0 = P;
  const float* p1 = P + ldp;
  const float* p2 = P + 2 * ldp;
  const float* p3 = P + 3 * ldp;
  const float* p4 = P + 4 * ldp;
  const float* p5 = P + 5 * ldp;
  for (int64_t c = 0; c < K; ++c) {
    __m256 b[NV];
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v) b[v] = _mm256_loadu_ps(B + c * ldb + 8 * v);
    __m256 a;
#define CTRLAUG_ROW(I, PI)                                                         \
  a = _mm256_broadcast_ss(PI + c);                                                 \
  _Pragma("GCC unroll 2") for (int v = 0; v < NV; ++v) acc[I][v] = _mm256_fmadd_ps(a, b[v], acc[I][v]);
    CTRLAUG_ROW(0, p0)
    CTRLAUG_ROW(1, p1)
    CTRLAUG_ROW(2, p2)
    CTRLAUG_ROW(3, p3)
    CTRLAUG_ROW(4, p4)
    CTRLAUG_ROW(5, p5)
#undef CTRLAUG_ROW
  }
#pragma GCC unroll 6
  for (int i = 0; i < kMR; ++i)
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v) _mm256_storeu_ps(O + i * ldo + 8 * v, acc[i][v]);
}

// 6 x 16 block of C (=, or += when accumulate) A[6 rows, 0..dlen) . B panel[0..dlen)[16]: twelve
// accumulators, per d two vector loads of the panel and six broadcasts of A.
inline void nt_block(const float* A, int64_t lda, const float* B, int64_t dlen, float* C, int64_t ldc,
                     bool accumulate) {
  __m256 acc[kMR][2];
#pragma GCC unroll 6
  for (int i = 0; i < kMR; ++i) acc[i][0] = acc[i][1] = _mm256_setzero_ps();
  const float* a0 = A;
  const float* a1 = A + lda;
  const float* a2 = A + 2 * lda;
  const float* a3 = A + 3 * lda;
  const float* a4 = A + 4 * lda;
  const float* a5 = A + 5 * lda;
  for (int64_t d = 0; d < dlen; ++d, B += kNR) {
    const __m256 b0 = _mm256_loadu_ps(B);
    const __m256 b1 = _mm256_loadu_ps(B + 8);
    __m256 x;
#define CTRLAUG_ROW(I, AI)               \
  x = _mm256_broadcast_ss(AI + d);       \
  acc[I][0] = _mm256_fmadd_ps(x, b0, acc[I][0]); \
  acc[I][1] = _mm256_fmadd_ps(x, b1, acc[I][1]);
    CTRLAUG_ROW(0, a0)
    CTRLAUG_ROW(1, a1)
    CTRLAUG_ROW(2, a2)
    CTRLAUG_ROW(3, a3)
    CTRLAUG_ROW(4, a4)
    CTRLAUG_ROW(5, a5)
#undef CTRLAUG_ROW
  }
#pragma GCC unroll 6
  for (int i = 0; i < kMR; ++i) {
    float* c = C + i * ldc;
    if (accumulate) {
      acc[i][0] = _mm256_add_ps(acc[i][0], _mm256_loadu_ps(c));
      acc[i][1] = _mm256_add_ps(acc[i][1], _mm256_loadu_ps(c + 8));
    }
    _mm256_storeu_ps(c, acc[i][0]);
    _mm256_storeu_ps(c + 8, acc[i][1]);
  }
}

struct Avx2Ops {
  static void gemm_nt(const float* A, int64_t lda, int64_t rows, const float* Bt, int64_t npan, int64_t D, float* C,
                      int64_t ldc) {
    for (int64_t p = 0; p < npan; ++p) {
      const float* B = Bt + p * D * kNR;
      for (int64_t r0 = 0; r0 < rows; r0 += kMR) {
        // Blocked summation over D (see kDC): chunk sums are added into C.
        for (int64_t d0 = 0; d0 < D; d0 += kDC)
          nt_block(A + r0 * lda + d0, lda, B + d0 * kNR, std::min(kDC, D - d0), C + r0 * ldc + p * kNR, ldc, d0 > 0);
        if (D == 0) nt_block(A, lda, B, 0, C + r0 * ldc + p * kNR, ldc, false);
      }
    }
  }

  static void gemm_nn_acc(const float* P, int64_t ldp, int64_t rows, int64_t K, const float* B, int64_t ldb,
                          int64_t Dp, float* O, int64_t ldo) {
    int64_t d0 = 0;
    for (; d0 + 16 <= Dp; d0 += 16)
      for (int64_t r0 = 0; r0 < rows; r0 += kMR) nn_block<2>(P + r0 * ldp, ldp, K, B + d0, ldb, O + r0 * ldo + d0, ldo);
    if (d0 < Dp)  // Dp is a multiple of 8: one 8-wide column strip left
      for (int64_t r0 = 0; r0 < rows; r0 += kMR) nn_block<1>(P + r0 * ldp, ldp, K, B + d0, ldb, O + r0 * ldo + d0, ldo);
  }

  // One online-softmax step. S: rows x nvp logits l (the queries were scaled by 1/tau when
  // packed; columns >= nv are padding, 0 there). On return S holds p = exp(l - m_new) (0 in the
  // padding), m/l are updated, and the O rows are rescaled by exp(m_old - m_new) when the max
  // moved (O may be null: lse only).
  static void fwd_softmax(float* S, int64_t ldS, int64_t rows, int64_t nv, int64_t nvp, float* m, float* l, float* O,
                          int64_t ldo, int64_t Dp) {
    for (int64_t r = 0; r < rows; ++r) {
      float* s = S + r * ldS;
      __m256 vmax = _mm256_set1_ps(neg_inf<float>());
      __m256 vnan = _mm256_setzero_ps();  // max() does not keep NaN, so track it on the side
      for (int64_t c = 0; c < nvp; c += 8) {
        const __m256 x = _mm256_loadu_ps(s + c);
        vmax = _mm256_max_ps(vmax, x);
        vnan = _mm256_or_ps(vnan, _mm256_cmp_ps(x, x, _CMP_UNORD_Q));
      }
      float mx;
      if (nv < nvp) {  // last tile: mask the padding before taking the max
        for (int64_t c = nv; c < nvp; ++c) s[c] = neg_inf<float>();
        mx = neg_inf<float>();
        for (int64_t c = 0; c < nv; ++c) mx = s[c] > mx ? s[c] : mx;
      } else {
        mx = hmax256(vmax);
      }
      // NaN logits (padding is 0 here, never NaN) give NaN lse and o, as the reference.
      if (_mm256_movemask_ps(vnan) != 0) mx = std::numeric_limits<float>::quiet_NaN();
      const float m_old = m[r];
      const float m_new = (mx > m_old || mx != mx) ? mx : m_old;
      if (m_new == neg_inf<float>()) {
        for (int64_t c = 0; c < nvp; ++c) s[c] = 0.0f;
        continue;
      }
      const __m256 vm = _mm256_set1_ps(m_new);
      __m256 vsum = _mm256_setzero_ps();
      for (int64_t c = 0; c < nvp; c += 8) {
        const __m256 p = exp256(_mm256_sub_ps(_mm256_loadu_ps(s + c), vm));
        _mm256_storeu_ps(s + c, p);
        vsum = _mm256_add_ps(vsum, p);
      }
      const float alpha = std::exp(m_old - m_new);
      l[r] = l[r] * alpha + hsum256(vsum);
      m[r] = m_new;
      if (O != nullptr && alpha != 1.0f) {
        float* o = O + r * ldo;
        const __m256 va = _mm256_set1_ps(alpha);
        for (int64_t d = 0; d < Dp; d += 8) _mm256_storeu_ps(o + d, _mm256_mul_ps(_mm256_loadu_ps(o + d), va));
      }
    }
  }

  // S[r][c] <- exp(S[r][c] - lse[c]) * cf[c]. S holds the logits, computed by the same product of
  // the same packed operands as in the forward, so they are bitwise the forward's: l - lse is
  // exactly -log(sum) for a row's max logit (p = 1 for a dominant key even at |l| ~ 1e5).
  static void bwd_prob(float* S, int64_t ldS, int64_t rows, int64_t nvp, const float* lse, const float* cf) {
    for (int64_t r = 0; r < rows; ++r) {
      float* s = S + r * ldS;
      for (int64_t c = 0; c < nvp; c += 8) {
        const __m256 x = _mm256_sub_ps(_mm256_loadu_ps(s + c), _mm256_loadu_ps(lse + c));
        _mm256_storeu_ps(s + c, _mm256_mul_ps(exp256(x), _mm256_loadu_ps(cf + c)));
      }
    }
  }
};

#pragma GCC pop_options
#endif  // CTRLAUG_X86_AVX2

// =============================================================================================
// Packing (once per call): dtype conversion to T and the two layouts the micro-kernels read.
// The logical row r of the packed operand is a[r] for r < na, b[r - na] for r < na + nb (the
// queue follows the keys), and zero beyond.
// =============================================================================================
template <typename S>
inline const S* logical_row(const S* a, int64_t na, const S* b, int64_t r, int64_t D) {
  return r < na ? a + r * D : b + (r - na) * D;
}

// Uninitialised scratch from torch's CPU allocator (64-byte aligned; no zero fill of the large
// packed copies, which are written in full).
template <typename T>
class Buffer {
 public:
  explicit Buffer(int64_t n)
      : t_(at::empty({n}, at::TensorOptions().dtype(std::is_same_v<T, double> ? at::kDouble : at::kFloat))),
        p_(t_.data_ptr<T>()) {}
  T* data() const { return p_; }
  T& operator[](int64_t i) const { return p_[i]; }

 private:
  at::Tensor t_;
  T* p_;
};

// Panels of 16 rows stored d-major: out[p][d][j] = row(16p + j)[d] * scale.
template <typename S, typename T>
void pack_panels(const S* a, int64_t na, const S* b, int64_t nb, int64_t D, T scale, T* out) {
  const int64_t n = na + nb;
  const int64_t npan = ceil_div(n, kNR);
  const int nt = num_threads_for(n * D >= (1 << 16) ? npan : 1);
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t p = 0; p < npan; ++p) {
    T* o = out + p * D * kNR;
    for (int64_t j = 0; j < kNR; ++j) {
      const int64_t r = p * kNR + j;
      if (r < n) {
        const S* src = logical_row(a, na, b, r, D);
        for (int64_t d = 0; d < D; ++d) o[d * kNR + j] = static_cast<T>(src[d]) * scale;
      } else {
        for (int64_t d = 0; d < D; ++d) o[d * kNR + j] = T(0);
      }
    }
  }
}

// Row-major copy with the row stride padded to Dp (padding zero).
template <typename S, typename T>
void pack_rows(const S* a, int64_t na, const S* b, int64_t nb, int64_t D, int64_t Dp, T* out) {
  const int64_t n = na + nb;
  const int nt = num_threads_for(n * D >= (1 << 16) ? n : 1);
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t r = 0; r < n; ++r) {
    const S* src = logical_row(a, na, b, r, D);
    T* o = out + r * Dp;
    for (int64_t d = 0; d < D; ++d) o[d] = static_cast<T>(src[d]);
    for (int64_t d = D; d < Dp; ++d) o[d] = T(0);
  }
}

// Rows [r0, r0 + n) of src, times scale, into a zero-padded [rows_p][D] block. The product is
// rounded exactly as in pack_panels, so a query scaled here (forward) and there (backward) is
// the same float.
template <typename S, typename T>
void pack_block(const S* src, int64_t r0, int64_t n, int64_t rows_p, int64_t D, T scale, T* out) {
  for (int64_t i = 0; i < n; ++i) {
    const S* s = src + (r0 + i) * D;
    T* o = out + i * D;
    for (int64_t d = 0; d < D; ++d) o[d] = static_cast<T>(s[d]) * scale;
  }
  std::fill(out + n * D, out + rows_p * D, T(0));
}

// The rows themselves when they can serve as the row-major operand of P.B directly: same type as
// the accumulation, D a multiple of kDV, and no second segment (queue) to append; else null.
template <typename S, typename T>
const T* direct_rows(const S* a, int64_t D, int64_t n_second) {
  if constexpr (std::is_same_v<S, T>) {
    if (D % kDV == 0 && n_second == 0) return a;
  }
  return nullptr;
}

// Row blocks of at most `bmax` rows (a multiple of kMR) covering n rows, as even as the kMR
// granularity allows: equal tasks keep the threads finishing together (with 2048 rows in blocks
// of 96, the last block had 32 rows and one thread idled for 2/3 of a task at the end).
inline int64_t num_blocks(int64_t n, int64_t bmax) { return ceil_div(ceil_div(n, kMR), bmax / kMR); }

inline std::pair<int64_t, int64_t> block_rows(int64_t blk, int64_t nb, int64_t n) {
  const int64_t units = ceil_div(n, kMR);
  const int64_t r0 = (blk * units / nb) * kMR;
  const int64_t r1 = std::min(n, ((blk + 1) * units / nb) * kMR);
  return {r0, r1 - r0};
}

// =============================================================================================
// Drivers
// =============================================================================================
template <typename S, typename T, typename Ops>
void fwd_impl(const S* q, int64_t M, const S* k, int64_t N, const S* qu, int64_t Nq, int64_t D, T inv_tau,
              bool with_grad, T* lse_out, T* o_out) {
  const int64_t Ntot = N + Nq;
  const int64_t Dp = round_up(D, kDV);
  // Packed keys+queue: panels for the logits, rows for P.K. The rows are the keys themselves
  // when they already have that layout (same type, D a multiple of 8, no queue to append).
  Buffer<T> kt(round_up(Ntot, kNR) * D);
  pack_panels<S, T>(k, N, qu, Nq, D, T(1), kt.data());
  const T* krows = direct_rows<S, T>(k, D, Nq);
  Buffer<T> kr(with_grad && krows == nullptr ? Ntot * Dp : 0);
  if (with_grad && krows == nullptr) {
    pack_rows<S, T>(k, N, qu, Nq, D, Dp, kr.data());
    krows = kr.data();
  }

  const int64_t ktiles = ceil_div(Ntot, kBC);
  const int threads = num_threads_for(std::max<int64_t>(num_blocks(M, kBM), 2));
  // Query blocks: a multiple of the thread count (equal blocks, so the threads finish together),
  // and at least 4 tasks per thread, splitting the key range when the blocks alone are fewer.
  const int64_t nb = std::min(round_up(num_blocks(M, kBM), threads), ceil_div(M, kMR));
  int64_t nsplit = 1;
  if (threads > 1 && nb < 4 * threads) nsplit = std::min<int64_t>(ktiles, ceil_div(4 * threads, nb));
  const int64_t ntasks = nb * nsplit;
  // Split partials (only when nsplit > 1): running max, sum and unnormalised o per (split, row).
  Buffer<T> pm(nsplit > 1 ? nsplit * M : 0), pl(nsplit > 1 ? nsplit * M : 0);
  Buffer<T> po(nsplit > 1 && with_grad ? nsplit * M * Dp : 0);

  const int nt = num_threads_for(ntasks);
#pragma omp parallel num_threads(nt)
  {
    std::vector<T> qb(static_cast<size_t>(kBM * D)), sb(static_cast<size_t>(kBM * kBC));
    std::vector<T> ob(with_grad ? static_cast<size_t>(kBM * Dp) : 0), mb(kBM), lb(kBM);
#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < ntasks; ++task) {
      const int64_t blk = task / nsplit, sp = task % nsplit;
      const auto [m0, mv] = block_rows(blk, nb, M);
      const int64_t mp = round_up(mv, kMR);
      const int64_t c_begin = (sp * ktiles / nsplit) * kBC;
      const int64_t c_end = std::min(Ntot, ((sp + 1) * ktiles / nsplit) * kBC);
      pack_block<S, T>(q, m0, mv, mp, D, inv_tau, qb.data());
      std::fill(mb.begin(), mb.end(), neg_inf<T>());
      std::fill(lb.begin(), lb.end(), T(0));
      if (with_grad) std::fill(ob.begin(), ob.end(), T(0));
      for (int64_t c0 = c_begin; c0 < c_end; c0 += kBC) {
        const int64_t nv = std::min(kBC, c_end - c0);
        const int64_t nvp = round_up(nv, kNR);
        Ops::gemm_nt(qb.data(), D, mp, kt.data() + (c0 / kNR) * D * kNR, nvp / kNR, D, sb.data(), kBC);
        Ops::fwd_softmax(sb.data(), kBC, mp, nv, nvp, mb.data(), lb.data(), with_grad ? ob.data() : nullptr, Dp, Dp);
        if (with_grad) Ops::gemm_nn_acc(sb.data(), kBC, mp, nv, krows + c0 * Dp, Dp, Dp, ob.data(), Dp);
      }
      if (nsplit == 1) {
        for (int64_t i = 0; i < mv; ++i) {
          lse_out[m0 + i] = mb[i] + std::log(lb[i]);
          if (with_grad) {
            const T inv = T(1) / lb[i];
            for (int64_t d = 0; d < D; ++d) o_out[(m0 + i) * D + d] = ob[i * Dp + d] * inv;
          }
        }
      } else {
        for (int64_t i = 0; i < mv; ++i) {
          pm[sp * M + m0 + i] = mb[i];
          pl[sp * M + m0 + i] = lb[i];
          if (with_grad) std::copy(ob.data() + i * Dp, ob.data() + (i + 1) * Dp, po.data() + (sp * M + m0 + i) * Dp);
        }
      }
    }
  }
  if (nsplit == 1) return;

  // Merge the key-split partials: m = max_s m_s, l = sum_s l_s e^{m_s - m}, o = sum_s o_s e^{m_s - m} / l.
  const int ntm = num_threads_for(M * Dp * nsplit >= (1 << 14) ? M : 1);
#pragma omp parallel for num_threads(ntm) schedule(static)
  for (int64_t i = 0; i < M; ++i) {
    T mx = neg_inf<T>();
    for (int64_t sp = 0; sp < nsplit; ++sp) {
      const T v = pm[sp * M + i];
      mx = (v > mx || v != v) ? v : mx;
      if (v != v) break;  // a NaN partial makes the row NaN
    }
    T* o = with_grad ? o_out + i * D : nullptr;
    if (o != nullptr) std::fill(o, o + D, mx != mx ? mx : T(0));
    if (mx != mx) {
      lse_out[i] = mx;
      continue;
    }
    if (mx == neg_inf<T>()) {  // no finite logit in the row (only with -inf inputs)
      lse_out[i] = neg_inf<T>();
      continue;
    }
    T l = 0;
    for (int64_t sp = 0; sp < nsplit; ++sp) {
      const T w = std::exp(pm[sp * M + i] - mx);  // 0 for an empty split (-inf)
      if (w == T(0)) continue;
      l += pl[sp * M + i] * w;
      if (o != nullptr) {
        const T* ps = po.data() + (sp * M + i) * Dp;
        for (int64_t d = 0; d < D; ++d) o[d] += ps[d] * w;
      }
    }
    lse_out[i] = mx + std::log(l);
    if (o != nullptr) {
      const T inv = T(1) / l;
      for (int64_t d = 0; d < D; ++d) o[d] *= inv;
    }
  }
}

template <typename S, typename T, typename Ops>
void bwd_impl(const S* q, int64_t M, const S* k, int64_t N, int64_t D, const T* lse, const T* coef, T inv_tau,
              T* dk_out) {
  const int64_t Dp = round_up(D, kDV);
  const int64_t Mp = round_up(M, kNR);
  // Queries as panels scaled by 1/tau (the logits product, as the forward's query blocks) and as
  // unscaled rows (for P.Q; the queries themselves when they have the layout).
  Buffer<T> qt(Mp * D);
  pack_panels<S, T>(q, M, static_cast<const S*>(nullptr), 0, D, inv_tau, qt.data());
  const T* qrows = direct_rows<S, T>(q, D, 0);
  Buffer<T> qr(qrows == nullptr ? M * Dp : 0);
  if (qrows == nullptr) {
    pack_rows<S, T>(q, M, static_cast<const S*>(nullptr), 0, D, Dp, qr.data());
    qrows = qr.data();
  }
  // Per-query lse and coef/tau, zero-padded to the panel multiple (padding gives p = 0).
  std::vector<T> lp(static_cast<size_t>(Mp), T(0)), cf(static_cast<size_t>(Mp), T(0));
  for (int64_t i = 0; i < M; ++i) {
    lp[i] = lse[i];
    cf[i] = coef[i] * inv_tau;
  }

  const int64_t nb = num_blocks(N, kBN);
  const int64_t qtiles = ceil_div(M, kBC);
  const int threads = num_threads_for(std::max<int64_t>(nb, 2));
  int64_t nsplit = 1;
  if (threads > 1 && nb < 2 * threads) nsplit = std::max<int64_t>(1, std::min<int64_t>(qtiles, ceil_div(2 * threads, nb)));
  const int64_t ntasks = nb * nsplit;
  Buffer<T> part(nsplit > 1 ? nsplit * N * Dp : 0);  // [nsplit][N][Dp] partial dk (split query range)

  const int nt = num_threads_for(ntasks);
#pragma omp parallel num_threads(nt)
  {
    std::vector<T> kb(static_cast<size_t>(kBN * D)), sb(static_cast<size_t>(kBN * kBC)), db(static_cast<size_t>(kBN * Dp));
#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < ntasks; ++task) {
      const int64_t blk = task / nsplit, sp = task % nsplit;
      const auto [n0, nv_rows] = block_rows(blk, nb, N);
      const int64_t np = round_up(nv_rows, kMR);
      const int64_t c_begin = (sp * qtiles / nsplit) * kBC;
      const int64_t c_end = std::min(M, ((sp + 1) * qtiles / nsplit) * kBC);
      pack_block<S, T>(k, n0, nv_rows, np, D, T(1), kb.data());
      std::fill(db.begin(), db.end(), T(0));
      for (int64_t c0 = c_begin; c0 < c_end; c0 += kBC) {
        const int64_t nv = std::min(kBC, c_end - c0);
        const int64_t nvp = round_up(nv, kNR);
        Ops::gemm_nt(kb.data(), D, np, qt.data() + (c0 / kNR) * D * kNR, nvp / kNR, D, sb.data(), kBC);
        Ops::bwd_prob(sb.data(), kBC, np, nvp, lp.data() + c0, cf.data() + c0);
        Ops::gemm_nn_acc(sb.data(), kBC, np, nv, qrows + c0 * Dp, Dp, Dp, db.data(), Dp);
      }
      T* dst = nsplit == 1 ? nullptr : part.data() + sp * N * Dp;
      for (int64_t i = 0; i < nv_rows; ++i) {
        if (dst == nullptr)
          std::copy(db.data() + i * Dp, db.data() + i * Dp + D, dk_out + (n0 + i) * D);
        else
          std::copy(db.data() + i * Dp, db.data() + (i + 1) * Dp, dst + (n0 + i) * Dp);
      }
    }
  }
  if (nsplit == 1) return;
  const int ntm = num_threads_for(N * Dp * nsplit >= (1 << 14) ? N : 1);
#pragma omp parallel for num_threads(ntm) schedule(static)
  for (int64_t j = 0; j < N; ++j) {
    T* o = dk_out + j * D;
    for (int64_t d = 0; d < D; ++d) o[d] = part[j * Dp + d];
    for (int64_t sp = 1; sp < nsplit; ++sp) {
      const T* ps = part.data() + (sp * N + j) * Dp;
      for (int64_t d = 0; d < D; ++d) o[d] += ps[d];
    }
  }
}

// Kernel choice: AVX2/FMA micro-kernels for float accumulation when the CPU has them, else the
// portable ones (always for float64).
template <typename S, typename T>
void run_fwd(const S* q, int64_t M, const S* k, int64_t N, const S* qu, int64_t Nq, int64_t D, T inv_tau,
             bool with_grad, T* lse_out, T* o_out) {
#if CTRLAUG_X86_AVX2
  if constexpr (std::is_same_v<T, float>) {
    if (cpu_use_avx2()) return fwd_impl<S, float, Avx2Ops>(q, M, k, N, qu, Nq, D, inv_tau, with_grad, lse_out, o_out);
  }
#endif
  fwd_impl<S, T, PortableOps<T>>(q, M, k, N, qu, Nq, D, inv_tau, with_grad, lse_out, o_out);
}

template <typename S, typename T>
void run_bwd(const S* q, int64_t M, const S* k, int64_t N, int64_t D, const T* lse, const T* coef, T inv_tau,
             T* dk_out) {
#if CTRLAUG_X86_AVX2
  if constexpr (std::is_same_v<T, float>) {
    if (cpu_use_avx2()) return bwd_impl<S, float, Avx2Ops>(q, M, k, N, D, lse, coef, inv_tau, dk_out);
  }
#endif
  bwd_impl<S, T, PortableOps<T>>(q, M, k, N, D, lse, coef, inv_tau, dk_out);
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
    run_fwd<scalar_t, T>(qp, M, kp, N, qup, Nq, D, static_cast<T>(1.0 / tau), with_grad, lp, op_);
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
    run_bwd<scalar_t, T>(qp, M, kp, N, D, lp, cp, static_cast<T>(1.0 / tau), dp);
  });
  return dk;
}

}  // namespace
}  // namespace ctrlaug::cpu

TORCH_LIBRARY_IMPL(ctrlaug, CPU, m) {
  m.impl("region_contrast_fwd", &ctrlaug::cpu::region_contrast_fwd_cpu);
  m.impl("region_contrast_bwd", &ctrlaug::cpu::region_contrast_bwd_cpu);
}
