"""Independent tests for :mod:`sb3_memory.memory.addressing`.

The references below are written from the specification (Graves et al. 2014 / 2016 and the
module's documented formulas), with explicit Python loops over batch, head and slot indices in
float64. They are deliberately slow and naive so that they share no code, and no vectorisation
trick, with the implementation under test.

Sections:

1. slow loop references;
2. comparison with the references on random inputs of several shapes (float64 and float32);
3. hand-worked examples (numbers computed by hand in the comments);
4. properties (distributions, usage range, allocation, link matrix over a DNC-like run);
5. zero-row / zero-weight safety;
6. ``torch.autograd.gradcheck`` in float64 for every function;
7. a meta-test showing that the references tell plausible wrong implementations apart.
"""

import itertools
import math

import pytest
import torch

from sb3_memory.memory import addressing as A

F64 = torch.float64

# --------------------------------------------------------------------------------------------
# 1. Slow references (explicit loops, float64)
# --------------------------------------------------------------------------------------------


def _t(nested):
    return torch.tensor(nested, dtype=F64)


def _l(x):
    return x.detach().to(F64).tolist()


def ref_cosine(memory, keys, eps=1e-6):
    m, k = _l(memory), _l(keys)
    out = []
    for b in range(len(m)):
        per_head = []
        for h in range(len(k[b])):
            key = k[b][h]
            nk = math.sqrt(sum(v * v for v in key))
            row_sims = []
            for n in range(len(m[b])):
                row = m[b][n]
                nm = math.sqrt(sum(v * v for v in row))
                dot = sum(a * c for a, c in zip(key, row))
                row_sims.append(dot / (nk * nm + eps))
            per_head.append(row_sims)
        out.append(per_head)
    return _t(out)


def _softmax_list(xs):
    top = max(xs)
    ex = [math.exp(x - top) for x in xs]
    s = sum(ex)
    return [e / s for e in ex]


def ref_content(memory, keys, strengths):
    cos = _l(ref_cosine(memory, keys))
    beta = _l(strengths)
    out = []
    for b in range(len(cos)):
        out.append([_softmax_list([beta[b][h] * c for c in cos[b][h]]) for h in range(len(cos[b]))])
    return _t(out)


def ref_interpolate(content_w, prev_w, gate):
    c, p, g = _l(content_w), _l(prev_w), _l(gate)
    out = []
    for b in range(len(c)):
        out.append(
            [[g[b][h] * c[b][h][n] + (1.0 - g[b][h]) * p[b][h][n] for n in range(len(c[b][h]))] for h in range(len(c[b]))]
        )
    return _t(out)


def ref_shift(weights, shift):
    w, s = _l(weights), _l(shift)
    out = []
    for b in range(len(w)):
        per_head = []
        for h in range(len(w[b])):
            n_slots = len(w[b][h])
            n_off = len(s[b][h])
            k = (n_off - 1) // 2
            row = []
            for i in range(n_slots):
                acc = 0.0
                for idx in range(n_off):
                    offset = idx - k  # index s is offset s - k
                    acc += w[b][h][(i - offset) % n_slots] * s[b][h][idx]
                row.append(acc)
            per_head.append(row)
        out.append(per_head)
    return _t(out)


def ref_sharpen(weights, gamma):
    w, g = _l(weights), _l(gamma)
    out = []
    for b in range(len(w)):
        per_head = []
        for h in range(len(w[b])):
            powered = [v ** g[b][h] for v in w[b][h]]
            s = sum(powered)
            per_head.append([p / s for p in powered])
        out.append(per_head)
    return _t(out)


def ref_read(memory, weights):
    m, w = _l(memory), _l(weights)
    out = []
    for b in range(len(m)):
        n_slots, width = len(m[b]), len(m[b][0])
        out.append([[sum(w[b][h][n] * m[b][n][c] for n in range(n_slots)) for c in range(width)] for h in range(len(w[b]))])
    return _t(out)


def ref_write(memory, weights, erase, add):
    m, w, e, a = _l(memory), _l(weights), _l(erase), _l(add)
    out = []
    for b in range(len(m)):
        rows = []
        for n in range(len(m[b])):
            row = []
            for c in range(len(m[b][n])):
                keep = 1.0
                added = 0.0
                for h in range(len(w[b])):
                    keep *= 1.0 - w[b][h][n] * e[b][h][c]
                    added += w[b][h][n] * a[b][h][c]
                row.append(m[b][n][c] * keep + added)
            rows.append(row)
        out.append(rows)
    return _t(out)


def ref_usage(usage, prev_write, free_gates, prev_read):
    u, w, f, r = _l(usage), _l(prev_write), _l(free_gates), _l(prev_read)
    out = []
    for b in range(len(u)):
        row = []
        for n in range(len(u[b])):
            psi = 1.0
            for head in range(len(f[b])):
                psi *= 1.0 - f[b][head] * r[b][head][n]
            row.append((u[b][n] + w[b][n] - u[b][n] * w[b][n]) * psi)
        out.append(row)
    return _t(out)


def ref_allocation(usage):
    """Plain formula (no stabiliser): a[phi_j] = (1 - u[phi_j]) * prod_{i<j} u[phi_i]."""
    u = _l(usage)
    out = []
    for b in range(len(u)):
        phi = sorted(range(len(u[b])), key=lambda n: u[b][n])  # ascending usage (stable)
        alloc = [0.0] * len(u[b])
        running = 1.0  # product over strictly earlier slots (exclusive)
        for slot in phi:
            alloc[slot] = (1.0 - u[b][slot]) * running
            running *= u[b][slot]
        out.append(alloc)
    return _t(out)


def ref_allocation_differentiable(usage):
    """Same formula with torch scalars, so that autograd gives the reference gradient."""
    rows = []
    for b in range(usage.shape[0]):
        order = sorted(range(usage.shape[1]), key=lambda n: usage[b, n].item())
        alloc = [None] * usage.shape[1]
        running = torch.ones((), dtype=usage.dtype)
        for slot in order:
            alloc[slot] = (1.0 - usage[b, slot]) * running
            running = running * usage[b, slot]
        rows.append(torch.stack(alloc))
    return torch.stack(rows)


def ref_write_weights(allocation, content, alloc_gate, write_gate):
    a, c, ga, gw = _l(allocation), _l(content), _l(alloc_gate), _l(write_gate)
    return _t([[gw[b] * (ga[b] * a[b][n] + (1.0 - ga[b]) * c[b][n]) for n in range(len(a[b]))] for b in range(len(a))])


def ref_precedence(precedence, write_weights):
    p, w = _l(precedence), _l(write_weights)
    out = []
    for b in range(len(p)):
        total = sum(w[b])
        out.append([(1.0 - total) * p[b][n] + w[b][n] for n in range(len(p[b]))])
    return _t(out)


def ref_link(link, prev_precedence, write_weights):
    L, p, w = _l(link), _l(prev_precedence), _l(write_weights)
    out = []
    for b in range(len(L)):
        n_slots = len(L[b])
        mat = [[0.0] * n_slots for _ in range(n_slots)]
        for i in range(n_slots):
            for j in range(n_slots):
                if i == j:
                    continue  # diagonal is zero
                mat[i][j] = (1.0 - w[b][i] - w[b][j]) * L[b][i][j] + w[b][i] * p[b][j]
        out.append(mat)
    return _t(out)


def ref_directional(link, prev_read):
    L, w = _l(link), _l(prev_read)
    fwd, bwd = [], []
    for b in range(len(L)):
        n_slots = len(L[b])
        fwd.append([[sum(L[b][i][j] * w[b][r][j] for j in range(n_slots)) for i in range(n_slots)] for r in range(len(w[b]))])
        bwd.append([[sum(L[b][j][i] * w[b][r][j] for j in range(n_slots)) for i in range(n_slots)] for r in range(len(w[b]))])
    return _t(fwd), _t(bwd)


def ref_read_weights(backward, content, forward, modes):
    bw, c, fw, pi = _l(backward), _l(content), _l(forward), _l(modes)
    out = []
    for b in range(len(c)):
        out.append(
            [
                [pi[b][r][0] * bw[b][r][n] + pi[b][r][1] * c[b][r][n] + pi[b][r][2] * fw[b][r][n] for n in range(len(c[b][r]))]
                for r in range(len(c[b]))
            ]
        )
    return _t(out)


# --------------------------------------------------------------------------------------------
# Random input helpers
# --------------------------------------------------------------------------------------------


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _rand(gen, *shape, dtype=F64):
    return torch.rand(*shape, generator=gen, dtype=F64).to(dtype)


def _randn(gen, *shape, dtype=F64):
    return torch.randn(*shape, generator=gen, dtype=F64).to(dtype)


def _dist(gen, *shape, dtype=F64, scale=2.0):
    """Random distributions over the last dimension (strictly positive)."""
    return torch.softmax(scale * torch.randn(*shape, generator=gen, dtype=F64), dim=-1).to(dtype)


def _subdist(gen, *shape, dtype=F64):
    """Non-negative weightings over the last dim summing to at most 1."""
    return (_dist(gen, *shape) * torch.rand(*shape[:-1], 1, generator=gen, dtype=F64)).to(dtype)


def _distinct_usage(gen, b, n, lo=0.05, hi=0.95, dtype=F64):
    """Usages in [lo, hi], pairwise at least ~(hi-lo)/(2n) apart within each row."""
    rows = []
    for _ in range(b):
        grid = torch.linspace(lo, hi, n, dtype=F64)
        jitter = (torch.rand(n, generator=gen, dtype=F64) - 0.5) * (hi - lo) / (2 * max(n, 2))
        vals = (grid + jitter).clamp(lo, hi)
        rows.append(vals[torch.randperm(n, generator=gen)])
    return torch.stack(rows).to(dtype)


# (B, H, N, W): B=1, H>1, N small and larger
SHAPES = [(1, 1, 3, 2), (1, 3, 5, 4), (2, 2, 8, 3), (3, 4, 16, 6), (2, 1, 1, 1)]
SHAPE_IDS = ["B1H1N3", "B1H3N5", "B2H2N8", "B3H4N16", "N1"]

TIGHT = dict(rtol=1e-9, atol=1e-10)  # float64 vs float64 reference


def _close(actual, expected, atol=1e-10, rtol=1e-9):
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    torch.testing.assert_close(actual.to(F64), expected.to(F64), atol=atol, rtol=rtol)


# --------------------------------------------------------------------------------------------
# 2. Comparison with the references on random inputs
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_cosine_similarity_matches_reference(shape):
    b, h, n, w = shape
    g = _gen(1)
    memory, keys = _randn(g, b, n, w), _randn(g, b, h, w)
    out = A.cosine_similarity(memory, keys)
    assert out.shape == (b, h, n)
    _close(out, ref_cosine(memory, keys))
    # eps is honoured
    _close(A.cosine_similarity(memory, keys, eps=0.5), ref_cosine(memory, keys, eps=0.5))


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_content_weights_matches_reference(shape):
    b, h, n, w = shape
    g = _gen(2)
    memory, keys = _randn(g, b, n, w), _randn(g, b, h, w)
    strengths = 1.0 + 10.0 * _rand(g, b, h)
    out = A.content_weights(memory, keys, strengths)
    assert out.shape == (b, h, n)
    _close(out, ref_content(memory, keys, strengths))


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_interpolate_matches_reference(shape):
    b, h, n, _ = shape
    g = _gen(3)
    c, p, gate = _dist(g, b, h, n), _dist(g, b, h, n), _rand(g, b, h)
    out = A.interpolate(c, p, gate)
    assert out.shape == (b, h, n)
    _close(out, ref_interpolate(c, p, gate))


SHIFT_CASES = [(b, h, n, k) for (b, h, n, _), k in itertools.product(SHAPES, [0, 1, 2]) if 2 * k + 1 <= n]


@pytest.mark.parametrize("b,h,n,k", SHIFT_CASES)
def test_circular_shift_matches_reference(b, h, n, k):
    g = _gen(4 + n + k)
    w = _dist(g, b, h, n)
    shift = _dist(g, b, h, 2 * k + 1)
    out = A.circular_shift(w, shift)
    assert out.shape == (b, h, n)
    _close(out, ref_shift(w, shift))


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_sharpen_matches_reference(shape):
    b, h, n, _ = shape
    g = _gen(5)
    w = _dist(g, b, h, n)
    gamma = 1.0 + 4.0 * _rand(g, b, h)
    out = A.sharpen(w, gamma)
    assert out.shape == (b, h, n)
    _close(out, ref_sharpen(w, gamma), atol=1e-9)


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_read_matches_reference(shape):
    b, h, n, w = shape
    g = _gen(6)
    memory, weights = _randn(g, b, n, w), _dist(g, b, h, n)
    out = A.read(memory, weights)
    assert out.shape == (b, h, w)
    _close(out, ref_read(memory, weights))


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_write_matches_reference(shape):
    b, h, n, w = shape
    g = _gen(7)
    memory = _randn(g, b, n, w)
    weights = _subdist(g, b, h, n)
    erase, add = _rand(g, b, h, w), _randn(g, b, h, w)
    out = A.write(memory, weights, erase, add)
    assert out.shape == (b, n, w)
    _close(out, ref_write(memory, weights, erase, add))


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_write_with_large_weights_matches_reference(shape):
    # Several heads putting large weight on the same slot (not a distribution): the product
    # over heads matters, a sum of erases would differ.
    b, h, n, w = shape
    g = _gen(8)
    memory = _randn(g, b, n, w)
    weights = _rand(g, b, h, n)
    erase, add = _rand(g, b, h, w), _randn(g, b, h, w)
    _close(A.write(memory, weights, erase, add), ref_write(memory, weights, erase, add))


@pytest.mark.parametrize("b,n,r", [(1, 1, 1), (1, 4, 1), (2, 5, 3), (3, 16, 4)])
def test_update_usage_matches_reference(b, n, r):
    g = _gen(9)
    u, w = _rand(g, b, n), _subdist(g, b, n)
    f, rw = _rand(g, b, r), _dist(g, b, r, n)
    out = A.update_usage(u, w, f, rw)
    assert out.shape == (b, n)
    _close(out, ref_usage(u, w, f, rw))


@pytest.mark.parametrize("b,n", [(1, 1), (1, 3), (2, 5), (3, 16), (4, 32)])
def test_allocation_matches_reference(b, n):
    g = _gen(10)
    u = _rand(g, b, n)
    out = A.allocation_weights(u)
    assert out.shape == (b, n)
    # the usage stabiliser (1e-6) is allowed: 1e-5 against the plain formula
    _close(out, ref_allocation(u), atol=1e-5, rtol=0)


def test_allocation_matches_reference_with_ties_and_extremes():
    # Ties: the order among equal usages is arbitrary, but every tie-break gives the same
    # allocation *multiset* and the same sum 1 - prod(u); with all-equal usages u the answer is
    # a permutation of (1-u), (1-u)u, (1-u)u^2, ...
    u = _t([[0.5, 0.5, 0.5, 0.5]])
    out = A.allocation_weights(u)
    expected = sorted([0.5, 0.25, 0.125, 0.0625])
    _close(torch.sort(out, dim=-1).values, _t([expected]), atol=1e-5, rtol=0)
    # all slots full -> (nearly) nothing to allocate; all free -> first free slot gets ~1
    _close(A.allocation_weights(torch.ones(2, 5, dtype=F64)), torch.zeros(2, 5, dtype=F64), atol=1e-5, rtol=0)
    free = A.allocation_weights(torch.zeros(1, 5, dtype=F64))
    assert abs(free.sum().item() - 1.0) < 1e-5
    assert free.max().item() > 1.0 - 1e-5


@pytest.mark.parametrize("b,n", [(1, 1), (1, 4), (3, 9)])
def test_write_weights_matches_reference(b, n):
    g = _gen(11)
    a, c = _subdist(g, b, n), _dist(g, b, n)
    ga, gw = _rand(g, b), _rand(g, b)
    out = A.write_weights(a, c, ga, gw)
    assert out.shape == (b, n)
    _close(out, ref_write_weights(a, c, ga, gw))


@pytest.mark.parametrize("b,n", [(1, 1), (1, 4), (3, 9)])
def test_update_precedence_matches_reference(b, n):
    g = _gen(12)
    p, w = _subdist(g, b, n), _subdist(g, b, n)
    out = A.update_precedence(p, w)
    assert out.shape == (b, n)
    _close(out, ref_precedence(p, w))


@pytest.mark.parametrize("b,n", [(1, 1), (1, 3), (2, 6), (3, 12)])
def test_update_link_matches_reference(b, n):
    g = _gen(13)
    link = _rand(g, b, n, n) / n  # arbitrary, including a non-zero diagonal on input
    p, w = _subdist(g, b, n), _subdist(g, b, n)
    out = A.update_link(link, p, w)
    assert out.shape == (b, n, n)
    _close(out, ref_link(link, p, w))


@pytest.mark.parametrize("b,r,n", [(1, 1, 1), (1, 2, 4), (2, 3, 7), (3, 4, 12)])
def test_directional_weights_matches_reference(b, r, n):
    g = _gen(14)
    link = _rand(g, b, n, n)  # deliberately asymmetric
    w = _dist(g, b, r, n)
    out = A.directional_weights(link, w)
    assert isinstance(out, tuple) and len(out) == 2
    fwd, bwd = out
    ref_f, ref_b = ref_directional(link, w)
    assert fwd.shape == bwd.shape == (b, r, n)
    _close(fwd, ref_f)
    _close(bwd, ref_b)


@pytest.mark.parametrize("b,r,n", [(1, 1, 1), (1, 2, 4), (2, 3, 7)])
def test_read_weights_matches_reference(b, r, n):
    g = _gen(15)
    bw, c, fw = _subdist(g, b, r, n), _dist(g, b, r, n), _subdist(g, b, r, n)
    modes = _dist(g, b, r, 3)
    out = A.read_weights(bw, c, fw, modes)
    assert out.shape == (b, r, n)
    _close(out, ref_read_weights(bw, c, fw, modes))


def test_float32_agrees_with_float64_reference_to_1e5():
    """Every function on float32 inputs agrees with the float64 loop reference to 1e-5."""
    g = _gen(16)
    b, h, n, w, r, k = 2, 3, 10, 5, 2, 2
    f32 = torch.float32
    memory, keys = _randn(g, b, n, w, dtype=f32), _randn(g, b, h, w, dtype=f32)
    beta = (1.0 + 5.0 * _rand(g, b, h)).to(f32)
    wh, wh2 = _dist(g, b, h, n, dtype=f32), _dist(g, b, h, n, dtype=f32)
    gate, gamma = _rand(g, b, h, dtype=f32), (1.0 + 3.0 * _rand(g, b, h)).to(f32)
    shift = _dist(g, b, h, 2 * k + 1, dtype=f32)
    erase, add = _rand(g, b, h, w, dtype=f32), _randn(g, b, h, w, dtype=f32)
    u, ww = _rand(g, b, n, dtype=f32), _subdist(g, b, n, dtype=f32)
    fg, rw = _rand(g, b, r, dtype=f32), _dist(g, b, r, n, dtype=f32)
    cw, ga, gw = _dist(g, b, n, dtype=f32), _rand(g, b, dtype=f32), _rand(g, b, dtype=f32)
    p, link = _subdist(g, b, n, dtype=f32), (_rand(g, b, n, n) / n).to(f32)
    modes = _dist(g, b, r, 3, dtype=f32)
    tol = dict(atol=1e-5, rtol=1e-5)
    _close(A.cosine_similarity(memory, keys), ref_cosine(memory, keys), **tol)
    _close(A.content_weights(memory, keys, beta), ref_content(memory, keys, beta), **tol)
    _close(A.interpolate(wh, wh2, gate), ref_interpolate(wh, wh2, gate), **tol)
    _close(A.circular_shift(wh, shift), ref_shift(wh, shift), **tol)
    _close(A.sharpen(wh, gamma), ref_sharpen(wh, gamma), **tol)
    _close(A.read(memory, wh), ref_read(memory, wh), **tol)
    _close(A.write(memory, wh, erase, add), ref_write(memory, wh, erase, add), **tol)
    _close(A.update_usage(u, ww, fg, rw), ref_usage(u, ww, fg, rw), **tol)
    _close(A.allocation_weights(u), ref_allocation(u), **tol)
    _close(A.write_weights(u, cw, ga, gw), ref_write_weights(u, cw, ga, gw), **tol)
    _close(A.update_precedence(p, ww), ref_precedence(p, ww), **tol)
    _close(A.update_link(link, p, ww), ref_link(link, p, ww), **tol)
    fwd, bwd = A.directional_weights(link, rw)
    ref_f, ref_b = ref_directional(link, rw)
    _close(fwd, ref_f, **tol)
    _close(bwd, ref_b, **tol)
    _close(A.read_weights(bwd, rw, fwd, modes), ref_read_weights(bwd, rw, fwd, modes), **tol)


# --------------------------------------------------------------------------------------------
# 3. Hand-worked examples
# --------------------------------------------------------------------------------------------


def _one_hot(n, i):
    v = [0.0] * n
    v[i] = 1.0
    return v


def test_hand_cosine_similarity():
    # rows: [1,0], [0,1], [1,1], [0,0]
    memory = _t([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0]]])
    # key [2,0]: cos = 2/2 = 1, 0, 2/(2*sqrt2) = 1/sqrt2, zero row -> 0
    # key [-1,0]: -1, 0, -1/sqrt2, 0
    keys = _t([[[2.0, 0.0], [-1.0, 0.0]]])
    s = 1.0 / math.sqrt(2.0)
    expected = _t([[[1.0, 0.0, s, 0.0], [-1.0, 0.0, -s, 0.0]]])
    _close(A.cosine_similarity(memory, keys), expected, atol=1e-5, rtol=0)


def test_hand_content_weights():
    # rows [1,0], [0,1], [-1,0]; key [1,0]; strength 2 -> logits 2*[1, 0, -1]
    # softmax: e^2 = 7.389056, e^0 = 1, e^-2 = 0.135335, sum = 8.524391
    #   -> [0.866813, 0.117310, 0.015876]
    memory = _t([[[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]])
    keys = _t([[[1.0, 0.0]]])
    out = A.content_weights(memory, keys, _t([[2.0]]))
    _close(out, _t([[[0.866813, 0.117310, 0.015876]]]), atol=2e-6, rtol=0)


def test_hand_content_weights_softmax_is_over_slots_not_heads():
    # two heads with the same key: each head's weighting sums to 1 over the 3 slots
    memory = _t([[[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]])
    keys = _t([[[1.0, 0.0], [1.0, 0.0]]])
    out = A.content_weights(memory, keys, _t([[2.0, 2.0]]))
    _close(out[0, 0], _t([0.866813, 0.117310, 0.015876]), atol=2e-6, rtol=0)
    _close(out[0, 1], out[0, 0])
    # strength 0 -> uniform
    flat = A.content_weights(memory, keys, _t([[0.0, 0.0]]))
    _close(flat, torch.full((1, 2, 3), 1.0 / 3.0, dtype=F64))


def test_hand_interpolate():
    # g = 0.25: 0.25*[1,0,0] + 0.75*[0,0,1] = [0.25, 0, 0.75]; g=1 -> content; g=0 -> prev
    c = _t([[[1.0, 0.0, 0.0]] * 3])
    p = _t([[[0.0, 0.0, 1.0]] * 3])
    out = A.interpolate(c, p, _t([[0.25, 1.0, 0.0]]))
    _close(out, _t([[[0.25, 0.0, 0.75], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]]))


def test_hand_circular_shift_one_hot():
    n = 5
    w = _t([[_one_hot(n, 0)]])
    # k=1: index 0 = offset -1, index 1 = offset 0, index 2 = offset +1
    plus_one = A.circular_shift(w, _t([[[0.0, 0.0, 1.0]]]))
    _close(plus_one, _t([[_one_hot(n, 1)]]))  # 0 -> 1
    minus_one = A.circular_shift(w, _t([[[1.0, 0.0, 0.0]]]))
    _close(minus_one, _t([[_one_hot(n, n - 1)]]))  # 0 -> N-1 (wraps)
    stay = A.circular_shift(w, _t([[[0.0, 1.0, 0.0]]]))
    _close(stay, w)
    # k=2: index 4 = offset +2 -> slot 2; index 0 = offset -2 -> slot 3 (0 - 2 mod 5)
    _close(A.circular_shift(w, _t([[[0.0, 0.0, 0.0, 0.0, 1.0]]])), _t([[_one_hot(n, 2)]]))
    _close(A.circular_shift(w, _t([[[1.0, 0.0, 0.0, 0.0, 0.0]]])), _t([[_one_hot(n, 3)]]))
    # k=0: the single offset is 0, identity
    _close(A.circular_shift(w, _t([[[1.0]]])), w)
    # from the last slot, +1 wraps to slot 0
    last = _t([[_one_hot(n, n - 1)]])
    _close(A.circular_shift(last, _t([[[0.0, 0.0, 1.0]]])), _t([[_one_hot(n, 0)]]))


def test_hand_circular_shift_asymmetric_mixture():
    # focus on slot 2 of 5, shift (offset -1: 0.2, 0: 0.7, +1: 0.1)
    #   -> slot 1 gets 0.2, slot 2 gets 0.7, slot 3 gets 0.1
    w = _t([[_one_hot(5, 2)]])
    out = A.circular_shift(w, _t([[[0.2, 0.7, 0.1]]]))
    _close(out, _t([[[0.0, 0.2, 0.7, 0.1, 0.0]]]))
    # two-slot weighting [0.6 at 0, 0.4 at 1], shift +1 with prob 0.5, stay with 0.5:
    #   out[0] = 0.5*0.6 = 0.3; out[1] = 0.5*0.4 + 0.5*0.6 = 0.5; out[2] = 0.5*0.4 = 0.2
    w2 = _t([[[0.6, 0.4, 0.0, 0.0]]])
    _close(A.circular_shift(w2, _t([[[0.0, 0.5, 0.5]]])), _t([[[0.3, 0.5, 0.2, 0.0]]]))
    # N == 2k+1 exactly (N=3, k=1): offset -1 from slot 0 wraps to slot 2
    _close(A.circular_shift(_t([[_one_hot(3, 0)]]), _t([[[1.0, 0.0, 0.0]]])), _t([[_one_hot(3, 2)]]))


def test_hand_circular_shift_per_head_and_batch():
    # head 0 shifts +1, head 1 shifts -1, batch 1 stays; shifts must not leak across heads
    w = _t([[_one_hot(4, 1), _one_hot(4, 1)], [_one_hot(4, 3), _one_hot(4, 3)]])
    shift = _t([[[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]], [[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]])
    expected = _t([[_one_hot(4, 2), _one_hot(4, 0)], [_one_hot(4, 3), _one_hot(4, 0)]])
    _close(A.circular_shift(w, shift), expected)


def test_hand_sharpen():
    # [0.5, 0.25, 0.25]^2 = [0.25, 0.0625, 0.0625], sum 0.375 -> [2/3, 1/6, 1/6]
    w = _t([[[0.5, 0.25, 0.25], [0.5, 0.25, 0.25]]])
    out = A.sharpen(w, _t([[2.0, 1.0]]))
    _close(out[0, 0], _t([2.0 / 3.0, 1.0 / 6.0, 1.0 / 6.0]))
    _close(out[0, 1], w[0, 1])  # gamma = 1 is the identity on a distribution
    # gamma 3 on [0.5, 0.5, 0] -> [0.5, 0.5, 0] (ties stay tied, zero stays ~0)
    out3 = A.sharpen(_t([[[0.5, 0.5, 0.0]]]), _t([[3.0]]))
    _close(out3, _t([[[0.5, 0.5, 0.0]]]), atol=1e-9, rtol=0)


def test_hand_read():
    memory = _t([[[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]])
    # 0.5*[1,2] + 0.5*[3,4] = [2,3]; one-hot on slot 2 reads [5,6]
    out = A.read(memory, _t([[[0.5, 0.5, 0.0], [0.0, 0.0, 1.0]]]))
    _close(out, _t([[[2.0, 3.0], [5.0, 6.0]]]))


def test_hand_write_one_hot_full_erase_replaces_row():
    memory = _t([[[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]])
    weights = _t([[_one_hot(3, 1)]])
    out = A.write(memory, weights, _t([[[1.0, 1.0]]]), _t([[[7.0, 8.0]]]))
    _close(out, _t([[[1.0, 2.0], [7.0, 8.0], [5.0, 6.0]]]))


def test_hand_write_partial():
    # one head, w = [0.5, 0, 0.5], erase [1, 0.5], add [2, -2]
    # row0: [1*(1-0.5*1) + 0.5*2, 2*(1-0.5*0.5) - 0.5*2] = [0.5+1, 1.5-1] = [1.5, 0.5]
    # row1 unchanged [3, 4]; row2: [5*0.5 + 1, 6*0.75 - 1] = [3.5, 3.5]
    memory = _t([[[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]])
    out = A.write(memory, _t([[[0.5, 0.0, 0.5]]]), _t([[[1.0, 0.5]]]), _t([[[2.0, -2.0]]]))
    _close(out, _t([[[1.5, 0.5], [3.0, 4.0], [3.5, 3.5]]]))


def test_hand_write_two_heads_multiply_erases_and_sum_adds():
    # both heads fully on slot 0 with erase 0.5 each: keep = (1-0.5)*(1-0.5) = 0.25
    # (a sum of erases would keep 0); adds 1 and 2 sum to 3.
    # row0 = 4*0.25 + 3 = 4; row1 untouched = 8
    memory = _t([[[4.0], [8.0]]])
    weights = _t([[[1.0, 0.0], [1.0, 0.0]]])
    out = A.write(memory, weights, _t([[[0.5], [0.5]]]), _t([[[1.0], [2.0]]]))
    _close(out, _t([[[4.0], [8.0]]]))
    # erase only (adds 0): 4 * 0.25 = 1
    out2 = A.write(memory, weights, _t([[[0.5], [0.5]]]), _t([[[0.0], [0.0]]]))
    _close(out2, _t([[[1.0], [8.0]]]))


def test_hand_update_usage():
    # u = [0.5, 0.0, 1.0], w = [0.5, 0.5, 0]: u + w - u*w = [0.75, 0.5, 1.0]
    # one read head, free gate 1, read weights [0, 0, 0.5]: psi = [1, 1, 0.5]
    # -> [0.75, 0.5, 0.5]
    out = A.update_usage(_t([[0.5, 0.0, 1.0]]), _t([[0.5, 0.5, 0.0]]), _t([[1.0]]), _t([[[0.0, 0.0, 0.5]]]))
    _close(out, _t([[0.75, 0.5, 0.5]]))
    # two read heads: free gates [0.5, 1], reads [1,0,0] and [0.5,0.5,0]
    # psi = [(1-0.5)*(1-0.5), (1-0)*(1-0.5), 1] = [0.25, 0.5, 1]
    # with u = [0.8, 0.6, 0.4], w = 0: [0.2, 0.3, 0.4]
    out2 = A.update_usage(
        _t([[0.8, 0.6, 0.4]]), _t([[0.0, 0.0, 0.0]]), _t([[0.5, 1.0]]), _t([[[1.0, 0.0, 0.0], [0.5, 0.5, 0.0]]])
    )
    _close(out2, _t([[0.2, 0.3, 0.4]]))


def test_hand_allocation():
    # usage [0.2, 0.9, 0.1, 0.5]: ascending order slot2 (0.1), slot0 (0.2), slot3 (0.5), slot1 (0.9)
    #   a[2] = 1 - 0.1 = 0.9
    #   a[0] = (1 - 0.2) * 0.1 = 0.08
    #   a[3] = (1 - 0.5) * 0.1 * 0.2 = 0.01
    #   a[1] = (1 - 0.9) * 0.1 * 0.2 * 0.5 = 0.001
    # sum = 0.991 = 1 - 0.1*0.2*0.5*0.9
    out = A.allocation_weights(_t([[0.2, 0.9, 0.1, 0.5]]))
    _close(out, _t([[0.08, 0.001, 0.9, 0.01]]), atol=1e-5, rtol=0)
    # usage [0.2, 0.9, 0.0, 0.7]: the free slot 2 gets everything (1 - 0), and every other slot
    # is multiplied by u = 0 -> [0, 0, 1, 0] (up to the 1e-6 stabiliser)
    out0 = A.allocation_weights(_t([[0.2, 0.9, 0.0, 0.7]]))
    _close(out0, _t([[0.0, 0.0, 1.0, 0.0]]), atol=1e-5, rtol=0)


def test_hand_allocation_batch_independent():
    u = _t([[0.2, 0.9, 0.1, 0.5], [0.5, 0.1, 0.9, 0.2]])
    out = A.allocation_weights(u)
    _close(out[0], _t([0.08, 0.001, 0.9, 0.01]), atol=1e-5, rtol=0)
    _close(out[1], _t([0.01, 0.9, 0.001, 0.08]), atol=1e-5, rtol=0)


def test_hand_write_weights():
    # a = [1,0,0], c = [0,0.5,0.5], ga = 0.25, gw = 0.8:
    #   0.8 * (0.25*[1,0,0] + 0.75*[0,0.5,0.5]) = 0.8 * [0.25, 0.375, 0.375] = [0.2, 0.3, 0.3]
    # second batch item: gw = 0 -> no write at all
    out = A.write_weights(
        _t([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]]), _t([[0.0, 0.5, 0.5], [0.0, 0.5, 0.5]]), _t([0.25, 1.0]), _t([0.8, 0.0])
    )
    _close(out, _t([[0.2, 0.3, 0.3], [0.0, 0.0, 0.0]]))


def test_hand_update_precedence():
    # p = [0.5, 0.5, 0], w = [0, 0, 0.8]: (1 - 0.8)*p + w = [0.1, 0.1, 0.8]
    # no write: p unchanged; full write: p = w
    out = A.update_precedence(
        _t([[0.5, 0.5, 0.0], [0.2, 0.3, 0.1], [0.2, 0.3, 0.1]]),
        _t([[0.0, 0.0, 0.8], [0.0, 0.0, 0.0], [0.0, 1.0, 0.0]]),
    )
    _close(out, _t([[0.1, 0.1, 0.8], [0.2, 0.3, 0.1], [0.0, 1.0, 0.0]]))


def test_hand_link_sequence_of_one_hot_writes():
    # Write slots 0, 1, 2 in order, one-hot, starting from L = 0, p = 0.
    # step 1 (w = e0): L = w_i p_j = 0 (p = 0);            p = e0
    # step 2 (w = e1): L[1,0] = w_1 p_0 = 1;               p = (1-1) e0 + e1 = e1
    # step 3 (w = e2): L[1,0] = (1 - 0 - 0)*1 = 1 kept; L[2,1] = w_2 p_1 = 1;  p = e2
    link = torch.zeros(1, 3, 3, dtype=F64)
    prec = torch.zeros(1, 3, dtype=F64)
    for slot in range(3):
        w = _t([_one_hot(3, slot)])
        link = A.update_link(link, prec, w)
        prec = A.update_precedence(prec, w)
    expected = _t([[[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]])
    _close(link, expected)
    _close(prec, _t([_one_hot(3, 2)]))
    # forward from slot 0 goes to the slot written next (1); backward from 2 goes to 1
    fwd, bwd = A.directional_weights(link, _t([[_one_hot(3, 0), _one_hot(3, 2)]]))
    _close(fwd[0, 0], _t(_one_hot(3, 1)))
    _close(bwd[0, 1], _t(_one_hot(3, 1)))
    # forward from the last written slot and backward from the first lead nowhere
    _close(fwd[0, 1], torch.zeros(3, dtype=F64))
    _, bwd0 = A.directional_weights(link, _t([[_one_hot(3, 0)]]))
    _close(bwd0[0, 0], torch.zeros(3, dtype=F64))


def test_hand_link_fractional_update_and_zero_diagonal():
    # L = [[0, .2, .3], [.4, 0, .1], [.2, .5, 0]], p = [.3, .2, .1], w = [.5, .25, 0]
    # L'[i,j] = (1 - w_i - w_j) L[i,j] + w_i p_j:
    #   [0,1] = (1-.5-.25)*.2 + .5*.2  = .05 + .10  = .15
    #   [0,2] = (1-.5-0)*.3   + .5*.1  = .15 + .05  = .20
    #   [1,0] = (1-.25-.5)*.4 + .25*.3 = .10 + .075 = .175
    #   [1,2] = (1-.25-0)*.1  + .25*.1 = .075 + .025 = .10
    #   [2,0] = (1-0-.5)*.2   + 0      = .10
    #   [2,1] = (1-0-.25)*.5  + 0      = .375
    #   diagonal: 0 (the formula alone would give [0,0] = 0 + .5*.3 = .15)
    link = _t([[[0.0, 0.2, 0.3], [0.4, 0.0, 0.1], [0.2, 0.5, 0.0]]])
    out = A.update_link(link, _t([[0.3, 0.2, 0.1]]), _t([[0.5, 0.25, 0.0]]))
    expected = _t([[[0.0, 0.15, 0.20], [0.175, 0.0, 0.10], [0.10, 0.375, 0.0]]])
    _close(out, expected)
    assert torch.all(torch.diagonal(out, dim1=-2, dim2=-1) == 0.0)
    # a non-zero diagonal on input is also removed
    out2 = A.update_link(link + torch.eye(3, dtype=F64), _t([[0.3, 0.2, 0.1]]), _t([[0.5, 0.25, 0.0]]))
    assert torch.all(torch.diagonal(out2, dim1=-2, dim2=-1) == 0.0)


def test_hand_directional_weights():
    # with L from the fractional example: forward from slot 0 is column 0 = [0, .175, .10],
    # backward from slot 0 is row 0 = [0, .15, .20].
    # read weighting [0.5, 0.5, 0]: forward = 0.5*col0 + 0.5*col1 = [.075, .0875, .2375]
    #                               backward = 0.5*row0 + 0.5*row1 = [.0875, .075, .15]
    link = _t([[[0.0, 0.15, 0.20], [0.175, 0.0, 0.10], [0.10, 0.375, 0.0]]])
    fwd, bwd = A.directional_weights(link, _t([[[1.0, 0.0, 0.0], [0.5, 0.5, 0.0]]]))
    _close(fwd, _t([[[0.0, 0.175, 0.10], [0.075, 0.0875, 0.2375]]]))
    _close(bwd, _t([[[0.0, 0.15, 0.20], [0.0875, 0.075, 0.15]]]))


def test_hand_read_weights_mode_order():
    # modes ordered (backward, content, forward) = (0.2, 0.5, 0.3);
    # b = e0, c = e1, f = e2 -> [0.2, 0.5, 0.3]
    out = A.read_weights(_t([[_one_hot(3, 0)]]), _t([[_one_hot(3, 1)]]), _t([[_one_hot(3, 2)]]), _t([[[0.2, 0.5, 0.3]]]))
    _close(out, _t([[[0.2, 0.5, 0.3]]]))
    # pure modes pick exactly one input
    b, c, f = _t([[[0.1, 0.2, 0.7]]]), _t([[[0.3, 0.3, 0.4]]]), _t([[[0.6, 0.4, 0.0]]])
    _close(A.read_weights(b, c, f, _t([[[1.0, 0.0, 0.0]]])), b)
    _close(A.read_weights(b, c, f, _t([[[0.0, 1.0, 0.0]]])), c)
    _close(A.read_weights(b, c, f, _t([[[0.0, 0.0, 1.0]]])), f)


# --------------------------------------------------------------------------------------------
# 4. Properties
# --------------------------------------------------------------------------------------------


def _assert_distribution(x, atol=1e-9):
    assert torch.isfinite(x).all()
    assert (x >= 0).all(), x.min()
    torch.testing.assert_close(x.sum(-1), torch.ones_like(x.sum(-1)), atol=atol, rtol=0)


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_ntm_weightings_are_distributions(shape):
    b, h, n, w = shape
    g = _gen(20)
    for scale in (0.1, 1.0, 30.0):
        memory, keys = scale * _randn(g, b, n, w), _randn(g, b, h, w)
        beta = 1.0 + 50.0 * _rand(g, b, h)
        content = A.content_weights(memory, keys, beta)
        _assert_distribution(content)
        gated = A.interpolate(content, _dist(g, b, h, n), _rand(g, b, h))
        _assert_distribution(gated)
        for k in (0, 1, 2):
            if 2 * k + 1 > n:
                continue
            shifted = A.circular_shift(gated, _dist(g, b, h, 2 * k + 1))
            _assert_distribution(shifted)
            sharp = A.sharpen(shifted, 1.0 + 20.0 * _rand(g, b, h))
            _assert_distribution(sharp)


def test_sharpen_increases_peak_and_preserves_order():
    g = _gen(21)
    w = _dist(g, 3, 2, 7)
    prev = w
    for gamma in (1.0, 1.5, 3.0, 10.0):
        out = A.sharpen(w, torch.full((3, 2), gamma, dtype=F64))
        assert (out.max(-1).values >= prev.max(-1).values - 1e-12).all()
        assert torch.equal(torch.argsort(out, -1), torch.argsort(w, -1))
        prev = out


def test_circular_shift_is_linear_and_composes():
    g = _gen(22)
    w = _dist(g, 2, 3, 9)
    s1, s2 = _dist(g, 2, 3, 3), _dist(g, 2, 3, 5)
    # shifting by a +1 delta N times returns the original weighting
    delta = _t([0.0, 0.0, 1.0]).expand(2, 3, 3)
    out = w
    for _ in range(9):
        out = A.circular_shift(out, delta)
    _close(out, w)
    # shift order does not matter (circular convolution is commutative)
    _close(A.circular_shift(A.circular_shift(w, s1), s2), A.circular_shift(A.circular_shift(w, s2), s1))


def test_read_of_distribution_is_convex_combination():
    g = _gen(23)
    memory, w = _randn(g, 2, 6, 4), _dist(g, 2, 3, 6)
    out = A.read(memory, w)
    assert (out <= memory.max(1, keepdim=True).values + 1e-12).all()
    assert (out >= memory.min(1, keepdim=True).values - 1e-12).all()


def test_write_memory_bounds():
    # memory in [0,1], erase in [0,1], add in [0,1], one head with a distribution: the result
    # stays within [0, 2]; with add = 0 nothing grows.
    g = _gen(24)
    memory = _rand(g, 3, 8, 5)
    w, e = _dist(g, 3, 1, 8), _rand(g, 3, 1, 5)
    erased = A.write(memory, w, e, torch.zeros(3, 1, 5, dtype=F64))
    assert (erased <= memory + 1e-12).all() and (erased >= 0).all()
    # zero weights: memory unchanged
    _close(A.write(memory, torch.zeros(3, 2, 8, dtype=F64), _rand(g, 3, 2, 5), _randn(g, 3, 2, 5)), memory)


def test_allocation_properties_random():
    g = _gen(25)
    for n in (1, 2, 5, 16, 40):
        u = _rand(g, 6, n)
        # include exact 0 / 1 usages and ties
        u[0, 0] = 0.0
        u[1, :] = 1.0
        u[2, : max(1, n // 2)] = 0.5
        a = A.allocation_weights(u)
        assert torch.isfinite(a).all()
        assert (a >= 0).all()
        assert (a.sum(-1) <= 1.0 + 1e-9).all()
        # sum telescopes to 1 - prod(u)
        _close(a.sum(-1), 1.0 - u.prod(-1), atol=1e-5, rtol=0)
        # a slot with lower usage never gets less than one with higher usage
        for row_u, row_a in zip(u, a):
            order = torch.argsort(row_u, stable=True)
            sorted_a = row_a[order]
            distinct = row_u[order][1:] > row_u[order][:-1]
            assert (sorted_a[:-1][distinct] >= sorted_a[1:][distinct] - 1e-12).all()


def test_allocation_is_permutation_equivariant():
    g = _gen(26)
    u = _distinct_usage(g, 3, 10)
    perm = torch.randperm(10, generator=g)
    _close(A.allocation_weights(u[:, perm]), A.allocation_weights(u)[:, perm])


def _dnc_run(seed, b=4, n=8, r=3, steps=60, sharp=False):
    """A DNC-like write sequence; yields the state after every step."""
    g = _gen(seed)
    usage = torch.zeros(b, n, dtype=F64)
    prev_w = torch.zeros(b, n, dtype=F64)
    prev_r = torch.zeros(b, r, n, dtype=F64)
    prec = torch.zeros(b, n, dtype=F64)
    link = torch.zeros(b, n, n, dtype=F64)
    for t in range(steps):
        free = _rand(g, b, r)
        if sharp and t % 3 == 0:
            free = (free > 0.5).to(F64)
        usage = A.update_usage(usage, prev_w, free, prev_r)
        alloc = A.allocation_weights(usage)
        scale = 25.0 if sharp else 3.0
        content = _dist(g, b, n, scale=scale)
        ga, gw = _rand(g, b), _rand(g, b)
        if sharp:
            ga, gw = (ga > 0.5).to(F64), torch.where(gw > 0.2, torch.ones_like(gw), gw)
        ww = A.write_weights(alloc, content, ga, gw)
        link = A.update_link(link, prec, ww)
        prec = A.update_precedence(prec, ww)
        fwd, bwd = A.directional_weights(link, prev_r)
        modes = _dist(g, b, r, 3, scale=scale)
        read_c = _dist(g, b, r, n, scale=scale)
        rw = A.read_weights(bwd, read_c, fwd, modes)
        yield dict(usage=usage, alloc=alloc, ww=ww, link=link, prec=prec, fwd=fwd, bwd=bwd, rw=rw)
        prev_w, prev_r = ww, rw


@pytest.mark.parametrize("sharp", [False, True], ids=["soft", "sharp"])
def test_dnc_state_invariants_over_many_steps(sharp):
    tol = 1e-9
    for state in _dnc_run(seed=27 + sharp, sharp=sharp):
        u, a, ww = state["usage"], state["alloc"], state["ww"]
        link, prec = state["link"], state["prec"]
        assert ((u >= -tol) & (u <= 1 + tol)).all(), "usage left [0, 1]"
        assert (a >= 0).all() and (a.sum(-1) <= 1 + tol).all(), "allocation"
        assert (ww >= 0).all() and (ww.sum(-1) <= 1 + tol).all(), "write weights"
        assert ((link >= -tol) & (link <= 1 + tol)).all(), "link entries outside [0, 1]"
        assert (link.sum(-1) <= 1 + 1e-7).all(), "link row sum > 1"
        assert (link.sum(-2) <= 1 + 1e-7).all(), "link column sum > 1"
        assert torch.all(torch.diagonal(link, dim1=-2, dim2=-1) == 0.0), "link diagonal not exactly zero"
        assert (prec >= -tol).all() and (prec.sum(-1) <= 1 + tol).all(), "precedence"
        for key in ("fwd", "bwd", "rw"):
            x = state[key]
            assert (x >= -tol).all() and (x.sum(-1) <= 1 + 1e-7).all(), key


def test_read_weights_of_distributions_is_distribution():
    g = _gen(28)
    out = A.read_weights(_dist(g, 3, 2, 6), _dist(g, 3, 2, 6), _dist(g, 3, 2, 6), _dist(g, 3, 2, 3))
    _assert_distribution(out)


def test_usage_monotone_without_freeing():
    # free gates 0: usage never decreases and a full write (w = 1 on a slot) makes it 1
    g = _gen(29)
    u = _rand(g, 2, 5)
    w = _subdist(g, 2, 5)
    out = A.update_usage(u, w, torch.zeros(2, 2, dtype=F64), _dist(g, 2, 2, 5))
    assert (out >= u - 1e-12).all()
    full = A.update_usage(u, _t([_one_hot(5, 3)] * 2), torch.zeros(2, 1, dtype=F64), _dist(g, 2, 1, 5))
    _close(full[:, 3], torch.ones(2, dtype=F64))


# --------------------------------------------------------------------------------------------
# 5. Zero-row and zero-weight safety
# --------------------------------------------------------------------------------------------


def test_cosine_zero_row_and_zero_key_are_finite_zero():
    memory = _t([[[0.0, 0.0, 0.0], [1.0, 2.0, 2.0]]]).requires_grad_(True)
    keys = _t([[[0.0, 0.0, 0.0], [2.0, 1.0, -2.0]]]).requires_grad_(True)
    out = A.cosine_similarity(memory, keys)
    assert torch.isfinite(out).all()
    # zero key -> zeros everywhere; zero row -> zero for every key
    _close(out[0, 0], torch.zeros(2, dtype=F64))
    _close(out[0, :, 0], torch.zeros(2, dtype=F64))
    # key [2,1,-2] vs row [1,2,2]: (2+2-4)/(3*3) = 0 as well; check the well-defined one by hand
    keys2 = _t([[[2.0, 2.0, 1.0]]])
    _close(A.cosine_similarity(memory.detach(), keys2)[0, 0, 1], _t(8.0 / 9.0), atol=1e-5, rtol=0)
    out.sum().backward()
    assert torch.isfinite(memory.grad).all() and torch.isfinite(keys.grad).all()


def test_content_weights_with_all_zero_memory_is_uniform():
    memory = torch.zeros(2, 4, 3, dtype=F64, requires_grad=True)
    keys = _randn(_gen(30), 2, 2, 3).requires_grad_(True)
    out = A.content_weights(memory, keys, torch.full((2, 2), 5.0, dtype=F64))
    _close(out, torch.full((2, 2, 4), 0.25, dtype=F64))
    out[..., 0].sum().backward()
    assert torch.isfinite(memory.grad).all() and torch.isfinite(keys.grad).all()


def test_sharpen_with_zeros_is_finite_with_finite_gradients():
    w = _t([[[0.0, 0.7, 0.3, 0.0], [0.0, 0.0, 1.0, 0.0]]]).requires_grad_(True)
    gamma = _t([[2.0, 1.0]]).requires_grad_(True)
    out = A.sharpen(w, gamma)
    assert torch.isfinite(out).all()
    # [0, .49, .09, 0] / .58
    _close(out[0, 0], _t([0.0, 0.49 / 0.58, 0.09 / 0.58, 0.0]), atol=1e-9, rtol=0)
    _close(out[0, 1], _t([0.0, 0.0, 1.0, 0.0]), atol=1e-9, rtol=0)
    (out * _randn(_gen(31), *out.shape)).sum().backward()
    assert torch.isfinite(w.grad).all() and torch.isfinite(gamma.grad).all()


def test_sharpen_of_all_zero_weighting_is_finite():
    w = torch.zeros(1, 2, 5, dtype=F64, requires_grad=True)
    gamma = _t([[1.0, 3.0]]).requires_grad_(True)
    out = A.sharpen(w, gamma)
    assert torch.isfinite(out).all()
    _close(out.sum(-1), torch.ones(1, 2, dtype=F64), atol=1e-9, rtol=0)
    out[..., 0].sum().backward()
    assert torch.isfinite(w.grad).all() and torch.isfinite(gamma.grad).all()


def test_sharpen_float32_with_tiny_weights_is_finite():
    w = torch.tensor([[[1e-30, 1e-20, 1.0 - 2e-20, 0.0]]], dtype=torch.float32, requires_grad=True)
    gamma = torch.tensor([[20.0]], requires_grad=True)
    out = A.sharpen(w, gamma)
    assert torch.isfinite(out).all()
    assert abs(out.sum().item() - 1.0) < 1e-5
    out[..., 2].sum().backward()
    assert torch.isfinite(w.grad).all() and torch.isfinite(gamma.grad).all()


def test_allocation_gradient_finite_at_extremes():
    u = _t([[0.0, 1.0, 0.5, 0.0], [1.0, 1.0, 1.0, 1.0]]).requires_grad_(True)
    a = A.allocation_weights(u)
    assert torch.isfinite(a).all()
    (a * _randn(_gen(32), *a.shape)).sum().backward()
    assert torch.isfinite(u.grad).all()


# --------------------------------------------------------------------------------------------
# 6. Gradients
# --------------------------------------------------------------------------------------------


def _gc(fn, *inputs):
    inputs = tuple(x.detach().clone().requires_grad_(True) for x in inputs)
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-4)


def test_gradcheck_cosine_similarity():
    g = _gen(40)
    _gc(A.cosine_similarity, _randn(g, 2, 4, 3), _randn(g, 2, 3, 3))


def test_gradcheck_content_weights():
    g = _gen(41)
    _gc(A.content_weights, _randn(g, 2, 4, 3), _randn(g, 2, 3, 3), 1.0 + 3.0 * _rand(g, 2, 3))


def test_gradcheck_interpolate():
    g = _gen(42)
    _gc(A.interpolate, _dist(g, 2, 2, 5), _dist(g, 2, 2, 5), _rand(g, 2, 2))


@pytest.mark.parametrize("k", [0, 1, 2])
def test_gradcheck_circular_shift(k):
    g = _gen(43 + k)
    _gc(A.circular_shift, _dist(g, 2, 2, 6), _dist(g, 2, 2, 2 * k + 1))


def test_gradcheck_sharpen():
    g = _gen(46)
    _gc(A.sharpen, _dist(g, 2, 3, 5, scale=1.0), 1.0 + 3.0 * _rand(g, 2, 3))


def test_gradcheck_read():
    g = _gen(47)
    _gc(A.read, _randn(g, 2, 5, 3), _dist(g, 2, 3, 5))


@pytest.mark.parametrize("heads", [1, 3])
def test_gradcheck_write(heads):
    g = _gen(48 + heads)
    _gc(A.write, _randn(g, 2, 5, 3), _rand(g, 2, heads, 5), _rand(g, 2, heads, 3), _randn(g, 2, heads, 3))


def test_gradcheck_update_usage():
    g = _gen(52)
    _gc(A.update_usage, _rand(g, 2, 5), _subdist(g, 2, 5), _rand(g, 2, 3), _dist(g, 2, 3, 5))


def test_gradcheck_allocation():
    g = _gen(53)
    _gc(A.allocation_weights, _distinct_usage(g, 3, 6))


def test_allocation_gradient_matches_reference_gradient():
    # The gradient flows through the sorted values (not the order): compare with the autograd
    # gradient of the loop reference and with central finite differences.
    g = _gen(54)
    u = _distinct_usage(g, 2, 7).requires_grad_(True)
    cot = _randn(g, 2, 7)
    (A.allocation_weights(u) * cot).sum().backward()
    u_ref = u.detach().clone().requires_grad_(True)
    (ref_allocation_differentiable(u_ref) * cot).sum().backward()
    assert u.grad is not None
    # the 1e-6 stabiliser scales gradients by (1 - 1e-6): 1e-5 relative is plenty
    _close(u.grad, u_ref.grad, atol=1e-5, rtol=1e-5)
    h = 1e-6
    fd = torch.zeros_like(u)
    with torch.no_grad():
        for b in range(2):
            for n in range(7):
                up, dn = u.detach().clone(), u.detach().clone()
                up[b, n] += h
                dn[b, n] -= h
                fd[b, n] = ((A.allocation_weights(up) - A.allocation_weights(dn)) * cot).sum() / (2 * h)
    _close(u.grad, fd, atol=1e-5, rtol=1e-5)
    # hand check of one partial: usage [0.1, 0.2, 0.5, 0.9] (already sorted),
    # a_1 = (1 - u_1) u_0 -> d a_1 / d u_0 = 1 - u_1 = 0.8; d a_0 / d u_0 = -1
    u2 = _t([[0.1, 0.2, 0.5, 0.9]]).requires_grad_(True)
    jac = torch.autograd.functional.jacobian(lambda x: A.allocation_weights(x)[0], u2)[:, 0, :]
    assert abs(jac[1, 0].item() - 0.8) < 1e-5
    assert abs(jac[0, 0].item() + 1.0) < 1e-5
    # a_3 = (1 - u_3) u_0 u_1 u_2 -> d a_3 / d u_2 = 0.1 * 0.1 * 0.2 = 0.002; d a_0 / d u_3 = 0
    assert abs(jac[3, 2].item() - 0.002) < 1e-7
    assert abs(jac[0, 3].item()) < 1e-12


def test_gradcheck_write_weights():
    g = _gen(55)
    _gc(A.write_weights, _subdist(g, 2, 5), _dist(g, 2, 5), _rand(g, 2), _rand(g, 2))


def test_gradcheck_update_precedence():
    g = _gen(56)
    _gc(A.update_precedence, _subdist(g, 2, 5), _subdist(g, 2, 5))


def test_gradcheck_update_link():
    g = _gen(57)
    _gc(A.update_link, _rand(g, 2, 4, 4) / 4, _subdist(g, 2, 4), _subdist(g, 2, 4))


def test_gradcheck_directional_weights():
    g = _gen(58)
    _gc(A.directional_weights, _rand(g, 2, 4, 4), _dist(g, 2, 3, 4))


def test_gradcheck_read_weights():
    g = _gen(59)
    _gc(A.read_weights, _subdist(g, 2, 2, 5), _dist(g, 2, 2, 5), _subdist(g, 2, 2, 5), _dist(g, 2, 2, 3))


# --------------------------------------------------------------------------------------------
# 7. The references reject plausible wrong implementations
# --------------------------------------------------------------------------------------------


def _mut_shift_wrong_direction(w, s):
    return A.circular_shift(w, s.flip(-1))


def _mut_link_no_zero_diag(link, p, w):
    return (1 - w.unsqueeze(-1) - w.unsqueeze(-2)) * link + w.unsqueeze(-1) * p.unsqueeze(-2)


def _mut_link_transposed(link, p, w):
    return A.update_link(link, p, w).transpose(-1, -2)


def _mut_allocation_inclusive(u):
    s, order = torch.sort(u, -1)
    return torch.zeros_like(u).scatter(-1, order, (1 - s) * torch.cumprod(s, -1))


def _mut_allocation_descending(u):
    s, order = torch.sort(u, -1, descending=True)
    before = torch.cumprod(torch.cat([torch.ones_like(s[:, :1]), s[:, :-1]], -1), -1)
    return torch.zeros_like(u).scatter(-1, order, (1 - s) * before)


def _mut_write_summed_erase(memory, w, e, a):
    keep = 1 - (w.unsqueeze(-1) * e.unsqueeze(2)).sum(1)
    return memory * keep + torch.einsum("bhn,bhw->bnw", w, a)


def _mut_usage_no_overlap(u, w, f, r):
    return (u + w) * (1 - f.unsqueeze(-1) * r).prod(1)


def _mut_directional_swapped(link, r):
    f, b = A.directional_weights(link, r)
    return b, f


def _mut_read_modes_reversed(b, c, f, modes):
    return A.read_weights(b, c, f, modes.flip(-1))


def _mut_sharpen_wrong_axis(w, gamma):
    p = w.pow(gamma.unsqueeze(-1))
    return p / p.sum(1, keepdim=True)


def _mut_precedence_no_decay(p, w):
    return p + w


def _mut_cosine_unnormalised_memory(memory, keys, eps=1e-6):
    return torch.einsum("bhw,bnw->bhn", keys, memory) / (keys.norm(dim=-1, keepdim=True) + eps)


def _mutant_cases():
    g = _gen(70)
    b, h, n, w, r = 2, 2, 6, 3, 2
    link = _rand(g, b, n, n) / n
    link = link * (1 - torch.eye(n, dtype=F64))
    return [
        ("shift direction", _mut_shift_wrong_direction, ref_shift, (_dist(g, b, h, n), _dist(g, b, h, 3))),
        ("link diagonal", _mut_link_no_zero_diag, ref_link, (link, _subdist(g, b, n), _subdist(g, b, n))),
        ("link transposed", _mut_link_transposed, ref_link, (link, _subdist(g, b, n), _subdist(g, b, n))),
        ("inclusive cumprod", _mut_allocation_inclusive, ref_allocation, (_rand(g, b, n),)),
        ("descending sort", _mut_allocation_descending, ref_allocation, (_rand(g, b, n),)),
        (
            "summed erase",
            _mut_write_summed_erase,
            ref_write,
            (_randn(g, b, n, w), _rand(g, b, h, n), _rand(g, b, h, w), _randn(g, b, h, w)),
        ),
        (
            "usage overlap",
            _mut_usage_no_overlap,
            ref_usage,
            (_rand(g, b, n), _subdist(g, b, n), _rand(g, b, r), _dist(g, b, r, n)),
        ),
        ("forward/backward swapped", _mut_directional_swapped, ref_directional, (_rand(g, b, n, n), _dist(g, b, r, n))),
        (
            "read mode order",
            _mut_read_modes_reversed,
            ref_read_weights,
            (_dist(g, b, r, n), _dist(g, b, r, n), _dist(g, b, r, n), _dist(g, b, r, 3)),
        ),
        ("sharpen axis", _mut_sharpen_wrong_axis, ref_sharpen, (_dist(g, b, h, n), 1.0 + _rand(g, b, h))),
        ("precedence decay", _mut_precedence_no_decay, ref_precedence, (_subdist(g, b, n), _subdist(g, b, n))),
        ("cosine norm", _mut_cosine_unnormalised_memory, ref_cosine, (3.0 * _randn(g, b, n, w), _randn(g, b, h, w))),
    ]


@pytest.mark.parametrize("case", _mutant_cases(), ids=lambda c: c[0])
def test_reference_rejects_mutant(case):
    _, mutant, reference, inputs = case
    got, want = mutant(*inputs), reference(*inputs)
    if isinstance(want, tuple):
        got, want = torch.cat(got, -1), torch.cat(want, -1)
    assert not torch.allclose(got.to(F64), want, atol=1e-4, rtol=0), "reference cannot tell this mutant apart"


def test_shift_index_by_hand():
    # index[i, o] = (i - (o - 1)) mod 4 for offsets -1, 0, +1
    expected = torch.tensor([[1, 0, 3], [2, 1, 0], [3, 2, 1], [0, 3, 2]])
    assert torch.equal(A.shift_index(4, 3), expected)


def test_cells_keep_their_step_constants_out_of_the_state_dict():
    from sb3_memory.memory import DNCCell, NTMCell

    ntm = NTMCell(input_dim=3, controller_dim=8, memory_units=6, memory_unit_size=4, shift_range=2)
    dnc = DNCCell(input_dim=3, controller_dim=8, memory_units=6, memory_unit_size=4)
    assert torch.equal(ntm.shift_index, A.shift_index(6, 5))
    assert torch.equal(dnc.off_diagonal, 1.0 - torch.eye(6))
    assert "shift_index" not in ntm.state_dict() and "off_diagonal" not in dnc.state_dict()
