// What both sparse cores (sparse_ntm.h, sparse_dnc.h) are built from: the K best of a scan
// (BestK), values over N slots held with the list of the slots touched (SlotMap), the content
// scan that visits only the rows written since the initial state (ScanRows), and the carried
// gradients of the controller state and read vectors (StateCarry).

#pragma once

#include <algorithm>
#include <cstdint>
#include <limits>
#include <vector>

#include "controller.h"

namespace {

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

constexpr int64_t kScanBlock = 512;  // rows per block of a content scan: its logits stay in L1

// Rows a whole-state check tests together: at large N nearly every block is untouched, and a
// block's test is one vectorised pass with no reduction per row. Also the slots per entry of a
// sparse state's written_blocks field (addressing.written_blocks).
constexpr int64_t kCheckBlock = 64;

// Whether the block of kCheckBlock slots from b0 may differ from the initial state's: marked in a
// state's written_blocks field (written), or every block where there is no field to read (null).
template <typename F>
bool block_marked(const F* written, int64_t b0) {
  return !written || written[b0 / kCheckBlock] != F(0);
}

// A state's written_blocks field, or null (every block counts) where what the caller checks
// cannot skip an unmarked block: skippable is false when its initial rows are not alike (each
// scores differently) or its initial link is not laid out (each row is checked against a rule).
template <typename F>
const F* written_blocks(const SmemConfig& c, const F* s, bool skippable) {
  return skippable ? s + c.off_written_blocks : nullptr;
}

// Entries of a sparse state's written_blocks field.
inline int64_t written_block_count(const SmemConfig& c) { return (c.N + kCheckBlock - 1) / kCheckBlock; }

// Slot i's block marked in written_blocks: a weighting of the state touches it.
template <typename F>
void mark_written(const SmemConfig& c, F* s, int64_t i) {
  s[c.off_written_blocks + i / kCheckBlock] = F(1);
}

// i mod n for i in [-n, 2n): shifts move a slot by less than N (no division in the inner loops).
inline int64_t wrap(int64_t i, int64_t n) { return i < 0 ? i + n : (i >= n ? i - n : i); }

// The slots of a weighting with a non-zero weight, ascending, in the blocks written marks (a
// state's written_blocks: elsewhere every weight is 0; null: every block). A sparse weighting is
// mostly zeros, so blocks are tested whole first (a branch-free loop the compiler vectorises), and
// only a block with a non-zero weight is walked slot by slot.
template <typename F>
void nonzero_slots(const F* weights, int64_t n, const F* written, std::vector<int64_t>& out) {
  out.clear();
  for (int64_t b0 = 0; b0 < n; b0 += kCheckBlock) {
    if (!block_marked(written, b0)) continue;
    const int64_t len = std::min(kCheckBlock, n - b0);
    int any = 0;
#pragma omp simd reduction(| : any)
    for (int64_t i = 0; i < len; ++i) any |= weights[b0 + i] != F(0);
    if (!any) continue;
    for (int64_t i = b0; i < b0 + len; ++i)
      if (weights[i] != F(0)) out.push_back(i);
  }
}

// Whether a[0, n) and b[0, n) hold the same bits (so -0 differs from 0, and a NaN equals itself).
// The OR of the words' XORs, with no early exit: the rows compared are short (a memory word, a
// link row), and a branch per element kept the loop from vectorising; the loads of a whole
// memory's rows were most of a large sparse call's time.
template <typename F>
bool same_bits(const F* a, const F* b, int64_t n) {
  typename FloatBits<F>::Int differ = 0;
#pragma omp simd reduction(| : differ)
  for (int64_t i = 0; i < n; ++i) differ |= to_bits(a[i]) ^ to_bits(b[i]);
  return differ == 0;
}

// Whether every x[0, n) holds the bits of v (no early exit, so the loop vectorises).
template <typename F>
bool all_bits(const F* x, F v, int64_t n) {
  const typename FloatBits<F>::Int want = to_bits(v);
  typename FloatBits<F>::Int differ = 0;
#pragma omp simd reduction(| : differ)
  for (int64_t i = 0; i < n; ++i) differ |= to_bits(x[i]) ^ want;
  return differ == 0;
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
  const F* init = nullptr;        // the initial row (set by load), and whether its rows are all alike
  bool uniform = false;
  bool count_once = false;        // unwritten rows count once in a top K (uniform, K < N)
  std::vector<uint8_t> later_unwritten;  // per candidate: holds the initial row, and is not the lowest such
  std::vector<F> init_block;             // kCheckBlock copies of the initial memory row

  ScanRows(const SmemConfig& c, int64_t heads)
      : mnorm(c.N),
        changed(c.N, 0),
        block(c.W * kScanBlock),
        norms(kScanBlock),
        logits(heads * kScanBlock),
        keys(heads),
        betas(heads),
        knorms(heads),
        init_block(kCheckBlock * c.W) {}

  // Whether every row of the initial memory (and, at usage_offset >= 0, every usage) is alike: the
  // kInit_alike_rows bit of smem_init_layout, checked once per core, not per call.
  static bool alike_rows(const SmemConfig& c, const F* init, int64_t usage_offset) {
    bool alike = true;
    for (int64_t i = 1; i < c.N && alike; ++i)
      alike = same_bits(init + c.off_memory, init + c.off_memory + i * c.W, c.W) &&
              (usage_offset < 0 || to_bits(init[usage_offset]) == to_bits(init[usage_offset + i]));
    return alike;
  }

  // A row's working state (in s) from a flat state (from; s itself when the state is updated in
  // place), which rows changed and their norms (a pristine row's norm is taken when a scan visits
  // it: at large N the norms of every row were a call's largest cost outside the steps). Only the
  // blocks the state's written_blocks marks are read: the others hold the initial rows.
  void load(const SmemConfig& c, const F* from, const F* init_, int64_t usage_offset, F* s) {
    init = init_;
    uniform = (c.init_layout & kInit_alike_rows) != 0;
    count_once = uniform && c.top_k < c.N;
    for (int64_t i : changed_rows) changed[i] = 0;
    changed_rows.clear();
    if (from != s) std::copy(from, from + c.D, s);
    const int64_t w = c.W;
    const F* init_row = init + c.off_memory;  // with uniform rows, every row of the initial memory
    const F* mem = s + c.off_memory;
    if (uniform)
      for (int64_t r = 0; r < kCheckBlock; ++r) std::copy(init_row, init_row + w, init_block.data() + r * w);
    const F* written = written_blocks(c, s, uniform);
    for (int64_t b0 = 0; b0 < c.N; b0 += kCheckBlock) {
      if (!block_marked(written, b0)) continue;
      const int64_t len = std::min(kCheckBlock, c.N - b0);
      if (uniform && same_bits(mem + b0 * w, init_block.data(), len * w) &&
          (usage_offset < 0 || all_bits(s + usage_offset + b0, init[usage_offset], len)))
        continue;  // the whole block is pristine
      for (int64_t i = b0; i < b0 + len; ++i) {
        const F* row = mem + i * w;
        const bool pristine = uniform && same_bits(row, init_row, w) &&
                              (usage_offset < 0 || to_bits(s[usage_offset + i]) == to_bits(init[usage_offset]));
        if (!pristine) {
          mark(i);
          row_norms(mnorm.data() + i, row, 1, w);
        }
      }
    }
  }

  // Memory row i (of mem) holds the initial row, with count_once: the rows of an unwritten memory.
  bool unwritten(const SmemConfig& c, const F* mem, int64_t i) const {
    return same_bits(mem + i * c.W, init + c.off_memory, c.W);
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

// A sparse core's last stage backward: from the interface's gradient (grad's draw) through
// W_if into dout, then the controller, whose previous cell is the previous step's (tape) or the
// segment's first state's.
template <typename F>
void sparse_controller_backward(const SmemConfig& c, const Tape& L, const Weights<F>& wt, const F* start,
                                const F* before, const F* tape, F* grad, const StateCarry<F>& dnext,
                                StateCarry<F>& dprev, F* dprojected, F* dout, F* scratch) {
  gemv_cols(dout, wt.w_if, grad + L.grad.draw, c.C, c.P);
  dprev.clear();
  const F* cell = before ? before + L.ctrl.cell : start + c.off_controller_cell;
  controller_backward(c, wt, tape, L.ctrl, tape + L.ctrl.hidden, cell, dout, dnext.cell.data(), dprojected,
                      grad + L.grad.dfh, dprev.reads.data(), dprev.hidden.data(), dprev.cell.data(), scratch);
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

}  // namespace
