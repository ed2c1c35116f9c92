// The kernels' math, free of any core: dense helpers (dot, axpy, gemv), a vectorisable exp and
// log, and the addressing primitives of addressing.py with their backward passes (content,
// shift, read, write, and the DNC's usage, allocation, precedence and link). Each is checked on
// its own against addressing.py and autograd through testing_api.cpp.

#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <numeric>
#include <vector>

#define RESTRICT __restrict__
// The element-wise math below must inline into the `omp simd` loops that call it, or those loops
// stop vectorising: GCC stopped inlining vexp once this file grew (a 1.8x slower forward pass).
#define SCALAR_MATH inline __attribute__((always_inline))
// The opposite, for the DNC's N x N primitives: inlined into a core's step, their loops ran out of
// registers and reloaded their pointers from the stack at every vector (a 35% slower DNC).
#define OUT_OF_LINE __attribute__((noinline))

namespace {

constexpr double kUsageEps = 1e-6;     // addressing.USAGE_EPS
constexpr double kCosineEps = 1e-6;    // addressing.cosine_similarity
constexpr double kSharpenEps = 1e-12;  // addressing.sharpen
constexpr double kSoftplusThreshold = 20.0;  // torch.nn.functional.softplus default

// ----------------------------------------------------------------------------------------------
// Sums in a fixed order. The library is built for several instruction sets (baseline x86-64,
// AVX2, AVX-512), and all must give the same bits: a rollout on one machine is replayed on
// another, and a sparse core's choice of slots follows the last bit of its logits. An
// `omp simd reduction` lets the compiler keep as many partial sums as its vector registers hold,
// so the rounding followed the vector width. Here a sum keeps kSumLanes partial sums, lane l
// adding terms l, l + kSumLanes, l + 2 kSumLanes, ... in turn, and combines them by a fixed
// pairwise tree. Each lane's loop still vectorises (64 bytes of lanes: one AVX-512 register, two
// AVX2 or four SSE ones), and the order is the same whatever the width. With -ffp-contract=off
// (native.py) no multiply-add is fused either, so FMA units do not change the rounding.

template <typename F>
constexpr int64_t kSumLanes = 64 / sizeof(F);

// sum_i term(i) for i in [0, n). term may also write element i of other arrays (a fused loop):
// each i is visited exactly once, so its writes are those of a plain loop. The last n mod
// kSumLanes terms are added one by one, after the lanes' tree: a variable-length vector loop
// into the lanes would leave them in memory, a store-to-load stall per sum (2-3x slower at W=20).
template <typename F, typename Term>
SCALAR_MATH F ordered_sum(int64_t n, Term term) {
  constexpr int64_t lanes = kSumLanes<F>;
  F acc[lanes];
  for (int64_t l = 0; l < lanes; ++l) acc[l] = F(0);
  int64_t i = 0;
  for (; i + lanes <= n; i += lanes) {
#pragma omp simd
    for (int64_t l = 0; l < lanes; ++l) acc[l] += term(i + l);
  }
  for (int64_t width = lanes / 2; width > 0; width /= 2) {
#pragma omp simd
    for (int64_t l = 0; l < width; ++l) acc[l] += acc[l + width];
  }
  F sum = acc[0];
  for (; i < n; ++i) sum += term(i);
  return sum;
}

// ----------------------------------------------------------------------------------------------
// Small dense helpers.

template <typename F>
SCALAR_MATH F dot(const F* RESTRICT a, const F* RESTRICT b, int64_t n) {
  return ordered_sum<F>(n, [a, b](int64_t i) { return a[i] * b[i]; });
}

template <typename F>
inline void axpy(F* RESTRICT y, const F* RESTRICT x, F a, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) y[i] += a * x[i];
}

// y += A x for A (rows, cols), given A^T (cols, rows) row-major: column updates on a block of y
// held in registers, instead of one short dot product (and horizontal reduction) per row. With
// A^T = W this is y += W^T x, the backward pass's product, from PyTorch's weight layout.
// The block follows the vector width (how many accumulators fit in registers), but each y[i] is
// still y[i] + w_i0 x_0 + w_i1 x_1 + ... in column order, so its bits do not depend on it.
#if defined(__AVX512F__)
constexpr int64_t kVectorBytes = 64;
#elif defined(__AVX__)
constexpr int64_t kVectorBytes = 32;
#else
constexpr int64_t kVectorBytes = 16;
#endif

// y[i0, i0 + size) += A x over one block of rows whose accumulators stay in registers; size <= kMax.
// The masked form (size < kMax) reads no element past the block, so no column is overrun.
template <typename F, int64_t kMax, bool kFull>
inline void gemv_block(F* RESTRICT y, const F* RESTRICT wt, const F* RESTRICT x, int64_t rows, int64_t cols,
                       int64_t i0, int64_t size) {
  F acc[kMax];
#pragma omp simd
  for (int64_t k = 0; k < kMax; ++k) acc[k] = (kFull || k < size) ? y[i0 + k] : F(0);
  for (int64_t j = 0; j < cols; ++j) {
    const F xj = x[j];
    const F* RESTRICT column = wt + j * rows + i0;
#pragma omp simd
    for (int64_t k = 0; k < kMax; ++k) acc[k] += ((kFull || k < size) ? column[k] : F(0)) * xj;
  }
  for (int64_t k = 0; k < (kFull ? kMax : size); ++k) y[i0 + k] = acc[k];
}

template <typename F>
inline void gemv_cols(F* RESTRICT y, const F* RESTRICT wt, const F* RESTRICT x, int64_t rows, int64_t cols) {
  // Up to eight independent accumulator registers hide the fused multiply-add latency.
  constexpr int64_t kBlock = 4 * kVectorBytes / sizeof(F);
  int64_t i0 = 0;
  for (; i0 + 2 * kBlock <= rows; i0 += 2 * kBlock) gemv_block<F, 2 * kBlock, true>(y, wt, x, rows, cols, i0, 2 * kBlock);
  for (; i0 + kBlock <= rows; i0 += kBlock) gemv_block<F, kBlock, true>(y, wt, x, rows, cols, i0, kBlock);
  if (i0 < rows) gemv_block<F, kBlock, false>(y, wt, x, rows, cols, i0, rows - i0);
}

// In tiles: element by element, the writes' stride (a power of two for the gate matrices) maps
// them to a few cache sets, and the transposes took most of a one-step (rollout) forward call.
template <typename F>
void transpose(const F* RESTRICT w, int64_t rows, int64_t cols, std::vector<F>& out) {
  constexpr int64_t kTile = 16;
  out.resize(rows * cols);
  F* RESTRICT t = out.data();
  for (int64_t i0 = 0; i0 < rows; i0 += kTile) {
    const int64_t i1 = std::min(i0 + kTile, rows);
    for (int64_t j0 = 0; j0 < cols; j0 += kTile) {
      const int64_t j1 = std::min(j0 + kTile, cols);
      for (int64_t j = j0; j < j1; ++j)
        for (int64_t i = i0; i < i1; ++i) t[j * rows + i] = w[i * cols + j];
    }
  }
}

// ----------------------------------------------------------------------------------------------
// exp and log that the compiler can vectorise (libm's are opaque scalar calls, and were most of
// the forward pass). Range reduction plus polynomial, accurate to a few ulp in float and double;
// NaN propagates, so non-finite values are still caught.

template <typename F>
struct FloatBits;
template <>
struct FloatBits<float> {
  using Int = int32_t;
  static constexpr int mantissa = 23, bias = 127;
  static constexpr int exp_terms = 7, log_terms = 6;
  static constexpr float exp_max = 88.0f, exp_min = -87.0f;
};
template <>
struct FloatBits<double> {
  using Int = int64_t;
  static constexpr int mantissa = 52, bias = 1023;
  static constexpr int exp_terms = 13, log_terms = 12;
  static constexpr double exp_max = 708.0, exp_min = -708.0;
};

template <typename F>
SCALAR_MATH F from_bits(typename FloatBits<F>::Int bits) {
  F value;
  std::memcpy(&value, &bits, sizeof(F));
  return value;
}

template <typename F>
SCALAR_MATH typename FloatBits<F>::Int to_bits(F value) {
  typename FloatBits<F>::Int bits;
  std::memcpy(&bits, &value, sizeof(F));
  return bits;
}

// 1/k!, for the Taylor series of exp
constexpr double kInverseFactorials[] = {1.0,
                                         1.0,
                                         1.0 / 2,
                                         1.0 / 6,
                                         1.0 / 24,
                                         1.0 / 120,
                                         1.0 / 720,
                                         1.0 / 5040,
                                         1.0 / 40320,
                                         1.0 / 362880,
                                         1.0 / 3628800,
                                         1.0 / 39916800,
                                         1.0 / 479001600,
                                         1.0 / 6227020800};

template <typename F>
SCALAR_MATH F vexp(F x) {
  using B = FloatBits<F>;
  // Clamped with comparisons that send NaN to exp_min: a NaN reaching the integer conversion
  // below would be undefined behaviour (UBSan); the NaN itself is returned at the end.
  F xc = x > F(B::exp_min) ? x : F(B::exp_min);
  xc = xc < F(B::exp_max) ? xc : F(B::exp_max);
  // x = n ln2 + r, |r| <= ln2 / 2, with ln2 split in two so that n ln2 is exact (Cody and Waite).
  // Adding and subtracting 1.5 * 2^mantissa rounds to an integer (floor does not vectorise).
  const F magic = F(1.5) * from_bits<F>(typename B::Int(B::bias + B::mantissa) << B::mantissa);
  const F n = (xc * F(1.4426950408889634) + magic) - magic;
  const F r = (xc - n * F(0.693145751953125)) - n * F(1.4286068203094172e-06);
  F p = F(kInverseFactorials[B::exp_terms]);
#pragma GCC unroll 16
  for (int k = B::exp_terms - 1; k >= 0; --k) p = F(kInverseFactorials[k]) + p * r;
  const F scale = from_bits<F>((typename B::Int(n) + B::bias) << B::mantissa);
  F result = p * scale;
  result = x > F(B::exp_max) ? std::numeric_limits<F>::infinity() : result;
  result = x < F(B::exp_min) ? F(0) : result;
  return x != x ? x : result;
}

// Natural log of a positive number.
template <typename F>
SCALAR_MATH F vlog(F x) {
  using B = FloatBits<F>;
  using Int = typename B::Int;
  const Int bits = to_bits(x);
  const Int mantissa_mask = (Int(1) << B::mantissa) - 1;
  Int exponent = ((bits >> B::mantissa) & Int(2 * B::bias + 1)) - B::bias;
  F m = from_bits<F>((bits & mantissa_mask) | (Int(B::bias) << B::mantissa));  // in [1, 2)
  // Selects of constants only: a conditional multiply would keep the loop from vectorising.
  const bool high = m > F(1.4142135623730951);
  m *= high ? F(0.5) : F(1);
  exponent += Int(high);
  // log m = 2 atanh(s), s = (m - 1) / (m + 1), |s| <= 0.172
  const F s = (m - F(1)) / (m + F(1));
  const F s2 = s * s;
  F series = F(0);
#pragma GCC unroll 16
  for (int k = B::log_terms - 1; k >= 0; --k) series = F(1) / F(2 * k + 1) + s2 * series;
  const F e = F(exponent);
  F result = e * F(0.693145751953125) + (e * F(1.4286068203094172e-06) + F(2) * s * series);
  result = x == std::numeric_limits<F>::infinity() ? x : result;
  result = x == F(0) ? -std::numeric_limits<F>::infinity() : result;
  result = x < F(0) ? std::numeric_limits<F>::quiet_NaN() : result;
  return x != x ? x : result;
}

template <typename F>
SCALAR_MATH F sigmoid(F x) {
  return F(1) / (F(1) + vexp(-x));
}

template <typename F>
SCALAR_MATH F vtanh(F x) {
  const F e = vexp(F(-2) * std::abs(x));
  const F t = (F(1) - e) / (F(1) + e);
  return x < F(0) ? -t : (x != x ? x : t);
}

template <typename F>
SCALAR_MATH F softplus(F x) {
  return x > F(kSoftplusThreshold) ? x : vlog(F(1) + vexp(x));
}

template <typename F>
SCALAR_MATH F softplus_grad(F x) {
  if (x > F(kSoftplusThreshold)) return F(1);
  const F z = vexp(x);
  return z / (z + F(1));
}

// torch.lerp's formula (exact at both ends)
template <typename F>
SCALAR_MATH F lerp(F start, F end, F weight) {
  return weight < F(0.5) ? start + weight * (end - start) : end - (end - start) * (F(1) - weight);
}

template <typename F>
inline void softmax(F* y, const F* x, int64_t n) {
  F m = x[0];
  bool nan = false;
  for (int64_t i = 1; i < n; ++i) {
    m = std::max(m, x[i]);
    nan |= x[i] != x[i];
  }
  if (nan || x[0] != x[0]) m = std::numeric_limits<F>::quiet_NaN();
  // The exponentials in a loop of their own: inside ordered_sum's term they stopped vectorising.
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) y[i] = vexp(x[i] - m);
  const F inv = F(1) / ordered_sum<F>(n, [y](int64_t i) { return y[i]; });
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) y[i] *= inv;
}

// dx = y * (dy - <dy, y>), written (not accumulated)
template <typename F>
inline void softmax_backward(F* dx, const F* y, const F* dy, int64_t n) {
  const F s = dot(dy, y, n);
  for (int64_t i = 0; i < n; ++i) dx[i] = y[i] * (dy[i] - s);
}

template <typename F>
inline void row_norms(F* norms, const F* m, int64_t rows, int64_t cols) {
  for (int64_t i = 0; i < rows; ++i) norms[i] = std::sqrt(dot(m + i * cols, m + i * cols, cols));
}

// Content addressing, addressing.content_weights: wc = softmax(beta * cos(key, M_n)).
template <typename F>
inline void content_forward(const F* mem, const F* mnorm, const F* key, F beta, int64_t n, int64_t w, F* knorm,
                            F* cos, F* wc) {
  const F kn = std::sqrt(dot(key, key, w));
  *knorm = kn;
  for (int64_t i = 0; i < n; ++i) {
    cos[i] = dot(key, mem + i * w, w) / (kn * mnorm[i] + F(kCosineEps));
    wc[i] = beta * cos[i];
  }
  softmax(wc, wc, n);
}

// content_forward with the rows where skip is set left out of the softmax (weight 0, a logit of
// -inf: addressing.count_unwritten_once), for the sparse cores' K chosen rows. Kept apart so the
// dense cores' content_forward, in their hot loop, stays as small as it was.
template <typename F>
void content_forward_skipping(const F* mem, const F* mnorm, const F* key, F beta, int64_t n, int64_t w, F* knorm,
                              F* cos, F* wc, const uint8_t* skip) {
  const F kn = std::sqrt(dot(key, key, w));
  *knorm = kn;
  F m = -std::numeric_limits<F>::infinity(), s = 0;
  bool nan = false;
  for (int64_t i = 0; i < n; ++i) {
    cos[i] = dot(key, mem + i * w, w) / (kn * mnorm[i] + F(kCosineEps));
    wc[i] = beta * cos[i];
    if (!skip[i]) {
      m = std::max(m, wc[i]);
      nan |= wc[i] != wc[i];
    }
  }
  if (nan) m = std::numeric_limits<F>::quiet_NaN();  // as softmax: a NaN logit makes every weight NaN
  for (int64_t i = 0; i < n; ++i) {
    wc[i] = skip[i] ? F(0) : vexp(wc[i] - m);
    s += wc[i];
  }
  const F inv = F(1) / s;
  for (int64_t i = 0; i < n; ++i) wc[i] *= inv;
}

// Accumulates into dmem, dmnorm (applied later by apply_norm_grad), dkey and dbeta.
template <typename F>
inline void content_backward(const F* mem, const F* mnorm, const F* key, F knorm, F beta, const F* cos, const F* wc,
                             const F* dwc, int64_t n, int64_t w, F* dmem, F* dmnorm, F* dkey, F* dbeta) {
  const F s = dot(dwc, wc, n);
  F db = 0, dkn = 0;
  for (int64_t i = 0; i < n; ++i) {
    const F dlogit = wc[i] * (dwc[i] - s);
    db += dlogit * cos[i];
    const F dcos = dlogit * beta;
    const F den = knorm * mnorm[i] + F(kCosineEps);
    const F ddot = dcos / den;
    const F dden = -dcos * cos[i] / den;
    dkn += dden * mnorm[i];
    dmnorm[i] += dden * knorm;
    axpy(dkey, mem + i * w, ddot, w);
    axpy(dmem + i * w, key, ddot, w);
  }
  *dbeta += db;
  if (knorm > F(0)) axpy(dkey, key, dkn / knorm, w);
}

// d|m_i| -> dm_i (the gradient of a zero norm is zero, as in PyTorch)
template <typename F>
inline void apply_norm_grad(F* dmem, const F* mem, const F* mnorm, const F* dmnorm, int64_t n, int64_t w) {
  for (int64_t i = 0; i < n; ++i)
    if (mnorm[i] > F(0)) axpy(dmem + i * w, mem + i * w, dmnorm[i] / mnorm[i], w);
}

// addressing.circular_shift: out[i] = sum_o w[(i - (o - k)) mod n] * shift[o]. Each offset is two
// contiguous segments, so there is no modulo per element.
template <typename F>
inline void shift_forward(const F* RESTRICT wg, const F* RESTRICT shift, int64_t n, int64_t size, F* RESTRICT out) {
  const int64_t k = (size - 1) / 2;
  std::fill(out, out + n, F(0));
  for (int64_t o = 0; o < size; ++o) {
    const int64_t d = (((o - k) % n) + n) % n;
    const F s = shift[o];
    axpy(out, wg + n - d, s, d);
    axpy(out + d, wg, s, n - d);
  }
}

template <typename F>
inline void shift_backward(const F* RESTRICT wg, const F* RESTRICT shift, const F* RESTRICT dout, int64_t n,
                           int64_t size, F* RESTRICT dwg, F* RESTRICT dshift) {
  const int64_t k = (size - 1) / 2;
  std::fill(dwg, dwg + n, F(0));
  for (int64_t o = 0; o < size; ++o) {
    const int64_t d = (((o - k) % n) + n) % n;
    dshift[o] += dot(dout, wg + n - d, d) + dot(dout + d, wg, n - d);
    axpy(dwg + n - d, dout, shift[o], d);
    axpy(dwg, dout + d, shift[o], n - d);
  }
}

// addressing.read: r_h = sum_i w_h[i] M_i for each head; weights (heads, N), mem (N, W), reads (heads, W).
template <typename F>
inline void read_forward(const F* RESTRICT mem, const F* RESTRICT weights, int64_t heads, int64_t n, int64_t w,
                         F* RESTRICT reads) {
  std::fill(reads, reads + heads * w, F(0));
  for (int64_t h = 0; h < heads; ++h)
    for (int64_t i = 0; i < n; ++i) axpy(reads + h * w, mem + i * w, weights[h * n + i], w);
}

// Its backward, r_h linear in both: dL/dw_h[i] = dL/dr_h . M_i and dL/dM_i = sum_h w_h[i] dL/dr_h
// (both added into the outputs).
template <typename F>
inline void read_backward(const F* RESTRICT mem, const F* RESTRICT weights, const F* RESTRICT dreads, int64_t heads,
                          int64_t n, int64_t w, F* RESTRICT dmem, F* RESTRICT dweights) {
  for (int64_t h = 0; h < heads; ++h)
    for (int64_t i = 0; i < n; ++i) {
      dweights[h * n + i] += dot(dreads + h * w, mem + i * w, w);
      axpy(dmem + i * w, dreads + h * w, weights[h * n + i], w);
    }
}

// addressing.write: M' = M * prod_h (1 - w_h e_h^T) + sum_h w_h a_h^T; ww (heads, N), erase and add
// (heads, W). The NTM writes with Hw heads, the DNC with one.
template <typename F>
void write_forward(const F* RESTRICT mem, const F* RESTRICT ww, const F* RESTRICT erase, const F* RESTRICT add,
                   int64_t heads, int64_t n, int64_t w, F* RESTRICT out) {
  for (int64_t i = 0; i < n; ++i) {
    F* RESTRICT o = out + i * w;
    const F* RESTRICT m = mem + i * w;
    if (heads == 1) {
      const F wi = ww[i];
#pragma omp simd
      for (int64_t j = 0; j < w; ++j) o[j] = m[j] * (F(1) - wi * erase[j]) + wi * add[j];
      continue;
    }
    std::fill(o, o + w, F(1));
    for (int64_t h = 0; h < heads; ++h) {
      const F wi = ww[h * n + i];
#pragma omp simd
      for (int64_t j = 0; j < w; ++j) o[j] *= F(1) - wi * erase[h * w + j];
    }
#pragma omp simd
    for (int64_t j = 0; j < w; ++j) o[j] *= m[j];
    for (int64_t h = 0; h < heads; ++h) axpy(o, add + h * w, ww[h * n + i], w);
  }
}

// Its backward, from g = dL/dM'. With keep_ij = prod_h (1 - w_h[i] e_hj) and others_hij the same
// product without head h: dL/dM_ij = g_ij keep_ij; dL/dw_h[i] = sum_j g_ij (a_hj - M_ij others_hij e_hj);
// dL/de_hj = -sum_i g_ij M_ij others_hij w_h[i]; dL/da_hj = sum_i g_ij w_h[i] (all added into the
// outputs). keep and others: scratch of W each (unused with one head, where others = 1).
template <typename F>
void write_backward(const F* RESTRICT mem, const F* RESTRICT ww, const F* RESTRICT erase, const F* RESTRICT add,
                    const F* RESTRICT dnew, int64_t heads, int64_t n, int64_t w, F* RESTRICT dmem, F* RESTRICT dww,
                    F* RESTRICT derase, F* RESTRICT dadd, F* RESTRICT keep, F* RESTRICT others) {
  for (int64_t i = 0; i < n; ++i) {
    const F* RESTRICT g = dnew + i * w;
    const F* RESTRICT m = mem + i * w;
    F* RESTRICT dm = dmem + i * w;
    if (heads == 1) {
      const F wi = ww[i];
#pragma omp simd
      for (int64_t j = 0; j < w; ++j) {  // apart from the sum, as in link_backward
        dm[j] += g[j] * (F(1) - wi * erase[j]);
        derase[j] -= g[j] * m[j] * wi;
        dadd[j] += g[j] * wi;
      }
      dww[i] += ordered_sum<F>(w, [=](int64_t j) { return g[j] * (add[j] - m[j] * erase[j]); });
      continue;
    }
    std::fill(keep, keep + w, F(1));
    for (int64_t h = 0; h < heads; ++h)
      for (int64_t j = 0; j < w; ++j) keep[j] *= F(1) - ww[h * n + i] * erase[h * w + j];
    for (int64_t j = 0; j < w; ++j) dm[j] += g[j] * keep[j];
    for (int64_t h = 0; h < heads; ++h) {
      std::fill(others, others + w, F(1));
      for (int64_t q = 0; q < heads; ++q)
        if (q != h)
          for (int64_t j = 0; j < w; ++j) others[j] *= F(1) - ww[q * n + i] * erase[q * w + j];
      const F wi = ww[h * n + i];
      F dwi = 0;
      for (int64_t j = 0; j < w; ++j) {
        dwi += g[j] * (add[h * w + j] - m[j] * others[j] * erase[h * w + j]);
        derase[h * w + j] -= g[j] * m[j] * others[j] * wi;
        dadd[h * w + j] += g[j] * wi;
      }
      dww[h * n + i] += dwi;
    }
  }
}

// DNC temporal-link primitives (addressing.py: directional_weights, update_precedence,
// update_link, allocation_weights, update_usage): forward in Dnc::forward, backward here.

// Write weighting ww = g_w (g_a a + (1 - g_a) c) (addressing.write_weights: allocation a, content c,
// allocation gate g_a, write gate g_w). Backward: dc = g_w (1 - g_a) dww, da = g_w g_a dww,
// dg_a = g_w dww.(a - c), dg_w = dww.ww / g_w.
template <typename F>
void write_weights_forward(const F* RESTRICT content, const F* RESTRICT alloc, F alloc_gate, F write_gate, int64_t n,
                           F* RESTRICT ww) {
  for (int64_t i = 0; i < n; ++i) ww[i] = write_gate * lerp(content[i], alloc[i], alloc_gate);
}

template <typename F>
void write_weights_backward(const F* RESTRICT content, const F* RESTRICT alloc, F alloc_gate, F write_gate,
                            const F* RESTRICT dww, int64_t n, F* RESTRICT dcontent, F* RESTRICT dalloc,
                            F* RESTRICT dalloc_gate, F* RESTRICT dwrite_gate) {
  F dw = 0, da = 0;
  for (int64_t i = 0; i < n; ++i) {
    dw += dww[i] * lerp(content[i], alloc[i], alloc_gate);
    const F dl = dww[i] * write_gate;
    dcontent[i] = dl * (F(1) - alloc_gate);
    dalloc[i] = dl * alloc_gate;
    da += dl * (alloc[i] - content[i]);
  }
  *dalloc_gate += da;
  *dwrite_gate += dw;
}

// Read weighting of one head, w = m_b b + m_c c + m_f f (addressing.read_weights: the read modes m
// mix the backward, content and forward weightings). Backward: dm_x = dw.x, dx = m_x dw.
template <typename F>
void read_modes_forward(const F* RESTRICT modes, const F* RESTRICT bwd, const F* RESTRICT content,
                        const F* RESTRICT fwd, int64_t n, F* RESTRICT w) {
  for (int64_t i = 0; i < n; ++i) w[i] = modes[0] * bwd[i] + modes[1] * content[i] + modes[2] * fwd[i];
}

template <typename F>
void read_modes_backward(const F* RESTRICT modes, const F* RESTRICT bwd, const F* RESTRICT content,
                         const F* RESTRICT fwd, const F* RESTRICT dw, int64_t n, F* RESTRICT dmodes, F* RESTRICT dbwd,
                         F* RESTRICT dcontent, F* RESTRICT dfwd) {
  dmodes[0] += dot(dw, bwd, n);
  dmodes[1] += dot(dw, content, n);
  dmodes[2] += dot(dw, fwd, n);
  for (int64_t i = 0; i < n; ++i) {
    dbwd[i] = modes[0] * dw[i];
    dcontent[i] = modes[1] * dw[i];
    dfwd[i] = modes[2] * dw[i];
  }
}

template <typename F>
OUT_OF_LINE
void directional_forward(const F* RESTRICT link, const F* RESTRICT weights, int64_t heads, int64_t n, F* RESTRICT fwd,
                         F* RESTRICT bwd) {
  std::fill(bwd, bwd + heads * n, F(0));
  for (int64_t h = 0; h < heads; ++h)
    for (int64_t i = 0; i < n; ++i) {
      fwd[h * n + i] = dot(link + i * n, weights + h * n, n);
      axpy(bwd + h * n, link + i * n, weights[h * n + i], n);
    }
}

// Directional weightings f_h[i] = <L'_i, w_h> and b_h[j] = sum_i w_h[i] L'[i, j], for R heads with
// weights w (heads, N). Backward: dL'_i += df_h[i] w_h + w_h[i] db_h, dw_h += L'^T df_h + L' db_h;
// the link's diagonal is held at zero, so its gradient is zeroed.
template <typename F>
OUT_OF_LINE
void directional_backward(const F* RESTRICT link, const F* RESTRICT weights, const F* RESTRICT dfwd,
                          const F* RESTRICT dbwd, int64_t heads, int64_t n, F* RESTRICT dlink, F* RESTRICT dweights) {
  for (int64_t h = 0; h < heads; ++h)
    for (int64_t i = 0; i < n; ++i) axpy(dlink + i * n, weights + h * n, dfwd[h * n + i], n);
  for (int64_t h = 0; h < heads; ++h) gemv_cols(dweights + h * n, link, dfwd + h * n, n, n);
  for (int64_t i = 0; i < n; ++i) {
    const F* link_i = link + i * n;
    for (int64_t h = 0; h < heads; ++h) {
      dweights[h * n + i] += dot(dbwd + h * n, link_i, n);
      axpy(dlink + i * n, dbwd + h * n, weights[h * n + i], n);
    }
  }
  for (int64_t i = 0; i < n; ++i) dlink[i * n + i] = F(0);
}

template <typename F>
void precedence_forward(const F* RESTRICT ww, const F* RESTRICT prec, int64_t n, F* RESTRICT out) {
  F wsum = 0;
  for (int64_t i = 0; i < n; ++i) wsum += ww[i];
  for (int64_t i = 0; i < n; ++i) out[i] = (F(1) - wsum) * prec[i] + ww[i];
}

// Precedence p' = (1 - sum_i ww_i) p + ww. Backward: dp += (1 - sum ww) dp', dww_i += dp'_i - dp'.p.
template <typename F>
void precedence_backward(const F* RESTRICT ww, const F* RESTRICT prec, const F* RESTRICT dprec_out, int64_t n,
                         F* RESTRICT dprec, F* RESTRICT dww) {
  F wsum = 0;
  for (int64_t i = 0; i < n; ++i) wsum += ww[i];
  const F dsum = -dot(dprec_out, prec, n);
  for (int64_t i = 0; i < n; ++i) {
    dprec[i] += dprec_out[i] * (F(1) - wsum);
    dww[i] += dprec_out[i] + dsum;
  }
}

template <typename F>
void link_forward(const F* RESTRICT link, const F* RESTRICT ww, const F* RESTRICT prec, int64_t n, F* RESTRICT out) {
  for (int64_t i = 0; i < n; ++i) {
    const F wi = ww[i];
    F* RESTRICT o = out + i * n;
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) o[j] = ((F(1) - wi) - ww[j]) * link[i * n + j] + wi * prec[j];
    o[i] = F(0);
  }
}

// Link L'[i, j] = ((1 - ww_i) - ww_j) L[i, j] + ww_i p_j (diagonal zero). Backward from g = dL/dL':
// dL[i, j] += g_ij (1 - ww_i - ww_j), dww_i += sum_j g_ij (p_j - L_ij), dww_j -= sum_i g_ij L_ij,
// dp_j += sum_i g_ij ww_i. g's diagonal must be zero (directional_backward zeroes it: L' keeps a
// zero diagonal). dww_cols: scratch of N.
template <typename F>
OUT_OF_LINE
void link_backward(const F* RESTRICT link, const F* RESTRICT ww, const F* RESTRICT prec, const F* RESTRICT dlink_out,
                   int64_t n, F* RESTRICT dlink, F* RESTRICT dww, F* RESTRICT dprec, F* RESTRICT dww_cols) {
  std::fill(dww_cols, dww_cols + n, F(0));
  for (int64_t i = 0; i < n; ++i) {
    const F* RESTRICT g = dlink_out + i * n;
    const F* RESTRICT l = link + i * n;
    F* RESTRICT dl = dlink + i * n;
    const F wi = ww[i];
    // The updates in a plain vector loop, the row's sum in one of its own: fused into
    // ordered_sum's term they stopped vectorising (a DNC step 1.5x slower).
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) {
      dl[j] += g[j] * ((F(1) - wi) - ww[j]);
      dww_cols[j] -= g[j] * l[j];
      dprec[j] += g[j] * wi;
    }
    dww[i] += ordered_sum<F>(n, [=](int64_t j) { return g[j] * (prec[j] - l[j]); });
  }
  axpy(dww, dww_cols, F(1), n);
}

// Records sorted, order (as floats) and before on the tape for the backward; stable, as
// torch.sort(stable=True), so tied usages keep the order of their slots.
template <typename F>
void allocation_forward(const F* RESTRICT usage, int64_t n, F* RESTRICT sorted, F* RESTRICT order_f,
                        F* RESTRICT before, F* RESTRICT alloc) {
  thread_local std::vector<int64_t> order;
  order.resize(n);
  std::iota(order.begin(), order.end(), int64_t(0));
  F* eased = alloc;  // reuse as scratch before it is written
  for (int64_t i = 0; i < n; ++i) eased[i] = F(kUsageEps) + (F(1) - F(kUsageEps)) * usage[i];
  std::stable_sort(order.begin(), order.end(), [eased](int64_t a, int64_t b) { return eased[a] < eased[b]; });
  for (int64_t j = 0; j < n; ++j) {
    sorted[j] = eased[order[j]];
    order_f[j] = F(order[j]);
  }
  before[0] = F(1);
  for (int64_t j = 1; j < n; ++j) before[j] = before[j - 1] * sorted[j - 1];
  for (int64_t j = 0; j < n; ++j) alloc[order[j]] = (F(1) - sorted[j]) * before[j];
}

// Allocation a[order[j]] = (1 - s_j) prod_{k<j} s_k, s the usages sorted ascending (order: their
// slots, as floats; before_j = prod_{k<j} s_k). Backward: ds_j = -da_j before_j + sum_{m>j} da_m
// (1 - s_m) before_m / s_j, accumulated right to left without dividing; the usage's gradient is
// ds scattered back through order, times the (1 - eps) of the clamp u = eps + (1 - eps) u'.
// dsorted, dbefore: scratch of N each.
template <typename F>
void allocation_backward(const F* RESTRICT sorted, const F* RESTRICT order, const F* RESTRICT before,
                         const F* RESTRICT dalloc, int64_t n, F* RESTRICT dusage, F* RESTRICT dsorted,
                         F* RESTRICT dbefore) {
  for (int64_t j = 0; j < n; ++j) {
    const F da = dalloc[int64_t(order[j])];
    dsorted[j] = -da * before[j];
    dbefore[j] = da * (F(1) - sorted[j]);
  }
  F tail = 0;  // sum_{j>i} dbefore_j prod_{i<k<j} s_k
  for (int64_t i = n - 2; i >= 0; --i) {
    tail = dbefore[i + 1] + sorted[i + 1] * tail;
    dsorted[i] += before[i] * tail;
  }
  for (int64_t j = 0; j < n; ++j) dusage[int64_t(order[j])] += dsorted[j] * (F(1) - F(kUsageEps));
}

template <typename F>
void usage_forward(const F* RESTRICT usage, const F* RESTRICT prev_ww, const F* RESTRICT prev_rw,
                   const F* RESTRICT free_gates, int64_t heads, int64_t n, F* RESTRICT usage1, F* RESTRICT retention,
                   F* RESTRICT out) {
  for (int64_t i = 0; i < n; ++i) {
    usage1[i] = usage[i] + prev_ww[i] - usage[i] * prev_ww[i];
    F keep = F(1);
    for (int64_t r = 0; r < heads; ++r) keep *= F(1) - free_gates[r] * prev_rw[r * n + i];
    retention[i] = keep;
    out[i] = usage1[i] * keep;
  }
}

// Usage u' = (u + ww - u ww) * psi, psi_i = prod_h (1 - f_h w_h[i]) (retention; usage1 = the first
// factor, both from the tape), with the previous write weights ww and read weights w (heads, N).
// Backward: du += du' psi (1 - ww), dww += du' psi (1 - u), and through psi
// df_h -= sum_i dq_hi w_h[i], dw_h[i] -= dq_hi f_h with dq_hi = du'_i usage1_i prod_{q != h} (1 - f_q w_q[i]).
template <typename F>
OUT_OF_LINE
void usage_backward(const F* RESTRICT usage, const F* RESTRICT prev_ww, const F* RESTRICT prev_rw,
                    const F* RESTRICT free_gates, const F* RESTRICT usage1, const F* RESTRICT retention,
                    const F* RESTRICT dusage_out, int64_t heads, int64_t n, F* RESTRICT dusage, F* RESTRICT dprev_ww,
                    F* RESTRICT dprev_rw, F* RESTRICT dfree) {
  for (int64_t i = 0; i < n; ++i) {
    const F du1 = dusage_out[i] * retention[i];
    const F dret = dusage_out[i] * usage1[i];
    dusage[i] += du1 * (F(1) - prev_ww[i]);
    dprev_ww[i] += du1 * (F(1) - usage[i]);
    for (int64_t r = 0; r < heads; ++r) {
      F others = F(1);
      for (int64_t q = 0; q < heads; ++q)
        if (q != r) others *= F(1) - free_gates[q] * prev_rw[q * n + i];
      const F dq = dret * others;
      dfree[r] -= dq * prev_rw[r * n + i];
      dprev_rw[r * n + i] -= dq * free_gates[r];
    }
  }
}

}  // namespace
