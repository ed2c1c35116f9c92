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
//
// The shipped library is this one translation unit, compiled once per scalar type
// (-DSMEM_FLOAT32 or -DSMEM_FLOAT64); the parts live in headers next to it, one part each:
//   interface.h        the extern "C" interface: config and buffer fields, status codes, core and
//                      controller kinds, each written once as an X-macro list
//   primitives.h       dense helpers, exp/log, addressing primitives and their backward passes
//   tape.h             the layout of a step's tape record
//   controller.h       the controller, the interface projection, and the plain recurrent core
//   ntm.h, dnc.h       the dense memory cores
//   sparse_common.h    what the sparse cores share (top-K lists, slot maps, content scans)
//   sparse_ntm.h       the sparse NTM
//   sparse_dnc.h       the sparse DNC's state and forward step; sparse_dnc_backward.h its backward
//   calls.h            the sequence loops over a call's rows and steps, and the dispatch by core
// The headers define everything in an unnamed namespace: each is compiled into one translation
// unit per library, and only the extern "C" functions below leave the library. testing_api.cpp,
// compiled by the tests alone, runs each primitive on its own.

#include <cstdint>

#include "calls.h"
#include "interface.h"
#include "tape.h"

// One library per scalar type (-DSMEM_FLOAT32 or -DSMEM_FLOAT64): each builds in half the time,
// and float64 is only built when something runs in float64.
#if defined(SMEM_FLOAT32)
using Scalar = float;
#elif defined(SMEM_FLOAT64)
using Scalar = double;
#else
#error "compile with -DSMEM_FLOAT32 or -DSMEM_FLOAT64"
#endif

extern "C" {

int64_t smem_abi_version() { return SMEM_ABI_VERSION; }

// The digest of csrc/ this library was built from (kernel_build.source_digest, passed by the build
// as -DSMEM_SOURCE_DIGEST): native.py rebuilds a checkout's library whose sources changed since.
#ifndef SMEM_SOURCE_DIGEST
#define SMEM_SOURCE_DIGEST "unknown"
#endif
const char* smem_source_digest() { return SMEM_SOURCE_DIGEST; }

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

// "name=value," for every status code, core and controller kind (SmemConfig's core, controller).
const char* smem_status_names() { return SMEM_STATUS_CODES(SMEM_NAME_VALUE); }
const char* smem_core_names() { return SMEM_CORE_KINDS(SMEM_NAME_VALUE); }
const char* smem_controller_names() { return SMEM_CONTROLLER_KINDS(SMEM_NAME_VALUE); }

// The slots per entry of a sparse state's written_blocks field (addressing.WRITTEN_BLOCK_ROWS).
int64_t smem_written_block_rows() { return kCheckBlock; }

int64_t smem_tape_size(const SmemConfig* c) { return make_tape(*c).size; }

// Offsets in a step's tape record of what the weight gradients are made of: the controller's
// recurrent input, its output and, for a GRU, the hidden state.
void smem_tape_fields(const SmemConfig* c, int64_t* out) {
  const Tape t = make_tape(*c);
  out[0] = t.ctrl.x;
  out[1] = t.ctrl.out;
  out[2] = t.ctrl.hidden;
}

// The layout of a step's gradient record (d_records): the interface gradient's offset, the GRU's
// hidden-product gradient's offset, and the record's size.
void smem_gradient_fields(const SmemConfig* c, int64_t* out) {
  const GradientRecord g = make_gradient_record(*c);
  out[0] = g.draw;
  out[1] = g.dfh;
  out[2] = g.size;
}

// What the sparse cores may assume of the initial row init_row (SmemInitLayout bits), for
// SmemConfig's init_layout: native.py asks once per core, so that no call checks it again.
int64_t smem_init_layout(const SmemConfig* c, const void* init_row) {
  return init_layout<Scalar>(*c, static_cast<const Scalar*>(init_row));
}

// Return an SmemStatus.
int smem_forward(const SmemConfig* c, const SmemBuffers* b) { return dispatch<Scalar>(*c, *b, false); }
int smem_backward(const SmemConfig* c, const SmemBuffers* b) { return dispatch<Scalar>(*c, *b, true); }

}  // extern "C"
