"""Neural Turing Machine core (Graves, Wayne and Danihelka, 2014)."""

from typing import NamedTuple, Optional

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from sb3_memory.memory import addressing
from sb3_memory.memory.checks import check_int
from sb3_memory.memory.core import ExternalMemoryCore, State, weighting_entropy


class NTMState(NamedTuple):
    """State of :class:`NTMCell`, batch first."""

    memory: Tensor  # (B, N, W)
    read_vectors: Tensor  # (B, R, W)
    read_weights: Tensor  # (B, R, N)
    write_weights: Tensor  # (B, H_w, N)
    controller_hidden: Tensor  # (B, C), (B, 0) for an mlp controller
    controller_cell: Tensor  # (B, C) for an lstm controller, else (B, 0)


class SparseNTMState(NamedTuple):
    """State of a sparse :class:`NTMCell` (``sparse_top_k=K``): the blocks of slots touched as well."""

    memory: Tensor  # (B, N, W)
    read_vectors: Tensor  # (B, R, W)
    read_weights: Tensor  # (B, R, N), at most K non-zeros per head
    write_weights: Tensor  # (B, H_w, N), at most K non-zeros per head
    controller_hidden: Tensor  # (B, C), (B, 0) for an mlp controller
    controller_cell: Tensor  # (B, C) for an lstm controller, else (B, 0)
    written_blocks: Tensor  # (B, ceil(N / 64)), see ExternalMemoryCore.written_blocks_shape


class NTMCell(ExternalMemoryCore):
    """
    Neural Turing Machine: a controller with read and write heads on an ``N x W`` memory.

    Every head addresses memory by content (key, strength), then by location: interpolation with
    its previous weighting, a circular shift over offsets ``-k..k`` and sharpening. All heads
    address the memory as it was at the start of the step (one batched pass); the writes
    (erase, then add) are applied next, and the reads see the written memory, so a value
    written at step t can be read at step t.

    The memory starts as a small constant (``memory_init``), which Collier and Beel (2018)
    found to train faster and more reliably than random or learned initialisations; weightings
    start focused on slot 0 so that location addressing has a defined origin.

    :param input_dim: size of the input features
    :param controller_dim: size of the controller output
    :param controller: ``"lstm"``, ``"gru"`` or ``"mlp"``
    :param memory_units: N, number of memory slots
    :param memory_unit_size: W, size of each slot
    :param num_read_heads: R
    :param num_write_heads: number of write heads
    :param shift_range: k, shifts from -k to +k (2k + 1 <= N)
    :param memory_init: constant value of every memory cell at an episode start
    :param compile_step: compile the reference step with ``torch.compile`` (see :class:`MemoryCore`)
    :param backend: ``"auto"``, ``"native"`` or ``"reference"`` (see :class:`MemoryCore`)
    :param sparse_top_k: K, sparse addressing (see :class:`ExternalMemoryCore`): the content
        weighting is a softmax over the K most similar slots, and each head's final weighting keeps
        its K largest entries, renormalised; ``None`` (default) for the dense NTM
    """

    state_type: type = NTMState  # SparseNTMState with sparse_top_k
    native_core = "ntm"
    shift_index: Tensor  # (N, 2k + 1), a buffer

    def __init__(
        self,
        input_dim: int,
        controller_dim: int = 64,
        controller: str = "lstm",
        memory_units: int = 32,
        memory_unit_size: int = 16,
        num_read_heads: int = 1,
        num_write_heads: int = 1,
        shift_range: int = 1,
        memory_init: float = 1e-6,
        compile_step: bool = False,
        backend: str = "auto",
        sparse_top_k: Optional[int] = None,
    ) -> None:
        self.num_write_heads = check_int("num_write_heads", num_write_heads)
        self.shift_range = check_int("shift_range", shift_range, 0)
        super().__init__(
            input_dim,
            controller_dim,
            controller,
            memory_units,
            memory_unit_size,
            num_read_heads,
            memory_init,
            compile_step,
            backend,
            sparse_top_k,
        )
        if self.sparse_top_k is not None:
            self.state_type = SparseNTMState
        n, w, k = self.memory_units, self.memory_unit_size, self.shift_range
        if 2 * k + 1 > n:
            raise ValueError(
                f"shift_range={k} allows {2 * k + 1} offsets but memory_units={n}: "
                f"use shift_range <= {(n - 1) // 2} or more memory units"
            )
        # Built once, not at every step; not saved (it follows from the sizes).
        self.register_buffer("shift_index", addressing.shift_index(n, 2 * k + 1), persistent=False)
        num_heads = self.num_read_heads + self.num_write_heads
        # Per head: key (W), strength, interpolation gate, shift logits (2k+1), sharpening.
        self._head_params = w + 3 + (2 * k + 1)
        # Per write head: erase (W) and add (W).
        self.interface = nn.Linear(self.controller_dim, num_heads * self._head_params + 2 * self.num_write_heads * w)

    def state_shapes(self) -> dict[str, tuple[int, ...]]:
        n, w = self.memory_units, self.memory_unit_size
        return {
            "memory": (n, w),
            "read_vectors": (self.num_read_heads, w),
            "read_weights": (self.num_read_heads, n),
            "write_weights": (self.num_write_heads, n),
            "controller_hidden": (self.controller.hidden_size,),
            "controller_cell": (self.controller.cell_size,),
            **self.written_blocks_shape(),
        }

    def _native_config(self) -> dict[str, int]:
        return dict(
            N=self.memory_units,
            W=self.memory_unit_size,
            R=self.num_read_heads,
            Hw=self.num_write_heads,
            S=2 * self.shift_range + 1,
            P=self.interface.out_features,
            top_k=self.sparse_top_k or 0,
        )

    def initial_row(self, device: torch.device, dtype: torch.dtype) -> State:
        row = super().initial_row(device, dtype)
        focused = torch.zeros_like(row.read_weights[..., :1, :])
        focused[..., 0] = 1.0
        row = row._replace(
            read_vectors=addressing.read(row.memory, focused.expand_as(row.read_weights)),
            read_weights=focused.expand_as(row.read_weights).clone(),
            write_weights=focused.expand_as(row.write_weights).clone(),
        )
        return self.mark_written_blocks(row)

    def step(self, projected_input: Tensor, state: State) -> tuple[Tensor, State]:
        batch = projected_input.shape[0]
        w, reads, writes = self.memory_unit_size, self.num_read_heads, self.num_write_heads
        output, hidden, cell = self.controller.step(
            projected_input, state.read_vectors.reshape(batch, -1), state.controller_hidden, state.controller_cell
        )
        heads, erase, add = torch.split(
            self.interface(output), [(reads + writes) * self._head_params, writes * w, writes * w], dim=1
        )
        keys, strengths, gates, shifts, gammas = torch.split(
            heads.view(batch, reads + writes, self._head_params), [w, 1, 1, 2 * self.shift_range + 1, 1], dim=-1
        )
        keys = torch.tanh(keys)
        strengths = F.softplus(strengths.squeeze(-1))
        gates = torch.sigmoid(gates.squeeze(-1))
        shifts = torch.softmax(shifts, dim=-1)
        gammas = 1.0 + F.softplus(gammas.squeeze(-1))
        erase = torch.sigmoid(erase).view(batch, writes, w)
        add = torch.tanh(add).view(batch, writes, w)

        previous = torch.cat([state.read_weights, state.write_weights], dim=1)
        unwritten = self.unwritten_slots(state.memory)
        weights = addressing.content_weights(state.memory, keys, strengths, self.sparse_top_k, unwritten)
        weights = addressing.interpolate(weights, previous, gates)
        weights = addressing.circular_shift(weights, shifts, self.shift_index)
        # Sharpening lifts every zero to eps ** gamma, and a shift spreads K slots over more: the
        # final weighting is made sparse again.
        weights = self.sparse(addressing.sharpen(weights, gammas), renormalise=True)
        read_weights, write_weights = torch.split(weights, [reads, writes], dim=1)

        memory = addressing.write(state.memory, write_weights, erase, add)
        read_vectors = addressing.read(memory, read_weights)
        features = torch.cat([output, read_vectors.reshape(batch, -1)], dim=1)
        fields = (memory, read_vectors, read_weights, write_weights, hidden, cell)
        if self.sparse_top_k is None:
            return features, NTMState(*fields)
        return features, self.mark_written_blocks(self.state_type(*fields, state.written_blocks))

    def diagnostics(self, state: NTMState) -> dict[str, float]:
        return {
            "read_weight_entropy": weighting_entropy(state.read_weights),
            "write_weight_entropy": weighting_entropy(state.write_weights),
            "memory_abs_mean": float(state.memory.abs().mean()),
        }
