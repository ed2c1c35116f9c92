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
//
// This file holds the state and the forward step; sparse_dnc_backward.h the backward pass.

#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <vector>

#include "dnc.h"
#include "sparse_common.h"

namespace {

template <typename F>
struct SparseDnc : CoreView {
  const Dnc<F> dnc;  // the interface layout and its activation are the DNC's
  int64_t k, heads;  // heads: the R read heads, then the write head (content scans)

  SparseDnc(const SmemConfig& config, const Tape& tape)
      : CoreView{config, tape}, dnc(config, tape), k(config.top_k), heads(config.R + 1) {}

  // The link rows that may differ from the initial link's, so that the link's passes visit them
  // and not all N. The initial link (values 0, row i naming columns i..i+K-1 mod N, as
  // addressing.initial_link_index lays it out) changes under a write to slot j only in row j and
  // in the rows naming j, j-K+1..j; with any other initial link (init_layout without
  // kInit_laid_out_link) every row counts.
  struct LinkRows {
    std::vector<uint8_t> in, seen;
    std::vector<int64_t> rows, candidates;
    std::vector<F> columns;  // r + m for row r < kCheckBlock of a block, column m < K: a block's initial columns less its first row
    LinkRows(int64_t n, int64_t k) : in(n, 0), seen(n, 0), columns(kCheckBlock * k) {
      for (int64_t r = 0; r < kCheckBlock; ++r)
        for (int64_t m = 0; m < k; ++m) columns[r * k + m] = F(r + m);
    }
    void mark(int64_t i) {
      if (!in[i]) {
        in[i] = 1;
        rows.push_back(i);
      }
    }
  };

  // Whether row i of a link (values, column indices) is the laid-out initial row: values 0 and
  // columns i..i+K-1 mod N, compared as bits like find_link_rows' blocks (-0 differs from 0, which
  // only makes a row count that need not). No early exit: the loop vectorises.
  static bool initial_link_row(const F* values, const F* index, int64_t i, int64_t k, int64_t n) {
    typename FloatBits<F>::Int differ = 0;
    for (int64_t m = 0; m < k; ++m) differ |= to_bits(values[m]) | (to_bits(index[m]) ^ to_bits(F(wrap(i + m, n))));
    return differ == 0;
  }

  // Whether init's link is laid out as addressing.initial_link_index lays it out (kInit_laid_out_link).
  static bool laid_out_link(const SmemConfig& c, const F* init) {
    for (int64_t i = 0; i < c.N; ++i)
      if (!initial_link_row(init + c.off_link_values + i * c.top_k, init + c.off_link_index + i * c.top_k, i, c.top_k, c.N))
        return false;
    return true;
  }

  // smem_init_layout's bits for this core's initial row.
  static int64_t init_layout(const SmemConfig& c, const F* init) {
    return (ScanRows<F>::alike_rows(c, init, c.off_usage) ? int64_t(kInit_alike_rows) : int64_t(0)) |
           (laid_out_link(c, init) ? int64_t(kInit_laid_out_link) : int64_t(0));
  }

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
                std::vector<F>((c.R + 2) * k), LinkRows(n, k), std::vector<uint8_t>(k)};
  }

  // The weighting fields of a flat state: read head h < R, the write head (R), the precedence (R + 1).
  template <typename P>
  P* field(P* state, int64_t f) const {
    if (f < c.R) return state + c.off_read_weights + f * c.N;
    return state + (f == c.R ? c.off_write_weights : c.off_precedence);
  }

  void find_support(const F* s, Work& wk) const {
    const F* written = written_blocks(c, s, true);  // a weighting is 0 outside the marked blocks
    for (int64_t f = 0; f < c.R + 2; ++f) nonzero_slots(field(s, f), c.N, written, wk.support[f]);
  }

  void load(const F* from, const F* init, F* s, Work& wk) const {
    wk.scan.load(c, from, init, c.off_usage, s);
    find_support(s, wk);
    find_link_rows(s, wk);
  }

  // The rows of s's link that may differ from the initial link (LinkRows).
  void find_link_rows(const F* s, Work& wk) const {
    LinkRows& links = wk.links;
    const int64_t n = c.N;
    const bool laid_out = (c.init_layout & kInit_laid_out_link) != 0;
    const F *values = s + c.off_link_values, *index = s + c.off_link_index;
    for (int64_t i : links.rows) links.in[i] = 0;
    links.rows.clear();
    const F* written = written_blocks(c, s, laid_out);  // any other initial link: every row counts
    for (int64_t b0 = 0; b0 < n; b0 += kCheckBlock) {
      if (!block_marked(written, b0)) continue;
      const int64_t len = std::min(kCheckBlock, n - b0);
      if (laid_out && b0 + len + k <= n + 1 && all_bits(values + b0 * k, F(0), len * k)) {
        // A block whose columns do not wrap: initial when row r names b0 + r + m (whole numbers
        // below 2^24 are exact in float, so the sums are too). Compared as bits, which vectorises
        // (a -0 column would count as changed: a row checked once more, no number changed).
        const F *at = index + b0 * k, *columns = links.columns.data(), first = F(b0);
        typename FloatBits<F>::Int differ = 0;
#pragma omp simd reduction(| : differ)
        for (int64_t e = 0; e < len * k; ++e) differ |= to_bits(at[e]) ^ to_bits(first + columns[e]);
        if (differ == 0) continue;
      }
      for (int64_t i = b0; i < b0 + len; ++i)
        if (!laid_out || !initial_link_row(values + i * k, index + i * k, i, k, n)) links.mark(i);
    }
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
      if (values[j] != F(0)) {
        wk.support[f].push_back(q);
        mark_written(c, s, q);
      }
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

  using Carry = StateCarry<F>;
  // The usages (slot, value before) and link rows (row, K values, K indices before) a step changed.
  struct Log {
    std::vector<F> usage, link;
    void clear() {
      usage.clear();
      link.clear();
    }
  };

  void begin_segment(const F* start, const F* /*init*/, F* s, Work& wk) const {
    std::copy(start, start + c.D, s);
    find_support(s, wk);
    find_link_rows(s, wk);
  }

  void replay(F* s, const F* tape, Work& wk, Log& log) const { replay(s, tape, wk, log.usage, log.link); }

  // The link's column indices are not differentiable (the reference holds them as numbers).
  // Neither are the written blocks (addressing.written_blocks).
  void finish_gradients(F* dacc) const {
    std::fill(dacc + c.off_link_index, dacc + c.off_link_index + c.N * k, F(0));
    std::fill(dacc + c.off_written_blocks, dacc + c.off_written_blocks + written_block_count(c), F(0));
  }

  // The backward pass (sparse_dnc_backward.h).
  void replay(F* s, const F* tape, Work& wk, std::vector<F>& usage_log, std::vector<F>& link_log) const;
  void set_previous_fields(F* s, const F* before, const F* start, Work& wk) const;
  void take_output_gradients(const F* tape, F* dacc, F* dout, Work& wk) const;
  void add_previous(F* dacc, int64_t f, int64_t q, F g, Work& wk) const;
  void reads_backward(const F* s, const F* tape, const F* dreads, F* dacc, F* dout, bool whole, Work& wk) const;
  void content_backward_rows(const F* mem, const F* tape, int64_t sel, int64_t knorm, int64_t cos, int64_t wc,
                             int64_t head, const SlotMap<F>& dweights, F* dmem, Work& wk) const;
  void precedence_link_backward(F* s, const F* tape, const std::vector<F>& link_log, const F* dp, F* dacc,
                                bool whole, Work& wk) const;
  void write_backward_sparse(F* s, const F* tape, F* dacc, Work& wk) const;
  void usage_backward_sparse(F* s, const F* act, const std::vector<F>& usage_log, bool whole, F* dacc,
                             Work& wk) const;
  void backward(const Weights<F>& wt, F* s, const F* start, const F* before, F* tape, F* grad, const F* dfeatures, F* dacc,
                bool /*reset*/, bool whole, const Log& log, const Carry& dnext, Carry& dprev, F* dprojected,
                Work& wk) const;
};

}  // namespace
