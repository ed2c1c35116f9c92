// Each addressing primitive on its own, for tests/test_native.py, which checks every forward
// against addressing.py and every backward against autograd. Test-only: the tests compile this
// file into a private library (float64, -DSMEM_FLOAT64); the shipped library (memory_kernels.cpp)
// does not contain it.

#include <cstdint>
#include <string>

#include "interface.h"
#include "primitives.h"

#if defined(SMEM_FLOAT32)
using Scalar = float;
#elif defined(SMEM_FLOAT64)
using Scalar = double;
#else
#error "compile with -DSMEM_FLOAT64 (or -DSMEM_FLOAT32)"
#endif

extern "C" {

// The status codes smem_primitive returns are the shipped library's; their names, as it gives them.
const char* smem_status_names() { return SMEM_STATUS_CODES(SMEM_NAME_VALUE); }

// Runs primitive `name`, forward or backward. sizes: the primitive's dimensions; in, out:
// its arrays in the order of the calls below (gradients are added into outputs the caller zeroed;
// scratch outputs are the caller's too). Returns kStatus_ok, or kStatus_unknown_primitive.
int smem_primitive(const char* name, int backward, const int64_t* z, const void* const* in, void* const* out) {
  using F = Scalar;
  auto i = [in](int k) { return static_cast<const F*>(in[k]); };
  auto o = [out](int k) { return static_cast<F*>(out[k]); };
  const std::string p(name);
  if (p == "content") {  // z: n, w; in: mem, key, beta[1]; forward out: mnorm, knorm[1], cos, wc
    if (backward) {  // in: mem, key, beta, mnorm, knorm, cos, wc, dwc; out: dmem, dkey, dbeta, dmnorm (scratch)
      content_backward(i(0), i(3), i(1), i(4)[0], i(2)[0], i(5), i(6), i(7), z[0], z[1], o(0), o(3), o(1), o(2));
      apply_norm_grad(o(0), i(0), i(3), o(3), z[0], z[1]);
    } else {
      row_norms(o(0), i(0), z[0], z[1]);
      content_forward(i(0), o(0), i(1), i(2)[0], z[0], z[1], o(1), o(2), o(3));
    }
  } else if (p == "shift") {  // z: n, shifts; in: weights, shift (, dout)
    if (backward)
      shift_backward(i(0), i(1), i(2), z[0], z[1], o(0), o(1));
    else
      shift_forward(i(0), i(1), z[0], z[1], o(0));
  } else if (p == "read") {  // z: heads, n, w; in: mem, weights (, dreads)
    if (backward)
      read_backward(i(0), i(1), i(2), z[0], z[1], z[2], o(0), o(1));
    else
      read_forward(i(0), i(1), z[0], z[1], z[2], o(0));
  } else if (p == "write") {  // z: heads, n, w; in: mem, ww, erase, add (, dnew)
    if (backward)
      write_backward(i(0), i(1), i(2), i(3), i(4), z[0], z[1], z[2], o(0), o(1), o(2), o(3), o(4), o(5));
    else
      write_forward(i(0), i(1), i(2), i(3), z[0], z[1], z[2], o(0));
  } else if (p == "write_weights") {  // z: n; in: content, alloc, alloc_gate[1], write_gate[1] (, dww)
    if (backward)
      write_weights_backward(i(0), i(1), i(2)[0], i(3)[0], i(4), z[0], o(0), o(1), o(2), o(3));
    else
      write_weights_forward(i(0), i(1), i(2)[0], i(3)[0], z[0], o(0));
  } else if (p == "read_modes") {  // z: n; in: modes[3], bwd, content, fwd (, dw)
    if (backward)
      read_modes_backward(i(0), i(1), i(2), i(3), i(4), z[0], o(0), o(1), o(2), o(3));
    else
      read_modes_forward(i(0), i(1), i(2), i(3), z[0], o(0));
  } else if (p == "directional") {  // z: heads, n; in: link, weights (, dfwd, dbwd)
    if (backward)
      directional_backward(i(0), i(1), i(2), i(3), z[0], z[1], o(0), o(1));
    else
      directional_forward(i(0), i(1), z[0], z[1], o(0), o(1));
  } else if (p == "precedence") {  // z: n; in: ww, prec (, dprec_out)
    if (backward)
      precedence_backward(i(0), i(1), i(2), z[0], o(0), o(1));
    else
      precedence_forward(i(0), i(1), z[0], o(0));
  } else if (p == "link") {  // z: n; in: link, ww, prec (, dlink_out)
    if (backward)
      link_backward(i(0), i(1), i(2), i(3), z[0], o(0), o(1), o(2), o(3));
    else
      link_forward(i(0), i(1), i(2), z[0], o(0));
  } else if (p == "allocation") {  // z: n; forward in: usage; backward in: sorted, order, before, dalloc
    if (backward)
      allocation_backward(i(0), i(1), i(2), i(3), z[0], o(0), o(1), o(2));
    else
      allocation_forward(i(0), z[0], o(0), o(1), o(2), o(3));
  } else if (p == "usage") {  // z: heads, n; in: usage, prev_ww, prev_rw, free (, usage1, retention, dout)
    if (backward)
      usage_backward(i(0), i(1), i(2), i(3), i(4), i(5), i(6), z[0], z[1], o(0), o(1), o(2), o(3));
    else
      usage_forward(i(0), i(1), i(2), i(3), z[0], z[1], o(0), o(1), o(2));
  } else {
    return kStatus_unknown_primitive;
  }
  return kStatus_ok;
}

}  // extern "C"
