"""The native kernels against the PyTorch reference path (the oracle) and on their own."""

import copy
import ctypes
import os
import pickle
import shutil
import subprocess
import warnings
from pathlib import Path
from typing import Any, Callable, Optional

import pytest
import torch

from sb3_memory.memory import DNCCell, LSTMCore, MemoryCore, NTMCell, addressing, core, kernel_build, native

# Configurations: every core, every controller, one and several read/write heads.
CONFIGS = [
    ("ntm", dict(num_read_heads=1, num_write_heads=1)),
    ("ntm", dict(num_read_heads=2, num_write_heads=2, shift_range=2)),
    ("ntm", dict(num_read_heads=3, num_write_heads=1)),
    ("ntm", dict(num_read_heads=1, num_write_heads=2, memory_units=3, memory_unit_size=16)),  # W > 3N
    ("dnc", dict(num_read_heads=1)),
    ("dnc", dict(num_read_heads=3)),
    ("lstm", dict()),
]
CASES = [
    pytest.param(name, controller, kwargs, id=f"{name}-{controller}-{'-'.join(f'{k}{v}' for k, v in kwargs.items())}")
    for name, kwargs in CONFIGS
    for controller in ("lstm", "gru", "mlp")
    if not (name == "lstm" and controller == "mlp")
]
CLASSES = {"ntm": NTMCell, "dnc": DNCCell, "lstm": LSTMCore}
INPUT_DIM = 5

# In CI (CI=true) a missing compiler or a failed build fails these tests instead of skipping them.
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
pytestmark = pytest.mark.skipif(not IN_CI and not native.is_available(), reason="no C++ compiler for the native kernels")


def make_core(name: str, controller: str, dtype: torch.dtype = torch.float32, seed: int = 0, **kwargs) -> MemoryCore:
    torch.manual_seed(seed)
    if name != "lstm":
        kwargs = {"memory_units": 9, "memory_unit_size": 4, **kwargs}
    return CLASSES[name](input_dim=INPUT_DIM, controller=controller, controller_dim=7, **kwargs).to(dtype)


def chunk(core_: MemoryCore, dtype: torch.dtype, steps: int = 20, batch: int = 5, seed: int = 0):
    """Inputs with episode starts inside the chunk, and a state that is not the initial one."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(steps, batch, INPUT_DIM, generator=generator, dtype=dtype)
    starts = torch.rand(steps, batch, generator=generator) < 0.15
    starts[3, 1] = True
    with torch.no_grad():
        warmup = torch.randn(6, batch, INPUT_DIM, generator=generator, dtype=dtype)
        _, warm = core_.reference_sequence(warmup, core_.initial_state(batch, dtype=dtype))
    return x, starts, core_.flatten_state(warm)


def run(
    core_: MemoryCore,
    path: str,
    x: torch.Tensor,
    starts: torch.Tensor,
    flat: torch.Tensor,
    seed: int = 1,
    rows: Optional[torch.Tensor] = None,
):
    """
    Features, final state and the gradients of a random loss of both, for one path.

    :param rows: (B,) booleans: the batch rows the loss sums over (default: all)
    """
    core_.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_(True)
    flat = flat.clone().requires_grad_(True)
    if path == "reference":
        features, final = core_.reference_sequence(x, core_.unflatten_state(flat), starts)
        final = core_.flatten_state(final)
    else:
        assert core_._native_for(x) is not None
        features, final = core_.forward_flat(x, flat, starts)
    generator = torch.Generator().manual_seed(seed)
    mask = torch.ones(flat.shape[0], dtype=x.dtype) if rows is None else rows.to(x.dtype)
    loss = (features * torch.randn(features.shape, generator=generator, dtype=x.dtype) * mask[:, None]).sum()
    loss = loss + (final * torch.randn(final.shape, generator=generator, dtype=x.dtype) * mask[:, None]).sum()
    loss.backward()
    # A missing gradient counts as zero, which the non-vacuity check below rejects.
    grads = {name: torch.zeros_like(p) if p.grad is None else p.grad.clone() for name, p in core_.named_parameters()}
    return {"features": features.detach(), "final state": final.detach(), "x": x.grad, "initial state": flat.grad, **grads}


def _labelled(key: str) -> Callable[[str], str]:
    return lambda message: f"{key}: {message}"


def assert_paths_agree(core_, dtype, atol, rtol, **chunk_kwargs) -> None:
    x, starts, flat = chunk(core_, dtype, **chunk_kwargs)
    reference = run(core_, "reference", x, starts, flat)
    fused = run(core_, "native", x, starts, flat)
    assert reference.keys() == fused.keys()
    for key in reference:
        torch.testing.assert_close(fused[key], reference[key], rtol=rtol, atol=atol, msg=_labelled(key))
    # The comparison is not vacuous: every gradient is there and nonzero.
    for key in reference:
        assert reference[key].abs().sum() > 0, key


CHUNK_CASES = [case for case in CASES if case.values[0] != "dnc"]
DNC_CASES = [case for case in CASES if case.values[0] == "dnc"]
TOLERANCES = {torch.float64: dict(atol=1e-10, rtol=0), torch.float32: dict(atol=1e-5, rtol=1e-5)}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("name,controller,kwargs", CHUNK_CASES)
def test_native_equals_reference_over_a_chunk(name, controller, kwargs, dtype):
    """
    NTM and LSTM cores: features, final state and every gradient over a chunk with resets inside,
    from a state that is not the initial one. float32: within 1e-5, relative for entries above 1
    (gradients reach ~30 here: summation order alone moves them by ~1e-5).
    """
    assert_paths_agree(make_core(name, controller, dtype, **kwargs), dtype, steps=32, batch=8, **TOLERANCES[dtype])


SPARSE_NTM_CASES = [
    pytest.param(controller, kwargs, id=f"{controller}-{'-'.join(f'{k}{v}' for k, v in kwargs.items())}")
    for controller in ("lstm", "gru", "mlp")
    for kwargs in (
        dict(sparse_top_k=3),
        dict(sparse_top_k=2, num_read_heads=2, num_write_heads=2, shift_range=2),
        dict(sparse_top_k=9),  # K = N: every slot kept
        dict(sparse_top_k=1, memory_units=3, memory_unit_size=16),  # shifts reach every slot
    )
]


@pytest.mark.parametrize("controller,kwargs", SPARSE_NTM_CASES)
def test_native_sparse_ntm_equals_reference_over_a_chunk(controller, kwargs):
    """
    The sparse NTM's kernels (undo-log tape, segment replay) against the sparse reference: features,
    final state and every gradient, over a chunk with resets inside (where the constant memory ties
    every slot, and both keep the lowest slots) from a state that is not the initial one.
    """
    core_ = make_core("ntm", controller, torch.float64, **kwargs)
    assert core_.native_config()["top_k"] == kwargs["sparse_top_k"]
    assert_paths_agree(core_, torch.float64, steps=32, batch=8, **TOLERANCES[torch.float64])


def top_k_margins(core_: MemoryCore, x: torch.Tensor, starts: torch.Tensor, flat: torch.Tensor) -> torch.Tensor:
    """
    Per batch row, the smallest gap between the K-th and the (K+1)-th largest logit of the row's
    sparse lookups over ``x``, computed by the float64 reference on float64 copies: how far the row
    is from a tie that float32 rounding could break either way. Exact ties do not count: they come
    from identical rows (slots still holding the initial memory), which score alike on any CPU and go
    to the lowest index in both paths.
    """
    core64 = copy.deepcopy(core_).double()
    # The float32 initial memory, widened: a float64 one (1e-6 rounded differently) would make every
    # row count as written, and the float64 run choose among other slots.
    row32 = core_._cached_initial_row(flat.device, torch.float32)
    core64._initial_rows[(flat.device, torch.float64)] = type(row32)(*(field.double() for field in row32))
    margins = torch.full((flat.shape[0],), torch.inf, dtype=torch.float64)
    original = addressing.top_k

    def recording_top_k(values: torch.Tensor, k: int):
        ordered = values.sort(dim=-1, descending=True).values
        kth, next_ = ordered[..., k - 1], ordered[..., k]
        gaps = torch.where((torch.isinf(kth) & torch.isinf(next_)) | (kth == next_), torch.inf, kth - next_)
        torch.minimum(margins, gaps.reshape(gaps.shape[0], -1).min(-1).values, out=margins)
        return original(values, k)

    addressing.top_k = recording_top_k
    try:
        with torch.no_grad():
            core64.reference_sequence(x.double(), core64.unflatten_state(flat.double()), starts)
    finally:
        addressing.top_k = original
    return margins


@pytest.mark.parametrize("controller", ["lstm", "mlp"])
def test_native_sparse_ntm_float32_equals_reference(controller):
    """
    The float32 build against the float32 reference, one step at a time from the reference's state.
    Rounding can reorder two nearly equal similarities, and which way a float32 sum rounds depends
    on the BLAS path the CPU takes (AVX-512, AVX2...), so a near tie passes on one CPU and fails on
    another. The test is tie-aware: at each step it compares the rows whose top-K margins, measured
    in float64, exceed 1e-4 (far beyond float32's error here), and checks that most rows qualify;
    the float64 cases check the equations at every tie. Rows never written keep the constant
    initial memory, whose tiny norms make the initial state's gradient reach thousands: gradients
    are compared relative to each one's largest entry.
    """
    core_ = make_core("ntm", controller, torch.float32, sparse_top_k=3)
    x, starts, flat = chunk(core_, torch.float32, steps=32, batch=8)
    compared = 0
    for t in range(x.shape[0]):
        step, step_starts = x[t : t + 1], starts[t : t + 1]
        kept = top_k_margins(core_, step, step_starts, flat) > 1e-4
        reference = run(core_, "reference", step, step_starts, flat, rows=kept)
        fused = run(core_, "native", step, step_starts, flat, rows=kept)
        for key in reference:
            want, got = reference[key], fused[key]
            if key in ("features", "x"):
                want, got = want[:, kept], got[:, kept]
            elif key in ("final state", "initial state"):
                want, got = want[kept], got[kept]
            scale = max(1.0, float(want.abs().max()))
            torch.testing.assert_close(got, want, rtol=0, atol=1e-5 * scale, msg=_labelled(f"step {t}, {key}"))
        compared += int(kept.sum())
        flat = reference["final state"]
    assert compared >= 0.75 * x.shape[0] * x.shape[1], (
        f"only {compared} of {x.shape[0] * x.shape[1]} row-steps had no near tie"
    )


SPARSE_DNC_CASES = [
    pytest.param(controller, kwargs, id=f"{controller}-{'-'.join(f'{k}{v}' for k, v in kwargs.items())}")
    for controller in ("lstm", "gru", "mlp")
    for kwargs in (
        dict(sparse_top_k=3),
        dict(sparse_top_k=2, num_read_heads=2),
        dict(sparse_top_k=9),  # K = N
        dict(sparse_top_k=1, memory_units=3, memory_unit_size=16),
    )
]


@pytest.mark.parametrize("controller,kwargs", SPARSE_DNC_CASES)
def test_native_sparse_dnc_equals_reference_step_by_step(controller, kwargs):
    """
    The sparse DNC's kernels (link of K entries per row, usage, allocation over the K least used
    slots; the backward pass replays each segment's usage, memory and link) against the sparse
    reference: each step of a sequence with resets, forward and backward, from the same state on
    both paths. Step by step for the reason the dense DNC's test gives: after a reset, allocation
    shares of eps^j make usages that tie to within an ulp, which two implementations split apart
    differently (with K = N here as soon as the second step after a reset). float64 only: in float32
    near-equal usages and similarities tie at float32's precision, and a single step can keep
    another slot (as the dense DNC's can); the float32 build is the same code.
    """
    core_ = make_core("dnc", controller, torch.float64, **kwargs)
    assert core_.native_config()["top_k"] == kwargs["sparse_top_k"]
    assert_step_by_step(core_)


@pytest.mark.parametrize(
    "controller,kwargs",
    [case for case in SPARSE_DNC_CASES if "top_k9" not in str(case.id)],  # K < N
)
def test_native_sparse_dnc_equals_reference_over_a_chunk(controller, kwargs):
    """Whole chunks with resets inside (the segment replay), where K < N keeps allocation shares above an ulp."""
    core_ = make_core("dnc", controller, torch.float64, **kwargs)
    assert_paths_agree(core_, torch.float64, steps=32, batch=8, **TOLERANCES[torch.float64])


@pytest.mark.parametrize("name", ["ntm", "dnc"])
def test_native_sparse_scans_of_a_mostly_unwritten_memory_equal_the_reference(name):
    """
    The kernels' content scans (and the DNC's search for the least used slots) visit the rows
    written since the initial state and the K lowest unwritten ones, which are all alike; the
    reference scans every row. With 64 slots and K = 2 most rows stay unwritten, resets included.
    """
    core_ = make_core(name, "lstm", torch.float64, sparse_top_k=2, memory_units=64)
    assert_paths_agree(core_, torch.float64, steps=32, batch=8, **TOLERANCES[torch.float64])
    x, starts, flat = chunk(core_, torch.float64, steps=32, batch=8)
    final = core_.unflatten_state(run(core_, "native", x, starts, flat)["final state"])
    unwritten = (final.memory == core_.memory_init).all(dim=-1).sum(dim=-1)
    assert (unwritten > 16).all() and (unwritten < 64).all()  # the shortcut was taken, and rows were written


def _unmarked_slots(core_: MemoryCore, state) -> torch.Tensor:
    """(B, N) booleans: the slots in blocks that a state's written_blocks leaves unmarked."""
    blocks = state.written_blocks == 0
    return blocks.repeat_interleave(addressing.WRITTEN_BLOCK_ROWS, dim=1)[:, : core_.memory_units]


@pytest.mark.parametrize("name", ["ntm", "dnc"])
def test_native_sparse_cores_read_only_marked_blocks_and_equal_the_reference(name):
    """
    With 300 slots (four blocks of 64 and a partial one) and K = 2, an episode touches a few
    blocks; the kernels read only those (written_blocks) and agree with the reference, which reads
    every slot. The record is exact: outside the marked blocks every field still holds the initial
    state's bits, in both paths' final states.
    """
    core_ = make_core(name, "lstm", torch.float64, sparse_top_k=2, memory_units=300)
    assert_paths_agree(core_, torch.float64, steps=32, batch=8, **TOLERANCES[torch.float64])
    x, starts, flat = chunk(core_, torch.float64, steps=32, batch=8)
    initial = core_.initial_state(8, dtype=torch.float64)
    for path in ("reference", "native"):
        final = core_.unflatten_state(run(core_, path, x, starts, flat)["final state"])
        unmarked = _unmarked_slots(core_, final)
        assert unmarked.any(dim=1).all() and not unmarked.all(dim=1).any()  # some blocks touched, not all
        for field in ("memory", "usage", "link_values", "link_index", "read_weights", "write_weights", "precedence"):
            if hasattr(final, field):
                got, fresh = getattr(final, field), getattr(initial, field)
                slots = unmarked.view(8, *([1] * (got.dim() - 2)), -1) if field.endswith("weights") else unmarked
                same = got.view(torch.int64) == fresh.view(torch.int64)
                same = same if same.dim() == slots.dim() else same.all(dim=-1)
                assert bool(same[slots.expand_as(same)].all()), f"{path}: {field} changed in an unmarked block"


@pytest.mark.parametrize("name", ["ntm", "dnc"])
def test_a_state_edited_in_a_marked_block_is_read_by_the_kernels(name):
    """
    A hand-made state must mark the blocks it edits: then the kernels read them, as the reference
    does (an edit in an unmarked block would be one they skip, see ``written_blocks_shape``).
    """
    core_ = make_core(name, "lstm", torch.float64, sparse_top_k=2, memory_units=300)
    x, _, flat = chunk(core_, torch.float64, steps=8, batch=4)
    state = core_.unflatten_state(flat)
    unmarked = _unmarked_slots(core_, state)
    slot = int(unmarked[0].nonzero()[-1])
    memory, blocks = state.memory.clone(), state.written_blocks.clone()
    memory[:, slot] = torch.linspace(-1.0, 1.0, core_.memory_unit_size, dtype=torch.float64)  # a strong match
    blocks[:, slot // addressing.WRITTEN_BLOCK_ROWS] = 1.0
    flat = core_.flatten_state(state._replace(memory=memory, written_blocks=blocks))
    reference, fused = run(core_, "reference", x, None, flat), run(core_, "native", x, None, flat)
    for key in reference:
        torch.testing.assert_close(fused[key], reference[key], **TOLERANCES[torch.float64], msg=_labelled(key))


@pytest.mark.parametrize("name,kwargs", [("ntm", {}), ("dnc", {"sparse_top_k": 2})])
def test_a_state_given_as_columns_of_a_wider_tensor_is_read_without_a_copy(name, kwargs):
    """
    A policy's joint state holds the actor's and the critic's columns side by side; the kernels
    read one core's columns in place (rows state0_stride apart), forward and backward, and give the
    numbers of a contiguous copy to the bit, the state's gradient included.
    """
    core_ = make_core(name, "lstm", torch.float64, **kwargs)
    x, starts, flat = chunk(core_, torch.float64)
    expected = run(core_, "native", x, starts, flat)
    joint = torch.cat([torch.randn(flat.shape[0], 3, dtype=flat.dtype), flat, torch.randn(flat.shape[0], 5)], dim=1)
    joint.requires_grad_(True)
    columns = joint[:, 3 : 3 + core_.state_size]
    assert columns.stride(0) == core_.state_size + 8 and not columns.is_contiguous()
    core_.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_(True)
    features, final = core_.forward_flat(x, columns, starts)
    generator = torch.Generator().manual_seed(1)  # run()'s loss
    loss = (features * torch.randn(features.shape, generator=generator, dtype=x.dtype)).sum()
    loss = loss + (final * torch.randn(final.shape, generator=generator, dtype=x.dtype)).sum()
    loss.backward()
    got = {"features": features.detach(), "final state": final.detach(), "x": x.grad,
           "initial state": joint.grad[:, 3 : 3 + core_.state_size],
           **{name: p.grad for name, p in core_.named_parameters()}}  # fmt: skip
    assert torch.equal(joint.grad[:, :3], torch.zeros(flat.shape[0], 3, dtype=flat.dtype))
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=0, msg=_labelled(key))


def test_native_sparse_dnc_scans_a_slot_whose_usage_changed_while_its_row_stayed_unwritten():
    """
    A previous write weight too small to move a row's bits still raises its usage: the slot becomes
    a changed slot while its memory row is the initial one, and, as the lowest unwritten slot, the
    one that stands for them all in content lookups. Its norm is taken then (the kernels take the
    norms of unwritten rows only when a scan visits them).
    """
    core_ = make_core("dnc", "lstm", torch.float64, sparse_top_k=2, memory_units=64)
    x, _, flat = chunk(core_, torch.float64, steps=4, batch=8)
    state = core_.unflatten_state(flat)
    lowest_unwritten = core_.unwritten_slots(state.memory).int().argmax(-1)
    rows = torch.arange(8)
    assert bool((state.usage[rows, lowest_unwritten] == 0).all())
    write_weights = state.write_weights.clone()
    write_weights[rows, 0, lowest_unwritten] = 1e-30  # 1e-6 + 1e-30 x (add - 1e-6 x erase) rounds back to 1e-6
    flat = core_.flatten_state(state._replace(write_weights=write_weights))
    reference, fused = run(core_, "reference", x, None, flat), run(core_, "native", x, None, flat)
    for key in reference:
        torch.testing.assert_close(fused[key], reference[key], **TOLERANCES[torch.float64], msg=_labelled(key))


@pytest.mark.parametrize("name", ["ntm", "dnc"])
def test_native_sparse_scans_of_an_initial_memory_with_unlike_rows_equal_the_reference(name):
    """Without memory_init's equal rows no row stands for another: the kernels scan every row."""
    core_ = make_core(name, "lstm", torch.float64, sparse_top_k=2, memory_units=16)
    key = (torch.device("cpu"), torch.float64)
    row = core_.initial_row(*key)
    generator = torch.Generator().manual_seed(5)
    core_._initial_rows[key] = row._replace(memory=torch.randn(row.memory.shape, generator=generator, dtype=torch.float64))
    assert_paths_agree(core_, torch.float64, steps=32, batch=8, **TOLERANCES[torch.float64])
    # The library found no alike rows in this initial row, so no call assumed them.
    assert core_._native_kernels[torch.float64].config["init_layout"] == (2 if name == "dnc" else 0)


def test_native_sparse_dnc_with_an_initial_link_laid_out_otherwise_equals_the_reference():
    """An initial link whose rows name other columns than i..i+K-1: every link row counts."""
    core_ = make_core("dnc", "lstm", torch.float64, sparse_top_k=2, memory_units=16)
    key = (torch.device("cpu"), torch.float64)
    row = core_.initial_row(*key)
    core_._initial_rows[key] = row._replace(link_index=row.link_index.flip(-2))  # row i names 15 - i, 16 - i mod 16
    assert_paths_agree(core_, torch.float64, steps=32, batch=8, **TOLERANCES[torch.float64])
    assert core_._native_kernels[torch.float64].config["init_layout"] == 1  # alike rows, another link


@pytest.mark.parametrize("name, kwargs", [("ntm", {"sparse_top_k": 2}), ("dnc", {"sparse_top_k": 2}), ("dnc", {})])
def test_the_library_finds_the_initial_layout_once_per_core(name, kwargs):
    """What a call may assume of the initial row is found when the kernels are bound, not per call."""
    core_ = make_core(name, "lstm", torch.float32, **kwargs)
    x, starts, flat = chunk(core_, torch.float32)
    with torch.no_grad():
        core_.forward_flat(x, flat, starts)
    sparse = "sparse_top_k" in kwargs
    expected = {"ntm": 1, "dnc": 3}[name] if sparse else 0
    assert core_._native_kernels[torch.float32].config["init_layout"] == expected


@pytest.mark.parametrize(
    "name, kwargs", [("ntm", {}), ("dnc", {}), ("ntm", {"sparse_top_k": 3}), ("dnc", {"sparse_top_k": 3})]
)
def test_a_row_computes_the_same_bits_alone_step_by_step_or_in_a_chunk(name, kwargs):
    """
    A rollout step and the replay of its chunk agree to the bit: each row's numbers, the input
    projection included, do not depend on the call's batch or length (a batched matrix product's
    rounding would, and a sparse core's choice of slots can follow the last bit).
    """
    core_ = make_core(name, "lstm", torch.float32, **kwargs)
    x, starts, flat = chunk(core_, torch.float32, steps=16, batch=6)
    with torch.no_grad():
        chunked, final = core_.forward_flat(x, flat, starts)
        state, steps = flat[2:3], []
        for t in range(x.shape[0]):  # row 2 alone, one step per call, as a rollout runs it
            features, state = core_.forward_flat(x[t : t + 1, 2:3], state, starts[t : t + 1, 2:3])
            steps.append(features)
    assert torch.equal(torch.cat(steps), chunked[:, 2:3]) and torch.equal(state, final[2:3])


def test_wide_inputs_come_projected_and_still_equal_the_reference():
    """Inputs wider than KERNEL_PROJECTION_MAX_INPUT are projected by one matrix product before the kernels."""
    width = core.KERNEL_PROJECTION_MAX_INPUT + 8
    torch.manual_seed(0)
    core_ = NTMCell(width, controller_dim=7, memory_units=9, memory_unit_size=4).double()
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(12, 3, width, generator=generator, dtype=torch.float64)
    starts = torch.rand(12, 3, generator=generator) < 0.2
    flat = core_.flatten_state(core_.initial_state(3, dtype=torch.float64))
    reference, fused = run(core_, "reference", x, starts, flat), run(core_, "native", x, starts, flat)
    for key in reference:
        torch.testing.assert_close(fused[key], reference[key], **TOLERANCES[torch.float64], msg=_labelled(key))
    assert reference["controller.weight_input"].abs().sum() > 0


def bound_kernels(core_: MemoryCore) -> native.NativeSequence:
    """The core's kernels in float32, bound to its initial row."""
    return native.NativeSequence(core_.native_config(), core_.flatten_state(core_.initial_state(1, dtype=torch.float32))[0])


def test_native_sparse_dnc_tape_does_not_grow_with_the_memory():
    sizes = [bound_kernels(make_core("dnc", "lstm", sparse_top_k=4, memory_units=n)).tape_size for n in (16, 4096)]
    assert sizes[0] == sizes[1]


def test_native_sparse_ntm_with_every_slot_kept_is_the_dense_ntm():
    """The sparse state is the dense one and its written_blocks (last): with the one block marked,
    and the random loss's weight 0 on it, the numbers are the dense core's."""
    dense, sparse = (make_core("ntm", "lstm", torch.float64, sparse_top_k=k) for k in (None, 9))
    x, starts, flat = chunk(dense, torch.float64)
    expected = run(dense, "native", x, starts, flat)
    sparse.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_(True)
    marked = torch.cat([flat, torch.ones(flat.shape[0], 1, dtype=flat.dtype)], dim=1).requires_grad_(True)
    features, final = sparse.forward_flat(x, marked, starts)
    assert torch.equal(final[:, -1], torch.ones(flat.shape[0], dtype=flat.dtype))
    generator = torch.Generator().manual_seed(1)  # run()'s loss on the dense part
    loss = (features * torch.randn(features.shape, generator=generator, dtype=x.dtype)).sum()
    loss = loss + (final[:, :-1] * torch.randn(flat.shape, generator=generator, dtype=x.dtype)).sum()
    loss.backward()
    got = {
        "features": features.detach(),
        "final state": final[:, :-1].detach(),
        "x": x.grad,
        "initial state": marked.grad[:, :-1],
        **{name: p.grad for name, p in sparse.named_parameters()},
    }
    assert torch.equal(marked.grad[:, -1], torch.zeros(flat.shape[0], dtype=flat.dtype))
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=1e-10, msg=_labelled(key))


def test_native_sparse_ntm_tape_does_not_grow_with_the_memory():
    """The tape keeps each head's K slots and the written rows, not the state: no term in N."""
    sizes = [bound_kernels(make_core("ntm", "lstm", sparse_top_k=4, memory_units=n)).tape_size for n in (16, 4096)]
    assert sizes[0] == sizes[1]
    assert bound_kernels(make_core("ntm", "lstm", memory_units=4096)).tape_size > 4096 * 4


def test_an_initial_row_of_another_size_is_refused():
    core_ = make_core("dnc", "lstm", sparse_top_k=4, memory_units=16)
    with pytest.raises(ValueError, match=rf"init_row must have shape \({core_.state_size},\)"):
        native.NativeSequence(core_.native_config(), torch.zeros(1))


@pytest.mark.parametrize("name,controller,kwargs", DNC_CASES)
def test_native_dnc_equals_reference_step_by_step(name, controller, kwargs):
    """
    DNC: each step of a sequence with resets, forward and backward, from the same state on both
    paths (float64).

    Allocation sorts usages, and it is discontinuous where two of them tie. After a reset all slots
    have equal histories, so near-equal usages, and the DNC's own arithmetic splits such ties by an
    ulp in a slot-dependent way (each row of the link matrix has its zero diagonal elsewhere, so the
    same numbers are summed in another order), differently in any two implementations. Over whole
    chunks the paths can then allocate different slots, in float64 too; in float32 even a single
    step can (about 1 sequence in 60 here). So: step by step in float64, and whole chunks in both
    precisions from a state without ties (below); gradcheck covers the chained backward pass.
    """
    assert_step_by_step(make_core(name, controller, torch.float64, **kwargs))


def assert_step_by_step(core_):
    """In float64, each step of a chunk with resets, native against reference from the same state."""
    x, starts, flat = chunk(core_, torch.float64, steps=24, batch=6)
    assert starts.any(dim=1).sum() >= 3
    for t in range(x.shape[0]):
        reference = run(core_, "reference", x[t : t + 1], starts[t : t + 1], flat, seed=t)
        fused = run(core_, "native", x[t : t + 1], starts[t : t + 1], flat, seed=t)
        for key in reference:
            torch.testing.assert_close(
                fused[key], reference[key], **TOLERANCES[torch.float64], msg=lambda m, k=key, t=t: f"step {t}, {k}: {m}"
            )
        flat = fused["final state"]


def random_dnc_state(core_: DNCCell, batch: int, dtype: torch.dtype) -> torch.Tensor:
    """A valid DNC state with distinct usages and memory rows: no ties for the allocation to break."""
    generator = torch.Generator().manual_seed(3)
    n, r = core_.memory_units, core_.num_read_heads

    def rand(*shape):
        return torch.rand(batch, *shape, generator=generator, dtype=dtype)

    link = rand(n, n) * (1 - torch.eye(n, dtype=dtype))
    state = core_.initial_state(batch, dtype=dtype)._replace(
        memory=rand(n, core_.memory_unit_size) - 0.5,
        read_weights=torch.softmax(3 * rand(r, n), -1),
        write_weights=0.5 * torch.softmax(3 * rand(n), -1),
        usage=rand(n),
        precedence=0.5 * torch.softmax(3 * rand(n), -1),
        link=link / link.sum(-1, keepdim=True) * 0.9,
    )
    return core_.flatten_state(state)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("name,controller,kwargs", DNC_CASES)
def test_native_dnc_equals_reference_over_a_chunk_without_ties(name, controller, kwargs, dtype):
    core_ = make_core(name, controller, dtype, **kwargs)
    x, _, _ = chunk(core_, dtype, steps=16, batch=6)
    flat = random_dnc_state(core_, 6, dtype)
    no_starts = torch.zeros(x.shape[:2], dtype=torch.bool)
    reference = run(core_, "reference", x, no_starts, flat)
    fused = run(core_, "native", x, no_starts, flat)
    for key in reference:
        torch.testing.assert_close(fused[key], reference[key], **TOLERANCES[dtype], msg=lambda m, k=key: f"{k}: {m}")


@pytest.mark.parametrize("name", ["ntm", "dnc", "lstm"])
def test_native_gradients_match_finite_differences(name):
    """gradcheck of the fused function itself, independent of the reference path."""
    core_ = make_core(name, "gru" if name == "lstm" else "lstm", torch.float64)
    x, starts, flat = chunk(core_, torch.float64, steps=6, batch=2)
    kernel = core_._native_for(x)
    inputs = x.detach().clone().requires_grad_(True)
    weights = tuple(None if w is None else w.detach().clone().requires_grad_(True) for w in core_._native_weights())
    present = [w for w in weights if w is not None]

    def function(inputs_, state_, *present_):
        it = iter(present_)
        full = tuple(None if w is None else next(it) for w in weights)
        return native.fused_sequence(kernel, inputs_, state_, starts, full)

    assert torch.autograd.gradcheck(function, (inputs, flat.clone().requires_grad_(True), *present), atol=1e-6)


def test_native_is_the_default_on_cpu_and_reference_runs_without_it(monkeypatch):
    auto = make_core("ntm", "lstm")
    x, starts, flat = chunk(auto, torch.float32)
    assert auto.backend == "auto" and auto._native_for(x) is not None
    reference = make_core("ntm", "lstm", backend="reference")
    expected = reference.reference_sequence(x, reference.unflatten_state(flat), starts)[0]

    def fail(*args, **kwargs):
        raise AssertionError("the reference backend called the native kernels")

    monkeypatch.setattr(native, "fused_sequence", fail)
    torch.testing.assert_close(reference.forward_flat(x, flat, starts)[0], expected, rtol=0, atol=0)
    with pytest.raises(AssertionError, match="called the native kernels"):
        auto.forward_flat(x, flat, starts)


def test_compiled_reference_is_chosen_by_compile_step():
    assert make_core("ntm", "lstm", compile_step=True)._native_for(torch.zeros(1, 1, INPUT_DIM)) is None
    with pytest.raises(ValueError, match="compile_step=True compiles the reference path"):
        make_core("ntm", "lstm", compile_step=True, backend="native")
    with pytest.raises(ValueError, match="backend must be one of"):
        make_core("ntm", "lstm", backend="fast")


def test_without_a_compiler_auto_falls_back_once_with_a_warning(monkeypatch, tmp_path):
    monkeypatch.setattr(native, "_libraries", {})
    monkeypatch.setattr(native, "_failures", {})
    monkeypatch.setattr(native, "packaged_library", lambda level, dtype: None)  # a checkout that was not built
    monkeypatch.setattr(native, "_compiler", lambda: None)
    monkeypatch.setattr(core, "_warned", set())
    with pytest.raises(native.NativeUnavailableError, match="no C\\+\\+ compiler"):
        make_core("dnc", "lstm", backend="native")
    fallback = make_core("dnc", "lstm")
    x, starts, flat = chunk(fallback, torch.float32)
    with pytest.warns(RuntimeWarning, match="native memory kernels are unavailable.*no C\\+\\+ compiler.*reference path"):
        features, _ = fallback.forward_flat(x, flat, starts)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # only once per process
        again, _ = fallback.forward_flat(x, flat, starts)
    expected, _ = fallback.reference_sequence(x, fallback.unflatten_state(flat), starts)
    torch.testing.assert_close(features, expected, rtol=0, atol=0)
    torch.testing.assert_close(again, expected, rtol=0, atol=0)


def test_unsupported_dtype_uses_the_reference_path():
    bf16 = make_core("lstm", "lstm", torch.bfloat16)
    x = torch.randn(3, 2, INPUT_DIM, dtype=torch.bfloat16)
    with pytest.warns(RuntimeWarning, match="float32 and float64"):
        assert bf16._native_for(x) is None
    strict = make_core("lstm", "lstm", torch.bfloat16, backend="native")
    with pytest.raises(ValueError, match="backend='native' cannot run here"):
        strict.forward_flat(x, strict.flatten_state(strict.initial_state(2, dtype=torch.bfloat16)))


def test_cached_library_is_reused_without_compiling(monkeypatch, tmp_path):
    """A second process (here: a fresh module state) loads the cached file instead of building."""
    monkeypatch.setenv("SB3_MEMORY_CACHE", str(tmp_path))
    compiler = native._compiler()
    if compiler is None:
        pytest.skip("no C++ compiler")
    built = native._build(compiler, torch.float32, "baseline")
    assert built.parent == tmp_path and built.exists()
    assert "-march=native" not in native.build_flags("baseline", torch.float32)

    def no_compiler(*args, **kwargs):
        raise AssertionError("compiled again")

    monkeypatch.setattr(native.subprocess, "run", no_compiler)
    assert native._build(compiler, torch.float32, "baseline") == built
    assert [path for path in tmp_path.iterdir() if path.suffix == ".so"] == [built]  # no partial files left


def test_kernels_build_here_when_ci_requires_them():
    if not IN_CI:
        pytest.skip("only CI=true requires the kernels")
    for dtype in (torch.float32, torch.float64):
        native.load_library(dtype)  # raises the compiler's own error
        x = torch.zeros(1, 1, INPUT_DIM, dtype=dtype)
        assert native.is_available(dtype) and make_core("dnc", "lstm", dtype)._native_for(x) is not None


class _FakeLibrary:
    """Stands in for a kernel library: each exported function returns the value given."""

    def __init__(self, **values) -> None:
        for name, value in values.items():
            setattr(self, f"smem_{name}", self._function(value))

    @staticmethod
    def _function(value):
        def function():
            return value

        return function


def _library_values(**changes):
    library = native.load_library(torch.float32)
    values = {
        name: getattr(library.cdll, f"smem_{name}")()
        for name in (
            "abi_version",
            "config_fields",
            "buffer_fields",
            "config_size",
            "buffers_size",
            "status_names",
            "core_names",
            "controller_names",
            "written_block_rows",
        )
    }
    return {**values, **changes}


def test_the_interface_is_read_from_the_library():
    interface = native.Interface(_FakeLibrary(**_library_values()))
    assert interface.config_fields[:4] == ["core", "controller", "T", "B"]
    assert ctypes.sizeof(interface.config_type) == 8 * len(interface.config_fields)
    assert "d_state0" in interface.buffer_fields and "tape" in interface.buffer_fields
    assert interface.statuses["ok"] == 0 and "non_finite_features" in interface.statuses


def test_an_interface_mismatch_is_named_at_load():
    old, current = native.ABI_VERSION - 1, native.ABI_VERSION
    with pytest.raises(native.NativeUnavailableError, match=rf"speaks ABI {old}, this sb3_memory speaks {current}.*delete"):
        native.Interface(_FakeLibrary(**_library_values(abi_version=old)))
    with pytest.raises(native.NativeUnavailableError, match=r"SmemConfig is 8 bytes.*disagree"):
        native.Interface(_FakeLibrary(**_library_values(config_size=8)))
    with pytest.raises(native.NativeUnavailableError, match=r"written_blocks of 32 slots, the reference of 64"):
        native.Interface(_FakeLibrary(**_library_values(written_block_rows=32)))
    # a field the C++ lists but Python's core does not fill in is named too
    core_ = make_core("ntm", "lstm")
    config = core_.native_config()
    del config["S"]
    with pytest.raises(ValueError, match=r"missing \['S'\]"):
        native.NativeSequence(config, core_.flatten_state(core_.initial_state(1))[0], "NTMCell")


def test_nonfinite_state_raises_on_the_native_path():
    core_ = make_core("dnc", "gru")
    x, starts, flat = chunk(core_, torch.float32)
    flat = flat.clone()
    flat[2, 0] = float("nan")
    with pytest.raises(ValueError, match="DNCCell produced non-finite features"):
        core_.forward_flat(x, flat, torch.zeros_like(starts))


def test_native_state_survives_pickling_and_parameter_updates():
    core_ = make_core("ntm", "gru")
    x, starts, flat = chunk(core_, torch.float32)
    core_.forward_flat(x, flat, starts)  # builds and caches the kernels
    for clone in (copy.deepcopy(core_), pickle.loads(pickle.dumps(core_))):
        torch.testing.assert_close(
            clone.forward_flat(x, flat, starts)[0], core_.forward_flat(x, flat, starts)[0], rtol=0, atol=0
        )
    with torch.no_grad():
        core_.interface.weight.mul_(1.5)  # the kernels read the current weights at every call
    expected = core_.reference_sequence(x, core_.unflatten_state(flat), starts)[0]
    torch.testing.assert_close(core_.forward_flat(x, flat, starts)[0], expected, rtol=0, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_runs_the_reference_path_with_one_warning(monkeypatch):
    monkeypatch.setattr(core, "_warned", set())
    cpu = make_core("dnc", "lstm", torch.float32)
    gpu = copy.deepcopy(cpu).cuda()
    x, starts, flat = chunk(cpu, torch.float32)
    with pytest.warns(RuntimeWarning, match="CPU only"):
        features, final = gpu.forward_flat(x.cuda(), flat.cuda(), starts.cuda())
    expected, expected_final = cpu.forward_flat(x, flat, starts)
    torch.testing.assert_close(features.cpu(), expected, rtol=0, atol=1e-4)
    torch.testing.assert_close(final.cpu(), expected_final, rtol=0, atol=1e-4)


def test_each_core_reports_its_own_state_layout_to_the_kernels():
    """The offsets come from the core's own state fields; core.py names none of them."""
    for name in ("ntm", "dnc", "lstm"):
        core_ = make_core(name, "lstm")
        offsets = core_.state_offsets()
        config = core_.native_config()
        assert {key for key in config if key.startswith("off_")} == {f"off_{field}" for field in offsets}
        assert all(config[f"off_{field}"] == offset for field, offset in offsets.items())
        # the offsets tile the flat state in state_type's order
        sizes = [int(torch.Size(shape).numel()) for shape in core_.state_shapes().values()]
        assert list(offsets.values()) == [sum(sizes[:i]) for i in range(len(sizes))] and sum(sizes) == core_.state_size
    assert "off_usage" in make_core("dnc", "gru").native_config()
    assert "off_usage" not in make_core("ntm", "gru").native_config()


# --- libraries the tests compile themselves: the test-only primitives, and the kernels per instruction set ---

CSRC = Path(native.__file__).with_name("csrc")


def _compiler_or_skip() -> str:
    """The system C++ compiler (as native.py looks for one); skips without one, unless in CI."""
    for candidate in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if candidate and shutil.which(candidate):
            return candidate
    if IN_CI:
        pytest.fail("CI=true but no C++ compiler was found (looked for $CXX, c++, g++, clang++)")
    pytest.skip("no C++ compiler")


def _compile(builds: list[tuple[Path, list[str]]], directory: Path) -> list[Path]:
    """
    Compile each (source, flags) into a shared library in ``directory``, adding
    ``$SB3_MEMORY_CXXFLAGS`` (the sanitizer job passes its flags there); in parallel, as each takes seconds.
    """
    compiler = _compiler_or_skip()
    extra = os.environ.get("SB3_MEMORY_CXXFLAGS", "").split()
    targets, jobs = [], []
    for index, (source, flags) in enumerate(builds):
        targets.append(directory / f"{source.stem}-{index}.so")
        command = [compiler, "-std=c++17", "-shared", "-fPIC", "-fopenmp-simd", *flags, *extra, str(source)]
        command += ["-o", str(targets[-1])]
        jobs.append((command, subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)))
    for command, process in jobs:
        output, _ = process.communicate()
        assert process.returncode == 0, f"{' '.join(command)} failed:\n{output[-3000:]}"
    return targets


def _named_values(function) -> dict[str, int]:
    """A library's "name=value," list (smem_status_names and the like) as a dict."""
    function.restype = ctypes.c_char_p
    return {name: int(value) for name, value in (item.split("=") for item in function().decode().split(",") if item)}


@pytest.fixture(scope="module")
def testing_library(tmp_path_factory: pytest.TempPathFactory) -> ctypes.CDLL:
    """The test-only primitives (csrc/testing_api.cpp, not in the shipped library), built for float64."""
    (built,) = _compile([(CSRC / "testing_api.cpp", ["-O2", "-DSMEM_FLOAT64"])], tmp_path_factory.mktemp("testing_api"))
    library = ctypes.CDLL(str(built))
    library.smem_primitive.restype = ctypes.c_int
    pointers = ctypes.POINTER(ctypes.c_void_p)
    library.smem_primitive.argtypes = [ctypes.c_char_p, ctypes.c_int, ctypes.POINTER(ctypes.c_int64), pointers, pointers]
    return library


# --- each kernel primitive on its own, against addressing.py (forward) and autograd (backward) ---

_H, _N, _W = 3, 7, 5


def _uniform(generator: torch.Generator, *shape: int, low: float = -1.0, high: float = 1.0) -> torch.Tensor:
    return torch.rand(*shape, dtype=torch.float64, generator=generator) * (high - low) + low


def _simplex(generator: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.softmax(2 * _uniform(generator, *shape), dim=-1)


def _run_primitive(library: ctypes.CDLL, name: str, backward: bool, sizes, inputs, outputs) -> None:
    inputs = [tensor.detach().contiguous() for tensor in inputs]
    status = library.smem_primitive(
        name.encode(),
        int(backward),
        (ctypes.c_int64 * len(sizes))(*sizes),
        (ctypes.c_void_p * len(inputs))(*[tensor.data_ptr() for tensor in inputs]),
        (ctypes.c_void_p * len(outputs))(*[tensor.data_ptr() for tensor in outputs]),
    )
    assert status == _named_values(library.smem_status_names)["ok"], status


# name -> sizes, inputs (generator -> tensors), reference (addressing.py on a batch of one), and
# where the kernel's calling convention differs from "inputs in, outputs out, gradients of every
# input in input order": extra forward outputs (the tape) and which of them the reference gives,
# what the backward takes besides the upstream gradients, the order of its gradients, its scratch.
PRIMITIVES = {
    "content": dict(
        sizes=(_N, _W),
        inputs=lambda g: [_uniform(g, _N, _W), _uniform(g, _W), _uniform(g, 1, low=1.0, high=5.0)],
        reference=lambda mem, key, beta: [addressing.content_weights(mem[None], key[None, None], beta[None])[0, 0]],
        tape=[(_N,), (1,), (_N,)],  # the memory's row norms, the key's norm, the cosines; then the weights
        backward_inputs=lambda inputs, tape: [*inputs, *tape, "output"],
        scratch=[(_N,)],
    ),
    "shift": dict(
        sizes=(_N, 3),
        inputs=lambda g: [_simplex(g, _N), _simplex(g, 3)],
        reference=lambda w, shift: [addressing.circular_shift(w[None, None], shift[None, None])[0, 0]],
    ),
    "read": dict(
        sizes=(_H, _N, _W),
        inputs=lambda g: [_uniform(g, _N, _W), _simplex(g, _H, _N)],
        reference=lambda mem, w: [addressing.read(mem[None], w[None])[0]],
    ),
    "write": dict(
        sizes=(_H, _N, _W),
        inputs=lambda g: [_uniform(g, _N, _W), _simplex(g, _H, _N), _uniform(g, _H, _W, low=0.0), _uniform(g, _H, _W)],
        reference=lambda mem, ww, erase, add: [addressing.write(mem[None], ww[None], erase[None], add[None])[0]],
        scratch=[(_W,), (_W,)],
    ),
    "write_weights": dict(
        sizes=(_N,),
        inputs=lambda g: [_simplex(g, _N), _simplex(g, _N), _uniform(g, 1, low=0.0), _uniform(g, 1, low=0.0)],
        reference=lambda content, alloc, ga, gw: [addressing.write_weights(alloc[None], content[None], ga, gw)[0]],
    ),
    "read_modes": dict(
        sizes=(_N,),
        inputs=lambda g: [_simplex(g, 3), _simplex(g, _N), _simplex(g, _N), _simplex(g, _N)],
        reference=lambda m, b, c, f: [
            addressing.read_weights(b[None, None], c[None, None], f[None, None], m[None, None])[0, 0]
        ],
    ),
    "directional": dict(
        sizes=(_H, _N),
        inputs=lambda g: [_uniform(g, _N, _N, low=0.0) * (1 - torch.eye(_N, dtype=torch.float64)), _simplex(g, _H, _N)],
        reference=lambda link, w: [x[0] for x in addressing.directional_weights(link[None], w[None])],
        zero_diagonal=0,  # the link's diagonal is held at zero: no gradient reaches it
    ),
    "precedence": dict(
        sizes=(_N,),
        inputs=lambda g: [0.9 * _simplex(g, _N), _simplex(g, _N)],
        reference=lambda ww, prec: [addressing.update_precedence(prec[None], ww[None])[0]],
        gradient_order=[1, 0],
    ),
    "link": dict(
        sizes=(_N,),
        inputs=lambda g: [_uniform(g, _N, _N, low=0.0), 0.9 * _simplex(g, _N), _simplex(g, _N)],
        reference=lambda link, ww, prec: [addressing.update_link(link[None], prec[None], ww[None])[0]],
        scratch=[(_N,)],
        zero_upstream_diagonal=True,  # the kernel's callers hand it a gradient with the diagonal zeroed
    ),
    "allocation": dict(
        sizes=(_N,),
        inputs=lambda g: [_uniform(g, _N, low=0.0)],
        reference=lambda usage: [addressing.allocation_weights(usage[None])[0]],
        tape=[(_N,), (_N,), (_N,)],  # sorted usages, their slots, exclusive products; then the allocation
        backward_inputs=lambda inputs, tape: tape,
        scratch=[(_N,), (_N,)],
    ),
    "usage": dict(
        sizes=(_H, _N),
        inputs=lambda g: [_uniform(g, _N, low=0.0), 0.9 * _simplex(g, _N), _simplex(g, _H, _N), _uniform(g, _H, low=0.0)],
        reference=lambda u, ww, rw, f: [addressing.update_usage(u[None], ww[None], f[None], rw[None])[0]],
        tape=[(_N,), (_N,)],  # the usage before retention, and the retention
        backward_inputs=lambda inputs, tape: [*inputs, *tape],
    ),
}


@pytest.mark.parametrize("name", list(PRIMITIVES))
def test_each_kernel_primitive_matches_addressing_and_autograd(name, testing_library):
    case = PRIMITIVES[name]
    generator = torch.Generator().manual_seed(0)
    inputs = case["inputs"](generator)
    leaves = [tensor.clone().requires_grad_(True) for tensor in inputs]
    expected = case["reference"](*leaves)
    tape = [torch.zeros(shape, dtype=torch.float64) for shape in case.get("tape", [])]
    outputs = [torch.zeros(y.shape, dtype=torch.float64) for y in expected]
    _run_primitive(testing_library, name, False, case["sizes"], inputs, [*tape, *outputs])
    for got, want in zip(outputs, expected):
        torch.testing.assert_close(got, want.detach(), rtol=1e-12, atol=1e-12)

    upstream = [_uniform(generator, *y.shape) for y in expected]
    if case.get("zero_upstream_diagonal"):
        upstream = [u.fill_diagonal_(0.0) for u in upstream]
    wanted = torch.autograd.grad(expected, leaves, upstream)
    order = case.get("gradient_order", list(range(len(leaves))))
    gradients = [torch.zeros(leaves[k].shape, dtype=torch.float64) for k in order]
    scratch = [torch.zeros(shape, dtype=torch.float64) for shape in case.get("scratch", [])]
    given = case.get("backward_inputs", lambda inputs, tape: inputs)(inputs, tape)
    given = [outputs[0] if isinstance(tensor, str) else tensor for tensor in given]  # "output": the forward's result
    _run_primitive(testing_library, name, True, case["sizes"], [*given, *upstream], [*gradients, *scratch])
    for k, got in zip(order, gradients):
        want = wanted[k].clone()
        if case.get("zero_diagonal") == k:
            want.fill_diagonal_(0.0)
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12, msg=_labelled(f"d{name}[{k}]"))
    assert all(w.abs().sum() > 0 for w in wanted)  # the check is not vacuous


def test_an_unknown_primitive_is_a_named_status(testing_library):
    status = testing_library.smem_primitive(b"sort", 0, None, None, None)
    names = _named_values(testing_library.smem_status_names)
    assert status == names["unknown_primitive"] != names["ok"]


@pytest.mark.parametrize("name, kwargs", [("ntm", {}), ("dnc", {}), ("dnc", {"sparse_top_k": 3})])
def test_a_state_without_grad_gets_none_and_the_same_parameter_gradients(name, kwargs):
    """A state replayed from a buffer needs no gradient: the kernels skip writing it, nothing else changes."""
    core_ = make_core(name, "lstm", torch.float64, **kwargs)
    x, starts, flat = chunk(core_, torch.float64)
    with_state = run(core_, "native", x, starts, flat)
    core_.zero_grad(set_to_none=True)
    features, final = core_.forward_flat(x, flat, starts)
    assert not flat.requires_grad
    generator = torch.Generator().manual_seed(1)
    loss = (features * torch.randn(features.shape, generator=generator, dtype=x.dtype)).sum()
    (loss + (final * torch.randn(final.shape, generator=generator, dtype=x.dtype)).sum()).backward()
    assert flat.grad is None
    for parameter_name, parameter in core_.named_parameters():
        assert torch.equal(parameter.grad, with_state[parameter_name]), parameter_name


# --- the same bits whatever instruction set the kernels were compiled for ---


def _dtype_macro(dtype: torch.dtype) -> str:
    return {torch.float32: "-DSMEM_FLOAT32", torch.float64: "-DSMEM_FLOAT64"}[dtype]


@pytest.fixture(scope="module")
def isa_libraries(tmp_path_factory: pytest.TempPathFactory) -> Callable[[torch.dtype], dict[str, ctypes.CDLL]]:
    """
    The shipped library of every instruction-set level this CPU runs (x86-64 only), by scalar type:
    the package's own builds where it holds them (kernel_build's flags, as setup.py compiles them),
    else compiled here with the same flags. The kernels sum in a fixed order, so a wider vector unit
    changes the speed, never a bit.
    """
    levels = [level for level in kernel_build.supported_levels() if level in kernel_build.levels()]
    if len(levels) < 2:
        pytest.skip(f"this CPU runs only {levels}: no two levels to compare")
    built: dict[torch.dtype, dict[str, ctypes.CDLL]] = {}

    def libraries(dtype: torch.dtype) -> dict[str, ctypes.CDLL]:
        if dtype not in built:
            digest = kernel_build.source_digest()
            packaged = {level: native.packaged_library(level, dtype) for level in levels}
            usable = {
                level: path
                for level, path in packaged.items()
                if path is not None and native._library_digest(path) == digest and not os.environ.get(native.BUILD_ENV)
            }
            missing = [level for level in levels if level not in usable]
            builds = [
                (
                    CSRC / "memory_kernels.cpp",
                    [*kernel_build.COMPILE_FLAGS, *kernel_build.level_flags(level), _dtype_macro(dtype)],
                )
                for level in missing
            ]
            paths = dict(zip(missing, _compile(builds, tmp_path_factory.mktemp("isa")))) if builds else {}
            built[dtype] = {level: ctypes.CDLL(str(usable.get(level) or paths[level])) for level in levels}
        return built[dtype]

    return libraries


def _kernel_outputs(library: ctypes.CDLL, core_: MemoryCore, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """A forward and a backward call of ``core_``'s kernels in ``library``: every buffer they write."""
    interface = native.Interface(library)
    config: dict[str, Any] = {name: 0 for name in interface.config_fields if name.startswith("off_")}
    config.update(core_.native_config())
    for field in ("core", "controller"):
        if isinstance(config[field], str):  # a kind's name: the library gives its number
            config[field] = _named_values(getattr(library, f"smem_{field}_names"))[config[field]]
    x, starts, flat = chunk(core_, dtype, steps=12, batch=4)
    steps, batch = x.shape[:2]
    struct = ctypes.byref(interface.config_type(T=steps, B=batch, **config))
    library.smem_tape_size.restype = ctypes.c_int64
    tape_size = int(library.smem_tape_size(struct))
    library.smem_gradient_fields.restype = None
    gradient_fields = (ctypes.c_int64 * 3)()
    library.smem_gradient_fields(struct, gradient_fields)
    out = {
        "features": torch.zeros(steps, batch, config["C"] + config["R"] * config["W"], dtype=dtype),
        "state_T": torch.zeros(flat.shape, dtype=dtype),
        "tape": torch.zeros(batch, steps, tape_size, dtype=dtype),
        "d_projected": torch.zeros(steps, batch, config["G"], dtype=dtype),
        "d_state0": torch.zeros(flat.shape, dtype=dtype),
        "d_records": torch.zeros(batch, steps, gradient_fields[2], dtype=dtype),
    }
    generator = torch.Generator().manual_seed(2)
    given = {
        "inputs": x,
        "state0": flat,
        "starts": starts.to(torch.uint8),
        "init_row": core_.flatten_state(core_.initial_state(1, dtype=dtype))[0],
        "d_features": torch.randn(out["features"].shape, generator=generator, dtype=dtype),
        "d_state_T": torch.randn(flat.shape, generator=generator, dtype=dtype),
    }
    weights = {
        name: None if weight is None else weight.detach().contiguous()
        for name, weight in zip(native.WEIGHT_NAMES, core_._native_weights())
    }
    buffers = {name: tensor.contiguous() for name, tensor in {**given, **out}.items()}
    pointers = {name: tensor.data_ptr() for name, tensor in buffers.items()}
    pointers.update({name: None if weight is None else weight.data_ptr() for name, weight in weights.items()})
    ok = _named_values(library.smem_status_names)["ok"]
    for function in (library.smem_forward, library.smem_backward):
        function.restype = ctypes.c_int
        assert function(struct, ctypes.byref(interface.buffers_type(**pointers))) == ok
    return {name: buffers[name] for name in out}


# Every core and controller, with words and memories longer than the fixed-order sums' lanes (16
# floats, 8 doubles), so that both whole lane blocks and tails are summed.
LONG_WORDS = dict(memory_units=21, memory_unit_size=19)
ISA_CASES = [
    ("ntm", "lstm", dict(num_read_heads=2, num_write_heads=2, shift_range=2, **LONG_WORDS)),
    ("ntm", "gru", LONG_WORDS),
    ("ntm", "mlp", dict(sparse_top_k=3, **LONG_WORDS)),
    ("ntm", "gru", dict(sparse_top_k=4, num_read_heads=2, **LONG_WORDS)),
    ("dnc", "lstm", dict(num_read_heads=2, **LONG_WORDS)),
    ("dnc", "gru", dict(sparse_top_k=3, **LONG_WORDS)),
    ("dnc", "mlp", LONG_WORDS),
    ("dnc", "lstm", dict(sparse_top_k=2, num_read_heads=2, **LONG_WORDS)),
    ("lstm", "lstm", {}),
    ("lstm", "gru", {}),
]


def test_the_shipped_library_exports_its_kinds_and_no_test_entry_point(isa_libraries):
    """smem_primitive lives in the tests' own library; the shipped one names the core and controller kinds."""
    library = isa_libraries(torch.float32)["baseline"]
    assert not hasattr(library, "smem_primitive")
    assert _named_values(library.smem_core_names) == {"ntm": 0, "dnc": 1, "plain": 2}
    assert _named_values(library.smem_controller_names) == {"lstm": 0, "gru": 1, "mlp": 2}
    statuses = _named_values(library.smem_status_names)
    assert statuses == {"ok": 0, "unknown_core": 1, "non_finite_features": 2, "unknown_primitive": 3}


# float64: the same code, and two more builds (tens of seconds), so with the slow tests.
@pytest.mark.parametrize(
    "dtype", [torch.float32, pytest.param(torch.float64, marks=pytest.mark.slow)], ids=["float32", "float64"]
)
def test_every_instruction_set_level_computes_the_same_bits(isa_libraries, dtype):
    """
    The kernels built for baseline x86-64 (SSE2), for AVX2 with FMA units and, where the CPU has it,
    AVX-512 agree to the bit: features, final state, tape and gradients of every core. A sum whose
    order followed the vector width (an `omp simd reduction`) would differ in the last bits, and a
    sparse core's choice of slots after it.
    """
    libraries = isa_libraries(dtype)
    levels = list(libraries)
    bits = torch.int32 if dtype == torch.float32 else torch.int64
    for name, controller, kwargs in ISA_CASES:
        core_ = make_core(name, controller, dtype, **kwargs)
        outputs = {level: _kernel_outputs(library, core_, dtype) for level, library in libraries.items()}
        for level in levels[1:]:
            for key, value in outputs["baseline"].items():
                same = torch.equal(outputs[level][key].view(bits), value.view(bits))
                assert same, f"{name}-{controller} {kwargs}: {key} differs between baseline and {level}"
        assert outputs["baseline"]["d_projected"].abs().sum() > 0  # the backward pass ran


def test_large_state_tensors_are_advised_to_huge_pages_inside_their_own_memory(monkeypatch):
    """empty_state advises the whole 2 MB pages inside a large tensor, and leaves small ones alone."""
    calls = []
    monkeypatch.setattr(native, "_madvise", lambda start, length, advice: calls.append((start, length, advice)) or 0)
    like = torch.zeros(1, dtype=torch.float32)
    small = native.empty_state((4, 1000), like)
    assert calls == [] and small.shape == (4, 1000) and small.dtype == torch.float32
    large = native.empty_state((3, 5_000_000), like)  # 60 MB
    ((start, length, advice),) = calls
    huge = 2 << 20
    first, end = large.data_ptr(), large.data_ptr() + large.numel() * 4
    assert advice == 14 and start % huge == 0 and length % huge == 0
    assert first <= start < first + huge and end - huge < start + length <= end
