"""Property-based tests of the addressing invariants under extreme inputs (hypothesis).

Inputs reach the edges the cores meet in training: interface logits of +-1e4 (saturated gates,
one-hot softmaxes), all-zero memory, a single slot, one-hot weightings. Every invariant is
checked on at least 200 generated cases, values and gradients alike.
"""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from sb3_memory.memory import DNCCell, NTMCell, addressing, native

EXAMPLES = settings(max_examples=200, deadline=None)
TOL = 1e-5
# Logits from moderate to the saturating extremes the interface can produce.
LOGIT = st.one_of(st.floats(-1e4, 1e4, allow_nan=False, width=32), st.sampled_from([-1e4, -30.0, 0.0, 30.0, 1e4]))


@st.composite
def logits(draw, *shape_ranges):
    shape = tuple(draw(st.integers(low, high)) for low, high in shape_ranges)
    return torch.from_numpy(draw(arrays(np.float32, shape, elements=LOGIT))).to(torch.float64)


@st.composite
def distributions(draw, batch, heads, slots):
    """Weightings over ``slots``: softmaxes of extreme logits (often one-hot) or exact one-hots."""
    if draw(st.booleans()):
        index = draw(arrays(np.int64, (batch, heads), elements=st.integers(0, slots - 1)))
        return torch.nn.functional.one_hot(torch.from_numpy(index), slots).to(torch.float64)
    values = draw(arrays(np.float32, (batch, heads, slots), elements=LOGIT))
    return torch.softmax(torch.from_numpy(values).to(torch.float64), dim=-1)


@st.composite
def memories(draw, batch, slots, width):
    if draw(st.booleans()):
        return torch.zeros(batch, slots, width, dtype=torch.float64)
    values = draw(arrays(np.float32, (batch, slots, width), elements=st.floats(-10, 10, width=32)))
    return torch.from_numpy(values).to(torch.float64)


@st.composite
def sizes(draw):
    return draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(1, 8)), draw(st.integers(1, 5))


def unit(x):
    """A number in [0, 1] from a logit, as the cores' sigmoids make them."""
    return torch.sigmoid(x)


def assert_distribution(w, at_most=False):
    assert torch.isfinite(w).all()
    assert (w >= -TOL).all()
    total = w.sum(-1)
    if at_most:
        assert (total <= 1 + TOL).all(), total.max()
    else:
        torch.testing.assert_close(total, torch.ones_like(total), atol=TOL, rtol=0)


def assert_finite_gradients(output, *inputs):
    weights = torch.linspace(-1, 1, output.numel(), dtype=output.dtype).reshape(output.shape)
    grads = torch.autograd.grad((output * weights).sum(), inputs, allow_unused=True)
    for grad in grads:
        assert grad is None or torch.isfinite(grad).all()


@EXAMPLES
@given(data=st.data(), size=sizes())
def test_content_weights_are_distributions(data, size):
    batch, heads, slots, width = size
    memory = data.draw(memories(batch, slots, width)).requires_grad_(True)
    keys = torch.tanh(data.draw(logits((batch, batch), (heads, heads), (width, width)))).requires_grad_(True)
    strengths = torch.nn.functional.softplus(data.draw(logits((batch, batch), (heads, heads)))).requires_grad_(True)
    w = addressing.content_weights(memory, keys, strengths)
    assert_distribution(w)
    assert_finite_gradients(w, memory, keys, strengths)


@EXAMPLES
@given(data=st.data(), size=sizes())
def test_location_addressing_keeps_distributions(data, size):
    """Interpolation, circular shift and sharpening map weightings to weightings."""
    batch, heads, slots, _ = size
    k = data.draw(st.integers(0, (slots - 1) // 2))
    content = data.draw(distributions(batch, heads, slots)).requires_grad_(True)
    previous = data.draw(distributions(batch, heads, slots)).requires_grad_(True)
    gate = unit(data.draw(logits((batch, batch), (heads, heads)))).requires_grad_(True)
    shift = torch.softmax(data.draw(logits((batch, batch), (heads, heads), (2 * k + 1, 2 * k + 1))), -1).requires_grad_(True)
    gamma = (1 + torch.nn.functional.softplus(data.draw(logits((batch, batch), (heads, heads))))).requires_grad_(True)
    interpolated = addressing.interpolate(content, previous, gate)
    shifted = addressing.circular_shift(interpolated, shift)
    sharpened = addressing.sharpen(shifted, gamma)
    for w in (interpolated, shifted, sharpened):
        assert_distribution(w)
    assert_finite_gradients(sharpened, content, previous, gate, shift, gamma)


@EXAMPLES
@given(data=st.data(), size=sizes())
def test_usage_stays_in_unit_interval_and_allocation_sums_to_at_most_one(data, size):
    batch, reads, slots, _ = size
    usage = unit(data.draw(logits((batch, batch), (slots, slots)))).requires_grad_(True)
    write = data.draw(distributions(batch, 1, slots))[:, 0] * unit(data.draw(logits((batch, batch), (1, 1))))
    free = unit(data.draw(logits((batch, batch), (reads, reads))))
    read = data.draw(distributions(batch, reads, slots))
    new_usage = addressing.update_usage(usage, write, free, read)
    assert torch.isfinite(new_usage).all() and (new_usage >= 0).all() and (new_usage <= 1).all()
    allocation = addressing.allocation_weights(new_usage)
    assert_distribution(allocation, at_most=True)
    assert_finite_gradients(allocation, usage)


@EXAMPLES
@given(data=st.data(), size=sizes())
def test_link_rows_sum_to_at_most_one_with_zero_diagonal(data, size):
    """Links built from valid write weightings over many steps stay (sub)stochastic both ways."""
    batch, reads, slots, _ = size
    link = torch.zeros(batch, slots, slots, dtype=torch.float64)
    precedence = torch.zeros(batch, slots, dtype=torch.float64)
    for _ in range(data.draw(st.integers(1, 4))):
        allocation = data.draw(distributions(batch, 1, slots))[:, 0]
        content = data.draw(distributions(batch, 1, slots))[:, 0]
        gates = unit(data.draw(logits((batch, batch), (2, 2))))
        write = addressing.write_weights(allocation, content, gates[:, 0], gates[:, 1])
        assert_distribution(write, at_most=True)
        link = addressing.update_link(link, precedence, write)
        precedence = addressing.update_precedence(precedence, write)
        assert_distribution(precedence, at_most=True)
        assert torch.isfinite(link).all() and (link >= -TOL).all()
        assert (link.sum(-1) <= 1 + TOL).all() and (link.sum(-2) <= 1 + TOL).all()
        assert (link.diagonal(dim1=-2, dim2=-1) == 0).all()
    previous_reads = data.draw(distributions(batch, reads, slots)).requires_grad_(True)
    link = link.requires_grad_(True)
    forward, backward = addressing.directional_weights(link, previous_reads)
    assert_distribution(forward, at_most=True)
    assert_distribution(backward, at_most=True)
    modes = torch.softmax(data.draw(logits((batch, batch), (reads, reads), (3, 3))), -1)
    content = data.draw(distributions(batch, reads, slots))
    read = addressing.read_weights(backward, content, forward, modes)
    assert_distribution(read, at_most=True)
    assert_finite_gradients(read, link, previous_reads)


BACKENDS = ["reference"] + (["native"] if native.is_available(torch.float64) else [])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("core_class", [NTMCell, DNCCell])
@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_whole_steps_stay_finite_under_saturated_interfaces(core_class, backend, data):
    """Every interface output at +-1e4 (or anywhere in between), N down to 1: features, state
    and every parameter gradient stay finite, on both paths."""
    slots = data.draw(st.integers(1, 4))
    kwargs = dict(memory_units=slots, memory_unit_size=3, controller_dim=4, num_read_heads=2, backend=backend)
    if core_class is NTMCell:
        kwargs["shift_range"] = 0 if slots < 3 else 1
    core = core_class(input_dim=2, **kwargs).double()
    with torch.no_grad():
        core.interface.weight.zero_()
        bias = data.draw(arrays(np.float32, core.interface.bias.shape, elements=LOGIT))
        core.interface.bias.copy_(torch.from_numpy(bias))
    x = torch.randn(4, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    features, state = core.forward_sequence(x, core.initial_state(2))
    flat = core.flatten_state(state)
    assert torch.isfinite(features).all() and torch.isfinite(flat).all()
    (features.sum() + flat.sum()).backward()
    for name, parameter in core.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
