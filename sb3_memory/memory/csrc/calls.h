// The sequence loops, one batch row at a time (rows are independent; only parameter gradients
// are shared).
// smem_forward and smem_backward (memory_kernels.cpp) hand their arguments to dispatch.

#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <vector>

#include "controller.h"
#include "dnc.h"
#include "interface.h"
#include "ntm.h"
#include "sparse_common.h"
#include "sparse_dnc_backward.h"
#include "sparse_ntm.h"
#include "tape.h"

namespace {

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
      std::copy(state0 + row * c.state0_stride, state0 + row * c.state0_stride + D, entering);
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

  // The sparse cores: each row's state lives in state_T, updated in place (state0 may be state_T:
  // then nothing is copied, and a step costs what it touches plus the scans of load).
  template <template <typename> class CoreT>
  int sparse() {
    const CoreT<F> core(c, L);
    typename CoreT<F>::Work& wk = cached_work(core);
    std::vector<F> scratch_record(tape ? 0 : L.size), projected(c.G);
    for (int64_t row = 0; row < B; ++row) {
      F* s = state_T + row * D;
      core.load(state0 + row * c.state0_stride, init, s, wk);
      for (int64_t t = 0; t < T; ++t) {
        if (b.starts && b.starts[t * B + row]) core.load(init, init, s, wk);
        F* record = tape ? tape + (row * T + t) * L.size : scratch_record.data();
        core.forward(wt, step_input(c, b, wt, t, row, projected.data()), s, record, features + (t * B + row) * FD, wk);
      }
    }
    return status();
  }
};

// The working storage of a sparse core's forward calls, kept per thread and per core type between
// calls of the same configuration: at N = 65,536 its slot maps are megabytes, and zeroing them at
// every rollout step cost as much as the step. Every use of a slot map or list starts by clearing
// what the last use left (as from one batch row to the next within a call), so reuse changes no
// number. Per thread: calls from several threads never share one.
template <typename CoreT>
typename CoreT::Work& cached_work(const CoreT& core) {
  thread_local std::unique_ptr<typename CoreT::Work> work;
  thread_local SmemConfig key{};
  SmemConfig probe = core.c;
  probe.T = probe.B = probe.state0_stride = 0;  // the storage does not depend on the call's length or batch
  if (!work || std::memcmp(&probe, &key, sizeof(SmemConfig)) != 0) {
    work = std::make_unique<typename CoreT::Work>(core.work());
    key = probe;
  }
  return *work;
}

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
  F *dprojected, *dstate0, *grads;
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
        grads(static_cast<F*>(buffers.d_records)),
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
        core.backward(wt, s, next, record, grads + (row * T + t) * L.grad.size, dfeatures + (t * B + row) * FD,
                      dout.data(), din.data(),
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
    // A row's replayed state and its gradient: each row overwrites both whole (begin_segment
    // copies the state; dacc is copied or zeroed), so they are kept per thread between calls. At
    // N = 65,536 two fresh D-sized buffers per call cost a training step more in page faults than
    // its arithmetic.
    thread_local std::vector<F> s, dacc;
    s.resize(D);
    dacc.resize(D);
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
        const F* start = reset(begin) ? init : state0 + row * c.state0_stride;
        core.begin_segment(start, init, s.data(), wk);
        for (int64_t t = begin; t < end; ++t) {
          logs[t].clear();
          core.replay(s.data(), record(t), wk, logs[t]);
        }
        for (int64_t t = end - 1; t >= begin; --t) {
          const bool whole = t == begin && !reset(t);  // the segment's first state is an input
          core.backward(wt, s.data(), start, t > begin ? record(t - 1) : nullptr, record(t),
                        grads + (row * T + t) * L.grad.size, dfeatures + (t * B + row) * FD,
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

// SmemInitLayout bits for a core's initial row (smem_init_layout): only the sparse cores use them.
template <typename F>
int64_t init_layout(const SmemConfig& c, const F* init) {
  if (c.top_k <= 0) return 0;
  if (c.core == kCore_ntm) return SparseNtm<F>::init_layout(c, init);
  if (c.core == kCore_dnc) return SparseDnc<F>::init_layout(c, init);
  return 0;
}

template <typename F>
int dispatch(const SmemConfig& c, const SmemBuffers& b, bool backward) {
  switch (c.core) {
    case kCore_ntm:
      if (c.top_k > 0)
        return backward ? run_sparse_backward<F, SparseNtm>(c, b) : run_sparse_forward<F, SparseNtm>(c, b);
      return backward ? run_backward<F, Ntm>(c, b) : run_forward<F, Ntm>(c, b);
    case kCore_dnc:
      if (c.top_k > 0)
        return backward ? run_sparse_backward<F, SparseDnc>(c, b) : run_sparse_forward<F, SparseDnc>(c, b);
      return backward ? run_backward<F, Dnc>(c, b) : run_forward<F, Dnc>(c, b);
    case kCore_plain:
      return backward ? run_backward<F, Plain>(c, b) : run_forward<F, Plain>(c, b);
    default:
      return kStatus_unknown_core;
  }
}

}  // namespace
