// Sparse NTM (ntm.py with sparse_top_k = K; Rae et al., 2016). The NTM's equations with every
// weighting cut to its K largest entries: content addressing scans the N rows once, keeping each
// head's K best logits (ties to the lowest slot, as addressing.top_k), and all that follows works
// on short lists of slots. The tape keeps no state, only each head's chosen slots and the rows a
// write changed, before and after (an undo log), so it does not grow with N. The backward pass
// rebuilds each episode segment's memory by replaying the writes, then walks back reverting them,
// with the gradients of the memory and the weightings held densely once per batch row.

#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "ntm.h"
#include "sparse_common.h"

namespace {

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
    const F* written = written_blocks(c, s, true);  // a weighting is 0 outside the marked blocks
    for (int64_t h = 0; h < heads; ++h) nonzero_slots(ntm.weights_of(s, h), c.N, written, wk.support[h]);
  }

  // smem_init_layout's bits for this core's initial row (it has no usage and no link).
  static int64_t init_layout(const SmemConfig& c, const F* init) {
    return ScanRows<F>::alike_rows(c, init, -1) ? int64_t(kInit_alike_rows) : int64_t(0);
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
        if (wv[slot] != F(0)) mark_written(c, s, slot);
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

  // The written blocks are not differentiable (addressing.written_blocks).
  void finish_gradients(F* dacc) const {
    std::fill(dacc + c.off_written_blocks, dacc + c.off_written_blocks + written_block_count(c), F(0));
  }

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
  void backward(const Weights<F>& wt, F* s, const F* start, const F* before, F* tape, F* grad, const F* dfeatures, F* dacc,
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
    ntm.activate_backward(tape + L.raw, act, wk.dact.data(), grad + L.grad.draw);
    sparse_controller_backward(c, L, wt, start, before, tape, grad, dnext, dprev, dprojected, dout, wk.ctrl.data());
  }
};

}  // namespace
