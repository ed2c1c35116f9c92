// The kernels' calling interface, shared by the shipped library (memory_kernels.cpp) and the
// tests' library (testing_api.cpp): plain C types only, so that ctypes can call it.

#pragma once

#include <cstdint>

extern "C" {

// The calling interface, written once. native.py builds its ctypes structures from the field
// lists that smem_config_fields/smem_buffer_fields export, and checks the sizes and the ABI version
// at load, so the two sides cannot drift apart.
#define SMEM_ABI_VERSION 13  // bump whenever the interface or the calling convention changes

// Sizes and flat-state offsets, filled in by native.py from the core's configuration:
//   I input size; G width of the projected input (gates * C); C controller output size; K columns of the
//   recurrent weight (fed-back reads, + hidden for an LSTM); N, W, R memory slots, word size, read
//   heads; Hw write heads (NTM); S shifts (NTM); P interface width; D flat state width;
//   state0_stride the distance between state0's rows (each call's, like T and B: D, or more where
//   state0 is one core's columns of a policy's joint state, read without a copy); top_k the
//   slots a weighting keeps (sparse_top_k, 0 for the dense model; the sparse DNC's link then keeps
//   top_k values and column indices per row, at off_link_values and off_link_index); init_layout
//   what smem_init_layout found in the initial row (SmemInitLayout bits; 0 assumes nothing, which
//   is always right but makes a sparse core check every row of the state at every call);
//   off_written_blocks where a sparse state's written_blocks field starts (one entry per
//   smem_written_block_rows() slots, non-zero where the episode's weightings touched the block:
//   the sparse cores read only those blocks of the memory, usage, link and weightings).
#define SMEM_CONFIG_FIELDS(X)                                                                      \
  X(core) X(controller) X(T) X(B) X(I) X(G) X(C) X(K) X(N) X(W) X(R) X(Hw) X(S) X(P) X(D) X(state0_stride) \
  X(off_memory) X(off_read_vectors) X(off_read_weights) X(off_write_weights) X(off_usage)          \
  X(off_precedence) X(off_link) X(off_controller_hidden) X(off_controller_cell) X(hidden_size) X(cell_size) \
  X(top_k) X(off_link_values) X(off_link_index) X(init_layout) X(off_written_blocks)

// Every buffer is a pointer; null where it does not apply (see the comments in SmemBuffers' users):
// starts null = no episode starts; w_rec null when K == 0; w_hid/b_hid GRU only; w_if/b_if
// external-memory cores only; tape null = inference; d_state_T null = zero; d_state0 null = not
// wanted. The backward pass reads the tape and writes d_records, one gradient record per (row,
// step) in the tape's order (smem_gradient_fields), from which native.py makes the weight gradients.
#define SMEM_BUFFER_FIELDS(X)                                                                      \
  /* forward inputs */                                                                             \
  X(const void*, inputs) X(const void*, state0) X(const uint8_t*, starts) X(const void*, init_row)  \
  X(const void*, w_in) X(const void*, b_in) X(const void*, w_rec) X(const void*, w_hid)            \
  X(const void*, b_hid) X(const void*, w_if) X(const void*, b_if)                                  \
  /* forward outputs */                                                                            \
  X(void*, features) X(void*, state_T) X(void*, tape)                                              \
  /* backward inputs, then outputs */                                                              \
  X(const void*, d_features) X(const void*, d_state_T) X(void*, d_projected) X(void*, d_state0)   \
  X(void*, d_records)

// What smem_forward and smem_backward return; native.py reads the names from smem_status_names.
#define SMEM_STATUS_CODES(X) X(ok, 0) X(unknown_core, 1) X(non_finite_features, 2) X(unknown_primitive, 3)

// The values of SmemConfig's core and controller fields. The library exports them
// (smem_core_names, smem_controller_names) so that native.py need not repeat them.
#define SMEM_CORE_KINDS(X) X(ntm, 0) X(dnc, 1) X(plain, 2)
#define SMEM_CONTROLLER_KINDS(X) X(lstm, 0) X(gru, 1) X(mlp, 2)

// One "name=value," entry of the strings smem_status_names, smem_core_names and
// smem_controller_names return (string literals, concatenated by the compiler).
#define SMEM_NAME_VALUE(name, value) #name "=" #value ","

// The bits of SmemConfig's init_layout: every row of the initial memory (and its usage) is alike,
// so the rows nobody wrote need no scan; the sparse DNC's initial link is laid out as
// addressing.initial_link_index lays it out (values 0, row i naming i..i+K-1 mod N), so a link
// row can be checked against that rule instead of against the initial row's.
enum SmemInitLayout : int64_t { kInit_alike_rows = 1, kInit_laid_out_link = 2 };

struct SmemConfig {
#define SMEM_DECLARE(name) int64_t name;
  SMEM_CONFIG_FIELDS(SMEM_DECLARE)
#undef SMEM_DECLARE
};

struct SmemBuffers {
#define SMEM_DECLARE(type, name) type name;
  SMEM_BUFFER_FIELDS(SMEM_DECLARE)
#undef SMEM_DECLARE
};

enum SmemStatus : int {
#define SMEM_DECLARE(name, value) kStatus_##name = value,
  SMEM_STATUS_CODES(SMEM_DECLARE)
#undef SMEM_DECLARE
};

enum SmemCore : int64_t {
#define SMEM_DECLARE(name, value) kCore_##name = value,
  SMEM_CORE_KINDS(SMEM_DECLARE)
#undef SMEM_DECLARE
};

enum SmemController : int64_t {
#define SMEM_DECLARE(name, value) kController_##name = value,
  SMEM_CONTROLLER_KINDS(SMEM_DECLARE)
#undef SMEM_DECLARE
};

}  // extern "C"
