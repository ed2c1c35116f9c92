// NTM (ntm.py). Interface: per head [key (W), strength, gate, shift (S), gamma], then erase and
// add (Hw * W each). Heads 0..R-1 read, R..R+Hw-1 write.

#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "controller.h"

namespace {

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
  void backward(const Weights<F>& wt, const F* s, const F* next, F* tape, F* grad, const F* dfeatures,
                const F* dstate_out, F* dstate_in, F* dprojected, Scratch<F>& sc) const {
    const int64_t n = c.N, w = c.W, R = c.R, nw = n * w;
    F *dnew_mem = sc.at(pad.dnew_mem), *dwsh = sc.at(pad.dwsh), *dws = sc.at(pad.dws), *dwg = sc.at(pad.dwg);
    F *dwc = sc.at(pad.dwc), *dmnorm = sc.at(pad.dmnorm), *location = sc.at(pad.location), *keep = sc.at(pad.keep);
    F *others = sc.at(pad.others), *dact = sc.at(pad.dact), *dout = sc.at(pad.dout), *dreads = sc.at(pad.dreads);
    F *ctrl_scratch = sc.at(pad.ctrl), *draw = grad + L.grad.draw;
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
#pragma omp simd
      for (int64_t i = 0; i < n; ++i)
        dws[i] = ws[i] >= F(kSharpenEps) ? wh[i] * (dwh[i] - sdot) * gamma / ws[i] : F(0);
      // Apart from the loop above: with its select inside ordered_sum's term neither vectorised.
      da[w + 2 + c.S] += ordered_sum<F>(n, [=](int64_t i) { return wh[i] * (dwh[i] - sdot) * logws[i]; });
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
    core_controller_backward(c, wt, tape, L, grad, s, dstate_out, dout, dprojected, dstate_in + c.off_read_vectors,
                             dstate_in, ctrl_scratch);
  }
};

}  // namespace
