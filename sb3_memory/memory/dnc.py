"""Differentiable Neural Computer core (Graves et al., 2016, Nature)."""

from typing import ClassVar, NamedTuple, Optional

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from sb3_memory.memory import addressing
from sb3_memory.memory.core import ExternalMemoryCore, State, weighting_entropy


class DNCState(NamedTuple):
    """State of :class:`DNCCell`, batch first."""

    memory: Tensor  # (B, N, W)
    read_vectors: Tensor  # (B, R, W)
    read_weights: Tensor  # (B, R, N)
    write_weights: Tensor  # (B, 1, N): one write head, shaped like the NTM's (B, H_w, N)
    usage: Tensor  # (B, N)
    precedence: Tensor  # (B, N)
    link: Tensor  # (B, N, N)
    controller_hidden: Tensor  # (B, C), (B, 0) for an mlp controller
    controller_cell: Tensor  # (B, C) for an lstm controller, else (B, 0)


class SparseDNCState(NamedTuple):
    """State of a sparse :class:`DNCCell` (``sparse_top_k=K``): the link as K entries per row."""

    memory: Tensor  # (B, N, W)
    read_vectors: Tensor  # (B, R, W)
    read_weights: Tensor  # (B, R, N), at most K non-zeros per head
    write_weights: Tensor  # (B, 1, N), at most K non-zeros
    usage: Tensor  # (B, N)
    precedence: Tensor  # (B, N), at most K non-zeros
    link_values: Tensor  # (B, N, K): L[i, link_index[i, m]] = link_values[i, m], 0 elsewhere
    link_index: Tensor  # (B, N, K) column indices, held as floats (exact below 2^24 slots in float32)
    controller_hidden: Tensor  # (B, C), (B, 0) for an mlp controller
    controller_cell: Tensor  # (B, C) for an lstm controller, else (B, 0)
    written_blocks: Tensor  # (B, ceil(N / 64)), see ExternalMemoryCore.written_blocks_shape


# How the allocation weighting ranks the slots by usage (DNCCell's ``allocation``).
ALLOCATIONS = {"sort": addressing.allocation_weights, "rank": addressing.allocation_weights_by_rank}


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
    :param content_masks: masked content addressing: every head also emits a mask over the word
        and looks up by the masked part only (Csordás and Schmidhuber, 2019)
    :param deallocate: the free gates also erase what they release, so freed words stop matching
        content lookups (Csordás and Schmidhuber, 2019)
    :param link_sharpness: the forward and backward weightings are sharpened by a learned power
        per read head (Csordás and Schmidhuber, 2019)
    :param layer_norm: layer normalisation of the controller output, as the robust DNC
        (Franke et al., 2018) does
    :param allocation: how the allocation weighting ranks the slots by usage: ``"sort"`` (the
        paper's sort, :func:`~sb3_memory.memory.addressing.allocation_weights`) or ``"rank"``
        (the sort-free equivalent, :func:`~sb3_memory.memory.addressing.allocation_weights_by_rank`,
        O(N^2) comparisons but graph-friendly: ONNX has no stable sort). The two agree except
        where usages tie exactly
    :param compile_step: compile the reference step with ``torch.compile`` (see :class:`MemoryCore`)
    :param backend: ``"auto"``, ``"native"`` or ``"reference"`` (see :class:`MemoryCore`); the
        native kernels implement the paper's DNC (``allocation="sort"``), so any of the four
        options above, ``allocation="rank"`` or ``sparse_top_k``, runs on the reference path
    :param sparse_top_k: K, the sparse DNC (Rae et al., 2016; see :class:`ExternalMemoryCore`):
        content weightings are softmaxes over the K most similar slots, allocation goes to the K
        least used slots (:func:`~sb3_memory.memory.addressing.sparse_allocation_weights`), and the
        write weighting, the read weightings, the precedence and every row of the link matrix keep
        their K largest entries. The link is then held as K values and column indices per row
        (:class:`SparseDNCState`), O(N K) in the state and per step instead of O(N^2); ``None``
        (default) for the dense DNC
    """

    state_type: type = DNCState  # SparseDNCState with sparse_top_k
    weighting_fields = ("read_weights", "write_weights", "precedence")
    slot_fields: ClassVar[dict[str, str]] = {
        **ExternalMemoryCore.slot_fields,
        **{name: "rows" for name in ("usage", "precedence", "link_values", "link_index")},
    }
    dense_extra_state = " and an N x N link"
    native_core = "dnc"
    off_diagonal: Tensor  # 1 - I, (N, N), a buffer

    def __init__(
        self,
        input_dim: int,
        controller_dim: int = 64,
        controller: str = "lstm",
        memory_units: int = 32,
        memory_unit_size: int = 16,
        num_read_heads: int = 2,
        memory_init: float = 1e-6,
        content_masks: bool = False,
        deallocate: bool = False,
        link_sharpness: bool = False,
        layer_norm: bool = False,
        allocation: str = "sort",
        compile_step: bool = False,
        backend: str = "auto",
        sparse_top_k: Optional[int] = None,
    ) -> None:
        if allocation not in ALLOCATIONS:
            raise ValueError(f"allocation must be one of {sorted(ALLOCATIONS)}, got {allocation!r}")
        if sparse_top_k is not None and allocation != "sort":
            raise ValueError(
                f"sparse_top_k allocates over the K least used slots, its own ranking: leave allocation='sort' "
                f"(got allocation={allocation!r})"
            )
        self.allocation = allocation
        self._allocation_weights = ALLOCATIONS[allocation]
        self.options = {
            "content_masks": content_masks,
            "deallocate": deallocate,
            "link_sharpness": link_sharpness,
            "layer_norm": layer_norm,
        }
        for name, value in self.options.items():
            if not isinstance(value, bool):
                raise TypeError(f"{name} must be a bool, got {value!r}")
        if self._reference_only() and backend == "native":
            raise ValueError(
                f"the native kernels implement the paper's DNC; {self._reference_only()} need backend='reference' or 'auto'"
            )
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
            self.state_type = SparseDNCState
        r, w = self.num_read_heads, self.memory_unit_size
        # Built once, not at every step; not saved (it follows from the sizes).
        # The sparse link has no N x N matrix to mask (and at large N this would not fit).
        off_diagonal = 1.0 - torch.eye(self.memory_units) if self.sparse_top_k is None else torch.ones(0)
        self.register_buffer("off_diagonal", off_diagonal, persistent=False)
        # Interface layout, grouped by nonlinearity so each group is activated in one call:
        # [read keys, write key, write vector] raw | [read strengths, write strength, (forward and
        # backward sharpness)] oneplus | [erase, free gates, allocation gate, write gate, (read
        # masks, write mask)] sigmoid | read modes, softmax per head. Bracketed: options.
        self._sizes = (
            r * w + 2 * w,
            r + 1 + (2 * r if link_sharpness else 0),
            w + r + 2 + ((r + 1) * w if content_masks else 0),
            3 * r,
        )
        self.output_norm = nn.LayerNorm(self.controller_dim) if layer_norm else None
        self.interface = nn.Linear(self.controller_dim, sum(self._sizes))

    def state_shapes(self) -> dict[str, tuple[int, ...]]:
        n, w, r, k = self.memory_units, self.memory_unit_size, self.num_read_heads, self.sparse_top_k
        link: dict[str, tuple[int, ...]] = {"link": (n, n)} if k is None else {"link_values": (n, k), "link_index": (n, k)}
        return {
            "memory": (n, w),
            "read_vectors": (r, w),
            "read_weights": (r, n),
            "write_weights": (1, n),
            "usage": (n,),
            "precedence": (n,),
            **link,
            "controller_hidden": (self.controller.hidden_size,),
            "controller_cell": (self.controller.cell_size,),
            **self.written_blocks_shape(),
        }

    def initial_row(self, device: torch.device, dtype: torch.dtype) -> State:
        row = super().initial_row(device, dtype)
        if self.sparse_top_k is None:
            return row
        index = addressing.initial_link_index(1, self.memory_units, self.sparse_top_k, device)
        return self.mark_written_blocks(row._replace(link_index=index.to(dtype)))

    def _native_config(self) -> dict[str, int]:
        return dict(
            N=self.memory_units,
            W=self.memory_unit_size,
            R=self.num_read_heads,
            Hw=1,
            P=self.interface.out_features,
            top_k=self.sparse_top_k or 0,
        )

    def _reference_only(self) -> list[str]:
        """The options set that only the reference path implements."""
        enabled = [name for name, value in self.options.items() if value]
        return enabled + ([f"allocation={self.allocation!r}"] if self.allocation != "sort" else [])

    def _native_unsupported(self) -> Optional[str]:
        enabled = self._reference_only()
        if enabled:
            return f"the native kernels implement the paper's DNC; {enabled} run on the reference path"
        return super()._native_unsupported()

    def step(self, projected_input: Tensor, state: State) -> tuple[Tensor, State]:
        batch = projected_input.shape[0]
        r, w = self.num_read_heads, self.memory_unit_size
        output, hidden, cell = self.controller.step(
            projected_input, state.read_vectors.reshape(batch, -1), state.controller_hidden, state.controller_cell
        )
        if self.output_norm is not None:
            output = self.output_norm(output)
        raw, strengths, gates, modes = torch.split(self.interface(output), list(self._sizes), dim=1)
        read_keys, write_key, write_vector = torch.split(raw, [r * w, w, w], dim=1)
        read_keys = read_keys.view(batch, r, w)
        strengths = 1.0 + F.softplus(strengths)
        gates = torch.sigmoid(gates)
        erase, free_gates, allocation_gate, write_gate = torch.split(gates[:, : w + r + 2], [w, r, 1, 1], dim=1)
        modes = torch.softmax(modes.view(batch, r, 3), dim=-1)

        def content(memory: Tensor, keys: Tensor, key_strengths: Tensor, mask_slice: slice) -> Tensor:
            unwritten = self.unwritten_slots(memory)
            if not self.options["content_masks"]:
                return addressing.content_weights(memory, keys, key_strengths, self.sparse_top_k, unwritten)
            masks = gates[:, w + r + 2 :][:, mask_slice].reshape(keys.shape)
            return addressing.masked_content_weights(
                memory, keys, key_strengths, masks, top_k=self.sparse_top_k, unwritten=unwritten
            )

        prev_write = state.write_weights[:, 0]
        usage = addressing.update_usage(state.usage, prev_write, free_gates, state.read_weights)
        write_content = content(state.memory, write_key.unsqueeze(1), strengths[:, r : r + 1], slice(r * w, None))[:, 0]
        if self.sparse_top_k is None:
            allocation = self._allocation_weights(usage)
        else:
            allocation = addressing.sparse_allocation_weights(usage, self.sparse_top_k)
        # K allocated and K content slots: the write keeps the K largest of up to 2K.
        write_weights = self.sparse(
            addressing.write_weights(allocation, write_content, allocation_gate[:, 0], write_gate[:, 0])
        )
        retention = addressing.memory_retention(free_gates, state.read_weights) if self.options["deallocate"] else None
        memory = addressing.write(
            state.memory, write_weights.unsqueeze(1), erase.unsqueeze(1), write_vector.unsqueeze(1), retention
        )
        if self.sparse_top_k is None:
            link = addressing.update_link(state.link, state.precedence, write_weights, self.off_diagonal)
            forward, backward = addressing.directional_weights(link, state.read_weights)
            link_fields: tuple[Tensor, ...] = (link,)
        else:
            link_values, link_index = addressing.sparse_update_link(
                state.link_values, state.link_index.long(), state.precedence, write_weights, self.sparse_top_k
            )
            forward, backward = addressing.sparse_directional_weights(link_values, link_index, state.read_weights)
            link_fields = (link_values, link_index.to(link_values.dtype))
        precedence = self.sparse(addressing.update_precedence(state.precedence, write_weights))

        if self.options["link_sharpness"]:
            forward = addressing.sharpen_links(forward, strengths[:, r + 1 : 2 * r + 1])
            backward = addressing.sharpen_links(backward, strengths[:, 2 * r + 1 :])
        read_content = content(memory, read_keys, strengths[:, :r], slice(0, r * w))
        read_weights = self.sparse(addressing.read_weights(backward, read_content, forward, modes))
        read_vectors = addressing.read(memory, read_weights)
        features = torch.cat([output, read_vectors.reshape(batch, -1)], dim=1)
        fields = (
            memory,
            read_vectors,
            read_weights,
            write_weights.unsqueeze(1),
            usage,
            precedence,
            *link_fields,
            hidden,
            cell,
        )
        if self.sparse_top_k is None:
            return features, DNCState(*fields)
        return features, self.mark_written_blocks(self.state_type(*fields, state.written_blocks))

    def diagnostics(self, state: State) -> dict[str, float]:
        return {
            "usage_mean": float(state.usage.mean()),
            "write_weight_sum": float(state.write_weights.sum(-1).mean()),
            "read_weight_entropy": weighting_entropy(state.read_weights),
            "memory_abs_mean": float(state.memory.abs().mean()),
        }
