"""Memory addressing for the NTM (Graves et al., 2014) and the DNC (Graves et al., 2016).

Every function is pure and batched: batch first, heads second, then memory slots ``N`` and
word size ``W``. Parameters and nonlinearities live in the cores (:mod:`.ntm`, :mod:`.dnc`);
this module only holds the equations, so that each one can be tested on its own.

These functions are the reference (the oracle of the native kernels, :mod:`.native`) and what
:mod:`sb3_memory.export` traces to ONNX, so they avoid in-place writes into views and caches of
tensors.
"""

from collections.abc import Sequence
from typing import Optional

import torch
from torch import Tensor

# Keeps usage strictly inside (0, 1): an exactly free slot would make the allocation product
# and its gradient degenerate (same choice as deepmind/dnc).
USAGE_EPS = 1e-6

# Slots per block of a sparse core's ``written_blocks`` state field (:func:`written_blocks`). The
# kernels check rows in blocks of this many and report theirs (native.py compares the two).
WRITTEN_BLOCK_ROWS = 64


def cosine_similarity(memory: Tensor, keys: Tensor, eps: float = 1e-6) -> Tensor:
    """
    Cosine similarity between every key and every memory row.

    :param memory: (B, N, W)
    :param keys: (B, H, W)
    :param eps: added to the product of norms, so that an all-zero row gives 0, not NaN
    :return: (B, H, N)
    """
    dot = torch.bmm(keys, memory.transpose(1, 2))
    norms = keys.norm(dim=-1).unsqueeze(-1) * memory.norm(dim=-1).unsqueeze(1)
    return dot / (norms + eps)


def top_k(values: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """
    The ``k`` largest entries of each row and their indices, ties going to the lowest index
    (``torch.topk`` leaves the choice among ties to its implementation). A memory that starts as a
    constant ties every slot, so the choice decides which slots an episode's first step touches;
    fixing it makes the reference and the native kernels choose alike. O(N) per row.

    :param values: (..., N)
    :param k: entries per row, at most N
    :return: values and indices, each (..., k), indices ascending
    """
    largest = torch.topk(values, k, dim=-1).values
    if bool(largest.isnan().any()):  # topk ranks NaN first, and NaN equals nothing: leave it to topk
        return torch.topk(values, k, dim=-1, sorted=False)
    threshold = largest[..., -1:]
    above, tied = values > threshold, values == threshold
    missing = k - above.sum(-1, keepdim=True)
    keep = above | (tied & (tied.cumsum(-1) <= missing))
    index = keep.nonzero()[:, -1].view(*values.shape[:-1], k)  # exactly k per row, in row order
    return values.gather(-1, index), index


def count_unwritten_once(logits: Tensor, unwritten: Tensor) -> Tensor:
    """
    The logits with every unwritten slot but the lowest set to ``-inf``. Unwritten slots still hold
    the initial memory, one value in every row, so they are one candidate for a sparse lookup, not
    many: counted once, they leave the other K - 1 places of the top K to written slots, whose
    similarities give the key a gradient (K tied copies of the same row would take the whole top K
    of a fresh memory and give the key none).

    :param logits: (B, H, N)
    :param unwritten: (B, N) booleans, the slots that still hold the initial memory
    :return: (B, H, N)
    """
    later = unwritten & (unwritten.cumsum(-1) > 1)
    return logits.masked_fill(later.unsqueeze(-2), float("-inf"))


def top_k_softmax(logits: Tensor, k: Optional[int] = None, unwritten: Optional[Tensor] = None) -> Tensor:
    """
    Softmax over the ``k`` largest logits of each row, 0 elsewhere: SAM's sparse content weighting
    (Rae et al., 2016). The same values as the renormalised top ``k`` of the full softmax, but the
    gradient reaches the ``k`` chosen logits only, exactly. ``k`` of ``None`` or ``>= N``: the softmax.

    :param logits: (B, H, N)
    :param k: logits kept per row
    :param unwritten: (B, N) booleans, slots holding the initial memory: with ``k < N`` they count
        once (:func:`count_unwritten_once`); the other unwritten slots that fill the top ``k`` get 0
    :return: (B, H, N), at most ``k`` non-zeros per row (ties: the lowest indices are kept, see :func:`top_k`)
    """
    if k is None or k >= logits.shape[-1]:
        return torch.softmax(logits, dim=-1)
    if unwritten is not None:
        logits = count_unwritten_once(logits, unwritten)
    values, index = top_k(logits, k)
    return torch.zeros_like(logits).scatter(-1, index, torch.softmax(values, dim=-1))


def content_weights(
    memory: Tensor, keys: Tensor, strengths: Tensor, top_k: Optional[int] = None, unwritten: Optional[Tensor] = None
) -> Tensor:
    """
    Content-based addressing: softmax over slots of ``strength * cosine(key, row)``.

    :param memory: (B, N, W)
    :param keys: (B, H, W)
    :param strengths: (B, H), already positive
    :param top_k: over the ``top_k`` most similar slots only (:func:`top_k_softmax`); ``None``: all
    :param unwritten: (B, N), with ``top_k``: the slots that count once (:func:`count_unwritten_once`)
    :return: (B, H, N)
    """
    return top_k_softmax(strengths.unsqueeze(-1) * cosine_similarity(memory, keys), top_k, unwritten)


def masked_content_weights(
    memory: Tensor,
    keys: Tensor,
    strengths: Tensor,
    masks: Tensor,
    eps: float = 1e-6,
    top_k: Optional[int] = None,
    unwritten: Optional[Tensor] = None,
) -> Tensor:
    """
    Masked content addressing (Csordás and Schmidhuber, 2019): softmax over slots of
    ``strength * cosine(key * mask, row * mask)``. The mask lets a head look up by part of a word
    (a key) and ignore the rest (its value).

    :param memory: (B, N, W)
    :param keys: (B, H, W)
    :param strengths: (B, H)
    :param masks: (B, H, W) in [0, 1]; all ones gives :func:`content_weights`
    :param eps: as in :func:`cosine_similarity`
    :param top_k: as in :func:`content_weights`
    :param unwritten: as in :func:`content_weights`
    :return: (B, H, N)
    """
    masked_keys = keys * masks
    masked_memory = memory.unsqueeze(1) * masks.unsqueeze(2)  # (B, H, N, W)
    dot = (masked_memory * masked_keys.unsqueeze(2)).sum(-1)
    norms = masked_keys.norm(dim=-1).unsqueeze(-1) * masked_memory.norm(dim=-1)
    return top_k_softmax(strengths.unsqueeze(-1) * dot / (norms + eps), top_k, unwritten)


def top_k_weights(weights: Tensor, k: int, renormalise: bool = False, eps: float = 1e-12) -> Tensor:
    """
    Sparse weighting (Rae et al., 2016): the ``k`` largest entries of each row kept, the others set
    to 0, so that a read or write touches ``k`` slots. With ``renormalise`` the kept entries are
    rescaled to sum to 1, for weightings that are distributions (of a softmax, prefer
    :func:`top_k_softmax`: the same values, and no gradient through the dropped entries). With
    ``k >= N`` the weights are returned unchanged: the dense model is the sparse one with every
    slot kept.

    :param weights: (..., N), non-negative
    :param k: entries kept per row
    :param renormalise: rescale the kept entries of each row to sum to 1 (for distributions)
    :param eps: guards the rescaling of a row whose kept entries are all 0
    :return: (..., N), at most ``k`` non-zeros per row (ties: the lowest indices are kept, see :func:`top_k`)
    """
    if k >= weights.shape[-1]:
        return weights
    values, index = top_k(weights, k)
    if renormalise:
        values = values / values.sum(dim=-1, keepdim=True).clamp_min(eps)
    return torch.zeros_like(weights).scatter(-1, index, values)


def written_block_count(n: int) -> int:
    """Blocks of :data:`WRITTEN_BLOCK_ROWS` slots that cover ``n`` slots."""
    return -(-n // WRITTEN_BLOCK_ROWS)


def written_blocks(blocks: Tensor, weightings: Sequence[Tensor]) -> Tensor:
    """
    A sparse core's record of where its state may differ from a fresh episode's: the blocks of
    :data:`WRITTEN_BLOCK_ROWS` slots marked before, and every block where one of ``weightings`` has
    a non-zero weight now. A sparse step changes a slot's memory row, usage, precedence or link row
    only where a weighting it reads or writes is non-zero, so a block never marked still holds the
    initial rows, bit for bit. The native kernels read only the marked blocks, so that a step costs
    what the episode touched, not N; the reference computes the record too, so that both paths give
    the same state. Not differentiable (a gradient is 0).

    :param blocks: (B, ceil(N / WRITTEN_BLOCK_ROWS)), 1 where marked, else 0
    :param weightings: each (B, ..., N)
    :return: like ``blocks``
    """
    batch, n = weightings[0].shape[0], weightings[0].shape[-1]
    touched = torch.stack([(weights != 0).reshape(batch, -1, n).any(dim=1) for weights in weightings]).any(dim=0)
    padding = torch.zeros(batch, blocks.shape[1] * WRITTEN_BLOCK_ROWS - n, dtype=torch.bool, device=blocks.device)
    touched = torch.cat([touched, padding], dim=1).view(batch, -1, WRITTEN_BLOCK_ROWS)
    marked = touched.any(dim=-1) | (blocks != 0)
    return marked.to(blocks.dtype)


def interpolate(content_w: Tensor, prev_w: Tensor, gate: Tensor) -> Tensor:
    """
    NTM interpolation gate: ``g * content + (1 - g) * previous``.

    :param content_w: (B, H, N)
    :param prev_w: (B, H, N)
    :param gate: (B, H) in [0, 1]
    :return: (B, H, N)
    """
    return torch.lerp(prev_w, content_w, gate.unsqueeze(-1))


def shift_index(n: int, size: int, device: Optional[torch.device] = None) -> Tensor:
    """
    The gather index of :func:`circular_shift`: ``index[i, o] = (i - (o - k)) mod N``.

    :param n: memory slots ``N``
    :param size: offsets ``2k + 1``
    :return: (N, 2k + 1), int64
    """
    slots = torch.arange(n, device=device).unsqueeze(1)
    offsets = torch.arange(size, device=device).unsqueeze(0) - (size - 1) // 2
    return (slots - offsets) % n


def circular_shift(weights: Tensor, shift: Tensor, index: Optional[Tensor] = None) -> Tensor:
    """
    NTM location shift: circular convolution of the weighting with a distribution over offsets.

    Index ``s`` of ``shift`` is the offset ``s - k``; offset +1 moves the focus from slot ``i``
    to slot ``i + 1``: ``out[i] = sum_o w[(i - o) mod N] * shift[o]``.

    :param weights: (B, H, N)
    :param shift: (B, H, 2k + 1), with 2k + 1 <= N
    :param index: :func:`shift_index` of these sizes, if the caller keeps one (saves building it
        at every step)
    :return: (B, H, N)
    """
    if index is None:
        index = shift_index(weights.shape[-1], shift.shape[-1], weights.device)
    # windows[..., i, o] = w[(i - (o - k)) mod N]: one gather, cheaper to differentiate than
    # padding, unfolding and flipping.
    windows = weights[..., index]  # (B, H, N, 2k+1)
    return torch.matmul(windows, shift.unsqueeze(-1)).squeeze(-1)


def sharpen(weights: Tensor, gamma: Tensor, eps: float = 1e-12) -> Tensor:
    """
    NTM sharpening: ``w ** gamma / sum(w ** gamma)``.

    :param weights: (B, H, N), non-negative
    :param gamma: (B, H), >= 1
    :param eps: floor on the weights, so that ``0 ** gamma`` has a finite gradient and an all-zero
        weighting still normalises
    :return: (B, H, N)
    """
    # w^g / sum w^g == softmax(g * log w): stable, and far cheaper to differentiate than pow.
    return torch.softmax(gamma.unsqueeze(-1) * weights.clamp_min(eps).log(), dim=-1)


def read(memory: Tensor, weights: Tensor) -> Tensor:
    """
    Read vectors: weighted sums of memory rows.

    :param memory: (B, N, W)
    :param weights: (B, H, N)
    :return: (B, H, W)
    """
    return torch.bmm(weights, memory)


def write(memory: Tensor, weights: Tensor, erase: Tensor, add: Tensor, retention: Optional[Tensor] = None) -> Tensor:
    """
    Erase then add: ``M * prod_h(1 - w_h e_h^T) + sum_h w_h a_h^T``.

    :param memory: (B, N, W)
    :param weights: (B, H, N) write weightings
    :param erase: (B, H, W) in [0, 1]
    :param add: (B, H, W)
    :param retention: optional (B, N) in [0, 1], the DNC's memory retention ``psi``: also erases what
        the free gates released (de-allocation that erases, Csordás and Schmidhuber, 2019), so that
        content lookups stop finding freed words
    :return: (B, N, W)
    """
    if weights.shape[1] == 1:
        # One write head (the common case): skip the product over heads.
        keep = 1.0 - weights.transpose(1, 2) * erase
    else:
        keep = (1.0 - weights.unsqueeze(-1) * erase.unsqueeze(2)).prod(dim=1)
    if retention is not None:
        keep = keep * retention.unsqueeze(-1)
    return torch.baddbmm(memory * keep, weights.transpose(1, 2), add)


def memory_retention(free_gates: Tensor, prev_read_weights: Tensor) -> Tensor:
    """
    DNC retention ``psi = prod_r(1 - f_r * w^r_r)``: how much of each slot the free gates keep.

    :param free_gates: (B, R) in [0, 1]
    :param prev_read_weights: (B, R, N) read weightings of the previous step
    :return: (B, N) in [0, 1]
    """
    return (1.0 - free_gates.unsqueeze(-1) * prev_read_weights).prod(dim=1)


def update_usage(usage: Tensor, prev_write_weights: Tensor, free_gates: Tensor, prev_read_weights: Tensor) -> Tensor:
    """
    DNC usage: ``(u + w - u * w) * psi``, with ``psi`` from :func:`memory_retention`.

    :param usage: (B, N) previous usage
    :param prev_write_weights: (B, N) write weighting of the previous step
    :param free_gates: (B, R) in [0, 1]
    :param prev_read_weights: (B, R, N) read weightings of the previous step
    :return: (B, N) in [0, 1]
    """
    usage = usage + prev_write_weights - usage * prev_write_weights
    return usage * memory_retention(free_gates, prev_read_weights)


def allocation_weights(usage: Tensor) -> Tensor:
    """
    DNC dynamic allocation: ``a[phi_j] = (1 - u[phi_j]) * prod_{i<j} u[phi_i]``, with ``phi`` the
    slots sorted by ascending usage. Differentiable through the sorted values, not the order.

    :param usage: (B, N) in [0, 1]
    :return: (B, N), sums to at most 1
    """
    usage = USAGE_EPS + (1.0 - USAGE_EPS) * usage
    # Stable: equal usages (all slots at an episode start) are allocated in slot order.
    sorted_usage, order = torch.sort(usage, dim=-1, stable=True)
    # Exclusive cumulative product: the first free slot gets the full share.
    ones = torch.ones_like(sorted_usage[:, :1])
    before = torch.cumprod(torch.cat([ones, sorted_usage[:, :-1]], dim=-1), dim=-1)
    sorted_allocation = (1.0 - sorted_usage) * before
    return torch.zeros_like(usage).scatter(-1, order, sorted_allocation)


def allocation_weights_by_rank(usage: Tensor) -> Tensor:
    """
    :func:`allocation_weights` without a sort: a slot's product runs over the slots that come
    before it in the stable ascending order of usage, found by comparing every pair. O(N^2), for
    graphs without a stable sort (ONNX); equal up to the order in which the products round.

    :param usage: (B, N) in [0, 1]
    :return: (B, N)
    """
    usage = USAGE_EPS + (1.0 - USAGE_EPS) * usage
    index = torch.arange(usage.shape[-1], device=usage.device)
    mine, theirs = usage.unsqueeze(-1), usage.unsqueeze(-2)  # (B, i, 1), (B, 1, j)
    earlier = (theirs < mine) | ((theirs == mine) & (index.unsqueeze(0) < index.unsqueeze(1)))  # j before i
    before = torch.where(earlier, theirs, torch.ones_like(theirs)).prod(dim=-1)
    return (1.0 - usage) * before


def sparse_allocation_weights(usage: Tensor, k: int) -> Tensor:
    """
    :func:`allocation_weights` over the ``k`` least used slots only (Rae et al., 2016): they get
    the dense formula's shares, ``(1 - u[phi_j]) * prod_{i<j} u[phi_i]`` for ``j < k``, every other
    slot gets 0. With ``k >= N`` it is :func:`allocation_weights`. The slots dropped would get at most
    the product of the ``k`` smallest usages, so little is lost while the least used slots are free.

    :param usage: (B, N) in [0, 1]
    :param k: number of slots that can be allocated
    :return: (B, N), at most ``k`` non-zeros per row
    """
    if k >= usage.shape[-1]:
        return allocation_weights(usage)
    usage = USAGE_EPS + (1.0 - USAGE_EPS) * usage
    # The reference takes the first k of the stable sort, so that ties (every slot free at an
    # episode start) go in slot order as in the dense model; a kernel can select them instead.
    sorted_usage, order = torch.sort(usage, dim=-1, stable=True)
    sorted_usage, order = sorted_usage[:, :k], order[:, :k]
    ones = torch.ones_like(sorted_usage[:, :1])
    before = torch.cumprod(torch.cat([ones, sorted_usage[:, :-1]], dim=-1), dim=-1)
    return torch.zeros_like(usage).scatter(-1, order, (1.0 - sorted_usage) * before)


def write_weights(allocation: Tensor, content: Tensor, alloc_gate: Tensor, write_gate: Tensor) -> Tensor:
    """
    DNC write weighting: ``write_gate * (alloc_gate * a + (1 - alloc_gate) * c)``.

    :param allocation: (B, N)
    :param content: (B, N) write content weighting
    :param alloc_gate: (B,) in [0, 1]
    :param write_gate: (B,) in [0, 1]
    :return: (B, N)
    """
    return write_gate.unsqueeze(-1) * torch.lerp(content, allocation, alloc_gate.unsqueeze(-1))


def update_precedence(precedence: Tensor, write_weights: Tensor) -> Tensor:
    """
    DNC precedence: ``(1 - sum_i w_i) p + w``.

    :param precedence: (B, N)
    :param write_weights: (B, N)
    :return: (B, N)
    """
    return (1.0 - write_weights.sum(dim=-1, keepdim=True)) * precedence + write_weights


def update_link(link: Tensor, prev_precedence: Tensor, write_weights: Tensor, off_diagonal: Optional[Tensor] = None) -> Tensor:
    """
    DNC temporal link: ``L[i, j] = (1 - w_i - w_j) L[i, j] + w_i p_j``, with a zero diagonal.

    :param link: (B, N, N)
    :param prev_precedence: (B, N) precedence before this step's write
    :param write_weights: (B, N)
    :param off_diagonal: ``1 - I`` (N, N), if the caller keeps one (saves building it at every step)
    :return: (B, N, N)
    """
    scale = (1.0 - write_weights).unsqueeze(-1) - write_weights.unsqueeze(-2)
    new_link = torch.baddbmm(scale * link, write_weights.unsqueeze(-1), prev_precedence.unsqueeze(-2))
    if off_diagonal is None:
        off_diagonal = 1.0 - torch.eye(link.shape[-1], dtype=link.dtype, device=link.device)
    # A mask rather than an in-place write into the diagonal view, so that the step exports to ONNX.
    return new_link * off_diagonal


def directional_weights(link: Tensor, prev_read_weights: Tensor) -> tuple[Tensor, Tensor]:
    """
    DNC forward and backward weightings: ``f = L w`` and ``b = L^T w`` for every read head.

    :param link: (B, N, N)
    :param prev_read_weights: (B, R, N)
    :return: forward, backward, each (B, R, N)
    """
    forward = torch.bmm(prev_read_weights, link.transpose(1, 2))
    backward = torch.bmm(prev_read_weights, link)
    return forward, backward


def sparse_update_link(
    values: Tensor, index: Tensor, prev_precedence: Tensor, write_weights: Tensor, k: int
) -> tuple[Tensor, Tensor]:
    """
    :func:`update_link` on a link that keeps ``k`` entries per row (the sparse DNC, Rae et al.,
    2016), held as their values and column indices: row ``i`` has ``L[i, index[i, m]] = values[i, m]``
    and 0 elsewhere. The same equation, ``(1 - w_i - w_j) L[i, j] + w_i p_j`` with a zero diagonal,
    then each row's ``k`` largest entries kept (ties: the row's existing entries first), in O(N k^2)
    instead of O(N^2). ``write_weights``
    and ``prev_precedence`` must have at most ``k`` non-zeros per row; the indices of a row must be
    distinct (:func:`initial_link_index` starts them so, and this keeps them so).

    :param values: (B, N, k)
    :param index: (B, N, k) integer column indices
    :param prev_precedence: (B, N) precedence before this step's write
    :param write_weights: (B, N)
    :param k: entries per row
    :return: the new values and index, each (B, N, k)
    """
    rows = torch.arange(values.shape[1], device=values.device).view(1, -1, 1)
    kept = values * ((1.0 - write_weights).unsqueeze(-1) - write_weights.gather(-1, index.flatten(1)).view_as(values))
    kept = torch.where(index == rows, torch.zeros_like(kept), kept)  # the zero diagonal, as the dense link's mask
    precedence, columns = top_k(prev_precedence, k)  # its non-zeros (at most k), columns ascending
    columns = columns.unsqueeze(1).expand_as(index)
    added = write_weights.unsqueeze(-1) * precedence.unsqueeze(1)
    added = torch.where(columns == rows, torch.zeros_like(added), added)  # no self-link
    # A column already in the row gets its addition there (the indices of a row are distinct)...
    same = (columns.unsqueeze(-1) == index.unsqueeze(-2)).to(values.dtype)  # (B, N, new k, old k)
    kept = kept + (added.unsqueeze(-1) * same).sum(-2)
    # ...and a new column competes for the row's k places. A column already there drops out (-1:
    # below every entry, so that a row with few links cannot hold one column twice).
    added = torch.where(same.sum(-1) > 0, torch.full_like(added, -1.0), added)
    # Ties keep the earlier candidate (top_k), so a row's kept entries stay before its new ones, in order:
    # the layout is deterministic, as a kernel's must match.
    candidates, candidate_index = torch.cat([kept, added], -1), torch.cat([index, columns], -1)
    new_values, chosen = top_k(candidates, k)
    return new_values, candidate_index.gather(-1, chosen)


def initial_link_index(batch: int, n: int, k: int, device: Optional[torch.device] = None) -> Tensor:
    """
    Column indices of an empty sparse link: row ``i`` names ``i..i+k-1`` (mod ``n``), distinct as
    :func:`sparse_update_link` needs. Its values are 0, so any distinct columns give the same link;
    with these a write to slot ``j`` reaches only the empty rows ``j-k+1..j``, which is what lets
    the kernels visit the rows written so far instead of all ``n``.
    """
    rows, offsets = torch.arange(n, device=device).view(n, 1), torch.arange(k, device=device)
    return ((rows + offsets) % n).expand(batch, n, k)


def sparse_directional_weights(values: Tensor, index: Tensor, prev_read_weights: Tensor) -> tuple[Tensor, Tensor]:
    """
    :func:`directional_weights` of a sparse link (see :func:`sparse_update_link`), in O(R N k):
    ``f_i = sum_m L[i, index[i, m]] w[index[i, m]]`` gathers, ``b_j = sum_i w_i L[i, j]`` scatters.

    :param values: (B, N, k)
    :param index: (B, N, k) integer column indices
    :param prev_read_weights: (B, R, N)
    :return: forward, backward, each (B, R, N)
    """
    batch, heads, n = prev_read_weights.shape
    flat_index = index.flatten(1).unsqueeze(1).expand(batch, heads, -1)  # (B, R, N k)
    gathered = prev_read_weights.gather(-1, flat_index).view(batch, heads, n, -1)
    forward = (gathered * values.unsqueeze(1)).sum(-1)
    spread = (prev_read_weights.unsqueeze(-1) * values.unsqueeze(1)).flatten(2)
    backward = torch.zeros_like(prev_read_weights).scatter_add(-1, flat_index, spread)
    return forward, backward


def dense_link(values: Tensor, index: Tensor) -> Tensor:
    """The (B, N, N) matrix of a sparse link (see :func:`sparse_update_link`), for pictures and tests."""
    n = values.shape[1]
    return torch.zeros(*values.shape[:2], n, dtype=values.dtype, device=values.device).scatter_add(-1, index, values)


def sharpen_links(weights: Tensor, sharpness: Tensor, eps: float = 1e-6) -> Tensor:
    """
    Link sharpness enhancement (Csordás and Schmidhuber, 2019): forward or backward weightings
    raised to a power ``s >= 1`` and renormalised, ``d^s / sum d^s`` with ``d = (w + eps) / max(w + eps)``,
    so that a blurred temporal link still moves a read head to one slot.

    :param weights: (B, R, N) forward or backward weightings
    :param sharpness: (B, R), at least 1
    :param eps: keeps ``0 ** s`` differentiable (and gives a uniform weighting where no link exists)
    :return: (B, R, N), each row a distribution
    """
    lifted = weights + eps
    scaled = lifted / lifted.amax(dim=-1, keepdim=True)
    powered = scaled ** sharpness.unsqueeze(-1)
    return powered / powered.sum(dim=-1, keepdim=True)


def read_weights(backward: Tensor, content: Tensor, forward: Tensor, modes: Tensor) -> Tensor:
    """
    DNC read weighting: mix of backward, content and forward weightings by the read modes.

    :param backward: (B, R, N)
    :param content: (B, R, N)
    :param forward: (B, R, N)
    :param modes: (B, R, 3) ordered (backward, content, forward), each row a distribution
    :return: (B, R, N)
    """
    return modes[..., 0:1] * backward + modes[..., 1:2] * content + modes[..., 2:3] * forward
