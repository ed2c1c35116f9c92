// Fused forward and backward passes of the memory cores over a time-major chunk.
//
// This is the native fast path of sb3_memory.memory: the same equations as addressing.py,
// ntm.py, dnc.py and controller.py (the reference, which the tests compare against), written as
// plain loops over one batch row at a time. A core step is ~60 tiny tensor operations in
// PyTorch, so eager execution is dominated by per-operation overhead; here a whole chunk is one
// call. The forward pass records a per-step "tape" of intermediate values; the backward pass
// walks the tape in reverse and accumulates the parameter gradients.
//
// No PyTorch headers: the library is compiled once per machine with the system C++ compiler
// and called through ctypes (see native.py). Every buffer is contiguous and row-major:
//   inputs (T, B, I), or (T, B, G) projected, starts (T, B) uint8, state (B, D), features (T, B, F),
//   tape (B, T, TS).
// Weights keep PyTorch's (out_features, in_features) layout.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <numeric>
#include <string>
#include <type_traits>
#include <vector>

#define RESTRICT __restrict__
// The element-wise math below must inline into the `omp simd` loops that call it, or those loops
// stop vectorising: GCC stopped inlining vexp once this file grew (a 1.8x slower forward pass).
#define SCALAR_MATH inline __attribute__((always_inline))

namespace {

constexpr double kUsageEps = 1e-6;     // addressing.USAGE_EPS
constexpr double kCosineEps = 1e-6;    // addressing.cosine_similarity
constexpr double kSharpenEps = 1e-12;  // addressing.sharpen
constexpr double kSoftplusThreshold = 20.0;  // torch.nn.functional.softplus default

enum Core : int64_t { kNTM = 0, kDNC = 1, kPlain = 2 };
enum ControllerKind : int64_t { kLSTM = 0, kGRU = 1, kMLP = 2 };

}  // namespace

extern "C" {

// The calling interface, written once. native.py builds its ctypes structures from the field
// lists that smem_config_fields/smem_buffer_fields export, and checks the sizes and the ABI version
// at load, so the two sides cannot drift apart.
#define SMEM_ABI_VERSION 9  // bump whenever the interface or the calling convention changes

// Sizes and flat-state offsets, filled in by native.py from the core's configuration:
//   I input size; G width of the projected input (gates * C); C controller output size; K columns of the
//   recurrent weight (fed-back reads, + hidden for an LSTM); N, W, R memory slots, word size, read
//   heads; Hw write heads (NTM); S shifts (NTM); P interface width; D flat state width; top_k the
//   slots a weighting keeps (sparse_top_k, 0 for the dense model; the sparse DNC's link then keeps
//   top_k values and column indices per row, at off_link_values and off_link_index).
#define SMEM_CONFIG_FIELDS(X)                                                                      \
  X(core) X(controller) X(T) X(B) X(I) X(G) X(C) X(K) X(N) X(W) X(R) X(Hw) X(S) X(P) X(D)            \
  X(off_memory) X(off_read_vectors) X(off_read_weights) X(off_write_weights) X(off_usage)          \
  X(off_precedence) X(off_link) X(off_controller_hidden) X(off_controller_cell) X(hidden_size) X(cell_size) \
  X(top_k) X(off_link_values) X(off_link_index)

// Every buffer is a pointer; null where it does not apply (see the comments in SmemBuffers' users):
// starts null = no episode starts; w_rec null when K == 0; w_hid/b_hid GRU only; w_if/b_if
// external-memory cores only; tape null = inference; d_state_T null = zero; d_state0 null = not
// wanted. The backward pass also writes the tape's gradient fields (smem_tape_fields).
#define SMEM_BUFFER_FIELDS(X)                                                                      \
  /* forward inputs */                                                                             \
  X(const void*, inputs) X(const void*, state0) X(const uint8_t*, starts) X(const void*, init_row)  \
  X(const void*, w_in) X(const void*, b_in) X(const void*, w_rec) X(const void*, w_hid)            \
  X(const void*, b_hid) X(const void*, w_if) X(const void*, b_if)                                  \
  /* forward outputs */                                                                            \
  X(void*, features) X(void*, state_T) X(void*, tape)                                              \
  /* backward inputs, then outputs */                                                              \
  X(const void*, d_features) X(const void*, d_state_T) X(void*, d_projected) X(void*, d_state0)

// What smem_forward and smem_backward return; native.py reads the names from smem_status_names.
#define SMEM_STATUS_CODES(X) X(ok, 0) X(unknown_core, 1) X(non_finite_features, 2) X(unknown_primitive, 3)

struct SmemConfig {
#define SMEM_DECLARE(name) int64_t name;
  SMEM_CONFIG_FIELDS(SMEM_DECLARE)
#undef SMEM_DECLARE
};

struct SmemBuffers {
#define SMEM_DECLARE(type, name) type name;
  SMEM_BUFFER_FIELDS(SMEM_DECLARE)
#undef SMEM_DECLARE
};

enum SmemStatus : int {
#define SMEM_DECLARE(name, value) kStatus_##name = value,
  SMEM_STATUS_CODES(SMEM_DECLARE)
#undef SMEM_DECLARE
};

}  // extern "C"

namespace {

// ----------------------------------------------------------------------------------------------
// Small dense helpers. `omp simd` lets the compiler vectorise reductions without -ffast-math.

template <typename F>
inline F dot(const F* RESTRICT a, const F* RESTRICT b, int64_t n) {
  F s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}

template <typename F>
inline void axpy(F* RESTRICT y, const F* RESTRICT x, F a, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) y[i] += a * x[i];
}

// y += A x for A (rows, cols), given A^T (cols, rows) row-major: column updates on a block of y
// held in registers, instead of one short dot product (and horizontal reduction) per row. With
// A^T = W this is y += W^T x, the backward pass's product, from PyTorch's weight layout.
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
  F s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < n; ++i) {
    y[i] = vexp(x[i] - m);
    s += y[i];
  }
  const F inv = F(1) / s;
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
      F dwi = 0;
#pragma omp simd reduction(+ : dwi)
      for (int64_t j = 0; j < w; ++j) {
        dm[j] += g[j] * (F(1) - wi * erase[j]);
        dwi += g[j] * (add[j] - m[j] * erase[j]);
        derase[j] -= g[j] * m[j] * wi;
        dadd[j] += g[j] * wi;
      }
      dww[i] += dwi;
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
void link_backward(const F* RESTRICT link, const F* RESTRICT ww, const F* RESTRICT prec, const F* RESTRICT dlink_out,
                   int64_t n, F* RESTRICT dlink, F* RESTRICT dww, F* RESTRICT dprec, F* RESTRICT dww_cols) {
  std::fill(dww_cols, dww_cols + n, F(0));
  for (int64_t i = 0; i < n; ++i) {
    const F* RESTRICT g = dlink_out + i * n;
    const F* RESTRICT l = link + i * n;
    F* RESTRICT dl = dlink + i * n;
    const F wi = ww[i];
    F dwi = 0;
#pragma omp simd reduction(+ : dwi)
    for (int64_t j = 0; j < n; ++j) {
      dl[j] += g[j] * ((F(1) - wi) - ww[j]);
      dwi += g[j] * (prec[j] - l[j]);
      dww_cols[j] -= g[j] * l[j];
      dprec[j] += g[j] * wi;
    }
    dww[i] += dwi;
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

// ----------------------------------------------------------------------------------------------
// Buffer layouts. An Arena hands out consecutive blocks, so a buffer's size is whatever its
// layout code took: the tape record of a step, and each core's backward scratch, are laid out
// once, by name, and never recounted.

struct Arena {
  int64_t size = 0;
  int64_t take(int64_t n) {
    const int64_t start = size;
    size += n;
    return start;
  }
};

// Layout of one step's tape record. Every core starts with the state it read and the controller.

struct ControllerTape {
  int64_t x, act, hidden, fh, dfh, cell, tanh_cell, out;
};

ControllerTape controller_tape(const SmemConfig& c, Arena& a) {
  const bool gru = c.controller == kGRU, lstm = c.controller == kLSTM;
  ControllerTape t{};
  t.x = a.take(c.K);                   // recurrent input: [read vectors, hidden] for an LSTM, read vectors otherwise
  t.act = a.take(c.G);                 // LSTM: i, f, o, g; GRU: r, z, n; MLP: relu output
  t.hidden = a.take(gru ? c.C : 0);    // GRU: the hidden state it multiplied (after any reset), for W_hid's gradient
  t.fh = a.take(gru ? 3 * c.C : 0);    // GRU: b_hid + W_hid h
  t.dfh = a.take(gru ? 3 * c.C : 0);   // GRU, written by the backward pass: gradient of fh, for W_hid's and b_hid's
  t.cell = a.take(lstm ? c.C : 0);     // LSTM: new cell
  t.tanh_cell = a.take(lstm ? c.C : 0);
  t.out = a.take(c.C);
  return t;
}

// What controller_backward needs as scratch: the gradient of its recurrent input (K). The gate
// gradients go straight into dprojected.
inline int64_t controller_scratch_size(const SmemConfig& c) { return c.K; }

struct Tape {
  int64_t state;
  ControllerTape ctrl;
  int64_t raw, act;  // interface before / after its nonlinearities
  int64_t draw;      // written by the backward pass: gradient of raw, for W_if's and b_if's
  // NTM
  int64_t knorm, mnorm, cos, wc;
  // DNC
  int64_t wknorm, wcos, cw, usage1, retention, sorted, order, before, alloc, mnorm2, rknorm, rcos, rc, fwd, bwd;
  // sparse NTM (also knorm, cos, wc, of the K chosen slots): per head the chosen content slots and
  // the new weighting's slots and values; the rows the write changed, before and after
  int64_t sel, wout, wval, uidx, uold, unew;
  // sparse DNC (also wknorm, wcos, cw for the write content, rknorm, rcos, rc for the reads, uold
  // and unew for the written rows): the write content's and the allocation's slots (the latter in
  // order of usage, with the sorted usages); the new write weighting, precedence and read
  // weightings (slots, values; the reads' backward and forward weightings at their slots)
  int64_t wsel, aslot, asorted, wwslot, wwval, pslot, pval, rsel, rwslot, rwval, rwb, rwf;
  int64_t size;
};

inline bool is_sparse_ntm(const SmemConfig& c) { return c.core == kNTM && c.top_k > 0; }
inline bool is_sparse_dnc(const SmemConfig& c) { return c.core == kDNC && c.top_k > 0; }

Tape make_tape(const SmemConfig& c) {
  Tape t{};
  Arena a;
  auto take = [&a](int64_t n) { return a.take(n); };
  // The state entering the step, before any reset: the previous step's output. The sparse NTM keeps
  // an undo log of its writes instead, so that its tape does not grow with N.
  t.state = take(is_sparse_ntm(c) || is_sparse_dnc(c) ? 0 : c.D);
  t.ctrl = controller_tape(c, a);
  const int64_t n = c.N, r = c.R;
  // Every core's interface vector: raw, activated, and its gradient.
  t.raw = take(c.P);
  t.act = take(c.P);
  t.draw = take(c.P);
  if (is_sparse_ntm(c)) {
    const int64_t heads = c.R + c.Hw, k = c.top_k, rows = c.Hw * c.top_k;
    t.knorm = take(heads);
    t.sel = take(heads * k);  // slots, as numbers (exact below 2^24 in float)
    t.cos = take(heads * k);
    t.wc = take(heads * k);
    t.wout = take(heads * k);
    t.wval = take(heads * k);
    t.uidx = take(rows);  // written slots, ascending, -1 past the last
    t.uold = take(rows * c.W);
    t.unew = take(rows * c.W);
  } else if (is_sparse_dnc(c)) {
    const int64_t k = c.top_k;
    t.wsel = take(k);
    t.wknorm = take(1);
    t.wcos = take(k);
    t.cw = take(k);
    t.aslot = take(k);
    t.asorted = take(k);
    t.wwslot = take(k);
    t.wwval = take(k);
    t.uold = take(k * c.W);
    t.unew = take(k * c.W);
    t.pslot = take(k);
    t.pval = take(k);
    t.rsel = take(r * k);
    t.rknorm = take(r);
    t.rcos = take(r * k);
    t.rc = take(r * k);
    t.rwslot = take(r * k);
    t.rwval = take(r * k);
    t.rwb = take(r * k);
    t.rwf = take(r * k);
  } else if (c.core == kNTM) {
    const int64_t heads = c.R + c.Hw;
    t.knorm = take(heads);
    t.mnorm = take(n);
    t.cos = take(heads * n);
    t.wc = take(heads * n);
  } else if (c.core == kDNC) {
    t.mnorm = take(n);
    t.wknorm = take(1);
    t.wcos = take(n);
    t.cw = take(n);
    t.usage1 = take(n);
    t.retention = take(n);
    t.sorted = take(n);
    t.order = take(n);
    t.before = take(n);
    t.alloc = take(n);
    t.mnorm2 = take(n);
    t.rknorm = take(r);
    t.rcos = take(r * n);
    t.rc = take(r * n);
    t.fwd = take(r * n);
    t.bwd = take(r * n);
  }
  t.size = a.size;
  return t;
}

// PyTorch's (out, in) weights for the backward pass, and their transposes for the forward pass.
template <typename F>
struct Weights {
  const F* w_in;
  const F* b_in;
  const F* w_rec;
  const F* w_hid;
  const F* b_hid;
  const F* w_if;
  const F* b_if;
  std::vector<F> t_in, t_rec, t_hid, t_if;

  explicit Weights(const SmemBuffers& b)
      : w_in(static_cast<const F*>(b.w_in)),
        b_in(static_cast<const F*>(b.b_in)),
        w_rec(static_cast<const F*>(b.w_rec)),
        w_hid(static_cast<const F*>(b.w_hid)),
        b_hid(static_cast<const F*>(b.b_hid)),
        w_if(static_cast<const F*>(b.w_if)),
        b_if(static_cast<const F*>(b.b_if)) {}

  void transpose_all(const SmemConfig& c) {
    if (w_in) transpose(w_in, c.G, c.I, t_in);
    if (w_rec) transpose(w_rec, c.G, c.K, t_rec);
    if (w_hid) transpose(w_hid, 3 * c.C, c.C, t_hid);
    if (w_if) transpose(w_if, c.P, c.C, t_if);
  }
};

// The controller's projected input of step t of a row, b_in + W_in x (controller.project_input),
// into out (G). Computed here, one row at a time, so that a row's numbers do not depend on how many
// rows and steps a call holds: a rollout step and the replay of its chunk agree to the bit (a
// batched matrix product rounds by its shape, and a sparse core's choice of slots can follow).
// Without w_in the caller projected the inputs already (wide inputs: see core.py).
template <typename F>
const F* step_input(const SmemConfig& c, const SmemBuffers& b, const Weights<F>& wt, int64_t t, int64_t row, F* out) {
  if (!wt.w_in) return static_cast<const F*>(b.inputs) + (t * c.B + row) * c.G;
  std::copy(wt.b_in, wt.b_in + c.G, out);
  gemv_cols(out, wt.t_in.data(), static_cast<const F*>(b.inputs) + (t * c.B + row) * c.I, c.G, c.I);
  return out;
}

// ----------------------------------------------------------------------------------------------
// Controller (controller.py): one step from the projected input, the fed-back reads and its state.

template <typename F>
void controller_forward(const SmemConfig& c, const Weights<F>& wt, const F* projected, const F* reads,
                        const F* hidden, const F* cell, F* tape, const ControllerTape& L, F* hidden_out,
                        F* cell_out) {
  const int64_t C = c.C, rin = c.K - (c.controller == kLSTM ? C : 0);
  F* x = tape + L.x;
  std::copy(reads, reads + rin, x);
  if (c.controller == kLSTM) std::copy(hidden, hidden + C, x + rin);
  F* act = tape + L.act;
  std::copy(projected, projected + c.G, act);
  if (c.K > 0) gemv_cols(act, wt.t_rec.data(), x, c.G, c.K);
  F* out = tape + L.out;
  if (c.controller == kLSTM) {
#pragma omp simd
    for (int64_t j = 0; j < 3 * C; ++j) act[j] = sigmoid(act[j]);
#pragma omp simd
    for (int64_t j = 3 * C; j < 4 * C; ++j) act[j] = vtanh(act[j]);
    F* RESTRICT new_cell = tape + L.cell;
    F* RESTRICT tanh_cell = tape + L.tanh_cell;
#pragma omp simd
    for (int64_t j = 0; j < C; ++j) {
      new_cell[j] = act[C + j] * cell[j] + act[j] * act[3 * C + j];
      tanh_cell[j] = vtanh(new_cell[j]);
      out[j] = act[2 * C + j] * tanh_cell[j];
    }
    std::copy(out, out + C, hidden_out);
    std::copy(new_cell, new_cell + C, cell_out);
  } else if (c.controller == kGRU) {
    F* fh = tape + L.fh;
    std::copy(hidden, hidden + C, tape + L.hidden);
    std::copy(wt.b_hid, wt.b_hid + 3 * C, fh);
    gemv_cols(fh, wt.t_hid.data(), hidden, 3 * C, C);
#pragma omp simd
    for (int64_t j = 0; j < 2 * C; ++j) act[j] = sigmoid(act[j] + fh[j]);
#pragma omp simd
    for (int64_t j = 0; j < C; ++j) {
      const F n = vtanh(act[2 * C + j] + act[j] * fh[2 * C + j]);
      act[2 * C + j] = n;
      out[j] = lerp(n, hidden[j], act[C + j]);
    }
    std::copy(out, out + C, hidden_out);
  } else {
    for (int64_t j = 0; j < C; ++j) act[j] = out[j] = std::max(act[j], F(0));
  }
}

// dout: total gradient of the controller output (features, interface and carried hidden state);
// dcell_out: gradient of the carried cell state. Writes dprojected (which is also the gradient of
// the gate pre-activations, hence of W_rec's output) and, for a GRU, the tape's dfh; accumulates
// dreads, dhidden and dcell. Weight gradients are left to one matrix product over the whole tape.
template <typename F>
void controller_backward(const SmemConfig& c, const Weights<F>& wt, F* tape, const ControllerTape& L,
                         const F* hidden, const F* cell, const F* dout, const F* dcell_out, F* dprojected,
                         F* dreads, F* dhidden, F* dcell, F* scratch) {
  const int64_t C = c.C, rin = c.K - (c.controller == kLSTM ? C : 0);
  const F* act = tape + L.act;
  F* dgates = dprojected;
  if (c.controller == kLSTM) {
    const F* tanh_cell = tape + L.tanh_cell;
    for (int64_t j = 0; j < C; ++j) {
      const F i = act[j], f = act[C + j], o = act[2 * C + j], g = act[3 * C + j];
      const F dc = dcell_out[j] + dout[j] * o * (F(1) - tanh_cell[j] * tanh_cell[j]);
      dgates[j] = dc * g * i * (F(1) - i);
      dgates[C + j] = dc * cell[j] * f * (F(1) - f);
      dgates[2 * C + j] = dout[j] * tanh_cell[j] * o * (F(1) - o);
      dgates[3 * C + j] = dc * i * (F(1) - g * g);
      dcell[j] += dc * f;
    }
  } else if (c.controller == kGRU) {
    const F* fh = tape + L.fh;
    F* dfh = tape + L.dfh;
    for (int64_t j = 0; j < C; ++j) {
      const F r = act[j], z = act[C + j], n = act[2 * C + j];
      const F dn_pre = dout[j] * (F(1) - z) * (F(1) - n * n);
      const F dr = dn_pre * fh[2 * C + j];
      const F dz = dout[j] * (hidden[j] - n);
      dhidden[j] += dout[j] * z;
      dgates[j] = dfh[j] = dr * r * (F(1) - r);
      dgates[C + j] = dfh[C + j] = dz * z * (F(1) - z);
      dgates[2 * C + j] = dn_pre;
      dfh[2 * C + j] = dn_pre * r;
    }
    gemv_cols(dhidden, wt.w_hid, dfh, C, 3 * C);
  } else {
    for (int64_t j = 0; j < C; ++j) dgates[j] = act[j] > F(0) ? dout[j] : F(0);
  }
  if (c.K > 0) {
    F* dx = scratch;
    std::fill(dx, dx + c.K, F(0));
    gemv_cols(dx, wt.w_rec, dgates, c.K, c.G);
    axpy(dreads, dx, F(1), rin);
    if (c.controller == kLSTM) axpy(dhidden, dx + rin, F(1), C);
  }
}

// A core's features are [controller output, read vectors], and both are also carried in the state
// (hidden = output for an LSTM or GRU, the read vectors fed back): their gradients are the sums.
template <typename F>
void features_backward(const SmemConfig& c, const F* dfeatures, const F* dstate_out, F* dout, F* dreads) {
  std::copy(dfeatures, dfeatures + c.C, dout);
  if (c.hidden_size) axpy(dout, dstate_out + c.off_controller_hidden, F(1), c.C);
  for (int64_t j = 0; j < c.R * c.W; ++j) dreads[j] = dfeatures[c.C + j] + dstate_out[c.off_read_vectors + j];
}

// The controller as a core runs it: its fields of the flat state s / state_out (the offsets are
// read here only), fed the read vectors `reads`.
template <typename F>
void core_controller_forward(const SmemConfig& c, const Weights<F>& wt, const F* projected, const F* s, const F* reads,
                             F* tape, const ControllerTape& L, F* state_out) {
  controller_forward(c, wt, projected, reads, s + c.off_controller_hidden, s + c.off_controller_cell, tape, L,
                     state_out + c.off_controller_hidden, state_out + c.off_controller_cell);
}

// Its backward, a core's last stage. out feeds the interface raw = W_if out + b_if, so
// dL/dout += W_if^T dL/draw (draw null: no interface); then the controller's own backward, which
// adds into dreads and into dstate_in's controller fields.
template <typename F>
void core_controller_backward(const SmemConfig& c, const Weights<F>& wt, F* tape, const ControllerTape& L, const F* s,
                              const F* draw, const F* dstate_out, F* dout, F* dprojected, F* dreads, F* dstate_in,
                              F* scratch) {
  if (draw) gemv_cols(dout, wt.w_if, draw, c.C, c.P);
  controller_backward(c, wt, tape, L, s + c.off_controller_hidden, s + c.off_controller_cell, dout,
                      dstate_out + c.off_controller_cell, dprojected, dreads, dstate_in + c.off_controller_hidden,
                      dstate_in + c.off_controller_cell, scratch);
}

// Interface: raw = W_if out + b_if
template <typename F>
void interface_forward(const SmemConfig& c, const Weights<F>& wt, const F* out, F* raw) {
  std::copy(wt.b_if, wt.b_if + c.P, raw);
  gemv_cols(raw, wt.t_if.data(), out, c.P, c.C);
}

// A memory core's first stage, the mirror of core_controller_backward: the controller steps on
// the previous read vectors, emits the interface raw = W_if out + b_if, and the core activates it.
template <typename F, typename Core>
void core_interface_forward(const Core& core, const Weights<F>& wt, const F* projected, const F* s, F* tape,
                            F* state_out) {
  const SmemConfig& c = core.c;
  core_controller_forward(c, wt, projected, s, s + c.off_read_vectors, tape, core.L.ctrl, state_out);
  interface_forward(c, wt, tape + core.L.ctrl.out, tape + core.L.raw);
  core.activate(tape + core.L.raw, tape + core.L.act);
}

// Per-row scratch of the backward pass, sized for the largest core.
template <typename F>
struct Scratch {
  std::vector<F> buf;
  F* at(int64_t offset) { return buf.data() + offset; }
};

// ----------------------------------------------------------------------------------------------
// NTM (ntm.py). Interface: per head [key (W), strength, gate, shift (S), gamma], then erase and
// add (Hw * W each). Heads 0..R-1 read, R..R+Hw-1 write.

// What every core reads: the configuration and the tape layout made from it.
struct CoreView {
  const SmemConfig& c;
  const Tape& L;
};

template <typename F>
struct Ntm : CoreView {
  int64_t heads, hp;

  mutable std::vector<F> scratch;  // forward pass: location addressing of one head

  Ntm(const SmemConfig& config, const Tape& tape)
      : CoreView{config, tape}, heads(config.R + config.Hw), hp(config.W + 3 + config.S), scratch(3 * config.N) {}

  void activate(const F* raw, F* act) const {
    const int64_t w = c.W, s = c.S;
    for (int64_t h = 0; h < heads; ++h) {
      const F* r = raw + h * hp;
      F* a = act + h * hp;
#pragma omp simd
      for (int64_t j = 0; j < w; ++j) a[j] = vtanh(r[j]);
      a[w] = softplus(r[w]);
      a[w + 1] = sigmoid(r[w + 1]);
      softmax(a + w + 2, r + w + 2, s);
      a[w + 2 + s] = F(1) + softplus(r[w + 2 + s]);
    }
    const int64_t e0 = heads * hp, a0 = e0 + c.Hw * w;
#pragma omp simd
    for (int64_t j = 0; j < c.Hw * w; ++j) {
      act[e0 + j] = sigmoid(raw[e0 + j]);
      act[a0 + j] = vtanh(raw[a0 + j]);
    }
  }

  void activate_backward(const F* raw, const F* act, const F* dact, F* draw) const {
    const int64_t w = c.W, s = c.S;
    for (int64_t h = 0; h < heads; ++h) {
      const F* r = raw + h * hp;
      const F* a = act + h * hp;
      const F* d = dact + h * hp;
      F* dr = draw + h * hp;
      for (int64_t j = 0; j < w; ++j) dr[j] = d[j] * (F(1) - a[j] * a[j]);
      dr[w] = d[w] * softplus_grad(r[w]);
      dr[w + 1] = d[w + 1] * a[w + 1] * (F(1) - a[w + 1]);
      softmax_backward(dr + w + 2, a + w + 2, d + w + 2, s);
      dr[w + 2 + s] = d[w + 2 + s] * softplus_grad(r[w + 2 + s]);
    }
    const int64_t e0 = heads * hp, a0 = e0 + c.Hw * w;
    for (int64_t j = 0; j < c.Hw * w; ++j) {
      draw[e0 + j] = dact[e0 + j] * act[e0 + j] * (F(1) - act[e0 + j]);
      draw[a0 + j] = dact[a0 + j] * (F(1) - act[a0 + j] * act[a0 + j]);
    }
  }

  // Location addressing before the sharpening softmax, into out (3N): wg = lerp(prev, wc, gate),
  // ws = shift(wg), log(max(ws, eps)). Cheap enough for the backward pass to redo rather than
  // keep on the tape.
  void location_forward(const F* a, const F* prev, const F* wc, F* out) const {
    const int64_t n = c.N, w = c.W;
    F* wg = out;
    F* ws = out + n;
    F* logws = out + 2 * n;
    const F gate = a[w + 1];
    for (int64_t i = 0; i < n; ++i) wg[i] = lerp(prev[i], wc[i], gate);
    shift_forward(wg, a + w + 2, n, c.S, ws);
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) logws[i] = vlog(std::max(ws[i], F(kSharpenEps)));
  }

  // Head h's weighting inside a state: read heads, then write heads.
  template <typename P>
  P* weights_of(P* state, int64_t h) const {
    return h < c.R ? state + c.off_read_weights + h * c.N : state + c.off_write_weights + (h - c.R) * c.N;
  }

  // s: the state the step starts from; state_out: where its new state goes
  void forward(const Weights<F>& wt, const F* projected, const F* s, F* tape, F* state_out, F* features) const {
    const int64_t n = c.N, w = c.W, R = c.R;
    const F* mem = s + c.off_memory;
    core_interface_forward(*this, wt, projected, s, tape, state_out);
    const F* out = tape + L.ctrl.out;
    const F* act = tape + L.act;

    F* mnorm = tape + L.mnorm;
    row_norms(mnorm, mem, n, w);
    for (int64_t h = 0; h < heads; ++h) {
      const F* a = act + h * hp;
      const F* prev = weights_of(s, h);
      F* cos = tape + L.cos + h * n;
      F* wc = tape + L.wc + h * n;
      F* wsh = weights_of(state_out, h);  // the new weighting is part of the new state
      content_forward(mem, mnorm, a, a[w], n, w, tape + L.knorm + h, cos, wc);
      location_forward(a, prev, wc, scratch.data());
      const F gamma = a[w + 2 + c.S];
      const F* logws = scratch.data() + 2 * n;
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) wsh[i] = gamma * logws[i];
      softmax(wsh, wsh, n);
    }
    F* new_mem = state_out + c.off_memory;
    const F* erase = act + heads * hp;
    write_forward(mem, state_out + c.off_write_weights, erase, erase + c.Hw * w, c.Hw, n, w, new_mem);
    F* reads = state_out + c.off_read_vectors;
    read_forward(new_mem, state_out + c.off_read_weights, R, n, w, reads);
    std::copy(out, out + c.C, features);
    std::copy(reads, reads + R * w, features + c.C);
  }

  // Backward scratch, by name (see Arena).
  struct Scratchpad {
    int64_t dnew_mem, dwsh, dws, dwg, dwc, dmnorm, location, keep, others, dact, dout, dreads, ctrl, size;
  };
  static Scratchpad scratchpad(const SmemConfig& c, int64_t heads) {
    const int64_t n = c.N, w = c.W;
    Arena a;
    Scratchpad l{};
    l.dnew_mem = a.take(n * w);
    l.dwsh = a.take(heads * n);
    l.dws = a.take(n);
    l.dwg = a.take(n);
    l.dwc = a.take(n);
    l.dmnorm = a.take(n);
    l.location = a.take(3 * n);
    l.keep = a.take(w);  // rows of the multi-head write
    l.others = a.take(w);
    l.dact = a.take(c.P);
    l.dout = a.take(c.C);
    l.dreads = a.take(c.R * w);
    l.ctrl = a.take(controller_scratch_size(c));
    l.size = a.size;
    return l;
  }

  const Scratchpad pad = scratchpad(c, heads);  // laid out once per call, not per step

  int64_t scratch_size() const { return pad.size; }

  // s, next: the states before and after the step; dstate_out: gradient of next; dstate_in
  // (zeroed by the caller) receives the gradient of s.
  void backward(const Weights<F>& wt, const F* s, const F* next, F* tape, const F* dfeatures, const F* dstate_out,
                F* dstate_in, F* dprojected, Scratch<F>& sc) const {
    const int64_t n = c.N, w = c.W, R = c.R, nw = n * w;
    F *dnew_mem = sc.at(pad.dnew_mem), *dwsh = sc.at(pad.dwsh), *dws = sc.at(pad.dws), *dwg = sc.at(pad.dwg);
    F *dwc = sc.at(pad.dwc), *dmnorm = sc.at(pad.dmnorm), *location = sc.at(pad.location), *keep = sc.at(pad.keep);
    F *others = sc.at(pad.others), *dact = sc.at(pad.dact), *dout = sc.at(pad.dout), *dreads = sc.at(pad.dreads);
    F *ctrl_scratch = sc.at(pad.ctrl), *draw = tape + L.draw;
    const F *mem = s + c.off_memory, *new_mem = next + c.off_memory;
    const F *act = tape + L.act, *raw = tape + L.raw, *mnorm = tape + L.mnorm;

    features_backward(c, dfeatures, dstate_out, dout, dreads);
    std::copy(dstate_out + c.off_memory, dstate_out + c.off_memory + nw, dnew_mem);
    std::copy(dstate_out + c.off_read_weights, dstate_out + c.off_read_weights + R * n, dwsh);
    std::copy(dstate_out + c.off_write_weights, dstate_out + c.off_write_weights + c.Hw * n, dwsh + R * n);
    std::fill(dact, dact + c.P, F(0));
    std::fill(dmnorm, dmnorm + n, F(0));

    // reads from the written memory, then the write
    read_backward(new_mem, next + c.off_read_weights, dreads, R, n, w, dnew_mem, dwsh);
    const F* erase = act + heads * hp;
    F* derase = dact + heads * hp;
    F* dmem = dstate_in + c.off_memory;
    write_backward(mem, next + c.off_write_weights, erase, erase + c.Hw * w, dnew_mem, c.Hw, n, w, dmem, dwsh + R * n,
                   derase, derase + c.Hw * w, keep, others);

    // addressing, head by head
    for (int64_t h = 0; h < heads; ++h) {
      const F* a = act + h * hp;
      F* da = dact + h * hp;
      const F* cos = tape + L.cos + h * n;
      const F* wc = tape + L.wc + h * n;
      const F* prev = weights_of(s, h);
      location_forward(a, prev, wc, location);
      const F* wg = location;
      const F* ws = location + n;
      const F* logws = location + 2 * n;
      const F* wh = weights_of(next, h);
      const F* dwh = dwsh + h * n;
      const F gamma = a[w + 2 + c.S];
      // sharpen: wsh = softmax(gamma * log(max(ws, eps)))
      const F sdot = dot(dwh, wh, n);
      F dgamma = 0;
#pragma omp simd reduction(+ : dgamma)
      for (int64_t i = 0; i < n; ++i) {
        const F dz = wh[i] * (dwh[i] - sdot);
        dgamma += dz * logws[i];
        dws[i] = ws[i] >= F(kSharpenEps) ? dz * gamma / ws[i] : F(0);
      }
      da[w + 2 + c.S] += dgamma;
      shift_backward(wg, a + w + 2, dws, n, c.S, dwg, da + w + 2);
      // interpolation
      const F gate = a[w + 1];
      F* dprev = weights_of(dstate_in, h);
      F dgate = 0;
      for (int64_t i = 0; i < n; ++i) {
        dprev[i] += dwg[i] * (F(1) - gate);
        dwc[i] = dwg[i] * gate;
        dgate += dwg[i] * (wc[i] - prev[i]);
      }
      da[w + 1] += dgate;
      content_backward(mem, mnorm, a, tape[L.knorm + h], a[w], cos, wc, dwc, n, w, dmem, dmnorm, da, da + w);
    }
    apply_norm_grad(dmem, mem, mnorm, dmnorm, n, w);

    activate_backward(raw, act, dact, draw);
    core_controller_backward(c, wt, tape, L.ctrl, s, draw, dstate_out, dout, dprojected, dstate_in + c.off_read_vectors,
                             dstate_in, ctrl_scratch);
  }
};

// ----------------------------------------------------------------------------------------------
// DNC (dnc.py). Interface: [read keys (R*W), write key (W), write vector (W)] raw |
// [read strengths (R), write strength] oneplus | [erase (W), free gates (R), allocation gate,
// write gate] sigmoid | read modes (R x 3: backward, content, forward) softmax.

template <typename F>
struct Dnc : CoreView {
  int64_t strengths, gates, modes;  // offsets of the interface groups

  Dnc(const SmemConfig& config, const Tape& tape) : CoreView{config, tape} {
    strengths = config.R * config.W + 2 * config.W;
    gates = strengths + config.R + 1;
    modes = gates + config.W + config.R + 2;
  }

  void activate(const F* raw, F* act) const {
    std::copy(raw, raw + strengths, act);
    for (int64_t j = strengths; j < gates; ++j) act[j] = F(1) + softplus(raw[j]);
#pragma omp simd
    for (int64_t j = gates; j < modes; ++j) act[j] = sigmoid(raw[j]);
    for (int64_t r = 0; r < c.R; ++r) softmax(act + modes + 3 * r, raw + modes + 3 * r, 3);
  }

  void activate_backward(const F* raw, const F* act, const F* dact, F* draw) const {
    std::copy(dact, dact + strengths, draw);
    for (int64_t j = strengths; j < gates; ++j) draw[j] = dact[j] * softplus_grad(raw[j]);
    for (int64_t j = gates; j < modes; ++j) draw[j] = dact[j] * act[j] * (F(1) - act[j]);
    for (int64_t r = 0; r < c.R; ++r)
      softmax_backward(draw + modes + 3 * r, act + modes + 3 * r, dact + modes + 3 * r, 3);
  }

  void forward(const Weights<F>& wt, const F* projected, const F* s, F* tape, F* state_out, F* features) const {
    const int64_t n = c.N, w = c.W, R = c.R;
    const F* mem = s + c.off_memory;
    const F* prev_rw = s + c.off_read_weights;
    const F* prev_ww = s + c.off_write_weights;
    const F* usage = s + c.off_usage;
    const F* prec = s + c.off_precedence;
    core_interface_forward(*this, wt, projected, s, tape, state_out);
    const F* out = tape + L.ctrl.out;
    const F* act = tape + L.act;
    const F* read_keys = act;
    const F* write_key = act + R * w;
    const F* write_vec = write_key + w;
    const F* erase = act + gates;
    const F* free_gates = erase + w;
    const F alloc_gate = free_gates[R], write_gate = free_gates[R + 1];

    F* new_usage = state_out + c.off_usage;
    usage_forward(usage, prev_ww, prev_rw, free_gates, R, n, tape + L.usage1, tape + L.retention, new_usage);
    // write content weighting on the memory before the write
    F* mnorm = tape + L.mnorm;
    row_norms(mnorm, mem, n, w);
    F* cw = tape + L.cw;
    content_forward(mem, mnorm, write_key, act[strengths + R], n, w, tape + L.wknorm, tape + L.wcos, cw);
    F* alloc = tape + L.alloc;
    allocation_forward(new_usage, n, tape + L.sorted, tape + L.order, tape + L.before, alloc);
    // write weighting, memory, link, precedence
    F* ww = state_out + c.off_write_weights;  // the new weightings are part of the new state
    write_weights_forward(cw, alloc, alloc_gate, write_gate, n, ww);
    F* new_mem = state_out + c.off_memory;
    write_forward(mem, ww, erase, write_vec, 1, n, w, new_mem);
    F* new_link = state_out + c.off_link;
    link_forward(s + c.off_link, ww, prec, n, new_link);
    precedence_forward(ww, prec, n, state_out + c.off_precedence);
    // reads
    F* fwd = tape + L.fwd;
    F* bwd = tape + L.bwd;
    directional_forward(new_link, prev_rw, R, n, fwd, bwd);
    F* mnorm2 = tape + L.mnorm2;
    row_norms(mnorm2, new_mem, n, w);
    F* rw = state_out + c.off_read_weights;
    F* reads = state_out + c.off_read_vectors;
    std::fill(reads, reads + R * w, F(0));
    for (int64_t r = 0; r < R; ++r) {
      F* rc = tape + L.rc + r * n;
      content_forward(new_mem, mnorm2, read_keys + r * w, act[strengths + r], n, w, tape + L.rknorm + r,
                      tape + L.rcos + r * n, rc);
      const F* m = act + modes + 3 * r;
      read_modes_forward(m, bwd + r * n, rc, fwd + r * n, n, rw + r * n);
    }
    read_forward(new_mem, rw, R, n, w, reads);
    std::copy(out, out + c.C, features);
    std::copy(reads, reads + R * w, features + c.C);
  }

  // Backward scratch, by name (see Arena).
  struct Scratchpad {
    int64_t dnew_mem, dlink, drw, dbwd, dww, dmnorm, dcw, dalloc, dsorted, dusage, tmp, dact, dout, dreads, ctrl, size;
  };
  static Scratchpad scratchpad(const SmemConfig& c) {
    const int64_t n = c.N, R = c.R;
    Arena a;
    Scratchpad l{};
    l.dnew_mem = a.take(n * c.W);
    l.dlink = a.take(n * n);
    l.drw = a.take(R * n);
    l.dbwd = a.take(R * n);
    l.dww = a.take(n);
    l.dmnorm = a.take(n);
    l.dcw = a.take(n);
    l.dalloc = a.take(n);
    l.dsorted = a.take(n);
    l.dusage = a.take(n);
    l.tmp = a.take(2 * n);
    l.dact = a.take(c.P);
    l.dout = a.take(c.C);
    l.dreads = a.take(R * c.W);
    l.ctrl = a.take(controller_scratch_size(c));
    l.size = a.size;
    return l;
  }

  const Scratchpad pad = scratchpad(c);  // laid out once per call, not per step

  int64_t scratch_size() const { return pad.size; }

  // The read weightings' backward, head by head: the read modes mix the backward, content and
  // forward weightings (read_modes_backward); the content weighting looks up the written memory
  // (content_backward). On return drw holds each head's forward-weighting gradient and dbwd its
  // backward-weighting gradient, as directional_backward takes them; dnew_mem has the lookups' share.
  void read_weights_backward(const F* tape, const F* new_mem, F* drw, F* dact, F* dnew_mem, F* dbwd, F* dmnorm,
                             F* tmp) const {
    const int64_t n = c.N, w = c.W;
    const F* act = tape + L.act;
    const F* mnorm2 = tape + L.mnorm2;
    std::fill(dmnorm, dmnorm + n, F(0));
    for (int64_t r = 0; r < c.R; ++r) {
      const F* rc = tape + L.rc + r * n;
      F* dfwd = tmp;  // reused per head
      F* drc = tmp + n;
      read_modes_backward(act + modes + 3 * r, tape + L.bwd + r * n, rc, tape + L.fwd + r * n, drw + r * n, n,
                          dact + modes + 3 * r, dbwd + r * n, drc, dfwd);
      content_backward(new_mem, mnorm2, act + r * w, tape[L.rknorm + r], act[strengths + r], tape + L.rcos + r * n, rc,
                       drc, n, w, dnew_mem, dmnorm, dact + r * w, dact + strengths + r);
      std::copy(dfwd, dfwd + n, drw + r * n);  // drw_r is spent: keep dfwd_r there
    }
    apply_norm_grad(dnew_mem, new_mem, mnorm2, dmnorm, n, w);
  }

  void backward(const Weights<F>& wt, const F* s, const F* next, F* tape, const F* dfeatures, const F* dstate_out,
                F* dstate_in, F* dprojected, Scratch<F>& sc) const {
    const int64_t n = c.N, w = c.W, R = c.R, nw = n * w;
    const F* mem = s + c.off_memory;
    const F* new_mem = next + c.off_memory;
    const F* new_link = next + c.off_link;
    const F* prev_rw = s + c.off_read_weights;
    const F* prev_ww = s + c.off_write_weights;
    const F* usage = s + c.off_usage;
    const F* prec = s + c.off_precedence;
    const F* lnk = s + c.off_link;
    const F* act = tape + L.act;
    const F* raw = tape + L.raw;
    const F* write_key = act + R * w;
    const F* write_vec = write_key + w;
    const F* erase = act + gates;
    const F* free_gates = erase + w;
    const F alloc_gate = free_gates[R], write_gate = free_gates[R + 1];
    const F* ww = next + c.off_write_weights;
    const F* rw = next + c.off_read_weights;
    const F* cw = tape + L.cw;
    const F* alloc = tape + L.alloc;

    F *dnew_mem = sc.at(pad.dnew_mem), *dlink = sc.at(pad.dlink), *drw = sc.at(pad.drw), *dbwd = sc.at(pad.dbwd);
    F *dww = sc.at(pad.dww), *dmnorm = sc.at(pad.dmnorm), *dcw = sc.at(pad.dcw), *dalloc = sc.at(pad.dalloc);
    F *dsorted = sc.at(pad.dsorted), *dusage = sc.at(pad.dusage), *tmp = sc.at(pad.tmp), *dact = sc.at(pad.dact);
    F *dout = sc.at(pad.dout), *dreads = sc.at(pad.dreads), *ctrl_scratch = sc.at(pad.ctrl), *draw = tape + L.draw;

    features_backward(c, dfeatures, dstate_out, dout, dreads);
    std::copy(dstate_out + c.off_memory, dstate_out + c.off_memory + nw, dnew_mem);
    std::copy(dstate_out + c.off_read_weights, dstate_out + c.off_read_weights + R * n, drw);
    std::copy(dstate_out + c.off_link, dstate_out + c.off_link + n * n, dlink);
    std::copy(dstate_out + c.off_write_weights, dstate_out + c.off_write_weights + n, dww);
    std::copy(dstate_out + c.off_usage, dstate_out + c.off_usage + n, dusage);
    std::fill(dact, dact + c.P, F(0));

    F* dwrite_key = dact + R * w;
    F* dwrite_vec = dwrite_key + w;
    F* dstrengths = dact + strengths;
    F* derase = dact + gates;
    F* dfree = derase + w;

    // reads from the written memory, then the read weightings
    read_backward(new_mem, rw, dreads, R, n, w, dnew_mem, drw);
    read_weights_backward(tape, new_mem, drw, dact, dnew_mem, dbwd, dmnorm, tmp);
    F* dprev_rw = dstate_in + c.off_read_weights;
    directional_backward(new_link, prev_rw, drw, dbwd, R, n, dlink, dprev_rw);
    F* dprec = dstate_in + c.off_precedence;
    precedence_backward(ww, prec, dstate_out + c.off_precedence, n, dprec, dww);
    // dalloc serves as link_backward's scratch: it is written from scratch below
    link_backward(lnk, ww, prec, dlink, n, dstate_in + c.off_link, dww, dprec, dalloc);
    // write (one head: write_backward needs no keep/others scratch)
    write_backward(mem, ww, erase, write_vec, dnew_mem, 1, n, w, dstate_in + c.off_memory, dww, derase, dwrite_vec,
                   static_cast<F*>(nullptr), static_cast<F*>(nullptr));
    F* dmem = dstate_in + c.off_memory;
    write_weights_backward(cw, alloc, alloc_gate, write_gate, dww, n, dcw, dalloc, dfree + R, dfree + R + 1);
    allocation_backward(tape + L.sorted, tape + L.order, tape + L.before, dalloc, n, dusage, dsorted, tmp);
    // write content weighting
    const F* mnorm = tape + L.mnorm;
    std::fill(dmnorm, dmnorm + n, F(0));
    content_backward(mem, mnorm, write_key, tape[L.wknorm], act[strengths + R], tape + L.wcos, cw, dcw, n, w, dmem,
                     dmnorm, dwrite_key, dstrengths + R);
    apply_norm_grad(dmem, mem, mnorm, dmnorm, n, w);
    usage_backward(usage, prev_ww, prev_rw, free_gates, tape + L.usage1, tape + L.retention, dusage, R, n,
                   dstate_in + c.off_usage, dstate_in + c.off_write_weights, dprev_rw, dfree);

    activate_backward(raw, act, dact, draw);
    core_controller_backward(c, wt, tape, L.ctrl, s, draw, dstate_out, dout, dprojected, dstate_in + c.off_read_vectors,
                             dstate_in, ctrl_scratch);
  }
};

// ----------------------------------------------------------------------------------------------
// Sparse NTM (ntm.py with sparse_top_k = K; Rae et al., 2016). The NTM's equations with every
// weighting cut to its K largest entries: content addressing scans the N rows once, keeping each
// head's K best logits (ties to the lowest slot, as addressing.top_k), and all that follows works
// on short lists of slots. The tape keeps no state, only each head's chosen slots and the rows a
// write changed, before and after (an undo log), so it does not grow with N. The backward pass
// rebuilds each episode segment's memory by replaying the writes, then walks back reverting them,
// with the gradients of the memory and the weightings held densely once per batch row.

// The k best (value, slot) pairs offered; better = larger value, then lower slot.
template <typename F>
struct BestK {
  int64_t k, size = 0, worst = 0;
  std::vector<F> value;
  std::vector<int64_t> slot;
  explicit BestK(int64_t k_) : k(k_), value(k_), slot(k_) {}
  static bool better(F v, int64_t i, F u, int64_t j) { return v > u || (v == u && i < j); }
  void clear() { size = worst = 0; }
  bool full() const { return size == k; }
  bool beats_worst(F v, int64_t i) const { return !full() || better(v, i, value[worst], slot[worst]); }
  void offer(F v, int64_t i) {
    if (!beats_worst(v, i)) return;
    const int64_t at = full() ? worst : size++;
    value[at] = v;
    slot[at] = i;
    if (!full()) return;
    worst = 0;
    for (int64_t j = 1; j < size; ++j)
      if (better(value[worst], slot[worst], value[j], slot[j])) worst = j;
  }
  void slots_ascending(int64_t* out) const {
    std::copy(slot.begin(), slot.begin() + size, out);
    std::sort(out, out + size);
  }
};

// Values over N slots held densely, with the list of the slots touched, so that visiting and
// clearing cost the touched slots, not N.
template <typename F>
struct SlotMap {
  std::vector<F> value;
  std::vector<uint8_t> in;
  std::vector<int64_t> slots;
  explicit SlotMap(int64_t n) : value(n, F(0)), in(n, 0) {}
  void touch(int64_t i) {
    if (!in[i]) {
      in[i] = 1;
      slots.push_back(i);
    }
  }
  void add(int64_t i, F v) {
    touch(i);
    value[i] += v;
  }
  void clear() {
    for (int64_t i : slots) {
      value[i] = F(0);
      in[i] = 0;
    }
    slots.clear();
  }
};

// i mod n for i in [-n, 2n): shifts move a slot by less than N (no division in the inner loops).
constexpr int64_t kScanBlock = 512;  // rows per block of a content scan: its logits stay in L1

inline int64_t wrap(int64_t i, int64_t n) { return i < 0 ? i + n : (i >= n ? i - n : i); }

// The slots of a weighting with a non-zero weight, ascending.
template <typename F>
void nonzero_slots(const F* weights, int64_t n, std::vector<int64_t>& out) {
  out.clear();
  for (int64_t i = 0; i < n; ++i)
    if (weights[i] != F(0)) out.push_back(i);
}

// Whether a[0, n) and b[0, n) hold the same bits (so -0 differs from 0, and a NaN equals itself).
template <typename F>
bool same_bits(const F* a, const F* b, int64_t n) {
  for (int64_t i = 0; i < n; ++i)
    if (to_bits(a[i]) != to_bits(b[i])) return false;
  return true;
}

// What a sparse core's content scans (and the DNC's allocation) read, per batch row. memory_init
// makes every row of the initial memory alike, and a row nobody has written since (a "pristine"
// row) still equals it: all pristine rows score alike, so a scan visits the rows that changed and
// the K lowest pristine ones. Its cost follows how much of the memory was written, not N. The
// candidates are scored with the same operations in the same order as a scan of every row would,
// so the logits, and hence the choice, are the same to the bit.
template <typename F>
struct ScanRows {
  std::vector<F> mnorm;           // every row's norm
  std::vector<uint8_t> changed;   // the row differs from the initial state's (memory, or usage)
  std::vector<int64_t> changed_rows, candidates;
  std::vector<F> block, norms, logits;  // candidates' rows transposed (W x kScanBlock), norms, per-head logits
  std::vector<const F*> keys;           // each head's key (W), strength and key norm, set by the caller
  std::vector<F> betas, knorms;
  const F* checked = nullptr;     // the initial row last checked, and whether its rows are all alike
  bool uniform = false;
  bool count_once = false;        // unwritten rows count once in a top K (uniform, K < N)
  std::vector<uint8_t> later_unwritten;  // per candidate: holds the initial row, and is not the lowest such

  ScanRows(const SmemConfig& c, int64_t heads)
      : mnorm(c.N),
        changed(c.N, 0),
        block(c.W * kScanBlock),
        norms(kScanBlock),
        logits(heads * kScanBlock),
        keys(heads),
        betas(heads),
        knorms(heads) {}

  // A row's working state (into s) from a flat state, which rows changed and their norms (a
  // pristine row's norm is taken when a scan visits it: at large N the norms of every row were a
  // call's largest cost outside the steps).
  void load(const SmemConfig& c, const F* from, const F* init, int64_t usage_offset, F* s) {
    if (init != checked) {
      checked = init;
      uniform = true;
      for (int64_t i = 1; i < c.N && uniform; ++i)
        uniform = same_bits(init + c.off_memory, init + c.off_memory + i * c.W, c.W) &&
                  (usage_offset < 0 || to_bits(init[usage_offset]) == to_bits(init[usage_offset + i]));
    }
    count_once = uniform && c.top_k < c.N;
    for (int64_t i : changed_rows) changed[i] = 0;
    changed_rows.clear();
    std::copy(from, from + c.D, s);
    const int64_t w = c.W;
    const F* init_row = init + c.off_memory;  // with uniform rows, every row of the initial memory
    for (int64_t i = 0; i < c.N; ++i) {
      const F* row = s + c.off_memory + i * w;
      const bool pristine = uniform && same_bits(row, init_row, w) &&
                            (usage_offset < 0 || to_bits(s[usage_offset + i]) == to_bits(init[usage_offset]));
      if (!pristine) {
        mark(i);
        row_norms(mnorm.data() + i, row, 1, w);
      }
    }
  }

  // Memory row i (of mem) holds the initial row, with count_once: the rows of an unwritten memory.
  bool unwritten(const SmemConfig& c, const F* mem, int64_t i) const {
    return same_bits(mem + i * c.W, checked + c.off_memory, c.W);
  }

  // Which of a head's chosen slots (ascending) get no weight (addressing.count_unwritten_once): the
  // unwritten ones after the first. That first is the lowest unwritten slot of all: a chosen
  // unwritten slot ranked at -inf means every slot with a finite logit, that one included, was chosen.
  void skipped(const SmemConfig& c, const F* mem, const int64_t* slots, int64_t k, uint8_t* skip) const {
    bool seen = false;
    for (int64_t j = 0; j < k; ++j) {
      const bool alike = count_once && unwritten(c, mem, slots[j]);
      skip[j] = alike && seen;
      seen |= alike;
    }
  }

  void mark(int64_t i) {
    if (!changed[i]) {
      changed[i] = 1;
      changed_rows.push_back(i);
    }
  }

  // The rows a search over every slot has to visit: the changed ones and the K lowest pristine ones.
  const std::vector<int64_t>& candidate_rows(int64_t n, int64_t k) {
    candidates.assign(changed_rows.begin(), changed_rows.end());
    for (int64_t i = 0, pristine_rows = 0; i < n && pristine_rows < k; ++i)
      if (!changed[i]) {
        candidates.push_back(i);
        ++pristine_rows;
      }
    return candidates;
  }

  // The K largest content logits beta_h cos(key_h, M_i) over every row of heads [h0, h1), into
  // best[h]. The dot products accumulate down the block's columns, so the loops run along the rows
  // (vectorised) with no reduction across a word.
  void scan(const SmemConfig& c, const F* mem, int64_t h0, int64_t h1, BestK<F>* best) {
    const int64_t w = c.W;
    const std::vector<int64_t>& rows = candidate_rows(c.N, c.top_k);
    for (int64_t h = h0; h < h1; ++h) best[h].clear();
    for (int64_t i : rows)
      if (!changed[i]) row_norms(mnorm.data() + i, mem + i * w, 1, w);  // pristine: its norm not yet taken
    // With count_once every unwritten row but the lowest scores -inf. The lowest unwritten row is a
    // candidate: a changed row (its usage changed), or the lowest pristine one.
    later_unwritten.assign(rows.size(), 0);
    if (count_once) {
      int64_t first = -1;
      for (size_t i = 0; i < rows.size(); ++i)
        if (unwritten(c, mem, rows[i])) {
          later_unwritten[i] = 1;
          if (first < 0 || rows[i] < rows[first]) first = int64_t(i);
        }
      if (first >= 0) later_unwritten[first] = 0;
    }
    for (int64_t b0 = 0; b0 < int64_t(rows.size()); b0 += kScanBlock) {
      const int64_t len = std::min(kScanBlock, int64_t(rows.size()) - b0);
      const int64_t* at = rows.data() + b0;
      for (int64_t i = 0; i < len; ++i) {
        norms[i] = mnorm[at[i]];
        for (int64_t j = 0; j < w; ++j) block[j * kScanBlock + i] = mem[at[i] * w + j];
      }
      for (int64_t h = h0; h < h1; ++h) {
        F* RESTRICT y = logits.data() + h * kScanBlock;
        std::fill(y, y + len, F(0));
        for (int64_t j = 0; j < w; ++j) axpy(y, block.data() + j * kScanBlock, keys[h][j], len);
        const F kn = knorms[h], beta = betas[h];
        const F* RESTRICT nm = norms.data();
#pragma omp simd
        for (int64_t i = 0; i < len; ++i) y[i] = beta * (y[i] / (kn * nm[i] + F(kCosineEps)));
        for (int64_t i = 0; i < len; ++i) {
          const F logit = later_unwritten[b0 + i] ? -std::numeric_limits<F>::infinity() : y[i];
          if (best[h].beats_worst(logit, at[i])) best[h].offer(logit, at[i]);
        }
      }
    }
  }

  // Slot i's usage changed (the DNC's allocation candidates): a changed row from now on, with its norm.
  void usage_changed(const SmemConfig& c, const F* mem, int64_t i) {
    if (!changed[i]) row_norms(mnorm.data() + i, mem + i * c.W, 1, c.W);
    mark(i);
  }

  // Row i of the memory mem was written.
  void written(const SmemConfig& c, const F* mem, int64_t i) {
    mark(i);
    row_norms(mnorm.data() + i, mem + i * c.W, 1, c.W);
  }
};

template <typename F>
void gather_rows(const F* mem, const int64_t* slots, int64_t count, int64_t w, F* out) {
  for (int64_t j = 0; j < count; ++j) std::copy(mem + slots[j] * w, mem + (slots[j] + 1) * w, out + j * w);
}

template <typename F>
void scatter_add_rows(F* mem, const int64_t* slots, int64_t count, int64_t w, const F* rows) {
  for (int64_t j = 0; j < count; ++j) axpy(mem + slots[j] * w, rows + j * w, F(1), w);
}

template <typename F>
struct StateCarry;

// A sparse core's last stage backward: from the interface's gradient (the tape's draw) through
// W_if into dout, then the controller, whose previous cell is the previous step's (tape) or the
// segment's first state's.
template <typename F>
void sparse_controller_backward(const SmemConfig& c, const Tape& L, const Weights<F>& wt, const F* start,
                                const F* before, F* tape, const StateCarry<F>& dnext, StateCarry<F>& dprev,
                                F* dprojected, F* dout, F* scratch) {
  gemv_cols(dout, wt.w_if, tape + L.draw, c.C, c.P);
  dprev.clear();
  const F* cell = before ? before + L.ctrl.cell : start + c.off_controller_cell;
  controller_backward(c, wt, tape, L.ctrl, tape + L.ctrl.hidden, cell, dout, dnext.cell.data(), dprojected,
                      dprev.reads.data(), dprev.hidden.data(), dprev.cell.data(), scratch);
}

// The carried gradients of the controller state and the read vectors (sparse cores' backward
// passes), of a step's output (next) and of its input (prev).
template <typename F>
struct StateCarry {
  std::vector<F> hidden, cell, reads;

  explicit StateCarry(const SmemConfig& c) : hidden(c.C), cell(c.C), reads(c.R * c.W) {}

  void take(const SmemConfig& c, const F* dstate) {
    clear();
    std::copy(dstate + c.off_controller_hidden, dstate + c.off_controller_hidden + c.hidden_size, hidden.begin());
    std::copy(dstate + c.off_controller_cell, dstate + c.off_controller_cell + c.cell_size, cell.begin());
    std::copy(dstate + c.off_read_vectors, dstate + c.off_read_vectors + c.R * c.W, reads.begin());
  }

  void put(const SmemConfig& c, F* dstate) const {
    std::copy(hidden.begin(), hidden.begin() + c.hidden_size, dstate + c.off_controller_hidden);
    std::copy(cell.begin(), cell.begin() + c.cell_size, dstate + c.off_controller_cell);
    std::copy(reads.begin(), reads.end(), dstate + c.off_read_vectors);
  }

  void clear() {
    for (std::vector<F>* v : {&hidden, &cell, &reads}) std::fill(v->begin(), v->end(), F(0));
  }
};

template <typename F>
struct SparseNtm : CoreView {
  const Ntm<F> ntm;  // the interface, its activation and the state's weighting fields are the NTM's
  int64_t heads, hp, k, rows;

  SparseNtm(const SmemConfig& config, const Tape& tape)
      : CoreView{config, tape},
        ntm(config, tape),
        heads(config.R + config.Hw),
        hp(config.W + 3 + config.S),
        k(config.top_k),
        rows(config.Hw * config.top_k) {}

  // One batch row's working storage, reused from row to row.
  struct Work {
    ScanRows<F> scan;                            // content scans (forward)
    std::vector<std::vector<int64_t>> support;   // each head's slots with a non-zero weight
    std::vector<BestK<F>> best;                  // each head's choice
    SlotMap<F> wc, wg, ws, dwg, prev;            // one head's location addressing
    std::vector<std::vector<int64_t>> touched;   // backward: slots of each head's weighting gradient
    std::vector<uint8_t> dense_gradient;         // backward: that gradient may be non-zero anywhere
    std::vector<int64_t> slots;
    std::vector<F> rows, drows, norms, dnorms, ww, dww, dwout, dact, dout, dreads, keep, others, ctrl;
    std::vector<uint8_t> skip;                   // a head's chosen slots that get no weight (ScanRows::skipped)
  };

  Work work() const {
    const int64_t n = c.N, w = c.W, m = std::max(k, rows);
    return Work{ScanRows<F>(c, heads), std::vector<std::vector<int64_t>>(heads), std::vector<BestK<F>>(heads, BestK<F>(k)),
                SlotMap<F>(n), SlotMap<F>(n), SlotMap<F>(n), SlotMap<F>(n), SlotMap<F>(n),
                std::vector<std::vector<int64_t>>(heads), std::vector<uint8_t>(heads, 0), std::vector<int64_t>(m),
                std::vector<F>(m * w), std::vector<F>(m * w), std::vector<F>(m), std::vector<F>(m),
                std::vector<F>(c.Hw * m), std::vector<F>(c.Hw * m), std::vector<F>(heads * k), std::vector<F>(c.P),
                std::vector<F>(c.C), std::vector<F>(c.R * w), std::vector<F>(w), std::vector<F>(w),
                std::vector<F>(controller_scratch_size(c)), std::vector<uint8_t>(k)};
  }

  const F* slots_of(const F* tape, int64_t field, int64_t h, int64_t* out) const {
    const F* at = tape + field + h * k;
    for (int64_t j = 0; j < k; ++j) out[j] = int64_t(at[j]);
    return at;
  }

  // The non-zero slots of each head's weighting in a flat state.
  void find_support(const F* s, Work& wk) const {
    for (int64_t h = 0; h < heads; ++h) nonzero_slots(ntm.weights_of(s, h), c.N, wk.support[h]);
  }

  // A row's working state (in s, updated in place by forward) from a flat state; init: the initial row.
  void load(const F* from, const F* init, F* s, Work& wk) const {
    wk.scan.load(c, from, init, -1, s);
    find_support(s, wk);
  }

  // Content addressing of all heads in one scan, each head keeping its K largest logits; then
  // content_forward on the chosen rows (the softmax over them).
  void content_select(const F* mem, const F* act, F* tape, Work& wk) const {
    const int64_t w = c.W;
    ScanRows<F>& scan = wk.scan;
    for (int64_t h = 0; h < heads; ++h) {
      const F* a = act + h * hp;
      scan.keys[h] = a;
      scan.betas[h] = a[w];
      scan.knorms[h] = tape[L.knorm + h] = std::sqrt(dot(a, a, w));
    }
    scan.scan(c, mem, 0, heads, wk.best.data());
    int64_t* slots = wk.slots.data();
    for (int64_t h = 0; h < heads; ++h) {
      const F* a = act + h * hp;
      wk.best[h].slots_ascending(slots);
      for (int64_t j = 0; j < k; ++j) {
        tape[L.sel + h * k + j] = F(slots[j]);
        wk.norms[j] = wk.scan.mnorm[slots[j]];
      }
      gather_rows(mem, slots, k, w, wk.rows.data());
      scan.skipped(c, mem, slots, k, wk.skip.data());
      content_forward_skipping(wk.rows.data(), wk.norms.data(), a, a[w], k, w, tape + L.knorm + h,
                               tape + L.cos + h * k, tape + L.wc + h * k, wk.skip.data());
    }
  }

  // Head h's location addressing on lists of slots: wg = lerp(prev, wc, gate) on the union of the
  // previous weighting's support and the content slots, ws = shift(wg) on every slot it reaches
  // (addressing.interpolate and circular_shift; the offsets summed in order, as shift_forward).
  // prev: the previous weighting, dense (N).
  void location(const F* a, const F* prev, const std::vector<int64_t>& prev_support, const F* tape, int64_t h,
                Work& wk) const {
    const int64_t n = c.N, w = c.W, size = c.S, half = (c.S - 1) / 2;
    wk.wc.clear();
    wk.wg.clear();
    wk.ws.clear();
    for (int64_t j = 0; j < k; ++j) wk.wc.add(int64_t(tape[L.sel + h * k + j]), tape[L.wc + h * k + j]);
    for (int64_t i : prev_support) wk.wg.touch(i);
    for (int64_t i : wk.wc.slots) wk.wg.touch(i);
    const F gate = a[w + 1];
    for (int64_t i : wk.wg.slots) wk.wg.value[i] = lerp(prev[i], wk.wc.value[i], gate);
    for (int64_t i : wk.wg.slots)
      for (int64_t o = 0; o < size; ++o) wk.ws.touch(wrap(i + o - half, n));
    const F* shift = a + w + 2;
    for (int64_t q : wk.ws.slots) {
      F v = 0;
      for (int64_t o = 0; o < size; ++o) v += shift[o] * wk.wg.value[wrap(q - (o - half), n)];
      wk.ws.value[q] = v;
    }
  }

  // The new weighting of head h into the tape: the K slots of largest max(ws, eps), sharpened
  // (addressing.sharpen, then top_k_weights with renormalise: the sharpening's normaliser cancels).
  // A slot ws never reached scores eps too, so it can win a tie among floored slots by its index.
  void sharpen_forward(const F* a, F* tape, int64_t h, Work& wk) const {
    BestK<F>& best = wk.best[h];
    best.clear();
    const F eps = F(kSharpenEps);
    for (int64_t q : wk.ws.slots) best.offer(std::max(wk.ws.value[q], eps), q);
    for (int64_t i = 0; i < c.N && best.beats_worst(eps, i); ++i)
      if (!wk.ws.in[i]) best.offer(eps, i);
    int64_t* slots = wk.slots.data();
    best.slots_ascending(slots);
    F* val = tape + L.wval + h * k;
    const F gamma = a[c.W + 2 + c.S];
    for (int64_t j = 0; j < k; ++j) {
      tape[L.wout + h * k + j] = F(slots[j]);
      val[j] = gamma * vlog(std::max(wk.ws.value[slots[j]], eps));
    }
    softmax(val, val, k);
  }

  // The tape's new weightings replace the old ones in the state.
  void set_weights(F* s, const F* tape, Work& wk) const {
    for (int64_t h = 0; h < heads; ++h) {
      F* wv = ntm.weights_of(s, h);
      for (int64_t i : wk.support[h]) wv[i] = F(0);
      wk.support[h].clear();
      for (int64_t j = 0; j < k; ++j) {
        const int64_t slot = int64_t(tape[L.wout + h * k + j]);
        wv[slot] = tape[L.wval + h * k + j];
        wk.support[h].push_back(slot);
      }
    }
  }

  // The write heads' slots, ascending, into the tape (-1 past the last); returns how many.
  int64_t write_slots(F* tape, Work& wk) const {
    wk.wg.clear();
    for (int64_t h = c.R; h < heads; ++h)
      for (int64_t j = 0; j < k; ++j) wk.wg.touch(int64_t(tape[L.wout + h * k + j]));
    std::vector<int64_t>& slots = wk.wg.slots;
    std::sort(slots.begin(), slots.end());
    F* uidx = tape + L.uidx;
    std::fill(uidx, uidx + rows, F(-1));
    for (size_t j = 0; j < slots.size(); ++j) uidx[j] = F(slots[j]);
    const int64_t count = int64_t(slots.size());
    wk.wg.clear();
    return count;
  }

  // Each write head's weights on the written slots (Hw x count), from the state's weightings.
  void gather_write_weights(const F* s, const int64_t* slots, int64_t count, F* ww) const {
    for (int64_t h = c.R; h < heads; ++h)
      for (int64_t j = 0; j < count; ++j) ww[(h - c.R) * count + j] = ntm.weights_of(s, h)[slots[j]];
  }

  // addressing.write on the written rows, keeping them before and after (the undo log).
  void write_rows(F* s, const F* act, F* tape, Work& wk) const {
    const int64_t w = c.W, count = write_slots(tape, wk);
    int64_t* slots = wk.slots.data();
    for (int64_t j = 0; j < count; ++j) slots[j] = int64_t(tape[L.uidx + j]);
    F* mem = s + c.off_memory;
    gather_write_weights(s, slots, count, wk.ww.data());
    gather_rows(mem, slots, count, w, tape + L.uold);
    const F* erase = act + heads * hp;
    write_forward(tape + L.uold, wk.ww.data(), erase, erase + c.Hw * w, c.Hw, count, w, tape + L.unew);
    for (int64_t j = 0; j < count; ++j) {
      std::copy(tape + L.unew + j * w, tape + L.unew + (j + 1) * w, mem + slots[j] * w);
      wk.scan.written(c, mem, slots[j]);
    }
  }

  // One step on the row's working state s, in place.
  void forward(const Weights<F>& wt, const F* projected, F* s, F* tape, F* features, Work& wk) const {
    core_interface_forward(ntm, wt, projected, s, tape, s);  // the controller reads its fields before writing them
    const F* act = tape + L.act;
    content_select(s + c.off_memory, act, tape, wk);
    for (int64_t h = 0; h < heads; ++h) {
      location(act + h * hp, ntm.weights_of(s, h), wk.support[h], tape, h, wk);
      sharpen_forward(act + h * hp, tape, h, wk);
    }
    set_weights(s, tape, wk);
    write_rows(s, act, tape, wk);
    F* reads = s + c.off_read_vectors;
    int64_t* slots = wk.slots.data();
    for (int64_t r = 0; r < c.R; ++r) {
      slots_of(tape, L.wout, r, slots);
      gather_rows(s + c.off_memory, slots, k, c.W, wk.rows.data());
      read_forward(wk.rows.data(), tape + L.wval + r * k, 1, k, c.W, reads + r * c.W);
    }
    std::copy(tape + L.ctrl.out, tape + L.ctrl.out + c.C, features);
    std::copy(reads, reads + c.R * c.W, features + c.C);
  }

  // --- backward ---

  using Carry = StateCarry<F>;
  using Log = std::vector<F>;  // nothing: the tape's undo log suffices

  void begin_segment(const F* start, const F* /*init*/, F* s, Work& wk) const {
    std::copy(start, start + c.D, s);
    find_support(s, wk);
  }

  void finish_gradients(F* /*dacc*/) const {}

  // Writes of one step applied again, from the undo log.
  void replay(F* s, const F* tape, Work& /*wk*/, Log& /*log*/) const {
    F* mem = s + c.off_memory;
    for (int64_t j = 0; j < rows && tape[L.uidx + j] >= F(0); ++j)
      std::copy(tape + L.unew + j * c.W, tape + L.unew + (j + 1) * c.W, mem + int64_t(tape[L.uidx + j]) * c.W);
  }

  // Each head's new weighting's gradient on its K slots (wk.dwout): what the state's field held
  // (which is then cleared, to take the previous weighting's), plus the reads' (r = sum_i w_i M'_i,
  // read_backward on the read rows, whose gradient joins the memory's).
  void output_weight_gradients(const F* s, const F* tape, const F* dreads, F* dacc, Work& wk) const {
    const int64_t w = c.W;
    int64_t* slots = wk.slots.data();
    for (int64_t h = 0; h < heads; ++h) {
      slots_of(tape, L.wout, h, slots);
      F* field = ntm.weights_of(dacc, h);
      F* dw = wk.dwout.data() + h * k;
      for (int64_t j = 0; j < k; ++j) dw[j] = field[slots[j]];
      if (wk.dense_gradient[h]) std::fill(field, field + c.N, F(0));
      for (int64_t i : wk.touched[h]) field[i] = F(0);
      wk.dense_gradient[h] = 0;
      wk.touched[h].clear();
      if (h >= c.R) continue;
      gather_rows(s + c.off_memory, slots, k, w, wk.rows.data());
      std::fill(wk.drows.begin(), wk.drows.begin() + k * w, F(0));
      read_backward(wk.rows.data(), tape + L.wval + h * k, dreads + h * w, 1, k, w, wk.drows.data(), dw);
      scatter_add_rows(dacc + c.off_memory, slots, k, w, wk.drows.data());
    }
  }

  // Back through the write (write_backward on the written rows): their gradient becomes that of
  // the rows before it, the write weights' joins wk.dwout, erase and add's join dact; then the rows
  // are reverted to what the step found.
  void write_backward_rows(F* s, const F* tape, const F* act, F* dacc, Work& wk) const {
    const int64_t w = c.W;
    int64_t* slots = wk.slots.data();
    int64_t count = 0;
    while (count < rows && tape[L.uidx + count] >= F(0)) slots[count] = int64_t(tape[L.uidx + count]), ++count;
    F *dmem = dacc + c.off_memory, *mem = s + c.off_memory, *g = wk.drows.data(), *dold = wk.rows.data();
    gather_rows(dmem, slots, count, w, g);
    for (int64_t h = c.R; h < heads; ++h) {
      wk.wg.clear();
      for (int64_t j = 0; j < k; ++j) wk.wg.add(int64_t(tape[L.wout + h * k + j]), tape[L.wval + h * k + j]);
      for (int64_t j = 0; j < count; ++j) wk.ww[(h - c.R) * count + j] = wk.wg.value[slots[j]];
    }
    wk.wg.clear();
    std::fill(dold, dold + count * w, F(0));
    std::fill(wk.dww.begin(), wk.dww.begin() + c.Hw * count, F(0));
    const F* erase = act + heads * hp;
    F* derase = wk.dact.data() + heads * hp;
    write_backward(tape + L.uold, wk.ww.data(), erase, erase + c.Hw * w, g, c.Hw, count, w, dold, wk.dww.data(), derase,
                   derase + c.Hw * w, wk.keep.data(), wk.others.data());
    for (int64_t j = 0; j < count; ++j) {
      std::copy(dold + j * w, dold + (j + 1) * w, dmem + slots[j] * w);
      std::copy(tape + L.uold + j * w, tape + L.uold + (j + 1) * w, mem + slots[j] * w);
    }
    for (int64_t h = c.R; h < heads; ++h)
      for (int64_t j = 0; j < k; ++j) {
        const int64_t at = std::lower_bound(slots, slots + count, int64_t(tape[L.wout + h * k + j])) - slots;
        wk.dwout[h * k + j] += wk.dww[(h - c.R) * count + at];
      }
  }

  // Back through the sharpening and the cut, w = softmax_K(gamma log max(ws, eps)), and the shift:
  // dws_q = gamma dz_q / ws_q with dz = w (dw - <dw, w>); dgamma = sum dz log ws; then, for ws_q =
  // sum_o wg[q - o + half] shift_o, dwg and dshift (into wk.dwg and da).
  void sharpen_shift_backward(const F* a, F* da, const F* tape, int64_t h, Work& wk) const {
    const int64_t n = c.N, w = c.W, half = (c.S - 1) / 2;
    const F *val = tape + L.wval + h * k, *dw = wk.dwout.data() + h * k, *shift = a + w + 2;
    const F gamma = a[w + 2 + c.S], sdot = dot(dw, val, k), eps = F(kSharpenEps);
    F dgamma = 0;
    wk.dwg.clear();
    for (int64_t j = 0; j < k; ++j) {
      const int64_t q = int64_t(tape[L.wout + h * k + j]);
      const F ws = wk.ws.value[q], dz = val[j] * (dw[j] - sdot);
      dgamma += dz * vlog(std::max(ws, eps));
      const F dws = ws >= eps ? dz * gamma / ws : F(0);
      for (int64_t o = 0; o < c.S; ++o) {
        const int64_t p = wrap(q - (o - half), n);
        wk.dwg.add(p, dws * shift[o]);
        da[w + 2 + o] += dws * wk.wg.value[p];
      }
    }
    da[w + 2 + c.S] += dgamma;
  }

  // Back through head h's addressing. prev: its previous weighting (dense); keep_prev: whether
  // that weighting's gradient is wanted (not across a reset), into dacc's field. Interpolation
  // wg = lerp(prev, wc, g): dprev = (1 - g) dwg, dwc = g dwg, dg = <dwg, wc - prev>; then
  // content_backward on the chosen rows of the memory as the step found it.
  void head_backward(int64_t h, const F* s, const F* prev, const std::vector<int64_t>& prev_support, const F* tape,
                     F* dacc, bool keep_prev, Work& wk) const {
    const int64_t w = c.W;
    const F* a = tape + L.act + h * hp;
    F* da = wk.dact.data() + h * hp;
    location(a, prev, prev_support, tape, h, wk);
    sharpen_shift_backward(a, da, tape, h, wk);
    const F gate = a[w + 1];
    F dgate = 0;
    F* field = ntm.weights_of(dacc, h);
    for (int64_t p : wk.dwg.slots) {
      const F g = wk.dwg.value[p];
      dgate += g * (wk.wc.value[p] - prev[p]);
      if (!keep_prev) continue;
      field[p] += g * (F(1) - gate);
      wk.touched[h].push_back(p);
    }
    da[w + 1] += dgate;
    int64_t* slots = wk.slots.data();
    slots_of(tape, L.sel, h, slots);
    F *rows_h = wk.rows.data(), *drows = wk.drows.data(), *dwc = wk.dwout.data() + h * k;  // dwout(h) is spent
    for (int64_t j = 0; j < k; ++j) dwc[j] = gate * wk.dwg.value[slots[j]];
    gather_rows(s + c.off_memory, slots, k, w, rows_h);
    row_norms(wk.norms.data(), rows_h, k, w);
    std::fill(drows, drows + k * w, F(0));
    std::fill(wk.dnorms.begin(), wk.dnorms.begin() + k, F(0));
    content_backward(rows_h, wk.norms.data(), a, tape[L.knorm + h], a[w], tape + L.cos + h * k, tape + L.wc + h * k, dwc,
                     k, w, drows, wk.dnorms.data(), da, da + w);
    apply_norm_grad(drows, rows_h, wk.norms.data(), wk.dnorms.data(), k, w);
    scatter_add_rows(dacc + c.off_memory, slots, k, w, drows);
  }

  // One step's gradients. s: the working state, its memory as the step left it (on return as the
  // step found it); start: the segment's first state; before: the previous step's tape record, or
  // null for the segment's first step. dacc: the memory's and weightings' gradients (on entry of
  // the step's output, on return of its input); dnext, dprev: the carried ones.
  void backward(const Weights<F>& wt, F* s, const F* start, const F* before, F* tape, const F* dfeatures, F* dacc,
                bool reset, bool /*whole*/, const Log& /*log*/, const Carry& dnext, Carry& dprev, F* dprojected,
                Work& wk) const {
    const int64_t C = c.C;
    const F* act = tape + L.act;
    F *dout = wk.dout.data(), *dreads = wk.dreads.data();
    std::fill(wk.dact.begin(), wk.dact.end(), F(0));
    std::copy(dfeatures, dfeatures + C, dout);
    if (c.hidden_size) axpy(dout, dnext.hidden.data(), F(1), C);
    for (int64_t j = 0; j < c.R * c.W; ++j) dreads[j] = dfeatures[C + j] + dnext.reads[j];
    output_weight_gradients(s, tape, dreads, dacc, wk);
    write_backward_rows(s, tape, act, dacc, wk);
    for (int64_t h = 0; h < heads; ++h) {
      if (before) {
        wk.prev.clear();
        for (int64_t j = 0; j < k; ++j) wk.prev.add(int64_t(before[L.wout + h * k + j]), before[L.wval + h * k + j]);
        head_backward(h, s, wk.prev.value.data(), wk.prev.slots, tape, dacc, true, wk);
      } else {
        head_backward(h, s, ntm.weights_of(start, h), wk.support[h], tape, dacc, !reset, wk);
      }
    }
    ntm.activate_backward(tape + L.raw, act, wk.dact.data(), tape + L.draw);
    sparse_controller_backward(c, L, wt, start, before, tape, dnext, dprev, dprojected, dout, wk.ctrl.data());
  }
};

// ----------------------------------------------------------------------------------------------
// Sparse DNC (dnc.py with sparse_top_k = K; Rae et al., 2016). The DNC's equations with every
// weighting cut to its K largest entries and a link that keeps K entries per row (values and
// column indices, addressing.sparse_update_link). Per step: content scans of the N rows (write key
// before the write, read keys after), a scan of the usages for the K least used slots, one pass
// over the link's N x K entries (its update, where a row or one of its columns was written) and
// one per read head (forward weightings); everything else works on lists of slots. The tape holds
// the step's small vectors and written memory rows; the backward pass replays each episode
// segment's usage, memory and link updates from its first state, logging the link rows each step
// changed, then walks back reverting them, with the gradients of the memory, usage, link and
// weightings held densely once per batch row.

template <typename F>
struct SparseDnc : CoreView {
  const Dnc<F> dnc;  // the interface layout and its activation are the DNC's
  int64_t k, heads;  // heads: the R read heads, then the write head (content scans)

  SparseDnc(const SmemConfig& config, const Tape& tape)
      : CoreView{config, tape}, dnc(config, tape), k(config.top_k), heads(config.R + 1) {}

  // The link rows that may differ from the initial link's, so that the link's passes visit them
  // and not all N. The initial link (values 0, row i naming columns i..i+K-1 mod N, as
  // addressing.initial_link_index lays it out) changes under a write to slot j only in row j and
  // in the rows naming j, j-K+1..j; with any other initial link every row counts.
  struct LinkRows {
    std::vector<uint8_t> in, seen;
    std::vector<int64_t> rows, candidates;
    const F* checked = nullptr;          // the initial row last checked, and whether its link is laid out so
    bool laid_out = false;
    explicit LinkRows(int64_t n) : in(n, 0), seen(n, 0) {}
    void mark(int64_t i) {
      if (!in[i]) {
        in[i] = 1;
        rows.push_back(i);
      }
    }
  };

  // One batch row's working storage, reused from row to row.
  struct Work {
    ScanRows<F> scan;                        // content scans and allocation
    std::vector<BestK<F>> best;              // per scanning head; best[heads] takes the K least used
    SlotMap<F> ww, prev, bwd, fwd, mix, content, dw;  // weightings over N
    std::vector<std::vector<int64_t>> support;        // read heads, write head, precedence: non-zero slots
    std::vector<std::vector<int64_t>> touched;        // backward: where each weighting field's gradient is
    std::vector<uint8_t> dense_gradient;
    std::vector<int64_t> slots, cols, positions;
    std::vector<F> rows, drows, norms, dnorms, pcol, row_v, row_i, keep, others, dact, dout, dreads, ctrl;
    std::vector<F> scratch;  // the backward pass's 3K
    std::vector<F> wgrad;    // backward: each new weighting's gradient at its K slots (R + 2 rows)
    LinkRows links;
    std::vector<uint8_t> skip;  // a head's chosen slots that get no weight (ScanRows::skipped)
  };

  Work work() const {
    const int64_t n = c.N, w = c.W, m = 2 * k, fields = c.R + 2;
    BestK<F> one(k);
    return Work{ScanRows<F>(c, heads), std::vector<BestK<F>>(heads + 1, one),
                SlotMap<F>(n), SlotMap<F>(n), SlotMap<F>(n), SlotMap<F>(n), SlotMap<F>(n), SlotMap<F>(n), SlotMap<F>(n),
                std::vector<std::vector<int64_t>>(fields), std::vector<std::vector<int64_t>>(fields),
                std::vector<uint8_t>(fields, 0), std::vector<int64_t>(m), std::vector<int64_t>(k),
                std::vector<int64_t>(m), std::vector<F>(std::max(k * w, m)), std::vector<F>(std::max(k * w, m)), std::vector<F>(k),
                std::vector<F>(k), std::vector<F>(k), std::vector<F>(m), std::vector<F>(m), std::vector<F>(w),
                std::vector<F>(w), std::vector<F>(c.P), std::vector<F>(c.C), std::vector<F>(c.R * w),
                std::vector<F>(controller_scratch_size(c)), std::vector<F>(std::max(3 * k, heads)),
                std::vector<F>((c.R + 2) * k), LinkRows(n), std::vector<uint8_t>(k)};
  }

  // The weighting fields of a flat state: read head h < R, the write head (R), the precedence (R + 1).
  template <typename P>
  P* field(P* state, int64_t f) const {
    if (f < c.R) return state + c.off_read_weights + f * c.N;
    return state + (f == c.R ? c.off_write_weights : c.off_precedence);
  }

  void find_support(const F* s, Work& wk) const {
    for (int64_t f = 0; f < c.R + 2; ++f) nonzero_slots(field(s, f), c.N, wk.support[f]);
  }

  void load(const F* from, const F* init, F* s, Work& wk) const {
    wk.scan.load(c, from, init, c.off_usage, s);
    find_support(s, wk);
    find_link_rows(s, init, wk);
  }

  // The rows of s's link that differ from init's (LinkRows).
  void find_link_rows(const F* s, const F* init, Work& wk) const {
    LinkRows& links = wk.links;
    const int64_t n = c.N;
    const F *values = s + c.off_link_values, *index = s + c.off_link_index;
    const F *init_values = init + c.off_link_values, *init_index = init + c.off_link_index;
    if (init != links.checked) {
      links.checked = init;
      links.laid_out = true;
      for (int64_t i = 0; i < n; ++i)
        for (int64_t m = 0; m < k; ++m)
          links.laid_out &= to_bits(init_values[i * k + m]) == to_bits(F(0)) && int64_t(init_index[i * k + m]) == wrap(i + m, n);
    }
    for (int64_t i : links.rows) links.in[i] = 0;
    links.rows.clear();
    for (int64_t i = 0; i < n; ++i)
      if (!links.laid_out || !same_bits(values + i * k, init_values + i * k, k) ||
          !same_bits(index + i * k, init_index + i * k, k))
        links.mark(i);
  }

  // Each scanning head's K best content logits in [h0, h1) (ScanRows::scan): keys at act + h W,
  // strengths at act[dnc.strengths + h].
  void scan_heads(const F* mem, const F* act, int64_t h0, int64_t h1, Work& wk) const {
    ScanRows<F>& scan = wk.scan;
    for (int64_t h = h0; h < h1; ++h) {
      scan.keys[h] = act + h * c.W;
      scan.betas[h] = act[dnc.strengths + h];
      scan.knorms[h] = std::sqrt(dot(act + h * c.W, act + h * c.W, c.W));
    }
    scan.scan(c, mem, h0, h1, wk.best.data());
  }

  // content_forward on head h's K best rows: their slots (ascending), cosines and softmax weights.
  void content_rows(const F* mem, const F* act, int64_t h, F* sel, F* knorm, F* cos, F* wc, Work& wk) const {
    int64_t* slots = wk.slots.data();
    wk.best[h].slots_ascending(slots);
    for (int64_t j = 0; j < k; ++j) {
      sel[j] = F(slots[j]);
      wk.norms[j] = wk.scan.mnorm[slots[j]];
    }
    gather_rows(mem, slots, k, c.W, wk.rows.data());
    wk.scan.skipped(c, mem, slots, k, wk.skip.data());
    content_forward_skipping(wk.rows.data(), wk.norms.data(), act + h * c.W, act[dnc.strengths + h], k, c.W, knorm,
                             cos, wc, wk.skip.data());
  }

  // Usage u' = (u + w - u w) prod_r (1 - f_r r_r) on the slots the previous weightings (the state's
  // fields) touch (addressing.update_usage; elsewhere u' = u exactly). log: the slots and their
  // usages before, for the backward pass (null in the forward pass).
  void update_usage_sparse(F* s, const F* act, Work& wk, std::vector<F>* log) const {
    SlotMap<F>& touched = wk.dw;
    touched.clear();
    for (int64_t f = 0; f <= c.R; ++f)
      for (int64_t i : wk.support[f]) touched.touch(i);
    const F* free_gates = act + dnc.gates + c.W;
    F* usage = s + c.off_usage;
    const F* ww = field(s, c.R);
    for (int64_t q : touched.slots) {
      if (log) log->insert(log->end(), {F(q), usage[q]});
      const F u1 = usage[q] + ww[q] - usage[q] * ww[q];
      F keep = F(1);
      for (int64_t r = 0; r < c.R; ++r) keep *= F(1) - free_gates[r] * field(s, r)[q];
      const F before = usage[q];
      usage[q] = u1 * keep;
      if (!log && to_bits(usage[q]) != to_bits(before)) wk.scan.usage_changed(c, s + c.off_memory, q);  // forward's scans
    }
    touched.clear();
  }

  // The K least used slots (addressing.sparse_allocation_weights): usages eased to eps + (1 - eps) u,
  // ties to the lowest slot (the reference's stable sort), into the tape in order of usage.
  void allocate(const F* s, F* tape, Work& wk) const {
    BestK<F>& least = wk.best[heads];
    least.clear();
    const F* usage = s + c.off_usage;
    for (int64_t i : wk.scan.candidate_rows(c.N, k)) {  // pristine slots' usages are alike
      const F eased = F(kUsageEps) + (F(1) - F(kUsageEps)) * usage[i];
      if (least.beats_worst(-eased, i)) least.offer(-eased, i);
    }
    int64_t* order = wk.slots.data();
    std::iota(order, order + k, int64_t(0));
    std::sort(order, order + k, [&least](int64_t a, int64_t b) {
      return BestK<F>::better(least.value[a], least.slot[a], least.value[b], least.slot[b]);
    });
    for (int64_t j = 0; j < k; ++j) {
      tape[L.aslot + j] = F(least.slot[order[j]]);
      tape[L.asorted + j] = -least.value[order[j]];
    }
  }

  // Content and allocation weightings of the write, from the tape, into wk.content and wk.mix:
  // a_j = (1 - s_j) prod_{i<j} s_i over the allocated slots in order of usage.
  void write_inputs(const F* tape, Work& wk) const {
    wk.content.clear();
    wk.mix.clear();
    for (int64_t j = 0; j < k; ++j) wk.content.add(int64_t(tape[L.wsel + j]), tape[L.cw + j]);
    F before = F(1);
    for (int64_t j = 0; j < k; ++j) {
      const F sorted = tape[L.asorted + j];
      wk.mix.add(int64_t(tape[L.aslot + j]), (F(1) - sorted) * before);
      before = before * sorted;
    }
  }

  // The K largest of a weighting over its touched slots (ties to the lowest slot; untouched slots
  // count as 0, so they fill a short list as addressing.top_k fills it), ascending, into slots.
  void cut(const SlotMap<F>& weights, BestK<F>& best, int64_t* slots) const {
    best.clear();
    for (int64_t q : weights.slots) best.offer(weights.value[q], q);
    for (int64_t i = 0; i < c.N && best.beats_worst(F(0), i); ++i)
      if (!weights.in[i]) best.offer(F(0), i);
    best.slots_ascending(slots);
  }

  // ww = g_w lerp(c, a, g_a) on the content and allocation slots, cut to K (addressing.write_weights,
  // top_k_weights), into the tape and wk.ww.
  void write_weighting(const F* act, F* tape, Work& wk) const {
    write_inputs(tape, wk);
    const F alloc_gate = act[dnc.gates + c.W + c.R], write_gate = act[dnc.gates + c.W + c.R + 1];
    SlotMap<F>& pre = wk.ww;
    pre.clear();
    for (const SlotMap<F>* part : {&wk.content, &wk.mix})
      for (int64_t q : part->slots)
        if (!pre.in[q]) pre.add(q, write_gate * lerp(wk.content.value[q], wk.mix.value[q], alloc_gate));
    int64_t* slots = wk.slots.data();
    cut(pre, wk.best[0], slots);
    for (int64_t j = 0; j < k; ++j) {
      tape[L.wwslot + j] = F(slots[j]);
      tape[L.wwval + j] = pre.value[slots[j]];
    }
    pre.clear();
    for (int64_t j = 0; j < k; ++j) pre.add(slots[j], tape[L.wwval + j]);
  }

  // addressing.write on the K written rows (erase, then add the write vector), into the tape.
  void write_rows(F* s, const F* act, F* tape, Work& wk) const {
    const int64_t w = c.W;
    int64_t* slots = wk.slots.data();
    for (int64_t j = 0; j < k; ++j) slots[j] = int64_t(tape[L.wwslot + j]);
    F* mem = s + c.off_memory;
    gather_rows(mem, slots, k, w, tape + L.uold);
    write_forward(tape + L.uold, tape + L.wwval, act + dnc.gates, act + c.R * w + w, 1, k, w, tape + L.unew);
    for (int64_t j = 0; j < k; ++j) {
      std::copy(tape + L.unew + j * w, tape + L.unew + (j + 1) * w, mem + slots[j] * w);
      wk.scan.written(c, mem, slots[j]);
    }
  }

  // The link update's precedence columns: the K largest of the previous precedence (addressing.top_k:
  // ties to the lowest slot), ascending, and their values.
  void precedence_columns(const F* s, Work& wk) const {
    const F* prec = field(s, c.R + 1);
    BestK<F>& best = wk.best[0];
    best.clear();
    for (int64_t q : wk.support[c.R + 1]) best.offer(prec[q], q);
    for (int64_t i = 0; i < c.N && best.beats_worst(F(0), i); ++i)
      if (prec[i] == F(0)) best.offer(F(0), i);
    best.slots_ascending(wk.cols.data());
    for (int64_t j = 0; j < k; ++j) wk.pcol[j] = prec[wk.cols[j]];
  }

  // Row i of addressing.sparse_update_link, from its entries (v, idx) to (out_v, out_i): candidates
  // [kept: v_m ((1 - w_i) - w_{c_m}), new: w_i p_n], a new column already in the row added to its
  // entry, then the K largest, ties to the earlier candidate, in candidate order. positions: each
  // new entry's candidate (m < K kept, K + n new), for the backward pass.
  void link_row(int64_t i, const F* v, const F* idx, const SlotMap<F>& ww, Work& wk, F* out_v, F* out_i,
                int64_t* positions) const {
    F* cand = wk.row_v.data();  // 2K candidate values
    const F wi = ww.value[i];
    for (int64_t m = 0; m < k; ++m) {
      const int64_t col = int64_t(idx[m]);
      cand[m] = col == i ? F(0) : v[m] * ((F(1) - wi) - ww.value[col]);
    }
    for (int64_t n = 0; n < k; ++n) {
      const int64_t col = wk.cols[n];
      F added = col == i ? F(0) : wi * wk.pcol[n];
      for (int64_t m = 0; m < k; ++m)
        if (int64_t(idx[m]) == col) {
          cand[m] += added;
          added = F(-1);
          break;
        }
      cand[k + n] = added;
    }
    BestK<F>& best = wk.best[0];
    best.clear();
    for (int64_t p = 0; p < 2 * k; ++p) best.offer(cand[p], p);
    best.slots_ascending(positions);
    for (int64_t e = 0; e < k; ++e) {
      const int64_t p = positions[e];
      out_v[e] = cand[p];
      out_i[e] = p < k ? idx[p] : F(wk.cols[p - k]);
    }
  }

  // Whether row i's update changes it: it was written, or it links to a written slot.
  bool link_row_changes(int64_t i, const F* idx, const SlotMap<F>& ww) const {
    if (ww.in[i]) return true;
    for (int64_t m = 0; m < k; ++m)
      if (ww.in[int64_t(idx[m])]) return true;
    return false;
  }

  // The link update over the rows it changes (in place), logging them before the step when asked:
  // of the rows changed before and the rows the written slots' writes reach (LinkRows).
  void update_link(F* s, Work& wk, std::vector<F>* log) const {
    F *values = s + c.off_link_values, *index = s + c.off_link_index;
    F* new_entries = wk.row_i.data();  // K values, then K indices
    int64_t* positions = wk.positions.data();
    LinkRows& links = wk.links;
    links.candidates.clear();
    auto consider = [&links](int64_t i) {
      if (!links.seen[i]) {
        links.seen[i] = 1;
        links.candidates.push_back(i);
      }
    };
    for (int64_t i : links.rows) consider(i);
    for (int64_t q : wk.ww.slots)
      for (int64_t m = 0; m < k; ++m) consider(wrap(q - m, c.N));  // row q itself, and the initial rows naming q
    for (int64_t i : links.candidates) {
      links.seen[i] = 0;
      F *v = values + i * k, *idx = index + i * k;
      if (!link_row_changes(i, idx, wk.ww)) continue;
      if (log) {
        log->push_back(F(i));
        log->insert(log->end(), v, v + k);
        log->insert(log->end(), idx, idx + k);
      }
      link_row(i, v, idx, wk.ww, wk, new_entries, new_entries + k, positions);
      std::copy(new_entries, new_entries + k, v);
      std::copy(new_entries + k, new_entries + 2 * k, idx);
      links.mark(i);
    }
  }

  // p' = (1 - sum ww) p + ww on the previous precedence's and the write's slots, cut to K
  // (addressing.update_precedence, top_k_weights), into the tape.
  void update_precedence_sparse(const F* s, F* tape, Work& wk) const {
    const F* prec = field(s, c.R + 1);
    F wsum = 0;
    for (int64_t j = 0; j < k; ++j) wsum += tape[L.wwval + j];
    SlotMap<F>& next = wk.mix;
    next.clear();
    for (int64_t q : wk.support[c.R + 1]) next.add(q, (F(1) - wsum) * prec[q] + wk.ww.value[q]);
    for (int64_t j = 0; j < k; ++j) {
      const int64_t q = int64_t(tape[L.wwslot + j]);
      if (!next.in[q]) next.add(q, (F(1) - wsum) * prec[q] + wk.ww.value[q]);
    }
    int64_t* slots = wk.slots.data();
    cut(next, wk.best[0], slots);
    for (int64_t j = 0; j < k; ++j) {
      tape[L.pslot + j] = F(slots[j]);
      tape[L.pval + j] = next.value[slots[j]];
    }
    next.clear();
  }

  // Read head r's directional weightings through the new link from its previous weighting (the
  // state's field): b_j = sum_i w_i L[i, j] over the weighting's rows, f_i = sum_m L[i, m] w_{c_im}
  // over every row that links to one of its slots (addressing.sparse_directional_weights).
  void directional(const F* s, int64_t r, Work& wk) const {
    const F *values = s + c.off_link_values, *index = s + c.off_link_index, *prev = field(s, r);
    wk.bwd.clear();
    wk.fwd.clear();
    for (int64_t i : wk.support[r])
      for (int64_t m = 0; m < k; ++m) wk.bwd.add(int64_t(index[i * k + m]), prev[i] * values[i * k + m]);
    for (int64_t i : wk.links.rows) {  // an initial row's values are all 0
      F f = 0;
      bool linked = false;
      for (int64_t m = 0; m < k; ++m) {
        const F w = prev[int64_t(index[i * k + m])];
        linked |= w != F(0);
        f += w * values[i * k + m];
      }
      if (linked) wk.fwd.add(i, f);
    }
  }

  // Read head r's weighting: modes (backward, content, forward) mixed, cut to K (addressing.read_weights,
  // top_k_weights), into the tape with the backward and forward weightings at its slots.
  void read_weighting(const F* s, const F* act, F* tape, int64_t r, Work& wk) const {
    directional(s, r, wk);
    wk.content.clear();
    for (int64_t j = 0; j < k; ++j) wk.content.add(int64_t(tape[L.rsel + r * k + j]), tape[L.rc + r * k + j]);
    const F* modes = act + dnc.modes + 3 * r;
    SlotMap<F>& mix = wk.mix;
    mix.clear();
    for (const SlotMap<F>* part : {&wk.bwd, &wk.content, &wk.fwd})
      for (int64_t q : part->slots)
        if (!mix.in[q])
          mix.add(q, modes[0] * wk.bwd.value[q] + modes[1] * wk.content.value[q] + modes[2] * wk.fwd.value[q]);
    int64_t* slots = wk.slots.data();
    cut(mix, wk.best[0], slots);
    for (int64_t j = 0; j < k; ++j) {
      const int64_t q = slots[j], at = r * k + j;
      tape[L.rwslot + at] = F(q);
      tape[L.rwval + at] = mix.value[q];
      tape[L.rwb + at] = wk.bwd.value[q];
      tape[L.rwf + at] = wk.fwd.value[q];
    }
    mix.clear();
  }

  // The new weightings (the tape's) replace the state's fields.
  void set_fields(F* s, const F* tape, Work& wk) const {
    for (int64_t f = 0; f < c.R + 2; ++f) {
      const int64_t slot_at = f < c.R ? L.rwslot + f * k : (f == c.R ? L.wwslot : L.pslot);
      const int64_t value_at = f < c.R ? L.rwval + f * k : (f == c.R ? L.wwval : L.pval);
      set_field(s, f, tape + slot_at, tape + value_at, wk);
    }
  }

  void set_field(F* s, int64_t f, const F* slots, const F* values, Work& wk) const {
    F* wv = field(s, f);
    for (int64_t i : wk.support[f]) wv[i] = F(0);
    wk.support[f].clear();
    for (int64_t j = 0; j < k; ++j) {
      const int64_t q = int64_t(slots[j]);
      wv[q] = values[j];
      if (values[j] != F(0)) wk.support[f].push_back(q);
    }
    std::sort(wk.support[f].begin(), wk.support[f].end());
  }

  // One step on the row's working state s, in place.
  void forward(const Weights<F>& wt, const F* projected, F* s, F* tape, F* features, Work& wk) const {
    const int64_t w = c.W, R = c.R;
    core_interface_forward(dnc, wt, projected, s, tape, s);  // the controller reads its fields before writing them
    const F* act = tape + L.act;
    update_usage_sparse(s, act, wk, nullptr);
    scan_heads(s + c.off_memory, act, R, R + 1, wk);
    content_rows(s + c.off_memory, act, R, tape + L.wsel, tape + L.wknorm, tape + L.wcos, tape + L.cw, wk);
    allocate(s, tape, wk);
    write_weighting(act, tape, wk);
    write_rows(s, act, tape, wk);
    precedence_columns(s, wk);
    update_link(s, wk, nullptr);
    update_precedence_sparse(s, tape, wk);
    scan_heads(s + c.off_memory, act, 0, R, wk);
    for (int64_t r = 0; r < R; ++r)
      content_rows(s + c.off_memory, act, r, tape + L.rsel + r * k, tape + L.rknorm + r, tape + L.rcos + r * k,
                   tape + L.rc + r * k, wk);
    for (int64_t r = 0; r < R; ++r) read_weighting(s, act, tape, r, wk);
    set_fields(s, tape, wk);
    F* reads = s + c.off_read_vectors;
    int64_t* slots = wk.slots.data();
    for (int64_t r = 0; r < R; ++r) {
      for (int64_t j = 0; j < k; ++j) slots[j] = int64_t(tape[L.rwslot + r * k + j]);
      gather_rows(s + c.off_memory, slots, k, w, wk.rows.data());
      read_forward(wk.rows.data(), tape + L.rwval + r * k, 1, k, w, reads + r * w);
    }
    std::copy(tape + L.ctrl.out, tape + L.ctrl.out + c.C, features);
    std::copy(reads, reads + R * w, features + c.C);
  }

  // --- backward ---

  // Replays a step's state updates (usage, written rows, link, weightings) from the tape, logging
  // the usages and link rows it changes.
  void replay(F* s, const F* tape, Work& wk, std::vector<F>& usage_log, std::vector<F>& link_log) const {
    const F* act = tape + L.act;
    update_usage_sparse(s, act, wk, &usage_log);
    F* mem = s + c.off_memory;
    wk.ww.clear();
    for (int64_t j = 0; j < k; ++j) {
      const int64_t q = int64_t(tape[L.wwslot + j]);
      std::copy(tape + L.unew + j * c.W, tape + L.unew + (j + 1) * c.W, mem + q * c.W);
      wk.ww.add(q, tape[L.wwval + j]);
    }
    precedence_columns(s, wk);
    update_link(s, wk, &link_log);
    set_fields(s, tape, wk);
  }

  // The weightings before a step: the previous step's (tape) or the segment's first state's.
  void set_previous_fields(F* s, const F* before, const F* start, Work& wk) const {
    if (before) {
      set_fields(s, before, wk);
      return;
    }
    for (int64_t f = 0; f < c.R + 2; ++f) {
      std::copy(field(start, f), field(start, f) + c.N, field(s, f));
      wk.support[f].clear();
      for (int64_t i = 0; i < c.N; ++i)
        if (field(s, f)[i] != F(0)) wk.support[f].push_back(i);
    }
  }

  // The gradient of each new weighting at its K slots (wk.rows as scratch: R + 2 rows of K): what
  // the state's field held, which is then cleared for the previous weighting's.
  void take_output_gradients(const F* tape, F* dacc, F* dout, Work& wk) const {
    for (int64_t f = 0; f < c.R + 2; ++f) {
      const int64_t slot_at = f < c.R ? L.rwslot + f * k : (f == c.R ? L.wwslot : L.pslot);
      F* field_grad = field(dacc, f);
      for (int64_t j = 0; j < k; ++j) dout[f * k + j] = field_grad[int64_t(tape[slot_at + j])];
      if (wk.dense_gradient[f]) std::fill(field_grad, field_grad + c.N, F(0));
      for (int64_t i : wk.touched[f]) field_grad[i] = F(0);
      wk.dense_gradient[f] = 0;
      wk.touched[f].clear();
    }
  }

  // Adds g to the previous weighting f's gradient at slot q.
  void add_previous(F* dacc, int64_t f, int64_t q, F g, Work& wk) const {
    if (g == F(0)) return;
    F& at = field(dacc, f)[q];
    if (at == F(0)) wk.touched[f].push_back(q);
    at += g;
  }

  // Back through the reads and the read weightings' mixing, content and directional weightings.
  // dout: the new weightings' gradients (take_output_gradients); the fields hold the previous ones.
  void reads_backward(const F* s, const F* tape, const F* dreads, F* dacc, F* dout, bool whole, Work& wk) const {
    const int64_t w = c.W;
    const F *act = tape + L.act, *values = s + c.off_link_values, *index = s + c.off_link_index;
    F *dact = wk.dact.data(), *dmem = dacc + c.off_memory, *dlink = dacc + c.off_link_values;
    int64_t* slots = wk.slots.data();
    for (int64_t r = 0; r < c.R; ++r) {
      F* dw = dout + r * k;
      for (int64_t j = 0; j < k; ++j) slots[j] = int64_t(tape[L.rwslot + r * k + j]);
      gather_rows(s + c.off_memory, slots, k, w, wk.rows.data());
      std::fill(wk.drows.begin(), wk.drows.begin() + k * w, F(0));
      read_backward(wk.rows.data(), tape + L.rwval + r * k, dreads + r * w, 1, k, w, wk.drows.data(), dw);
      scatter_add_rows(dmem, slots, k, w, wk.drows.data());
      // mixing: w = m_b b + m_c c + m_f f at the kept slots
      wk.content.clear();
      for (int64_t j = 0; j < k; ++j) wk.content.add(int64_t(tape[L.rsel + r * k + j]), tape[L.rc + r * k + j]);
      const F* modes = act + dnc.modes + 3 * r;
      F* dmodes = dact + dnc.modes + 3 * r;
      wk.bwd.clear();
      wk.fwd.clear();
      wk.mix.clear();  // the content weighting's gradient
      for (int64_t j = 0; j < k; ++j) {
        const int64_t q = slots[j];
        dmodes[0] += dw[j] * tape[L.rwb + r * k + j];
        dmodes[1] += dw[j] * wk.content.value[q];
        dmodes[2] += dw[j] * tape[L.rwf + r * k + j];
        wk.bwd.add(q, modes[0] * dw[j]);
        wk.mix.add(q, modes[1] * dw[j]);
        wk.fwd.add(q, modes[2] * dw[j]);
      }
      content_backward_rows(s + c.off_memory, tape, L.rsel + r * k, L.rknorm + r, L.rcos + r * k, L.rc + r * k, r,
                            wk.mix, dmem, wk);
      // directional: f_q = sum_m L[q, m] w_{c_qm}, b_j = sum_i w_i L[i, j], w the previous weighting
      const F* prev = field(s, r);
      for (int64_t q : wk.fwd.slots)
        for (int64_t m = 0; m < k; ++m) {
          const int64_t col = int64_t(index[q * k + m]);
          dlink[q * k + m] += wk.fwd.value[q] * prev[col];
          add_previous(dacc, r, col, wk.fwd.value[q] * values[q * k + m], wk);
        }
      // Every row, at a segment's first step (the state's weighting is an input there, zeros included).
      const std::vector<int64_t>& rows = wk.support[r];
      for (int64_t n = 0, count = whole ? c.N : int64_t(rows.size()); n < count; ++n) {
        const int64_t i = whole ? n : rows[n];
        F g = 0;
        for (int64_t m = 0; m < k; ++m) {
          const F db = wk.bwd.value[int64_t(index[i * k + m])];
          dlink[i * k + m] += db * prev[i];
          g += db * values[i * k + m];
        }
        add_previous(dacc, r, i, g, wk);
      }
    }
  }

  // content_backward on a head's chosen rows (of the memory as it is now) from the gradient of its
  // weighting (dweights, over N), into dmem and the head's key and strength in dact.
  void content_backward_rows(const F* mem, const F* tape, int64_t sel, int64_t knorm, int64_t cos, int64_t wc,
                             int64_t head, const SlotMap<F>& dweights, F* dmem, Work& wk) const {
    const int64_t w = c.W;
    int64_t* slots = wk.cols.data();
    F* dwc = wk.pcol.data();
    for (int64_t j = 0; j < k; ++j) {
      slots[j] = int64_t(tape[sel + j]);
      dwc[j] = dweights.value[slots[j]];
    }
    gather_rows(mem, slots, k, w, wk.rows.data());
    row_norms(wk.norms.data(), wk.rows.data(), k, w);
    std::fill(wk.drows.begin(), wk.drows.begin() + k * w, F(0));
    std::fill(wk.dnorms.begin(), wk.dnorms.begin() + k, F(0));
    F* dact = wk.dact.data();
    const F* act = tape + L.act;
    content_backward(wk.rows.data(), wk.norms.data(), act + head * w, tape[knorm], act[dnc.strengths + head], tape + cos,
                     tape + wc, dwc, k, w, wk.drows.data(), wk.dnorms.data(), dact + head * w,
                     dact + dnc.strengths + head);
    apply_norm_grad(wk.drows.data(), wk.rows.data(), wk.norms.data(), wk.dnorms.data(), k, w);
    scatter_add_rows(dmem, slots, k, w, wk.drows.data());
  }

  // Back through the precedence (p' = (1 - sum ww) p + ww, cut to K) and the link update, whose
  // changed rows (link_log, before the step) are reverted. dww: the write weighting's gradient
  // (over N); dp: the new precedence's gradient at its slots (take_output_gradients).
  void precedence_link_backward(F* s, const F* tape, const std::vector<F>& link_log, const F* dp, F* dacc,
                                bool whole, Work& wk) const {
    const F* prec = field(s, c.R + 1);
    F wsum = 0;
    for (int64_t j = 0; j < k; ++j) wsum += tape[L.wwval + j];
    F dsum = 0;
    for (int64_t j = 0; j < k; ++j) {
      const int64_t q = int64_t(tape[L.pslot + j]);
      add_previous(dacc, c.R + 1, q, dp[j] * (F(1) - wsum), wk);
      if (wk.ww.in[q]) wk.dw.add(q, dp[j]);
      dsum -= dp[j] * prec[q];
    }
    for (int64_t j = 0; j < k; ++j) wk.dw.add(int64_t(tape[L.wwslot + j]), dsum);
    precedence_columns(s, wk);
    F *values = s + c.off_link_values, *index = s + c.off_link_index, *dlink = dacc + c.off_link_values;
    // The update holds every row's diagonal entry at 0, changed or not: nothing flows back through
    // it. A diagonal entry's gradient reaches nothing else (the revert below skips it), so clearing
    // them where the gradient leaves, the segment's first state, is enough: O(N K) once a segment.
    if (whole)
      for (int64_t i = 0; i < c.N; ++i)
        for (int64_t m = 0; m < k; ++m)
          if (int64_t(index[i * k + m]) == i) dlink[i * k + m] = F(0);
    int64_t* positions = wk.positions.data();
    F* unused = wk.row_i.data();
    for (size_t at = 0; at < link_log.size(); at += 1 + 2 * k) {
      const int64_t i = int64_t(link_log[at]);
      const F *old_v = link_log.data() + at + 1, *old_idx = old_v + k;
      link_row(i, old_v, old_idx, wk.ww, wk, unused, unused + k, positions);
      const F wi = wk.ww.value[i];
      F* g_row = dlink + i * k;
      F* d_old = wk.scratch.data();  // K
      std::fill(d_old, d_old + k, F(0));
      for (int64_t e = 0; e < k; ++e) {
        const int64_t p = positions[e];
        const F g = g_row[e];
        const int64_t col = p < k ? int64_t(old_idx[p]) : wk.cols[p - k];
        if (col == i) continue;  // the diagonal is held at 0
        if (p < k) {
          d_old[p] += g * ((F(1) - wi) - wk.ww.value[col]);
          wk.dw.add(i, -g * old_v[p]);
          wk.dw.add(col, -g * old_v[p]);
        }
        const int64_t n = std::lower_bound(wk.cols.begin(), wk.cols.end(), col) - wk.cols.begin();
        if (n < k && wk.cols[n] == col) {  // w_i p_col: added here, or merged into a kept entry
          wk.dw.add(i, g * wk.pcol[n]);
          add_previous(dacc, c.R + 1, col, g * wi, wk);
        }
      }
      std::copy(d_old, d_old + k, g_row);
      std::copy(old_v, old_v + k, values + i * k);
      std::copy(old_idx, old_idx + k, index + i * k);
    }
  }

  // Back through the written rows (write_backward; reverted), the write weighting (cut, gates,
  // content and allocation), the allocation (allocation_backward over the K slots) and the write
  // content (on the rows as the step found them). dw: the write weighting's gradient over N.
  void write_backward_sparse(F* s, const F* tape, F* dacc, Work& wk) const {
    const int64_t w = c.W;
    const F* act = tape + L.act;
    F *dact = wk.dact.data(), *mem = s + c.off_memory, *dmem = dacc + c.off_memory;
    int64_t* slots = wk.slots.data();
    F* dww = wk.scratch.data();  // K
    for (int64_t j = 0; j < k; ++j) {
      slots[j] = int64_t(tape[L.wwslot + j]);
      dww[j] = wk.dw.value[slots[j]];
    }
    gather_rows(dmem, slots, k, w, wk.drows.data());
    std::fill(wk.rows.begin(), wk.rows.begin() + k * w, F(0));
    write_backward(tape + L.uold, tape + L.wwval, act + dnc.gates, act + c.R * w + w, wk.drows.data(), 1, k, w,
                   wk.rows.data(), dww, dact + dnc.gates, dact + c.R * w + w, wk.keep.data(), wk.others.data());
    for (int64_t j = 0; j < k; ++j) {
      std::copy(wk.rows.data() + j * w, wk.rows.data() + (j + 1) * w, dmem + slots[j] * w);
      std::copy(tape + L.uold + j * w, tape + L.uold + (j + 1) * w, mem + slots[j] * w);
    }
    // ww_q = g_w lerp(c_q, a_q, g_a) at the kept slots
    write_inputs(tape, wk);
    const F alloc_gate = act[dnc.gates + w + c.R], write_gate = act[dnc.gates + w + c.R + 1];
    SlotMap<F>& dcontent = wk.bwd;
    dcontent.clear();
    F *dalloc = wk.pcol.data(), *dgates = dact + dnc.gates + w + c.R;
    std::fill(dalloc, dalloc + k, F(0));
    F* dalloc_slot = wk.row_v.data();  // the allocation's gradient by slot, then in order of usage
    wk.fwd.clear();
    for (int64_t j = 0; j < k; ++j) {
      const int64_t q = slots[j];
      const F cq = wk.content.value[q], aq = wk.mix.value[q], dl = dww[j] * write_gate;
      dgates[1] += dww[j] * lerp(cq, aq, alloc_gate);
      dgates[0] += dl * (aq - cq);
      dcontent.add(q, dl * (F(1) - alloc_gate));
      wk.fwd.add(q, dl * alloc_gate);
    }
    // allocation a_j = (1 - s_j) prod_{i<j} s_i over the slots in order of usage
    F* sorted = dalloc_slot;
    F *before = sorted + k, *order = wk.norms.data(), *dusage = wk.dnorms.data();
    F product = F(1);
    for (int64_t j = 0; j < k; ++j) {
      sorted[j] = tape[L.asorted + j];
      before[j] = product;
      product = product * sorted[j];
      order[j] = F(j);
      dalloc[j] = wk.fwd.value[int64_t(tape[L.aslot + j])];
    }
    std::fill(dusage, dusage + k, F(0));
    F* dscratch = wk.drows.data();
    allocation_backward(sorted, order, before, dalloc, k, dusage, dscratch, dscratch + k);
    for (int64_t j = 0; j < k; ++j) dacc[c.off_usage + int64_t(tape[L.aslot + j])] += dusage[j];
    content_backward_rows(mem, tape, L.wsel, L.wknorm, L.wcos, L.cw, c.R, dcontent, dmem, wk);
  }

  // Back through the usage update on the slots it changed (usage_log: slot and usage before, both
  // reverted), or on every slot at a segment's first step (the state's weightings are inputs there).
  void usage_backward_sparse(F* s, const F* act, const std::vector<F>& usage_log, bool whole, F* dacc,
                             Work& wk) const {
    const F* free_gates = act + dnc.gates + c.W;
    F *dfree = wk.dact.data() + dnc.gates + c.W, *usage = s + c.off_usage, *du = dacc + c.off_usage;
    const F* ww = field(s, c.R);
    auto back = [&](int64_t q, F u) {
      const F g = du[q];
      if (g == F(0)) return;
      const F u1 = u + ww[q] - u * ww[q];
      F keep = F(1);
      for (int64_t r = 0; r < c.R; ++r) keep *= F(1) - free_gates[r] * field(s, r)[q];
      du[q] = g * keep * (F(1) - ww[q]);
      add_previous(dacc, c.R, q, g * keep * (F(1) - u), wk);
      for (int64_t r = 0; r < c.R; ++r) {
        F others = F(1);
        for (int64_t o = 0; o < c.R; ++o)
          if (o != r) others *= F(1) - free_gates[o] * field(s, o)[q];
        const F dkeep = g * u1 * others;
        dfree[r] -= dkeep * field(s, r)[q];
        add_previous(dacc, r, q, -dkeep * free_gates[r], wk);
      }
    };
    wk.content.clear();  // the slots the log covers
    for (size_t at = 0; at < usage_log.size(); at += 2) {
      const int64_t q = int64_t(usage_log[at]);
      usage[q] = usage_log[at + 1];
      back(q, usage[q]);
      wk.content.touch(q);
    }
    if (whole)
      for (int64_t q = 0; q < c.N; ++q)
        if (!wk.content.in[q]) back(q, usage[q]);
    wk.content.clear();
  }

  using Carry = StateCarry<F>;
  // The usages (slot, value before) and link rows (row, K values, K indices before) a step changed.
  struct Log {
    std::vector<F> usage, link;
    void clear() {
      usage.clear();
      link.clear();
    }
  };

  void begin_segment(const F* start, const F* init, F* s, Work& wk) const {
    std::copy(start, start + c.D, s);
    find_support(s, wk);
    find_link_rows(s, init, wk);
  }

  void replay(F* s, const F* tape, Work& wk, Log& log) const { replay(s, tape, wk, log.usage, log.link); }

  // The link's column indices are not differentiable (the reference holds them as numbers).
  void finish_gradients(F* dacc) const { std::fill(dacc + c.off_link_index, dacc + c.off_link_index + c.N * k, F(0)); }

  // One step's gradients. s: the working state as the step left it (on return as it found it);
  // start: the segment's first state; before: the previous step's tape record, or null; whole: the
  // step is the segment's first and its state an input (gradients for every slot of its weightings).
  void backward(const Weights<F>& wt, F* s, const F* start, const F* before, F* tape, const F* dfeatures, F* dacc,
                bool /*reset*/, bool whole, const Log& log, const Carry& dnext, Carry& dprev, F* dprojected,
                Work& wk) const {
    const int64_t C = c.C;
    const F* act = tape + L.act;
    F *dout = wk.dout.data(), *dreads = wk.dreads.data(), *dweights = wk.wgrad.data();
    std::fill(wk.dact.begin(), wk.dact.end(), F(0));
    std::copy(dfeatures, dfeatures + C, dout);
    if (c.hidden_size) axpy(dout, dnext.hidden.data(), F(1), C);
    for (int64_t j = 0; j < c.R * c.W; ++j) dreads[j] = dfeatures[C + j] + dnext.reads[j];
    take_output_gradients(tape, dacc, dweights, wk);
    set_previous_fields(s, before, start, wk);
    reads_backward(s, tape, dreads, dacc, dweights, whole, wk);
    wk.ww.clear();
    wk.dw.clear();
    for (int64_t j = 0; j < k; ++j) {
      const int64_t q = int64_t(tape[L.wwslot + j]);
      wk.ww.add(q, tape[L.wwval + j]);
      wk.dw.add(q, dweights[c.R * k + j]);
    }
    precedence_link_backward(s, tape, log.link, dweights + (c.R + 1) * k, dacc, whole, wk);
    write_backward_sparse(s, tape, dacc, wk);
    usage_backward_sparse(s, act, log.usage, whole, dacc, wk);
    dnc.activate_backward(tape + L.raw, act, wk.dact.data(), tape + L.draw);
    sparse_controller_backward(c, L, wt, start, before, tape, dnext, dprev, dprojected, dout, wk.ctrl.data());
  }
};

// ----------------------------------------------------------------------------------------------
// Plain recurrent core (lstm.py): the controller alone.

template <typename F>
struct Plain : CoreView {
  Plain(const SmemConfig& config, const Tape& tape) : CoreView{config, tape} {}

  void forward(const Weights<F>& wt, const F* projected, const F* s, F* tape, F* state_out, F* features) const {
    core_controller_forward(c, wt, projected, s, s, tape, L.ctrl, state_out);  // no read vectors (K = hidden only)
    std::copy(tape + L.ctrl.out, tape + L.ctrl.out + c.C, features);
  }

  // Backward scratch: the output gradient, then the controller's.
  int64_t scratch_size() const { return c.C + controller_scratch_size(c); }

  void backward(const Weights<F>& wt, const F* s, const F* /*next*/, F* tape, const F* dfeatures,
                const F* dstate_out, F* dstate_in, F* dprojected, Scratch<F>& sc) const {
    const int64_t C = c.C;
    F* dout = sc.at(0);
    std::copy(dfeatures, dfeatures + C, dout);
    axpy(dout, dstate_out + c.off_controller_hidden, F(1), C);
    // No interface (draw) and no read vectors to feed back (R = 0).
    core_controller_backward<F>(c, wt, tape, L.ctrl, s, nullptr, dstate_out, dout, dprojected, nullptr, dstate_in, sc.at(C));
  }
};

// ----------------------------------------------------------------------------------------------
// The sequence loops, one batch row at a time (rows are independent; only parameter gradients
// are shared).

template <typename F>
bool all_finite(const F* x, int64_t n) {
  bool ok = true;
  for (int64_t i = 0; i < n; ++i) ok &= std::isfinite(x[i]);
  return ok;
}

// A forward call's buffers, typed, its weights with their transposes, and the sequence loops of
// the dense and the sparse cores over them.
template <typename F>
struct ForwardCall {
  const SmemConfig& c;
  const SmemBuffers& b;
  const Tape L;
  Weights<F> wt;
  const F *state0, *init;
  F *features, *state_T, *tape;
  const int64_t T, B, D, FD;

  ForwardCall(const SmemConfig& config, const SmemBuffers& buffers)
      : c(config),
        b(buffers),
        L(make_tape(config)),
        wt(buffers),
        state0(static_cast<const F*>(buffers.state0)),
        init(static_cast<const F*>(buffers.init_row)),
        features(static_cast<F*>(buffers.features)),
        state_T(static_cast<F*>(buffers.state_T)),
        tape(static_cast<F*>(buffers.tape)),
        T(config.T),
        B(config.B),
        D(config.D),
        FD(config.C + config.R * config.W) {
    wt.transpose_all(config);
  }

  int status() const { return all_finite(features, T * B * FD) ? kStatus_ok : kStatus_non_finite_features; }

  // With a tape, step t reads the state from record t (or the initial row at an episode start) and
  // writes its new state into record t + 1 (state_T after the last step): no copies, and the
  // backward pass finds each step's output there. Without one, two buffers take turns.
  template <template <typename> class CoreT>
  int dense() {
    const CoreT<F> core(c, L);
    std::vector<F> scratch_record(tape ? 0 : L.size), buffers(tape ? 0 : 2 * D), projected(c.G);
    for (int64_t row = 0; row < B; ++row) {
      auto record = [&](int64_t t) { return tape ? tape + (row * T + t) * L.size : scratch_record.data(); };
      F* entering = tape ? record(0) + L.state : buffers.data();
      std::copy(state0 + row * D, state0 + (row + 1) * D, entering);
      for (int64_t t = 0; t < T; ++t) {
        const F* s = (b.starts && b.starts[t * B + row]) ? init : entering;
        F* out = t + 1 == T ? state_T + row * D
                            : (tape ? record(t + 1) + L.state : buffers.data() + (entering == buffers.data() ? D : 0));
        core.forward(wt, step_input(c, b, wt, t, row, projected.data()), s, record(t), out, features + (t * B + row) * FD);
        entering = out;
      }
    }
    return status();
  }

  // The sparse cores: each row's state lives in state_T, updated in place.
  template <template <typename> class CoreT>
  int sparse() {
    const CoreT<F> core(c, L);
    typename CoreT<F>::Work wk = core.work();
    std::vector<F> scratch_record(tape ? 0 : L.size), projected(c.G);
    for (int64_t row = 0; row < B; ++row) {
      F* s = state_T + row * D;
      core.load(state0 + row * D, init, s, wk);
      for (int64_t t = 0; t < T; ++t) {
        if (b.starts && b.starts[t * B + row]) core.load(init, init, s, wk);
        F* record = tape ? tape + (row * T + t) * L.size : scratch_record.data();
        core.forward(wt, step_input(c, b, wt, t, row, projected.data()), s, record, features + (t * B + row) * FD, wk);
      }
    }
    return status();
  }
};

template <typename F, template <typename> class CoreT>
int run_forward(const SmemConfig& c, const SmemBuffers& b) {
  return ForwardCall<F>(c, b).template dense<CoreT>();
}

// A backward call's buffers, typed, and the sequence loops of the dense and the sparse cores.
template <typename F>
struct BackwardCall {
  const SmemConfig& c;
  const SmemBuffers& b;
  const Tape L;
  const Weights<F> wt;
  F* tape;
  const F *state0, *init, *state_T, *dfeatures, *dstate_T;
  F *dprojected, *dstate0;
  const int64_t T, B, D, FD;

  BackwardCall(const SmemConfig& config, const SmemBuffers& buffers)
      : c(config),
        b(buffers),
        L(make_tape(config)),
        wt(buffers),
        tape(static_cast<F*>(buffers.tape)),
        state0(static_cast<const F*>(buffers.state0)),
        init(static_cast<const F*>(buffers.init_row)),
        state_T(static_cast<const F*>(buffers.state_T)),
        dfeatures(static_cast<const F*>(buffers.d_features)),
        dstate_T(static_cast<const F*>(buffers.d_state_T)),
        dprojected(static_cast<F*>(buffers.d_projected)),
        dstate0(static_cast<F*>(buffers.d_state0)),
        T(config.T),
        B(config.B),
        D(config.D),
        FD(config.C + config.R * config.W) {}

  // Steps run back from each record of the tape, which holds the state entering the step.
  template <template <typename> class CoreT>
  int dense() {
    const CoreT<F> core(c, L);
    Scratch<F> sc{std::vector<F>(core.scratch_size())};
    std::vector<F> dout(D), din(D);
    for (int64_t row = 0; row < B; ++row) {
      if (dstate_T)
        std::copy(dstate_T + row * D, dstate_T + (row + 1) * D, dout.data());
      else
        std::fill(dout.begin(), dout.end(), F(0));
      for (int64_t t = T - 1; t >= 0; --t) {
        F* record = tape + (row * T + t) * L.size;
        const bool reset = b.starts && b.starts[t * B + row];
        const F* s = reset ? init : record + L.state;
        const F* next = t + 1 == T ? state_T + row * D : tape + (row * T + t + 1) * L.size + L.state;
        std::fill(din.begin(), din.end(), F(0));
        core.backward(wt, s, next, record, dfeatures + (t * B + row) * FD, dout.data(), din.data(),
                      dprojected + (t * B + row) * c.G, sc);
        // A reset replaced the state: what came before gets no gradient through it.
        if (reset) std::fill(din.begin(), din.end(), F(0));
        std::swap(dout, din);
      }
      if (dstate0) std::copy(dout.begin(), dout.end(), dstate0 + row * D);
    }
    return kStatus_ok;
  }

  // Per row, episode segments last to first; each segment's state is rebuilt from its first state
  // by replaying the tape (and, for the DNC, what the tape implies), then the steps run back.
  template <template <typename> class CoreT>
  int sparse() {
    const CoreT<F> core(c, L);
    typename CoreT<F>::Work wk = core.work();
    StateCarry<F> dnext(c), dprev(c);
    std::vector<typename CoreT<F>::Log> logs(T);
    std::vector<F> s(D), dacc(D);
    auto clear_fields = [&wk](bool dense) {
      std::fill(wk.dense_gradient.begin(), wk.dense_gradient.end(), uint8_t(dense));
      for (auto& touched : wk.touched) touched.clear();
    };
    for (int64_t row = 0; row < B; ++row) {
      auto record = [&](int64_t t) { return tape + (row * T + t) * L.size; };
      auto reset = [&](int64_t t) { return b.starts && b.starts[t * B + row]; };
      if (dstate_T)
        std::copy(dstate_T + row * D, dstate_T + (row + 1) * D, dacc.begin());
      else
        std::fill(dacc.begin(), dacc.end(), F(0));
      dnext.take(c, dacc.data());
      clear_fields(dstate_T != nullptr);
      for (int64_t end = T; end > 0;) {
        int64_t begin = end - 1;
        while (begin > 0 && !reset(begin)) --begin;
        const F* start = reset(begin) ? init : state0 + row * D;
        core.begin_segment(start, init, s.data(), wk);
        for (int64_t t = begin; t < end; ++t) {
          logs[t].clear();
          core.replay(s.data(), record(t), wk, logs[t]);
        }
        for (int64_t t = end - 1; t >= begin; --t) {
          const bool whole = t == begin && !reset(t);  // the segment's first state is an input
          core.backward(wt, s.data(), start, t > begin ? record(t - 1) : nullptr, record(t), dfeatures + (t * B + row) * FD,
                        dacc.data(), reset(t), whole, logs[t], dnext, dprev, dprojected + (t * B + row) * c.G, wk);
          if (reset(t)) {  // nothing before a reset gets a gradient through the state
            std::fill(dacc.begin(), dacc.end(), F(0));
            dprev.clear();
            clear_fields(false);
          }
          std::swap(dnext, dprev);
        }
        end = begin;
      }
      dnext.put(c, dacc.data());
      core.finish_gradients(dacc.data());
      if (dstate0) std::copy(dacc.begin(), dacc.end(), dstate0 + row * D);
    }
    return kStatus_ok;
  }
};

template <typename F, template <typename> class CoreT>
int run_backward(const SmemConfig& c, const SmemBuffers& b) {
  return BackwardCall<F>(c, b).template dense<CoreT>();
}

template <typename F, template <typename> class CoreT>
int run_sparse_forward(const SmemConfig& c, const SmemBuffers& b) {
  return ForwardCall<F>(c, b).template sparse<CoreT>();
}

template <typename F, template <typename> class CoreT>
int run_sparse_backward(const SmemConfig& c, const SmemBuffers& b) {
  return BackwardCall<F>(c, b).template sparse<CoreT>();
}

template <typename F>
int dispatch(const SmemConfig& c, const SmemBuffers& b, bool backward) {
  switch (c.core) {
    case kNTM:
      if (c.top_k > 0)
        return backward ? run_sparse_backward<F, SparseNtm>(c, b) : run_sparse_forward<F, SparseNtm>(c, b);
      return backward ? run_backward<F, Ntm>(c, b) : run_forward<F, Ntm>(c, b);
    case kDNC:
      if (c.top_k > 0)
        return backward ? run_sparse_backward<F, SparseDnc>(c, b) : run_sparse_forward<F, SparseDnc>(c, b);
      return backward ? run_backward<F, Dnc>(c, b) : run_forward<F, Dnc>(c, b);
    case kPlain:
      return backward ? run_backward<F, Plain>(c, b) : run_forward<F, Plain>(c, b);
    default:
      return kStatus_unknown_core;
  }
}

}  // namespace

extern "C" {

int64_t smem_abi_version() { return SMEM_ABI_VERSION; }

// Comma-separated field names in declaration order, and the structures' sizes in bytes.
const char* smem_config_fields() {
#define SMEM_NAME(name) #name ","
  return SMEM_CONFIG_FIELDS(SMEM_NAME);
#undef SMEM_NAME
}
const char* smem_buffer_fields() {
#define SMEM_NAME(type, name) #name ","
  return SMEM_BUFFER_FIELDS(SMEM_NAME);
#undef SMEM_NAME
}
int64_t smem_config_size() { return sizeof(SmemConfig); }
int64_t smem_buffers_size() { return sizeof(SmemBuffers); }

// "name=value," for every status code.
const char* smem_status_names() {
#define SMEM_NAME(name, value) #name "=" #value ","
  return SMEM_STATUS_CODES(SMEM_NAME);
#undef SMEM_NAME
}

int64_t smem_tape_size(const SmemConfig* c) { return make_tape(*c).size; }

// Offsets in a step's tape record of what the weight gradients are made of: the controller's
// recurrent input, its output, the interface gradient and, for a GRU, the hidden-product gradient
// and the hidden state.
void smem_tape_fields(const SmemConfig* c, int64_t* out) {
  const Tape t = make_tape(*c);
  out[0] = t.ctrl.x;
  out[1] = t.ctrl.out;
  out[2] = t.draw;
  out[3] = t.ctrl.dfh;
  out[4] = t.ctrl.hidden;
}

// One library per scalar type (-DSMEM_FLOAT32 or -DSMEM_FLOAT64): each builds in half the time,
// and float64 is only built when something runs in float64.
#if defined(SMEM_FLOAT32)
using Scalar = float;
#elif defined(SMEM_FLOAT64)
using Scalar = double;
#else
#error "compile with -DSMEM_FLOAT32 or -DSMEM_FLOAT64"
#endif

// Return an SmemStatus.
int smem_forward(const SmemConfig* c, const SmemBuffers* b) { return dispatch<Scalar>(*c, *b, false); }
int smem_backward(const SmemConfig* c, const SmemBuffers* b) { return dispatch<Scalar>(*c, *b, true); }

// Each primitive on its own, for tests/test_native.py, which checks every forward against
// addressing.py and every backward against autograd. sizes: the primitive's dimensions; in, out:
// its arrays in the order of the calls below (gradients are added into outputs the caller zeroed;
// scratch outputs are the caller's too). Returns kStatus_ok, or kStatus_unknown_primitive.
int smem_primitive(const char* name, int backward, const int64_t* z, const void* const* in, void* const* out) {
  using F = Scalar;
  auto i = [in](int k) { return static_cast<const F*>(in[k]); };
  auto o = [out](int k) { return static_cast<F*>(out[k]); };
  const std::string p(name);
  if (p == "content") {  // z: n, w; in: mem, key, beta[1]; forward out: mnorm, knorm[1], cos, wc
    if (backward) {  // in: mem, key, beta, mnorm, knorm, cos, wc, dwc; out: dmem, dkey, dbeta, dmnorm (scratch)
      content_backward(i(0), i(3), i(1), i(4)[0], i(2)[0], i(5), i(6), i(7), z[0], z[1], o(0), o(3), o(1), o(2));
      apply_norm_grad(o(0), i(0), i(3), o(3), z[0], z[1]);
    } else {
      row_norms(o(0), i(0), z[0], z[1]);
      content_forward(i(0), o(0), i(1), i(2)[0], z[0], z[1], o(1), o(2), o(3));
    }
  } else if (p == "shift") {  // z: n, shifts; in: weights, shift (, dout)
    if (backward)
      shift_backward(i(0), i(1), i(2), z[0], z[1], o(0), o(1));
    else
      shift_forward(i(0), i(1), z[0], z[1], o(0));
  } else if (p == "read") {  // z: heads, n, w; in: mem, weights (, dreads)
    if (backward)
      read_backward(i(0), i(1), i(2), z[0], z[1], z[2], o(0), o(1));
    else
      read_forward(i(0), i(1), z[0], z[1], z[2], o(0));
  } else if (p == "write") {  // z: heads, n, w; in: mem, ww, erase, add (, dnew)
    if (backward)
      write_backward(i(0), i(1), i(2), i(3), i(4), z[0], z[1], z[2], o(0), o(1), o(2), o(3), o(4), o(5));
    else
      write_forward(i(0), i(1), i(2), i(3), z[0], z[1], z[2], o(0));
  } else if (p == "write_weights") {  // z: n; in: content, alloc, alloc_gate[1], write_gate[1] (, dww)
    if (backward)
      write_weights_backward(i(0), i(1), i(2)[0], i(3)[0], i(4), z[0], o(0), o(1), o(2), o(3));
    else
      write_weights_forward(i(0), i(1), i(2)[0], i(3)[0], z[0], o(0));
  } else if (p == "read_modes") {  // z: n; in: modes[3], bwd, content, fwd (, dw)
    if (backward)
      read_modes_backward(i(0), i(1), i(2), i(3), i(4), z[0], o(0), o(1), o(2), o(3));
    else
      read_modes_forward(i(0), i(1), i(2), i(3), z[0], o(0));
  } else if (p == "directional") {  // z: heads, n; in: link, weights (, dfwd, dbwd)
    if (backward)
      directional_backward(i(0), i(1), i(2), i(3), z[0], z[1], o(0), o(1));
    else
      directional_forward(i(0), i(1), z[0], z[1], o(0), o(1));
  } else if (p == "precedence") {  // z: n; in: ww, prec (, dprec_out)
    if (backward)
      precedence_backward(i(0), i(1), i(2), z[0], o(0), o(1));
    else
      precedence_forward(i(0), i(1), z[0], o(0));
  } else if (p == "link") {  // z: n; in: link, ww, prec (, dlink_out)
    if (backward)
      link_backward(i(0), i(1), i(2), i(3), z[0], o(0), o(1), o(2), o(3));
    else
      link_forward(i(0), i(1), i(2), z[0], o(0));
  } else if (p == "allocation") {  // z: n; forward in: usage; backward in: sorted, order, before, dalloc
    if (backward)
      allocation_backward(i(0), i(1), i(2), i(3), z[0], o(0), o(1), o(2));
    else
      allocation_forward(i(0), z[0], o(0), o(1), o(2), o(3));
  } else if (p == "usage") {  // z: heads, n; in: usage, prev_ww, prev_rw, free (, usage1, retention, dout)
    if (backward)
      usage_backward(i(0), i(1), i(2), i(3), i(4), i(5), i(6), z[0], z[1], o(0), o(1), o(2), o(3));
    else
      usage_forward(i(0), i(1), i(2), i(3), z[0], z[1], o(0), o(1), o(2));
  } else {
    return kStatus_unknown_primitive;
  }
  return kStatus_ok;
}

}  // extern "C"
