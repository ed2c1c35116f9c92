"""The DNC repairs of Csordás and Schmidhuber (2019) and the rsDNC's layer norm, against hand-worked numbers."""

import math

import pytest
import torch

from sb3_memory.memory import DNCCell
from sb3_memory.memory import addressing as A

F64 = torch.float64


def t(values) -> torch.Tensor:
    return torch.tensor(values, dtype=F64)


def test_masked_content_addressing_by_hand():
    # Rows hold (key, value) pairs; the mask looks at the key part only.
    memory = t([[[1.0, 5.0], [1.0, -3.0], [-1.0, 0.0]]])
    keys, strengths = t([[[2.0, 0.0]]]), t([[1.0]])
    masked = A.masked_content_weights(memory, keys, strengths, t([[[1.0, 0.0]]]))
    # cosines of (2, 0) with (1, 0), (1, 0), (-1, 0): 1, 1, -1 (up to eps) -> softmax
    expected = torch.softmax(t([1.0, 1.0, -1.0]), 0)
    torch.testing.assert_close(masked[0, 0], expected, atol=1e-5, rtol=0)
    # Unmasked, the values get in the way: cosines 2/(2*sqrt(26)), 2/(2*sqrt(10)), -1.
    plain = A.content_weights(memory, keys, strengths)
    torch.testing.assert_close(
        plain[0, 0], torch.softmax(t([1 / math.sqrt(26), 1 / math.sqrt(10), -1.0]), 0), atol=1e-5, rtol=0
    )


def test_all_ones_mask_is_plain_content_addressing():
    generator = torch.Generator().manual_seed(0)
    memory = torch.randn(2, 5, 4, generator=generator, dtype=F64)
    keys = torch.randn(2, 3, 4, generator=generator, dtype=F64)
    strengths = torch.rand(2, 3, generator=generator, dtype=F64) * 5
    torch.testing.assert_close(
        A.masked_content_weights(memory, keys, strengths, torch.ones_like(keys)), A.content_weights(memory, keys, strengths)
    )


def test_masked_rows_of_zero_norm_have_finite_gradients():
    memory = t([[[0.0, 3.0], [1.0, 0.0]]]).requires_grad_(True)
    keys, masks = t([[[1.0, 1.0]]]).requires_grad_(True), t([[[1.0, 0.0]]]).requires_grad_(True)
    weights = A.masked_content_weights(memory, keys, t([[2.0]]), masks)
    weights[0, 0, 1].backward()
    for tensor in (memory, keys, masks):
        assert torch.isfinite(tensor.grad).all()


def test_retention_and_deallocating_write_by_hand():
    free_gates = t([[1.0, 0.5]])
    reads = t([[[0.0, 1.0, 0.0], [0.5, 0.5, 0.0]]])
    # psi = (1 - 1 * r0) * (1 - 0.5 * r1) = [1 * 0.75, 0 * 0.75, 1 * 1]
    retention = A.memory_retention(free_gates, reads)
    torch.testing.assert_close(retention, t([[0.75, 0.0, 1.0]]))
    memory = t([[[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]])
    weights, erase, add = t([[[0.0, 0.0, 1.0]]]), t([[[0.5, 0.0]]]), t([[[1.0, 1.0]]])
    written = A.write(memory, weights, erase, add, retention)
    # slot 0 kept at 0.75, slot 1 freed and erased, slot 2 written: (5 * 0.5 + 1, 6 + 1)
    torch.testing.assert_close(written, t([[[0.75, 1.5], [0.0, 0.0], [3.5, 7.0]]]))
    torch.testing.assert_close(A.write(memory, weights, erase, add), t([[[1.0, 2.0], [3.0, 4.0], [3.5, 7.0]]]))


def test_link_sharpening_by_hand():
    weights, sharpness = t([[[0.5, 0.25, 0.0]]]), t([[2.0]])
    # scaled (1, 0.5, 0), squared (1, 0.25, 0), normalised (0.8, 0.2, 0)
    torch.testing.assert_close(A.sharpen_links(weights, sharpness, eps=0.0), t([[[0.8, 0.2, 0.0]]]))
    torch.testing.assert_close(A.sharpen_links(weights, t([[1.0]]), eps=0.0), t([[[2 / 3, 1 / 3, 0.0]]]))
    # With eps, nowhere to go (no link) becomes a uniform weighting, not a division by zero.
    torch.testing.assert_close(A.sharpen_links(t([[[0.0, 0.0]]]), sharpness), t([[[0.5, 0.5]]]))


def make_dnc(**options) -> DNCCell:
    torch.manual_seed(0)
    return DNCCell(input_dim=3, controller_dim=6, memory_units=4, memory_unit_size=4, num_read_heads=2, **options).double()


def interface_bias(core: DNCCell, **groups: torch.Tensor) -> None:
    """Set the interface to constant outputs, group by group (names follow DNCCell's layout)."""
    r, w = core.num_read_heads, core.memory_unit_size
    raw, strengths, gates, modes = (torch.zeros(size, dtype=F64) for size in core._sizes)
    for name, value in groups.items():
        target, start = {
            "write_vector": (raw, r * w + w),
            "erase": (gates, 0),
            "free": (gates, w),
            "alloc_gate": (gates, w + r),
            "write_gate": (gates, w + r + 1),
            "modes": (modes, 0),
            "read_masks": (gates, w + r + 2),
        }[name]
        target[start : start + value.numel()] = value.reshape(-1)
    with torch.no_grad():
        core.interface.weight.zero_()
        core.interface.bias.copy_(torch.cat([raw, strengths, gates, modes]))


def test_deallocation_erases_what_the_free_gates_release():
    x = torch.zeros(1, 1, 3, dtype=F64)
    for deallocate, survives in ((False, True), (True, False)):
        core = make_dnc(deallocate=deallocate)
        state = core.initial_state(1, dtype=F64)
        memory = state.memory.clone()
        memory[0, 2] = t([1.0, -1.0, 1.0, -1.0])
        read = torch.zeros_like(state.read_weights)
        read[0, 0, 2] = 1.0  # head 0 read slot 2 last step
        state = state._replace(memory=memory, read_weights=read)
        # free gate of head 0 fully open, nothing written (write gate shut), no erase
        interface_bias(core, free=t([30.0, -30.0]), write_gate=t([-30.0]), erase=torch.full((4,), -30.0, dtype=F64))
        _, new = core.forward_sequence(x, state)
        assert new.usage[0, 2] < 1e-6
        assert (new.memory[0, 2].abs().max() > 0.5) == survives


def test_masks_link_sharpness_and_layer_norm_change_the_step_and_train():
    x = torch.randn(5, 2, 3, dtype=F64, generator=torch.Generator().manual_seed(1))
    base = make_dnc()
    reference, _ = base.forward_sequence(x, base.initial_state(2, dtype=F64))
    for option in ("content_masks", "link_sharpness", "layer_norm"):
        core = make_dnc(**{option: True})
        assert core.interface.out_features >= base.interface.out_features
        features, _ = core.forward_sequence(x, core.initial_state(2, dtype=F64))
        assert features.shape == reference.shape and torch.isfinite(features).all()
        features.square().sum().backward()
        for name, parameter in core.named_parameters():
            assert parameter.grad is not None and parameter.grad.abs().sum() > 0, (option, name)
    norm = make_dnc(layer_norm=True)
    features, _ = norm.forward_sequence(x, norm.initial_state(2, dtype=F64))
    controller_part = features[..., : norm.controller_dim]
    torch.testing.assert_close(controller_part.mean(-1), torch.zeros(5, 2, dtype=F64), atol=1e-6, rtol=0)


def test_repairs_run_on_the_reference_path(monkeypatch):
    from sb3_memory.memory import core as core_module

    monkeypatch.setattr(core_module, "_warned", set())
    with pytest.raises(ValueError, match="native kernels implement the paper's DNC"):
        make_dnc(deallocate=True, backend="native")
    core = make_dnc(deallocate=True, content_masks=True)
    with pytest.warns(RuntimeWarning, match=r"\['content_masks', 'deallocate'\] run on the reference path"):
        assert core._native_for(torch.zeros(1, 1, 3, dtype=F64)) is None
    with pytest.raises(TypeError, match="deallocate must be a bool"):
        make_dnc(deallocate=1)
