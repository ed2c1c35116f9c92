import copy
import pickle

import pytest
import torch

from sb3_memory.memory import DNCCell, LSTMCore, NTMCell

SMALL = {
    "ntm": (NTMCell, dict(controller_dim=12, memory_units=8, memory_unit_size=5, num_read_heads=2, num_write_heads=2)),
    "dnc": (DNCCell, dict(controller_dim=12, memory_units=8, memory_unit_size=5, num_read_heads=3)),
    "lstm": (LSTMCore, dict(controller_dim=12)),
}
VARIANTS = [(name, ctrl) for name in SMALL for ctrl in ("lstm", "gru", "mlp") if not (name == "lstm" and ctrl == "mlp")]
INPUT_DIM = 6


def make_core(name: str, controller: str = "lstm", seed: int = 0, **overrides):
    torch.manual_seed(seed)
    cls, kwargs = SMALL[name]
    return cls(input_dim=INPUT_DIM, controller=controller, **{**kwargs, **overrides})


def random_starts(steps: int, batch: int, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    starts = torch.rand(steps, batch, generator=generator) < 0.25
    starts[0] = True
    return starts


@pytest.mark.parametrize("name,controller", VARIANTS)
def test_sequence_matches_step_by_step_with_resets(name, controller):
    core = make_core(name, controller)
    x = torch.randn(15, 4, INPUT_DIM)
    starts = random_starts(15, 4)
    # Start from a state that is not the initial one, so that the first resets matter.
    _, warm = core.forward_sequence(torch.randn(5, 4, INPUT_DIM), core.initial_state(4))
    features, final = core.forward_sequence(x, warm, starts)
    state, stepped = warm, []
    for t in range(15):
        out, state = core(x[t], state, starts[t])
        stepped.append(out)
    torch.testing.assert_close(features, torch.stack(stepped), rtol=0, atol=1e-6)
    torch.testing.assert_close(core.flatten_state(final), core.flatten_state(state), rtol=0, atol=1e-6)


@pytest.mark.parametrize("name,controller", VARIANTS)
def test_reset_forgets_history(name, controller):
    """After an episode start a row behaves exactly as a fresh row fed only the new episode."""
    core = make_core(name, controller)
    x = torch.randn(12, 3, INPUT_DIM)
    starts = torch.zeros(12, 3, dtype=torch.bool)
    starts[7, 1] = True
    features, _ = core.forward_sequence(x, core.initial_state(3), starts)
    fresh, _ = core.forward_sequence(x[7:, 1:2], core.initial_state(1))
    torch.testing.assert_close(features[7:, 1:2], fresh, rtol=0, atol=1e-6)
    # The history did matter before the reset: without it the row's features differ.
    unreset, _ = core.forward_sequence(x, core.initial_state(3))
    assert not torch.allclose(unreset[7:, 1], features[7:, 1], atol=1e-4)
    # Rows are independent: rows 0 and 2 are unaffected by row 1's reset.
    torch.testing.assert_close(unreset[:, [0, 2]], features[:, [0, 2]], rtol=0, atol=0)


@pytest.mark.parametrize("name", SMALL)
def test_reset_state_by_mask(name):
    core = make_core(name)
    _, state = core.forward_sequence(torch.randn(4, 3, INPUT_DIM), core.initial_state(3))
    reset = core.reset_state(state, torch.tensor([True, False, True]))
    initial = core.initial_state(3)
    for field_reset, field_state, field_init in zip(reset, state, initial):
        torch.testing.assert_close(field_reset[[0, 2]], field_init[[0, 2]], rtol=0, atol=0)
        torch.testing.assert_close(field_reset[1], field_state[1], rtol=0, atol=0)


@pytest.mark.parametrize("name,controller", VARIANTS)
def test_flat_state_round_trip(name, controller):
    core = make_core(name, controller)
    _, state = core.forward_sequence(torch.randn(3, 2, INPUT_DIM), core.initial_state(2))
    flat = core.flatten_state(state)
    assert flat.shape == (2, core.state_size)
    restored = core.unflatten_state(flat.clone())
    for a, b in zip(state, restored):
        assert a.shape == b.shape
        assert torch.equal(a, b)
    # Continuing from the restored state is identical to continuing from the original.
    x = torch.randn(4, 2, INPUT_DIM)
    assert torch.equal(core.forward_sequence(x, state)[0], core.forward_sequence(x, restored)[0])
    with pytest.raises(ValueError, match="flat state must have shape"):
        core.unflatten_state(flat[:, :-1])


def test_state_sizes_follow_the_config():
    ntm = make_core("ntm")  # N=8, W=5, R=2, H_w=2, C=12, lstm
    assert ntm.state_size == 8 * 5 + 2 * 5 + 2 * 8 + 2 * 8 + 12 + 12
    dnc = make_core("dnc", "gru")  # N=8, W=5, R=3, C=12, gru: no cell state
    assert dnc.state_size == 8 * 5 + 3 * 5 + 3 * 8 + 8 + 8 + 8 + 64 + 12
    assert make_core("lstm").state_size == 24
    assert ntm.output_dim == 12 + 2 * 5 and dnc.output_dim == 12 + 3 * 5


@pytest.mark.parametrize("name,controller", VARIANTS)
def test_gradients_reach_every_parameter(name, controller):
    core = make_core(name, controller)
    features, _ = core.forward_sequence(torch.randn(6, 3, INPUT_DIM), core.initial_state(3))
    features[-1].square().sum().backward()
    for param_name, param in core.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, param_name


def test_gradient_flows_through_memory_across_time():
    """The last output must depend on the first input through the memory, not only the controller."""
    core = make_core("dnc", "mlp")  # a feed-forward controller has no other path back in time
    x = torch.randn(6, 2, INPUT_DIM, requires_grad=True)
    features, _ = core.forward_sequence(x, core.initial_state(2))
    features[-1].sum().backward()
    assert x.grad[0].abs().sum() > 0


def _set_interface_bias(core, bias: torch.Tensor) -> None:
    with torch.no_grad():
        core.interface.weight.zero_()
        core.interface.bias.copy_(bias)


def test_ntm_location_addressing_moves_one_slot_per_step():
    """Gate 0 (keep previous focus), shift +1, sharp gamma: every head walks one slot per step."""
    core = make_core("ntm", num_read_heads=1, num_write_heads=1, memory_units=8, memory_unit_size=5, shift_range=1)
    w, params = 5, core._head_params
    head = torch.zeros(params)
    head[w + 1] = -30.0  # interpolation gate -> 0
    head[w + 2 : w + 5] = torch.tensor([-30.0, -30.0, 30.0])  # shift distribution -> offset +1
    head[-1] = 30.0  # gamma -> 31
    bias = torch.cat([head, head, torch.full((w,), 30.0), torch.zeros(w)])  # erase 1, add tanh(0)=0
    _set_interface_bias(core, bias)
    state = core.initial_state(2)
    for t in range(1, 11):
        _, state = core(torch.randn(2, INPUT_DIM), state)
        expected = torch.zeros(8)
        expected[t % 8] = 1.0
        torch.testing.assert_close(state.read_weights[:, 0], expected.expand(2, 8), atol=1e-4, rtol=0)
        torch.testing.assert_close(state.write_weights[:, 0], expected.expand(2, 8), atol=1e-4, rtol=0)


def test_ntm_content_addressing_recalls_written_word():
    """Write a word by location, then a read head keyed on that word finds its slot."""
    core = make_core("ntm", num_read_heads=1, num_write_heads=1, memory_units=8, memory_unit_size=5)
    state = core.initial_state(1)
    word = torch.tensor([[0.9, -0.8, 0.7, -0.6, 0.5]])
    memory = state.memory.clone()
    memory[0, 3] = word
    state = state._replace(memory=memory)
    w, params = 5, core._head_params
    read_head = torch.zeros(params)
    read_head[:w] = torch.atanh(word[0])  # key = tanh(bias) = word
    read_head[w] = 50.0  # strength
    read_head[w + 1] = 30.0  # use content weighting
    read_head[w + 2 : w + 5] = torch.tensor([-30.0, 30.0, -30.0])  # no shift
    write_head = read_head.clone()
    write_head[w + 1] = -30.0  # the write head keeps its focus on slot 0
    bias = torch.cat([read_head, write_head, torch.full((w,), -30.0), torch.zeros(w)])  # erase 0, add 0
    _set_interface_bias(core, bias)
    _, state = core(torch.randn(1, INPUT_DIM), state)
    assert state.read_weights[0, 0].argmax() == 3 and state.read_weights[0, 0, 3] > 0.99
    torch.testing.assert_close(state.read_vectors[0, 0], word[0], atol=2e-2, rtol=0)


def test_dnc_allocates_fresh_slots_and_links_them_in_order():
    """Allocation-only writes fill distinct slots; forward reads then walk them in write order."""
    n, w, r = 6, 5, 1
    core = make_core("dnc", memory_units=n, memory_unit_size=w, num_read_heads=r)
    # Layout: raw [read key (w), write key (w), write vector (w)] | strengths (r+1) | sigmoid
    # [erase (w), free (r), alloc gate, write gate] | modes (3r)
    raw = torch.zeros(r * w + 2 * w)
    strengths = torch.zeros(r + 1)
    gates = torch.cat([torch.full((w,), 30.0), torch.full((r,), -30.0), torch.tensor([30.0, 30.0])])
    modes = torch.tensor([-30.0, -30.0, 30.0])  # forward mode
    _set_interface_bias(core, torch.cat([raw, strengths, gates, modes]))
    state = core.initial_state(1)
    written = []
    for _ in range(4):
        _, state = core(torch.randn(1, INPUT_DIM), state)
        written.append(int(state.write_weights[0, 0].argmax()))
        assert state.write_weights[0, 0].max() > 0.99
    assert len(set(written)) == 4  # never the same slot twice while free ones remain
    link = state.link[0]
    for earlier, later in zip(written, written[1:]):
        assert link[later, earlier] > 0.99  # L[i, j]: i written right after j
    # A read focused on the first written slot moves forward to the second one.
    focus = torch.zeros(1, r, n)
    focus[0, 0, written[0]] = 1.0
    forward = torch.bmm(focus, state.link.transpose(1, 2))
    assert forward[0, 0].argmax() == written[1]


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(memory_units=0), "memory_units"),
        (dict(memory_unit_size=-1), "memory_unit_size"),
        (dict(num_read_heads=0), "num_read_heads"),
        (dict(controller="transformer"), "controller"),
        (dict(controller_dim=2.5), "controller_dim"),
        (dict(memory_init=float("nan")), "memory_init"),
    ],
)
@pytest.mark.parametrize("cls", [NTMCell, DNCCell])
def test_invalid_config_raises(cls, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cls(input_dim=4, **kwargs)


def test_dnc_allocation_by_rank_matches_the_sorted_allocation():
    """allocation="rank" is the same model as the paper's sort (same parameters, same outputs without ties)."""
    torch.manual_seed(0)
    kwargs = dict(input_dim=4, memory_units=6, memory_unit_size=3, num_read_heads=2, controller_dim=8, backend="reference")
    by_sort = DNCCell(**kwargs)
    by_rank = DNCCell(**kwargs, allocation="rank")
    by_rank.load_state_dict(by_sort.state_dict())
    x = torch.randn(7, 3, 4)
    state = by_sort.initial_state(3)
    # The initial usage is all zero (a tie everywhere): step once so the usages differ.
    _, state = by_sort.forward_sequence(x[:1], state)
    sorted_features, sorted_final = by_sort.forward_sequence(x[1:], state)
    ranked_features, ranked_final = by_rank.forward_sequence(x[1:], state)
    torch.testing.assert_close(ranked_features, sorted_features, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ranked_final.usage, sorted_final.usage, rtol=1e-5, atol=1e-6)
    assert by_rank._native_unsupported() == (
        "the native kernels implement the paper's DNC; [\"allocation='rank'\"] run on the reference path"
    )
    with pytest.raises(ValueError, match="need backend='reference' or 'auto'"):
        DNCCell(4, allocation="rank", backend="native")
    with pytest.raises(ValueError, match=r"allocation must be one of \['rank', 'sort'\], got 'argsort'"):
        DNCCell(4, allocation="argsort")


def test_invalid_ntm_specific_config_raises():
    with pytest.raises(ValueError, match="shift_range"):
        NTMCell(input_dim=4, memory_units=4, shift_range=2)
    with pytest.raises(ValueError, match="num_write_heads"):
        NTMCell(input_dim=4, num_write_heads=0)
    with pytest.raises(ValueError, match="recurrent controller"):
        LSTMCore(input_dim=4, controller="mlp")


@pytest.mark.parametrize("name", SMALL)
def test_invalid_inputs_raise(name):
    core = make_core(name)
    state = core.initial_state(3)
    with pytest.raises(ValueError, match="expects x of shape"):
        core.forward_sequence(torch.randn(4, 3, INPUT_DIM + 1), state)
    with pytest.raises(ValueError, match="batch size"):
        core.forward_sequence(torch.randn(4, 2, INPUT_DIM), state)
    with pytest.raises(ValueError, match="episode_starts"):
        core.forward_sequence(torch.randn(4, 3, INPUT_DIM), state, torch.zeros(3, 4))
    with pytest.raises(TypeError, match="state must be"):
        core.forward_sequence(torch.randn(4, 3, INPUT_DIM), tuple(state))
    bad = torch.randn(4, 3, INPUT_DIM)
    bad[2, 1, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite input"):
        core.forward_sequence(bad, state)


def test_diverged_memory_raises_instead_of_continuing():
    core = make_core("ntm")
    state = core.initial_state(2)
    memory = state.memory.clone()
    memory[1, 0, 0] = float("inf")
    with pytest.raises(ValueError, match="non-finite features"):
        core.forward_sequence(torch.randn(3, 2, INPUT_DIM), state._replace(memory=memory))


@pytest.mark.parametrize("name", SMALL)
def test_core_pickles_and_deep_copies(name):
    core = make_core(name)
    x = torch.randn(3, 2, INPUT_DIM)
    expected, _ = core.forward_sequence(x, core.initial_state(2))
    for clone in (copy.deepcopy(core), pickle.loads(pickle.dumps(core))):
        torch.testing.assert_close(clone.forward_sequence(x, clone.initial_state(2))[0], expected, rtol=0, atol=0)


def test_initial_memory_is_the_configured_constant():
    core = make_core("ntm", memory_init=0.25)
    state = core.initial_state(2)
    assert torch.all(state.memory == 0.25)
    assert torch.all(state.read_weights[..., 0] == 1.0)
    dnc = make_core("dnc", memory_init=0.0)
    dnc_state = dnc.initial_state(2)
    assert torch.all(dnc_state.memory == 0) and torch.all(dnc_state.usage == 0) and torch.all(dnc_state.link == 0)
