"""Sparse reads and writes (Rae et al., 2016): the top-K primitives and the cores' ``sparse_top_k``.

The sparse reference path is checked three ways: the primitives against hand-worked values and
loop-by-loop references, the cores at K = N against the dense cores (the oracle), and the cores
at K < N by what sparsity promises (at most K slots per weighting, gradients that reach only the
touched slots).
"""

import pytest
import torch

from sb3_memory.memory import DNCCell, NTMCell, addressing

INPUT_DIM = 5


@pytest.fixture(autouse=True)
def float64():
    """Exact comparisons in float64, restored afterwards for the other test modules."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def make_cell(cls, seed: int = 0, **kwargs):
    torch.manual_seed(seed)
    return cls(INPUT_DIM, controller_dim=12, memory_units=kwargs.pop("memory_units", 16), memory_unit_size=6, **kwargs)


# --- primitives ---------------------------------------------------------------------------------


def test_hand_top_k_weights():
    weights = torch.tensor([[0.1, 0.5, 0.3, 0.1], [0.4, 0.0, 0.2, 0.4]])
    kept = addressing.top_k_weights(weights, 2)
    torch.testing.assert_close(kept, torch.tensor([[0.0, 0.5, 0.3, 0.0], [0.4, 0.0, 0.0, 0.4]]))
    renormalised = addressing.top_k_weights(weights, 2, renormalise=True)
    torch.testing.assert_close(renormalised, torch.tensor([[0.0, 0.625, 0.375, 0.0], [0.5, 0.0, 0.0, 0.5]]))


def test_top_k_weights_matches_loop_reference():
    generator = torch.Generator().manual_seed(3)
    weights = torch.rand(4, 3, 20, generator=generator)  # continuous values: no ties
    kept = addressing.top_k_weights(weights, 5)
    expected = torch.zeros_like(weights)
    for index in torch.cartesian_prod(torch.arange(4), torch.arange(3)).tolist():
        row = weights[tuple(index)]
        for slot in sorted(range(20), key=lambda j: -float(row[j]))[:5]:
            expected[tuple(index)][slot] = row[slot]
    torch.testing.assert_close(kept, expected, rtol=0, atol=0)


def test_top_k_breaks_ties_at_the_lowest_index():
    values = torch.tensor([[1.0, 2.0, 2.0, 2.0, 0.0, 2.0], [5.0, 5.0, 5.0, 5.0, 5.0, 5.0], [0.0, 3.0, 1.0, 3.0, 2.0, -1.0]])
    kept, index = addressing.top_k(values, 2)
    assert index.tolist() == [[1, 2], [0, 1], [1, 3]]
    torch.testing.assert_close(kept, values.gather(-1, index))
    # Without ties it is torch.topk's choice, in ascending index order.
    noise = torch.rand(5, 4, 40, generator=torch.Generator().manual_seed(1))
    _, index = addressing.top_k(noise, 7)
    assert torch.equal(index, torch.topk(noise, 7).indices.sort(-1).values)
    # A NaN row is left to torch.topk rather than failing.
    _, index = addressing.top_k(torch.tensor([[0.0, float("nan"), 1.0]]), 2)
    assert 1 in index.tolist()[0]


def test_top_k_of_dense_size_is_the_dense_weighting():
    weights = torch.rand(3, 8)
    assert addressing.top_k_weights(weights, 8, renormalise=True) is weights
    assert addressing.top_k_weights(weights, 50) is weights


def test_top_k_softmax_is_the_renormalised_top_k_of_the_softmax_and_its_gradient_stays_there():
    logits = torch.randn(2, 12, requires_grad=True)
    sparse = addressing.top_k_softmax(logits, 3)
    top = logits.detach().topk(3, dim=-1).indices
    expected = torch.zeros(2, 12).scatter(-1, top, torch.softmax(logits.detach().gather(-1, top), dim=-1))
    torch.testing.assert_close(sparse, expected)
    torch.testing.assert_close(sparse, addressing.top_k_weights(torch.softmax(logits, dim=-1), 3, renormalise=True))
    (sparse * torch.randn(2, 12)).sum().backward()
    outside = torch.ones(2, 12, dtype=torch.bool).scatter(-1, top, False)
    assert bool((logits.grad[outside] == 0).all())
    assert logits.grad[~outside].abs().min() > 0
    torch.testing.assert_close(addressing.top_k_softmax(logits, 12), torch.softmax(logits, dim=-1), rtol=0, atol=0)


def test_hand_count_unwritten_once():
    logits = torch.tensor([[[0.9, 0.2, 0.9, 0.4, 0.9]]])
    unwritten = torch.tensor([[True, False, True, False, True]])
    counted = addressing.count_unwritten_once(logits, unwritten)
    inf = float("inf")
    torch.testing.assert_close(counted, torch.tensor([[[0.9, 0.2, -inf, 0.4, -inf]]]))
    # The top 3 of a fresh memory is one unwritten slot and the two written ones, not three copies of the same row.
    weights = addressing.top_k_softmax(logits, 3, unwritten)
    expected = torch.softmax(torch.tensor([0.9, 0.2, 0.4]), dim=-1)
    torch.testing.assert_close(weights, torch.tensor([[[expected[0], expected[1], 0.0, expected[2], 0.0]]]))
    # With every slot kept the weighting is the dense one (K = N).
    torch.testing.assert_close(addressing.top_k_softmax(logits, 5, unwritten), torch.softmax(logits, dim=-1))


def test_counting_unwritten_slots_once_gives_the_key_a_gradient_toward_the_written_ones():
    """
    A fresh memory ties every unwritten row (memory_init). When the key prefers them, the top K
    holds K copies of the same row: the read is the initial row whatever the key, and the key gets
    no gradient. Counted once, the written rows share the top K and the read depends on the key.
    """
    memory = torch.full((1, 8, 4), 1e-6)
    memory[0, 5] = torch.tensor([1.0, -1.0, 0.5, -0.5])  # the one written row, unlike the key
    memory[0, 6] = torch.tensor([-1.0, 0.5, 1.0, 0.0])
    unwritten = (memory == 1e-6).all(-1)
    key = torch.tensor([[[1.0, 1.0, 1.0, 1.0]]], requires_grad=True)  # cosine 1 with every unwritten row
    for counted, has_gradient in ((None, False), (unwritten, True)):
        weights = addressing.content_weights(memory, key, torch.tensor([[4.0]]), top_k=3, unwritten=counted)
        read = addressing.read(memory, weights)
        (gradient,) = torch.autograd.grad(read.sum(), key)
        assert bool(gradient.abs().sum() > 1e-3) == has_gradient
        assert int((weights[0, 0, :5] > 0).sum()) == (3 if counted is None else 1)


def test_hand_sparse_allocation():
    usage = torch.tensor([[0.5, 0.1, 0.9, 0.3]])
    allocation = addressing.sparse_allocation_weights(usage, 2)
    eps = addressing.USAGE_EPS
    u1, u3 = eps + (1 - eps) * 0.1, eps + (1 - eps) * 0.3
    torch.testing.assert_close(allocation, torch.tensor([[0.0, 1 - u1, 0.0, (1 - u3) * u1]]))


def test_sparse_allocation_is_the_dense_allocation_on_the_least_used_slots():
    usage = torch.rand(5, 30)
    dense = addressing.allocation_weights(usage)
    sparse = addressing.sparse_allocation_weights(usage, 4)
    least_used = usage.argsort(dim=-1)[:, :4]
    torch.testing.assert_close(sparse.gather(-1, least_used), dense.gather(-1, least_used), rtol=0, atol=0)
    assert int((sparse > 0).sum(-1).max()) == 4
    # What the dense model gives the other slots is bounded by the product of the 4 smallest usages.
    dropped = dense - sparse
    bound = usage.gather(-1, least_used).prod(-1, keepdim=True)
    assert bool((dropped <= bound + 1e-12).all())
    torch.testing.assert_close(addressing.sparse_allocation_weights(usage, 30), dense, rtol=0, atol=0)


def test_sparse_allocation_breaks_ties_in_slot_order_as_the_dense_model():
    usage = torch.zeros(1, 10)  # an episode start: every slot free
    sparse = addressing.sparse_allocation_weights(usage, 3)
    dense = addressing.allocation_weights(usage)
    torch.testing.assert_close(sparse[:, :3], dense[:, :3], rtol=0, atol=0)
    assert bool((sparse[:, 3:] == 0).all())


def random_sparse_write(generator, batch: int, n: int, k: int) -> torch.Tensor:
    logits = 3 * torch.randn(batch, n, generator=generator)
    gate = torch.rand(batch, 1, generator=generator)
    return addressing.top_k_weights(torch.softmax(logits, -1) * gate, k)


def test_hand_written_blocks():
    """Blocks of 64 slots: 130 slots make three, the last of two slots."""
    assert addressing.WRITTEN_BLOCK_ROWS == 64 and addressing.written_block_count(130) == 3
    read, write = torch.zeros(2, 2, 130), torch.zeros(2, 1, 130)
    read[0, 1, 70] = 0.5  # batch row 0: block 1, by its second read head
    write[0, 0, 129] = -0.0  # a signed zero is no weight
    write[1, 0, 128] = 1e-30  # batch row 1: block 2, by its last but one slot
    before = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    marked = addressing.written_blocks(before, [read, write])
    assert torch.equal(marked, torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 1.0]]))
    assert torch.equal(addressing.written_blocks(marked, [torch.zeros(2, 130)]), marked)  # marks stay


def test_sparse_link_is_the_dense_link_with_k_entries_per_row():
    """Over a sequence of sparse writes, the compact link equals the dense update with each row cut to its top k."""
    generator = torch.Generator().manual_seed(4)
    batch, n, k = 3, 12, 3
    values, index = torch.zeros(batch, n, k), addressing.initial_link_index(batch, n, k)
    dense, precedence = torch.zeros(batch, n, n), torch.zeros(batch, n)
    for _ in range(15):
        write = random_sparse_write(generator, batch, n, k)
        values, index = addressing.sparse_update_link(values, index, precedence, write, k)
        dense = addressing.top_k_weights(addressing.update_link(dense, precedence, write), k)
        precedence = addressing.top_k_weights(addressing.update_precedence(precedence, write), k)
        torch.testing.assert_close(addressing.dense_link(values, index), dense, rtol=0, atol=1e-12)
        # Each row holds k distinct columns: an entry is never counted twice.
        assert bool((index.sort(-1).values.diff(dim=-1) > 0).all())
    assert int((dense > 0).sum(-1).min()) == k  # the rows are full: the cut mattered
    read = torch.rand(batch, 2, n, generator=generator)
    for sparse, full in zip(
        addressing.sparse_directional_weights(values, index, read), addressing.directional_weights(dense, read)
    ):
        torch.testing.assert_close(sparse, full, rtol=0, atol=1e-12)


def test_hand_sparse_link():
    """Slots 0, 1, 2 written one after another, k = 1: row 1 links back to 0, row 2 to 1."""
    values, index = torch.zeros(1, 4, 1), addressing.initial_link_index(1, 4, 1)
    precedence = torch.zeros(1, 4)
    for slot in range(3):
        write = torch.zeros(1, 4)
        write[0, slot] = 1.0
        values, index = addressing.sparse_update_link(values, index, precedence, write, 1)
        precedence = addressing.update_precedence(precedence, write)
    expected = torch.zeros(1, 4, 4)
    expected[0, 1, 0] = expected[0, 2, 1] = 1.0
    torch.testing.assert_close(addressing.dense_link(values, index), expected, rtol=0, atol=0)
    forward, backward = addressing.sparse_directional_weights(values, index, torch.tensor([[[0.0, 1.0, 0.0, 0.0]]]))
    torch.testing.assert_close(forward, torch.tensor([[[0.0, 0.0, 1.0, 0.0]]]))  # L w: the slot written next
    torch.testing.assert_close(backward, torch.tensor([[[1.0, 0.0, 0.0, 0.0]]]))  # L^T w: the one before


def test_sparse_link_gradients_match_the_dense_link():
    generator = torch.Generator().manual_seed(8)
    batch, n, k = 2, 10, 3
    # Positive entries off the diagonal: every row keeps k entries above 0, so no tie at 0 leaves
    # the choice of kept entry (and so the subgradient) to the order in which topk sees them.
    values = (0.1 + torch.rand(batch, n, k, generator=generator)).requires_grad_()
    rows = torch.arange(n).repeat(batch)
    others = torch.stack([torch.randperm(n - 1, generator=generator)[:k] for _ in range(batch * n)])
    index = (others + (others >= rows.unsqueeze(-1)).long()).view(batch, n, k)
    # The write and precedence are cut to k entries from dense leaves, as in the core: the sparse
    # link has no path to a zero entry of the precedence, the dense one has (w_i p_j), and the
    # top-k cut before it drops that gradient, so the two agree on the leaves.
    write_leaf = (torch.rand(batch, n, generator=generator) / n).requires_grad_()
    precedence_leaf = (torch.rand(batch, n, generator=generator) / n).requires_grad_()
    read = torch.rand(batch, 2, n, generator=generator)
    weights = torch.rand(batch, 2, n, generator=generator)
    leaves = (values, write_leaf, precedence_leaf)

    write, precedence = addressing.top_k_weights(write_leaf, k), addressing.top_k_weights(precedence_leaf, k)
    new_values, new_index = addressing.sparse_update_link(values, index, precedence, write, k)
    forward, backward = addressing.sparse_directional_weights(new_values, new_index, read)
    sparse_grads = torch.autograd.grad(((forward + backward) * weights).sum(), leaves)
    write, precedence = addressing.top_k_weights(write_leaf, k), addressing.top_k_weights(precedence_leaf, k)
    dense = addressing.dense_link(values, index)
    full = addressing.top_k_weights(addressing.update_link(dense, precedence, write), k)
    forward, backward = addressing.directional_weights(full, read)
    dense_grads = torch.autograd.grad(((forward + backward) * weights).sum(), leaves)
    assert all(float(grad.abs().sum()) > 0 for grad in dense_grads)
    for sparse_grad, dense_grad in zip(sparse_grads, dense_grads):
        torch.testing.assert_close(sparse_grad, dense_grad, rtol=0, atol=1e-12)


# --- the cores ----------------------------------------------------------------------------------


def run(cell, steps: int = 9, batch: int = 3, seed: int = 5):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(steps, batch, INPUT_DIM, generator=generator)
    starts = torch.zeros(steps, batch, dtype=torch.bool)
    starts[4, 1] = True
    return cell.forward_sequence(x, cell.initial_state(batch), starts)


@pytest.mark.parametrize("cls", [NTMCell, DNCCell])
def test_k_equal_to_memory_units_is_the_dense_core_with_its_gradients(cls):
    dense, sparse = make_cell(cls), make_cell(cls, sparse_top_k=16, backend="reference")
    features_dense, state_dense = run(dense)
    features_sparse, state_sparse = run(sparse)
    torch.testing.assert_close(features_sparse, features_dense, rtol=0, atol=1e-12)
    fields_dense, fields_sparse = state_dense._asdict(), state_sparse._asdict()
    # The sparse state's record of the blocks it touched: one block of 16 slots, touched at once.
    assert torch.equal(fields_sparse.pop("written_blocks"), torch.ones(3, 1))
    if cls is DNCCell:  # the same link, held as N entries per row
        fields_sparse["link"] = addressing.dense_link(fields_sparse.pop("link_values"), fields_sparse.pop("link_index").long())
    assert fields_sparse.keys() == fields_dense.keys()
    for name, value in fields_dense.items():
        torch.testing.assert_close(fields_sparse[name], value, rtol=0, atol=1e-12, msg=name)
    features_dense.square().sum().backward()
    features_sparse.square().sum().backward()
    for (name, p_dense), p_sparse in zip(dense.named_parameters(), sparse.parameters()):
        torch.testing.assert_close(p_sparse.grad, p_dense.grad, rtol=0, atol=1e-10, msg=name)


@pytest.mark.parametrize("cls", [NTMCell, DNCCell])
def test_sparse_core_differs_from_dense_and_keeps_k_slots_per_weighting(cls):
    dense, sparse = make_cell(cls), make_cell(cls, sparse_top_k=3)
    features_sparse, state = run(sparse, steps=20)
    assert not torch.allclose(features_sparse, run(dense, steps=20)[0], atol=1e-3)
    assert int((state.read_weights > 0).sum(-1).max()) <= 3
    assert int((state.write_weights > 0).sum(-1).max()) <= 3
    if cls is DNCCell:
        assert int((state.precedence > 0).sum(-1).max()) <= 3
        assert state.link_values.shape == (3, 16, 3)  # K entries per row of the link, not N
        link = addressing.dense_link(state.link_values, state.link_index.long())
        assert float(link.detach().sum()) > 0 and float(link.detach().diagonal(dim1=1, dim2=2).abs().max()) == 0
    else:
        # An NTM head's weighting stays a distribution over its K slots.
        torch.testing.assert_close(state.read_weights.sum(-1), torch.ones(3, 1))


@pytest.mark.parametrize("backend", ["reference", "native"])
def test_a_sparse_dnc_reads_at_most_one_unwritten_slot_by_content(backend):
    """
    The first step's reads are content reads (no link yet) of a memory the write touched in K slots
    at most: the unwritten rows are one candidate (addressing.count_unwritten_once), so a head's K
    slots hold one unwritten slot and written ones, never K copies of the initial row.
    """
    cell = make_cell(DNCCell, memory_units=32, sparse_top_k=4, num_read_heads=4, backend=backend)
    generator = torch.Generator().manual_seed(2)
    state = cell.initial_state(64)
    _, state = cell.forward_sequence(torch.randn(1, 64, INPUT_DIM, generator=generator), state)
    unwritten = cell.unwritten_slots(state.memory)
    assert unwritten is not None and bool(unwritten.any(-1).all()) and bool((~unwritten).any(-1).all())
    on_unwritten = ((state.read_weights > 0) & unwritten.unsqueeze(1)).sum(-1)
    assert int(on_unwritten.max()) == 1 and int(on_unwritten.min()) == 0  # each head: one, or only written slots
    assert make_cell(DNCCell, sparse_top_k=16).unwritten_slots(state.memory[:, :16]) is None  # K = N: dense
    assert make_cell(DNCCell).unwritten_slots(state.memory[:, :16]) is None


def test_sparse_ntm_with_k_1_reads_one_slot_exactly():
    cell = make_cell(NTMCell, sparse_top_k=1, shift_range=0)
    _, state = run(cell, steps=6)
    slot = state.read_weights[:, 0].argmax(-1)
    torch.testing.assert_close(state.read_vectors[:, 0], state.memory[torch.arange(3), slot], rtol=0, atol=0)


@pytest.mark.parametrize("cls, heads", [(NTMCell, 2), (DNCCell, 3)])
def test_gradient_reaches_only_the_slots_a_step_touches(cls, heads):
    """One step from a random memory: its features depend on the K slots each head looks up and reads."""
    n, k = 64, 2
    cell = make_cell(cls, memory_units=n, sparse_top_k=k)
    state = cell.initial_state(2)
    memory = torch.randn(2, n, 6, requires_grad=True)
    features, _ = cell.forward_sequence(torch.randn(1, 2, INPUT_DIM), state._replace(memory=memory))
    features.sum().backward()
    touched = (memory.grad.abs().sum(-1) > 0).sum(-1)
    # Content lookups of every head (NTM: 1 read + 1 write; DNC: 2 reads + 1 write) and the reads.
    assert int(touched.max()) <= heads * k + cell.num_read_heads * k
    assert int(touched.min()) >= 1
    dense = make_cell(cls, memory_units=n)
    memory.grad = None
    dense_state = dense.initial_state(2)._replace(memory=memory)
    dense.forward_sequence(torch.randn(1, 2, INPUT_DIM), dense_state)[0].sum().backward()
    assert int((memory.grad.abs().sum(-1) > 0).sum(-1).min()) == n  # the dense core touches every slot


@pytest.mark.parametrize("cls", [NTMCell, DNCCell])
def test_sparse_top_k_errors_name_the_fix(cls):
    with pytest.raises(ValueError, match="sparse_top_k must be an integer in \\[1, 16\\]"):
        make_cell(cls, sparse_top_k=17)
    with pytest.raises(ValueError, match="sparse_top_k"):
        make_cell(cls, sparse_top_k=0)


def test_sparse_dnc_refuses_rank_allocation():
    with pytest.raises(ValueError, match="leave allocation='sort'"):
        make_cell(DNCCell, sparse_top_k=4, allocation="rank")


def test_sparse_cores_run_native_kernels_unless_an_option_needs_the_reference():
    assert make_cell(NTMCell, sparse_top_k=4)._native_for(torch.zeros(1, 1, INPUT_DIM)) is not None
    assert make_cell(DNCCell, sparse_top_k=4)._native_for(torch.zeros(1, 1, INPUT_DIM)) is not None
    repaired = make_cell(DNCCell, sparse_top_k=4, deallocate=True)
    assert "deallocate" in str(repaired._native_unsupported())


def test_an_empty_link_row_names_its_own_slot_and_the_next_k_minus_1():
    """The layout the kernels rely on: a write to slot j reaches only the empty rows naming j, j-k+1..j."""
    index = addressing.initial_link_index(2, 5, 3)
    expected = torch.tensor([[0, 1, 2], [1, 2, 3], [2, 3, 4], [3, 4, 0], [4, 0, 1]])
    assert torch.equal(index[0], expected) and torch.equal(index[1], expected)
    naming_3 = {row for row in range(5) if 3 in index[0, row].tolist()}
    assert naming_3 == {1, 2, 3}
