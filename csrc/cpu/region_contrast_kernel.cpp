// Tiled drivers of the CPU region contrast: the dense part of the loss (paper eq. 3-4,
// docs/design.md §2), fused so that the [M, N] logits matrix is never materialised. Semantics:
// region_contrast_{fwd,bwd}_ref in ctrlaug/ops/reference.py. The tile operations come from one
// instruction-set path (rc_kernels.h); this file packs the operands, splits the work into tasks
// and runs them on torch's OpenMP threads.
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
//     exponents are <= 0, so nothing overflows for any tau or input scale. Key-split partial
//     results (small M) are merged with the same rescaling.
//   * The queries are scaled by 1/tau when packed (rounded once, the same way in both passes), so
//     the logits product yields l directly; on the register paths the backward's recomputed l is
//     bitwise the forward's (same operands, same summation order).
//   * Backward recomputes each logits tile from the saved lse: p = exp(l - lse) * coef / tau.
//
// Tiling (per task)
//   forward : a block of at most kBM = 192 query rows (packed to T, scaled by 1/tau, zero-padded
//             to a multiple of 6) against key tiles of kBC = 128 keys. One tile:
//               S[BM, BC]   = Qblk . K_tile^T
//               online softmax of S rows in place -> P; rescale o rows when the max moved
//               O[BM, D]   += P . K_tile
//             The keys (and queue) are packed once per call: as panels of nr keys stored d-major
//             ([N/nr][D][nr]) for the register paths' logits kernel, and row-major with D padded
//             to the path's dv (for P.K, and for the BLAS path's logits too; the keys themselves,
//             not a copy, when they are already T with D a multiple of dv and there is no queue).
//             Tasks are query blocks (parallel over M), equal in size and a multiple of the
//             thread count; with fewer than 4 blocks per thread the key range is split too and
//             the partial (m, s, o) are merged.
//   backward: the mirror image: a block of kBN = 96 keys (one task; its thread owns those dk
//             rows, no atomics) against query tiles of 128: S^T = Kblk . Q_tile^T, P = exp(...),
//             dK += P . Q_tile. When there are fewer key blocks than 2 x threads, the query range
//             is split and the partial dk are summed.
//   Working set of one forward task at D=128: Qblk 96 KiB + S 96 KiB + O 96 KiB + one key tile
//   (2 x 64 KiB), sized for a 1 MiB L2 per core; 192-row forward blocks halve the key streaming
//   per FLOP against 96 (each task reads all packed keys once). Measurements behind these
//   choices: bench/RESULTS.md.

#include "region_contrast_kernel.h"

#include <ATen/ATen.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <type_traits>
#include <utility>
#include <vector>

#include "cpu_utils.h"

namespace ctrlaug::cpu::rc {
namespace {

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

// The logical row r of a packed operand is a[r] for r < na, b[r - na] for r < na + nb (the queue
// follows the keys), and zero beyond.
template <typename S>
inline const S* logical_row(const S* a, int64_t na, const S* b, int64_t r, int64_t D) {
  return r < na ? a + r * D : b + (r - na) * D;
}

// Panels of nr rows stored d-major: out[p][d][j] = row(nr*p + j)[d] * scale.
template <typename S, typename T>
void pack_panels(const S* a, int64_t na, const S* b, int64_t nb, int64_t D, int64_t nr, T scale, T* out) {
  const int64_t n = na + nb;
  const int64_t npan = ceil_div(n, nr);
  const int nt = num_threads_for(n * D >= (1 << 16) ? npan : 1);
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t p = 0; p < npan; ++p) {
    T* o = out + p * D * nr;
    for (int64_t j = 0; j < nr; ++j) {
      const int64_t r = p * nr + j;
      if (r < n) {
        const S* src = logical_row(a, na, b, r, D);
        for (int64_t d = 0; d < D; ++d) o[d * nr + j] = static_cast<T>(src[d]) * scale;
      } else {
        for (int64_t d = 0; d < D; ++d) o[d * nr + j] = T(0);
      }
    }
  }
}

// Row-major copy times scale, the row stride padded to Dp (padding zero).
template <typename S, typename T>
void pack_rows(const S* a, int64_t na, const S* b, int64_t nb, int64_t D, int64_t Dp, T scale, T* out) {
  const int64_t n = na + nb;
  const int nt = num_threads_for(n * D >= (1 << 16) ? n : 1);
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t r = 0; r < n; ++r) {
    const S* src = logical_row(a, na, b, r, D);
    T* o = out + r * Dp;
    for (int64_t d = 0; d < D; ++d) o[d] = static_cast<T>(src[d]) * scale;
    for (int64_t d = D; d < Dp; ++d) o[d] = T(0);
  }
}

// Rows [r0, r0 + n) of src, times scale, into a zero-padded [rows_p][D] block. The product is
// rounded exactly as in pack_panels and pack_rows, so a query scaled here (forward) and there
// (backward) is the same float.
template <typename S, typename T>
void pack_block(const S* src, int64_t r0, int64_t n, int64_t rows_p, int64_t D, T scale, T* out) {
  for (int64_t i = 0; i < n; ++i) {
    const S* s = src + (r0 + i) * D;
    T* o = out + i * D;
    for (int64_t d = 0; d < D; ++d) o[d] = static_cast<T>(s[d]) * scale;
  }
  std::fill(out + n * D, out + rows_p * D, T(0));
}

// The rows themselves when they can serve as the row-major operand directly: same type as the
// accumulation, no row padding (D == Dp), and no second segment (queue) to append; else null.
template <typename S, typename T>
const T* direct_rows(const S* a, int64_t D, int64_t Dp, int64_t n_second) {
  if constexpr (std::is_same_v<S, T>) {
    if (D == Dp && n_second == 0) return a;
  }
  return nullptr;
}

// Row blocks of at most `bmax` rows (a multiple of kMR) covering n rows, as even as the kMR
// granularity allows, so that equal tasks keep the threads finishing together.
inline int64_t num_blocks(int64_t n, int64_t bmax) { return ceil_div(ceil_div(n, kMR), bmax / kMR); }

inline std::pair<int64_t, int64_t> block_rows(int64_t blk, int64_t nb, int64_t n) {
  const int64_t units = ceil_div(n, kMR);
  const int64_t r0 = (blk * units / nb) * kMR;
  const int64_t r1 = std::min(n, ((blk + 1) * units / nb) * kMR);
  return {r0, r1 - r0};
}

}  // namespace

template <typename S, typename T>
void forward(const RcKernels<T>& kern, const S* q, int64_t M, const S* k, int64_t N, const S* qu, int64_t Nq,
             int64_t D, T inv_tau, bool with_grad, T* lse_out, T* o_out) {
  const int64_t Ntot = N + Nq;
  const int64_t nr = kern.nr;
  const int64_t Dp = round_up(D, kern.dv);
  // Packed keys+queue: panels for a register path's logits, rows for P.K (and the BLAS logits).
  Buffer<T> kt(kern.panels ? round_up(Ntot, nr) * D : 0);
  if (kern.panels) pack_panels<S, T>(k, N, qu, Nq, D, nr, T(1), kt.data());
  const bool need_rows = with_grad || !kern.panels;
  const T* krows = direct_rows<S, T>(k, D, Dp, Nq);
  Buffer<T> kr(need_rows && krows == nullptr ? Ntot * Dp : 0);
  if (need_rows && krows == nullptr) {
    pack_rows<S, T>(k, N, qu, Nq, D, Dp, T(1), kr.data());
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
        const int64_t nvp = round_up(nv, nr);
        if (kern.panels)
          kern.gemm_nt(qb.data(), D, mp, kt.data() + (c0 / nr) * D * nr, 0, nvp, D, sb.data(), kBC);
        else
          kern.gemm_nt(qb.data(), D, mp, krows + c0 * Dp, Dp, nv, D, sb.data(), kBC);
        kern.fwd_softmax(sb.data(), kBC, mp, nv, nvp, mb.data(), lb.data(), with_grad ? ob.data() : nullptr, Dp, Dp);
        if (with_grad) kern.gemm_nn_acc(sb.data(), kBC, mp, nv, krows + c0 * Dp, Dp, Dp, ob.data(), Dp);
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

template <typename S, typename T>
void backward(const RcKernels<T>& kern, const S* q, int64_t M, const S* k, int64_t N, int64_t D, const T* lse,
              const T* coef, T inv_tau, T* dk_out) {
  const int64_t nr = kern.nr;
  const int64_t Dp = round_up(D, kern.dv);
  const int64_t Mp = round_up(M, nr);
  // Queries scaled by 1/tau for the logits product (as the forward's query blocks): panels on a
  // register path, rows on the BLAS path; and unscaled rows for P.Q (the queries themselves when
  // they have the layout).
  Buffer<T> qt(kern.panels ? Mp * D : M * Dp);
  if (kern.panels)
    pack_panels<S, T>(q, M, static_cast<const S*>(nullptr), 0, D, nr, inv_tau, qt.data());
  else
    pack_rows<S, T>(q, M, static_cast<const S*>(nullptr), 0, D, Dp, inv_tau, qt.data());
  const T* qrows = direct_rows<S, T>(q, D, Dp, 0);
  Buffer<T> qr(qrows == nullptr ? M * Dp : 0);
  if (qrows == nullptr) {
    pack_rows<S, T>(q, M, static_cast<const S*>(nullptr), 0, D, Dp, T(1), qr.data());
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
        const int64_t nvp = round_up(nv, nr);
        if (kern.panels)
          kern.gemm_nt(kb.data(), D, np, qt.data() + (c0 / nr) * D * nr, 0, nvp, D, sb.data(), kBC);
        else
          kern.gemm_nt(kb.data(), D, np, qt.data() + c0 * Dp, Dp, nv, D, sb.data(), kBC);
        kern.bwd_prob(sb.data(), kBC, np, nvp, lp.data() + c0, cf.data() + c0);
        kern.gemm_nn_acc(sb.data(), kBC, np, nv, qrows + c0 * Dp, Dp, Dp, db.data(), Dp);
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

#define CTRLAUG_RC_INSTANTIATE(S, T)                                                                              \
  template void forward<S, T>(const RcKernels<T>&, const S*, int64_t, const S*, int64_t, const S*, int64_t, int64_t, \
                              T, bool, T*, T*);                                                                   \
  template void backward<S, T>(const RcKernels<T>&, const S*, int64_t, const S*, int64_t, int64_t, const T*,      \
                               const T*, T, T*);
CTRLAUG_RC_INSTANTIATE(float, float)
CTRLAUG_RC_INSTANTIATE(c10::BFloat16, float)
CTRLAUG_RC_INSTANTIATE(c10::Half, float)
CTRLAUG_RC_INSTANTIATE(double, double)
#undef CTRLAUG_RC_INSTANTIATE

}  // namespace ctrlaug::cpu::rc
