"""Differentiable Neural Computer core (Graves et al., 2016, Nature)."""

from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from sb3_memory.memory import addressing
from sb3_memory.memory.core import ExternalMemoryCore, weighting_entropy


class DNCState(NamedTuple):
    """State of :class:`DNCCell`, batch first."""

    memory: Tensor  # (B, N, W)
    read_vectors: Tensor  # (B, R, W)
    read_weights: Tensor  # (B, R, N)
    write_weights: Tensor  # (B, N)
    usage: Tensor  # (B, N)
    precedence: Tensor  # (B, N)
    link: Tensor  # (B, N, N)
    controller_hidden: Tensor  # (B, C), (B, 0) for an mlp controller
    controller_cell: Tensor  # (B, C) for an lstm controller, else (B, 0)


class DNCCell(ExternalMemoryCore):
    """
    Differentiable Neural Computer: one write head with dynamic allocation, R read heads that
    mix content lookup with forward and backward traversal of the temporal link matrix.

    The step follows the Methods section of the paper: usage from the previous weightings and
    this step's free gates, write weighting from allocation and content, erase/add write, link
    and precedence update, then reads from the written memory. The interface vector holds the
    read keys and strengths, write key and strength, erase and write vectors, free gates,
    allocation and write gates and read modes, with the paper's nonlinearities (oneplus for
    strengths, sigmoid for gates and erase, softmax over the three read modes).

    :param input_dim: size of the input features
    :param controller_dim: size of the controller output
    :param controller: ``"lstm"``, ``"gru"`` or ``"mlp"``
    :param memory_units: N, number of memory slots
    :param memory_unit_size: W, size of each slot
    :param num_read_heads: R
    :param memory_init: constant value of every memory cell at an episode start
    :param compile_step: compile the reference step with ``torch.compile`` (see :class:`MemoryCore`)
    :param backend: ``"auto"``, ``"native"`` or ``"reference"`` (see :class:`MemoryCore`)
    """

    state_type = DNCState
    native_core = "dnc"

    def __init__(
        self,
        input_dim: int,
        controller_dim: int = 64,
        controller: str = "lstm",
        memory_units: int = 32,
        memory_unit_size: int = 16,
        num_read_heads: int = 2,
        memory_init: float = 1e-6,
        compile_step: bool = False,
        backend: str = "auto",
    ) -> None:
        super().__init__(
            input_dim, controller_dim, controller, memory_units, memory_unit_size, num_read_heads, memory_init, compile_step, backend
        )
        r, w = num_read_heads, memory_unit_size
        # Interface layout, grouped by nonlinearity so each group is activated in one call:
        # [read keys, write key, write vector] raw | [read strengths, write strength] oneplus |
        # [erase, free gates, allocation gate, write gate] sigmoid | read modes, softmax per head.
        self._sizes = (r * w + 2 * w, r + 1, w + r + 2, 3 * r)
        self.interface = nn.Linear(controller_dim, sum(self._sizes))

    def state_shapes(self) -> dict[str, tuple[int, ...]]:
        n, w, r = self.memory_units, self.memory_unit_size, self.num_read_heads
        return {
            "memory": (n, w),
            "read_vectors": (r, w),
            "read_weights": (r, n),
            "write_weights": (n,),
            "usage": (n,),
            "precedence": (n,),
            "link": (n, n),
            "controller_hidden": (self.controller.hidden_size,),
            "controller_cell": (self.controller.cell_size,),
        }

    def _native_config(self) -> dict[str, int]:
        return dict(N=self.memory_units, W=self.memory_unit_size, R=self.num_read_heads, Hw=1, P=self.interface.out_features)

    def step(self, projected_input: Tensor, state: DNCState) -> tuple[Tensor, DNCState]:
        batch = projected_input.shape[0]
        r, w = self.num_read_heads, self.memory_unit_size
        output, hidden, cell = self.controller.step(
            projected_input, state.read_vectors.reshape(batch, -1), state.controller_hidden, state.controller_cell
        )
        raw, strengths, gates, modes = torch.split(self.interface(output), self._sizes, dim=1)
        read_keys, write_key, write_vector = torch.split(raw, (r * w, w, w), dim=1)
        read_keys = read_keys.view(batch, r, w)
        strengths = 1.0 + F.softplus(strengths)
        erase, free_gates, allocation_gate, write_gate = torch.split(torch.sigmoid(gates), (w, r, 1, 1), dim=1)
        modes = torch.softmax(modes.view(batch, r, 3), dim=-1)

        usage = addressing.update_usage(state.usage, state.write_weights, free_gates, state.read_weights)
        write_content = addressing.content_weights(state.memory, write_key.unsqueeze(1), strengths[:, r:])[:, 0]
        allocation = addressing.allocation_weights(usage)
        write_weights = addressing.write_weights(allocation, write_content, allocation_gate[:, 0], write_gate[:, 0])
        memory = addressing.write(state.memory, write_weights.unsqueeze(1), erase.unsqueeze(1), write_vector.unsqueeze(1))
        link = addressing.update_link(state.link, state.precedence, write_weights)
        precedence = addressing.update_precedence(state.precedence, write_weights)

        forward, backward = addressing.directional_weights(link, state.read_weights)
        read_content = addressing.content_weights(memory, read_keys, strengths[:, :r])
        read_weights = addressing.read_weights(backward, read_content, forward, modes)
        read_vectors = addressing.read(memory, read_weights)
        features = torch.cat([output, read_vectors.reshape(batch, -1)], dim=1)
        new_state = DNCState(memory, read_vectors, read_weights, write_weights, usage, precedence, link, hidden, cell)
        return features, new_state

    def diagnostics(self, state: DNCState) -> dict[str, float]:
        return {
            "usage_mean": float(state.usage.mean()),
            "write_weight_sum": float(state.write_weights.sum(-1).mean()),
            "read_weight_entropy": weighting_entropy(state.read_weights),
            "memory_abs_mean": float(state.memory.abs().mean()),
        }
