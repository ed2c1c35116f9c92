// The sparse DNC's backward pass (SparseDnc's members declared at the end of its struct in
// sparse_dnc.h): the segment replay, then each step's gradients back through the reads, the
// precedence and link, the written rows and the usage.

#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "sparse_dnc.h"

namespace {

// Replays a step's state updates (usage, written rows, link, weightings) from the tape, logging
// the usages and link rows it changes.
template <typename F>
void SparseDnc<F>::replay(F* s, const F* tape, Work& wk, std::vector<F>& usage_log, std::vector<F>& link_log) const {
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
template <typename F>
void SparseDnc<F>::set_previous_fields(F* s, const F* before, const F* start, Work& wk) const {
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
template <typename F>
void SparseDnc<F>::take_output_gradients(const F* tape, F* dacc, F* dout, Work& wk) const {
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
template <typename F>
void SparseDnc<F>::add_previous(F* dacc, int64_t f, int64_t q, F g, Work& wk) const {
  if (g == F(0)) return;
  F& at = field(dacc, f)[q];
  if (at == F(0)) wk.touched[f].push_back(q);
  at += g;
}

// Back through the reads and the read weightings' mixing, content and directional weightings.
// dout: the new weightings' gradients (take_output_gradients); the fields hold the previous ones.
template <typename F>
void SparseDnc<F>::reads_backward(const F* s, const F* tape, const F* dreads, F* dacc, F* dout, bool whole, Work& wk) const {
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
template <typename F>
void SparseDnc<F>::content_backward_rows(const F* mem, const F* tape, int64_t sel, int64_t knorm, int64_t cos, int64_t wc,
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
template <typename F>
void SparseDnc<F>::precedence_link_backward(F* s, const F* tape, const std::vector<F>& link_log, const F* dp, F* dacc,
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
template <typename F>
void SparseDnc<F>::write_backward_sparse(F* s, const F* tape, F* dacc, Work& wk) const {
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
template <typename F>
void SparseDnc<F>::usage_backward_sparse(F* s, const F* act, const std::vector<F>& usage_log, bool whole, F* dacc,
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

// One step's gradients. s: the working state as the step left it (on return as it found it);
// start: the segment's first state; before: the previous step's tape record, or null; whole: the
// step is the segment's first and its state an input (gradients for every slot of its weightings).
template <typename F>
void SparseDnc<F>::backward(const Weights<F>& wt, F* s, const F* start, const F* before, F* tape, F* grad,
                            const F* dfeatures, F* dacc,
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
  dnc.activate_backward(tape + L.raw, act, wk.dact.data(), grad + L.grad.draw);
  sparse_controller_backward(c, L, wt, start, before, tape, grad, dnext, dprev, dprojected, dout, wk.ctrl.data());
}

}  // namespace
