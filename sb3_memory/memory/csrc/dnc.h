// DNC (dnc.py). Interface: [read keys (R*W), write key (W), write vector (W)] raw |
// [read strengths (R), write strength] oneplus | [erase (W), free gates (R), allocation gate,
// write gate] sigmoid | read modes (R x 3: backward, content, forward) softmax.

#pragma once

#include <algorithm>
#include <cstdint>

#include "controller.h"

namespace {

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

  void backward(const Weights<F>& wt, const F* s, const F* next, F* tape, F* grad, const F* dfeatures,
                const F* dstate_out, F* dstate_in, F* dprojected, Scratch<F>& sc) const {
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
    F *dout = sc.at(pad.dout), *dreads = sc.at(pad.dreads), *ctrl_scratch = sc.at(pad.ctrl), *draw = grad + L.grad.draw;

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
    core_controller_backward(c, wt, tape, L, grad, s, dstate_out, dout, dprojected, dstate_in + c.off_read_vectors,
                             dstate_in, ctrl_scratch);
  }
};

}  // namespace
