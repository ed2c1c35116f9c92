// The controller (controller.py) and what every core does around it: the weights and their
// transposes, the input projection, the controller's forward and backward step, the interface
// raw = W_if out + b_if, and the plain recurrent core (the controller alone).

#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "interface.h"
#include "primitives.h"
#include "tape.h"

namespace {

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
  const int64_t C = c.C, rin = c.K - (c.controller == kController_lstm ? C : 0);
  F* x = tape + L.x;
  std::copy(reads, reads + rin, x);
  if (c.controller == kController_lstm) std::copy(hidden, hidden + C, x + rin);
  F* act = tape + L.act;
  std::copy(projected, projected + c.G, act);
  if (c.K > 0) gemv_cols(act, wt.t_rec.data(), x, c.G, c.K);
  F* out = tape + L.out;
  if (c.controller == kController_lstm) {
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
  } else if (c.controller == kController_gru) {
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
// the gate pre-activations, hence of W_rec's output) and, for a GRU, dfh; accumulates
// dreads, dhidden and dcell. Weight gradients are left to one matrix product over the whole tape.
template <typename F>
void controller_backward(const SmemConfig& c, const Weights<F>& wt, const F* tape, const ControllerTape& L,
                         const F* hidden, const F* cell, const F* dout, const F* dcell_out, F* dprojected,
                         F* dfh, F* dreads, F* dhidden, F* dcell, F* scratch) {
  const int64_t C = c.C, rin = c.K - (c.controller == kController_lstm ? C : 0);
  const F* act = tape + L.act;
  F* dgates = dprojected;
  if (c.controller == kController_lstm) {
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
  } else if (c.controller == kController_gru) {
    const F* fh = tape + L.fh;
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
    if (c.controller == kController_lstm) axpy(dhidden, dx + rin, F(1), C);
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
// dL/dout += W_if^T dL/draw (no interface: P = 0); then the controller's own backward, which
// adds into dreads and into dstate_in's controller fields. grad: the step's gradient record, whose
// draw the core has written.
template <typename F>
void core_controller_backward(const SmemConfig& c, const Weights<F>& wt, const F* tape, const Tape& L, F* grad,
                              const F* s, const F* dstate_out, F* dout, F* dprojected, F* dreads, F* dstate_in,
                              F* scratch) {
  if (c.P > 0) gemv_cols(dout, wt.w_if, grad + L.grad.draw, c.C, c.P);
  controller_backward(c, wt, tape, L.ctrl, s + c.off_controller_hidden, s + c.off_controller_cell, dout,
                      dstate_out + c.off_controller_cell, dprojected, grad + L.grad.dfh, dreads,
                      dstate_in + c.off_controller_hidden, dstate_in + c.off_controller_cell, scratch);
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

  void backward(const Weights<F>& wt, const F* s, const F* /*next*/, const F* tape, F* grad, const F* dfeatures,
                const F* dstate_out, F* dstate_in, F* dprojected, Scratch<F>& sc) const {
    const int64_t C = c.C;
    F* dout = sc.at(0);
    std::copy(dfeatures, dfeatures + C, dout);
    axpy(dout, dstate_out + c.off_controller_hidden, F(1), C);
    // No interface (P = 0) and no read vectors to feed back (R = 0).
    core_controller_backward<F>(c, wt, tape, L, grad, s, dstate_out, dout, dprojected, nullptr, dstate_in, sc.at(C));
  }
};

}  // namespace
