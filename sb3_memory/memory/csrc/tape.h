// Where a step keeps what its backward pass needs: the layout of one step's tape record, per
// core, and the view of the configuration and that layout every core holds.

#pragma once

#include <cstdint>

#include "interface.h"

namespace {

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
  int64_t x, act, hidden, fh, cell, tanh_cell, out;
};

ControllerTape controller_tape(const SmemConfig& c, Arena& a) {
  const bool gru = c.controller == kController_gru, lstm = c.controller == kController_lstm;
  ControllerTape t{};
  t.x = a.take(c.K);                   // recurrent input: [read vectors, hidden] for an LSTM, read vectors otherwise
  t.act = a.take(c.G);                 // LSTM: i, f, o, g; GRU: r, z, n; MLP: relu output
  t.hidden = a.take(gru ? c.C : 0);    // GRU: the hidden state it multiplied (after any reset), for W_hid's gradient
  t.fh = a.take(gru ? 3 * c.C : 0);    // GRU: b_hid + W_hid h
  t.cell = a.take(lstm ? c.C : 0);     // LSTM: new cell
  t.tanh_cell = a.take(lstm ? c.C : 0);
  t.out = a.take(c.C);
  return t;
}

// What controller_backward needs as scratch: the gradient of its recurrent input (K). The gate
// gradients go straight into dprojected.
inline int64_t controller_scratch_size(const SmemConfig& c) { return c.K; }

// Layout of one step's gradient record: what the backward pass writes for the weight gradients
// (one matrix product each over the chunk, in native.py). It is a buffer of its own, not part of
// the tape, so that the backward reads the tape without writing it: autograd may run a graph's
// backward twice, or from two threads, and a traced graph may not mutate a forward output.
struct GradientRecord {
  int64_t draw;  // gradient of the interface's raw vector, for W_if's and b_if's
  int64_t dfh;   // GRU: gradient of fh = b_hid + W_hid h, for W_hid's and b_hid's
  int64_t size;
};

GradientRecord make_gradient_record(const SmemConfig& c) {
  Arena a;
  GradientRecord g{};
  g.draw = a.take(c.P);
  g.dfh = a.take(c.controller == kController_gru ? 3 * c.C : 0);
  g.size = a.size;
  return g;
}

struct Tape {
  int64_t state;
  ControllerTape ctrl;
  int64_t raw, act;  // interface before / after its nonlinearities
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
  GradientRecord grad;  // the layout of the step's gradient record, beside the tape
};

inline bool is_sparse_ntm(const SmemConfig& c) { return c.core == kCore_ntm && c.top_k > 0; }
inline bool is_sparse_dnc(const SmemConfig& c) { return c.core == kCore_dnc && c.top_k > 0; }

Tape make_tape(const SmemConfig& c) {
  Tape t{};
  Arena a;
  auto take = [&a](int64_t n) { return a.take(n); };
  // The state entering the step, before any reset: the previous step's output. The sparse NTM keeps
  // an undo log of its writes instead, so that its tape does not grow with N.
  t.state = take(is_sparse_ntm(c) || is_sparse_dnc(c) ? 0 : c.D);
  t.ctrl = controller_tape(c, a);
  const int64_t n = c.N, r = c.R;
  // Every core's interface vector: raw and activated.
  t.raw = take(c.P);
  t.act = take(c.P);
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
  } else if (c.core == kCore_ntm) {
    const int64_t heads = c.R + c.Hw;
    t.knorm = take(heads);
    t.mnorm = take(n);
    t.cos = take(heads * n);
    t.wc = take(heads * n);
  } else if (c.core == kCore_dnc) {
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
  t.grad = make_gradient_record(c);
  return t;
}

// What every core reads: the configuration and the tape layout made from it.
struct CoreView {
  const SmemConfig& c;
  const Tape& L;
};

}  // namespace
