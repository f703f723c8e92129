// The SIMD micro-kernels of the CPU region contrast, written once over a vector-primitive struct V
// and compiled once per instruction set. Not a normal header: csrc/cpu/rc_avx2.cpp and
// rc_avx512.cpp each include it inside their own namespace, after `#pragma GCC target(...)` and
// after defining V, so every function here is compiled for that ISA only (and, being in an
// ISA-specific namespace, can never be merged with another ISA's copy by the linker). No #include
// here: everything it uses is included by the .cpp before the pragma.
//
// V provides: reg (a vector of W floats), mask (per-lane flags), W, and
//   load/store (unaligned), set1, zero, bcast (broadcast one float from memory), fma(a, b, c) =
//   a*b + c, add, sub, mul, max (returns the 2nd operand when either is NaN, like maxps),
//   exp (see below), hmax/hsum (horizontal), nan_lanes (lanes that are NaN), mask_or, any.
//   exp: Cody-Waite reduction x = n ln2 + r, |r| <= ln2/2, degree-7 Taylor polynomial (truncation
//   < 6e-9 relative), scaled by 2^n through the exponent bits; about 1-2 ulp, 0 below -87.3 (exp
//   underflow), NaN propagates.
//
// Register blocks: the logits kernel keeps kMR = 6 rows x 2 vectors (NR = 2W keys) of
// accumulators; per d it loads the panel's two vectors and broadcasts one value of each row (8
// loads per 12 FMAs). The P.B kernel keeps 6 rows x 2 vectors of output columns, per key c it
// loads B's two vectors and broadcasts P[row][c]. Both use 12 accumulator registers of the 16
// (AVX2) or 32 (AVX-512) vector registers.

constexpr int64_t NR = 2 * V::W;  // keys per packed panel / per logits register block
constexpr int64_t DV = V::W;      // the row-major copies' D is padded to a multiple of this

// 6 x NV*W block of O += P . B over K: acc in registers, P broadcast, B rows loaded as vectors.
template <int NV>
inline void nn_block(const float* P, int64_t ldp, int64_t K, const float* B, int64_t ldb, float* O, int64_t ldo) {
  typename V::reg acc[kMR][NV];
#pragma GCC unroll 6
  for (int i = 0; i < kMR; ++i)
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v) acc[i][v] = V::load(O + i * ldo + V::W * v);
  const float* p0 = P;
  const float* p1 = P + ldp;
  const float* p2 = P + 2 * ldp;
  const float* p3 = P + 3 * ldp;
  const float* p4 = P + 4 * ldp;
  const float* p5 = P + 5 * ldp;
  for (int64_t c = 0; c < K; ++c) {
    typename V::reg b[NV];
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v) b[v] = V::load(B + c * ldb + V::W * v);
    typename V::reg a;
#define CTRLAUG_ROW(I, PI)   \
  a = V::bcast(PI + c);      \
  _Pragma("GCC unroll 2") for (int v = 0; v < NV; ++v) acc[I][v] = V::fma(a, b[v], acc[I][v]);
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
    for (int v = 0; v < NV; ++v) V::store(O + i * ldo + V::W * v, acc[i][v]);
}

// 6 x NR block of C (=, or += when accumulate) A[6 rows, 0..dlen) . B panel[0..dlen)[NR].
inline void nt_block(const float* A, int64_t lda, const float* B, int64_t dlen, float* C, int64_t ldc,
                     bool accumulate) {
  typename V::reg acc[kMR][2];
#pragma GCC unroll 6
  for (int i = 0; i < kMR; ++i) acc[i][0] = acc[i][1] = V::zero();
  const float* a0 = A;
  const float* a1 = A + lda;
  const float* a2 = A + 2 * lda;
  const float* a3 = A + 3 * lda;
  const float* a4 = A + 4 * lda;
  const float* a5 = A + 5 * lda;
  for (int64_t d = 0; d < dlen; ++d, B += NR) {
    const typename V::reg b0 = V::load(B);
    const typename V::reg b1 = V::load(B + V::W);
    typename V::reg x;
#define CTRLAUG_ROW(I, AI)                  \
  x = V::bcast(AI + d);                     \
  acc[I][0] = V::fma(x, b0, acc[I][0]);     \
  acc[I][1] = V::fma(x, b1, acc[I][1]);
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
      acc[i][0] = V::add(acc[i][0], V::load(c));
      acc[i][1] = V::add(acc[i][1], V::load(c + V::W));
    }
    V::store(c, acc[i][0]);
    V::store(c + V::W, acc[i][1]);
  }
}

void gemm_nt(const float* A, int64_t lda, int64_t rows, const float* Bt, int64_t /*ldb*/, int64_t ncols, int64_t D,
             float* C, int64_t ldc) {
  for (int64_t p = 0; p < ncols / NR; ++p) {
    const float* B = Bt + p * D * NR;
    for (int64_t r0 = 0; r0 < rows; r0 += kMR) {
      // Blocked summation over D (see kDC): chunk sums are added into C.
      for (int64_t d0 = 0; d0 < D; d0 += kDC)
        nt_block(A + r0 * lda + d0, lda, B + d0 * NR, std::min(kDC, D - d0), C + r0 * ldc + p * NR, ldc, d0 > 0);
      if (D == 0) nt_block(A, lda, B, 0, C + r0 * ldc + p * NR, ldc, false);
    }
  }
}

void gemm_nn_acc(const float* P, int64_t ldp, int64_t rows, int64_t K, const float* B, int64_t ldb, int64_t Dp,
                 float* O, int64_t ldo) {
  int64_t d0 = 0;
  for (; d0 + 2 * V::W <= Dp; d0 += 2 * V::W)
    for (int64_t r0 = 0; r0 < rows; r0 += kMR) nn_block<2>(P + r0 * ldp, ldp, K, B + d0, ldb, O + r0 * ldo + d0, ldo);
  if (d0 < Dp)  // Dp is a multiple of W: one W-wide column strip left
    for (int64_t r0 = 0; r0 < rows; r0 += kMR) nn_block<1>(P + r0 * ldp, ldp, K, B + d0, ldb, O + r0 * ldo + d0, ldo);
}

void fwd_softmax(float* S, int64_t ldS, int64_t rows, int64_t nv, int64_t nvp, float* m, float* l, float* O,
                 int64_t ldo, int64_t Dp) {
  for (int64_t r = 0; r < rows; ++r) {
    float* s = S + r * ldS;
    typename V::reg vmax = V::set1(neg_inf<float>());
    typename V::mask nan = V::no_lanes();  // max() does not keep NaN, so it is tracked on the side
    for (int64_t c = 0; c < nvp; c += V::W) {
      const typename V::reg x = V::load(s + c);
      vmax = V::max(vmax, x);
      nan = V::mask_or(nan, V::nan_lanes(x));
    }
    float mx;
    if (nv < nvp) {  // last tile: mask the padding before taking the max
      for (int64_t c = nv; c < nvp; ++c) s[c] = neg_inf<float>();
      mx = neg_inf<float>();
      for (int64_t c = 0; c < nv; ++c) mx = s[c] > mx ? s[c] : mx;
    } else {
      mx = V::hmax(vmax);
    }
    // NaN logits (the padding is 0 when loaded above, never NaN) give NaN lse and o.
    if (V::any(nan)) mx = std::numeric_limits<float>::quiet_NaN();
    const float m_old = m[r];
    const float m_new = (mx > m_old || mx != mx) ? mx : m_old;
    if (m_new == neg_inf<float>()) {
      for (int64_t c = 0; c < nvp; ++c) s[c] = 0.0f;
      continue;
    }
    const typename V::reg vm = V::set1(m_new);
    typename V::reg vsum = V::zero();
    for (int64_t c = 0; c < nvp; c += V::W) {
      const typename V::reg p = V::exp(V::sub(V::load(s + c), vm));
      V::store(s + c, p);
      vsum = V::add(vsum, p);
    }
    const float alpha = std::exp(m_old - m_new);
    l[r] = l[r] * alpha + V::hsum(vsum);
    m[r] = m_new;
    if (O != nullptr && alpha != 1.0f) {
      float* o = O + r * ldo;
      const typename V::reg va = V::set1(alpha);
      for (int64_t d = 0; d < Dp; d += V::W) V::store(o + d, V::mul(V::load(o + d), va));
    }
  }
}

// The logits in S come from the same product of the same packed operands as in the forward, so
// they are bitwise the forward's: l - lse is exactly -log(sum) for a row's max logit (p = 1 for
// a dominant key even at |l| ~ 1e5).
void bwd_prob(float* S, int64_t ldS, int64_t rows, int64_t nvp, const float* lse, const float* cf) {
  for (int64_t r = 0; r < rows; ++r) {
    float* s = S + r * ldS;
    for (int64_t c = 0; c < nvp; c += V::W) {
      const typename V::reg x = V::sub(V::load(s + c), V::load(lse + c));
      V::store(s + c, V::mul(V::exp(x), V::load(cf + c)));
    }
  }
}
