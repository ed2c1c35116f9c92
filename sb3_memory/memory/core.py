"""What every memory core shares: state handling, resets, flattening and the sequence loop."""

import functools
import warnings
from typing import Any, ClassVar, Optional, Union

import torch
from torch import Tensor, nn

from sb3_memory.memory import addressing, native
from sb3_memory.memory.checks import check_float, check_int
from sb3_memory.memory.controller import Controller

BACKENDS = ("auto", "native", "reference")
# Inputs up to this wide are projected by the native kernels one row at a time, so that a rollout
# step and the replay of its chunk agree to the bit; wider ones (a CNN's features, which are not
# bitwise anyway) by one batched matrix product, several times faster there.
KERNEL_PROJECTION_MAX_INPUT = 64
# A core's state: a NamedTuple of batch-first tensors, of the core's ``state_type``.
State = Any
_warned: set[str] = set()
# A dense core with at least this many slots gets a warning that names sparse_top_k: every step reads
# and writes all N slots (the DNC also updates an N x N link), so a rollout step costs N x W (N^2)
# work and state; a dense DNC with 4,096 slots trains at about 3 steps/s in 11 GB.
DENSE_WARNING_MEMORY_UNITS = 2048


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        warnings.warn(message, RuntimeWarning, stacklevel=4)


def same_view(a: Tensor, b: Tensor) -> bool:
    """Whether ``a`` and ``b`` are the same elements of the same memory (the same tensor, or two views alike)."""
    return a.data_ptr() == b.data_ptr() and a.shape == b.shape and a.stride() == b.stride() and a.device == b.device


def check_state_out(state: Tensor, state_out: Tensor) -> None:
    """
    A ``state_out`` the new state can be written into while ``state`` is read: same shape, dtype and
    device, contiguous, needing no gradient, and either apart from ``state`` in memory or ``state``
    itself. ``state`` itself (updated in place) only without gradients (under ``torch.no_grad()``):
    the backward pass reads the state a chunk started from. Used by :meth:`MemoryCore.forward_flat`
    and by the policies, for their joint state.
    """
    if state_out.shape != state.shape or state_out.dtype != state.dtype or state_out.device != state.device:
        raise ValueError(
            f"state_out must be like the state, a {state.dtype} tensor of shape {tuple(state.shape)} on "
            f"{state.device}; got {state_out.dtype} {tuple(state_out.shape)} on {state_out.device}"
        )
    if not state_out.is_contiguous():
        raise ValueError("state_out must be contiguous: pass a row range of a (batch, state_size) buffer, or None")
    if state_out.requires_grad:
        raise ValueError("state_out must need no gradient: the new state is written into it without one")
    if same_view(state, state_out):
        if torch.is_grad_enabled():
            raise ValueError(
                "state_out is the state itself: updating the state in place needs torch.no_grad() (training "
                "reads the state a chunk started from); pass another buffer, or None"
            )
        return
    start, end = state.data_ptr(), state.data_ptr() + state.numel() * state.element_size()
    out_start = state_out.data_ptr()
    out_end = out_start + state_out.numel() * state_out.element_size()
    if state.numel() and out_start < end and start < out_end:
        raise ValueError(
            "state_out overlaps the state it is computed from without being it: pass the state itself "
            "(in place, under torch.no_grad()), another buffer, or None"
        )


class MemoryCore(nn.Module):
    """
    Base class of the recurrent cores.

    A core maps a time-major sequence of inputs to a sequence of features and carries a state,
    a ``NamedTuple`` of batch-first tensors. Subclasses define the state type, its per-row shapes,
    the initial values and :meth:`step`; this class provides resets by mask, the flat ``(B, D)``
    view of the state used by rollout buffers, and :meth:`forward_sequence`.

    :param input_dim: size of the input features
    :param controller_dim: size of the controller output
    :param controller: ``"lstm"``, ``"gru"`` or ``"mlp"``
    :param recurrent_input_dim: size of what is fed back into the controller each step
    :param compile_step: run the reference path with :meth:`step` compiled by ``torch.compile``
        (fuses a step's small operations; tens of seconds of compilation per process and input
        shape). Only with ``backend="reference"`` or ``"auto"``, where it selects the reference path
    :param backend: how :meth:`forward_sequence` runs. ``"native"``: fused C++ kernels for the
        whole chunk, forward and backward (:mod:`sb3_memory.memory.native`; CPU, float32/float64);
        ``"reference"``: the step-by-step PyTorch code, the oracle the kernels are tested against;
        ``"auto"`` (default): native where it can run, otherwise the reference with one warning
    """

    state_type: type
    native_core: str  # the kernels' name for this core: "ntm", "dnc" or "plain"

    def __init__(
        self,
        input_dim: int,
        controller_dim: int,
        controller: str,
        recurrent_input_dim: int,
        compile_step: bool = False,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        if not isinstance(compile_step, bool):
            raise TypeError(f"compile_step must be a bool, got {compile_step!r}")
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        if compile_step and backend == "native":
            raise ValueError("compile_step=True compiles the reference path: use backend='reference' (or 'auto') with it")
        if backend == "native":
            native.load_library()  # fail here, not deep inside a training run (float32; float64 on use)
        self.compile_step = compile_step
        self.backend = backend
        self._compiled_step = None
        self._native_kernels: dict[torch.dtype, native.NativeSequence] = {}
        self.input_dim = check_int("input_dim", input_dim)
        self.controller_dim = check_int("controller_dim", controller_dim)
        self.controller = Controller(self.input_dim, recurrent_input_dim, self.controller_dim, controller)
        self._initial_rows: dict[tuple[torch.device, torch.dtype], State] = {}

    # --- state layout -------------------------------------------------------------------------

    def state_shapes(self) -> dict[str, tuple[int, ...]]:
        """Shape of each state field for one batch row, in the order of ``state_type``."""
        raise NotImplementedError

    def initial_row(self, device: torch.device, dtype: torch.dtype) -> State:
        """Initial state of one batch row; override to start from something other than zeros."""
        return self.state_type(
            *(torch.zeros((1, *shape), device=device, dtype=dtype) for shape in self.state_shapes().values())
        )

    @functools.cached_property
    def _state_layout(self) -> tuple[tuple[tuple[int, ...], ...], tuple[int, ...]]:
        # Fixed by the configuration; cached because unflatten_state runs at every rollout step.
        shapes = tuple(self.state_shapes().values())
        return shapes, tuple(int(torch.Size(shape).numel()) for shape in shapes)

    @property
    def state_size(self) -> int:
        """``D``, the size of the flat state of one batch row."""
        return sum(self._state_layout[1])

    @property
    def output_dim(self) -> int:
        """Size of the features returned at each step."""
        raise NotImplementedError

    def _cached_initial_row(self, device: torch.device, dtype: torch.dtype) -> State:
        key = (torch.device(device), dtype)
        if key not in self._initial_rows:
            self._initial_rows[key] = self.initial_row(*key)
        return self._initial_rows[key]

    def initial_state(
        self, batch_size: int, device: Union[torch.device, str, None] = None, dtype: Optional[torch.dtype] = None
    ) -> State:
        """
        Initial state for a batch.

        :param batch_size: number of rows
        :param device: defaults to the device of the parameters
        :param dtype: defaults to the dtype of the parameters
        """
        check_int("batch_size", batch_size)
        reference = next(self.parameters())
        row = self._cached_initial_row(torch.device(device or reference.device), dtype or reference.dtype)
        return self.state_type(*(field.expand(batch_size, *field.shape[1:]).clone() for field in row))

    def reset_state(self, state: State, mask: Tensor) -> State:
        """
        Reset the rows of ``state`` where ``mask`` is true to the initial state.

        :param state: current state, batch size B
        :param mask: (B,) booleans (or 0/1 floats)
        """
        mask = mask.to(dtype=torch.bool, device=state[0].device)
        row = self._cached_initial_row(state[0].device, state[0].dtype)
        return self.state_type(
            *(torch.where(mask.view(-1, *([1] * (field.dim() - 1))), initial, field) for field, initial in zip(state, row))
        )

    def flatten_state(self, state: State) -> Tensor:
        """Concatenate all state fields into one ``(B, D)`` tensor."""
        return torch.cat([field.reshape(field.shape[0], -1) for field in state], dim=1)

    def unflatten_state(self, flat: Tensor) -> State:
        """Inverse of :meth:`flatten_state`."""
        if flat.dim() != 2 or flat.shape[1] != self.state_size:
            raise ValueError(
                f"flat state must have shape (batch, {self.state_size}) for this core, got {tuple(flat.shape)}: "
                "was it made by a core with another configuration?"
            )
        shapes, sizes = self._state_layout
        # Contiguous copies: kernels on strided views may round differently from the original.
        parts = torch.split(flat, list(sizes), dim=1)
        return self.state_type(*(part.reshape(flat.shape[0], *shape).contiguous() for part, shape in zip(parts, shapes)))

    # --- computation --------------------------------------------------------------------------

    def step(self, projected_input: Tensor, state: State) -> tuple[Tensor, State]:
        """One time step, from the controller's projected input (see ``Controller.project_input``)."""
        raise NotImplementedError

    def forward(self, x: Tensor, state: State, episode_starts: Optional[Tensor] = None) -> tuple[Tensor, State]:
        """
        One time step for a batch.

        :param x: (B, input_dim)
        :param state: state of batch size B
        :param episode_starts: optional (B,) mask of rows to reset before the step
        :return: features (B, output_dim) and the new state
        """
        if x.dim() != 2:
            raise ValueError(
                f"forward expects x of shape (batch, {self.input_dim}), got {tuple(x.shape)}; "
                "use forward_sequence for (T, B, input_dim)"
            )
        starts = None if episode_starts is None else episode_starts.reshape(1, -1)
        features, state = self.forward_sequence(x.unsqueeze(0), state, starts)
        return features[0], state

    def forward_sequence(self, x: Tensor, state: State, episode_starts: Optional[Tensor] = None) -> tuple[Tensor, State]:
        """
        Run the core over a time-major chunk.

        :param x: (T, B, input_dim)
        :param state: state before the first step, batch size B
        :param episode_starts: optional (T, B) mask; rows where it is true are reset to the
            initial state before step t
        :return: features (T, B, output_dim) and the state after the last step
        """
        self._check_state_type(state)
        kernel = self._native_for(x)
        if kernel is None:
            return self.reference_sequence(x, state, episode_starts)
        features, flat = self.forward_flat(x, self.flatten_state(state), episode_starts)
        return features, self.unflatten_state(flat)

    def forward_flat(
        self, x: Tensor, flat_state: Tensor, episode_starts: Optional[Tensor] = None, state_out: Optional[Tensor] = None
    ) -> tuple[Tensor, Tensor]:
        """
        :meth:`forward_sequence` on the flat ``(B, state_size)`` state (see :meth:`flatten_state`),
        as policies and rollout buffers hold it: the native path reads and writes it directly.

        :param state_out: a contiguous tensor like ``flat_state`` to write the new state into,
            instead of a new one: another buffer, or ``flat_state`` itself under ``torch.no_grad()``
            (updated in place). In inference the native kernels write it there directly, which at a
            large memory saves allocating megabytes per call; in place, a sparse core's call also
            copies nothing, and costs what its steps touch plus one read of the state.
        :return: features (T, B, output_dim) and the flat state after the last step (``state_out``
            when given)
        """
        if state_out is not None:
            check_state_out(flat_state, state_out)
        kernel = self._native_for(x)
        if kernel is None:
            features, state = self.reference_sequence(x, self.unflatten_state(flat_state), episode_starts)
            if state_out is None:
                return features, self.flatten_state(state)
            return features, state_out.copy_(self.flatten_state(state))
        if flat_state.dim() != 2 or flat_state.shape[1] != self.state_size:
            raise ValueError(
                f"flat state must have shape (batch, {self.state_size}) for this core, got {tuple(flat_state.shape)}"
            )
        self._check_inputs(x, flat_state.shape[0], episode_starts)
        weights = self._native_weights()
        if self.input_dim > KERNEL_PROJECTION_MAX_INPUT:
            return native.fused_sequence(
                kernel, self.controller.project_input(x), flat_state, episode_starts, (None, None, *weights[2:]), state_out
            )
        return native.fused_sequence(kernel, x, flat_state, episode_starts, weights, state_out)

    def columns_that_may_differ(self, flat_state: Tensor) -> list[Optional[Tensor]]:
        """
        Per row of a flat state ``(B, state_size)``, the columns where it may differ from the initial
        state, ascending (int64), or None where any may: a compact copy of the row (the buffers'
        ``compact_states``) need compare only those. Every column may, unless a core knows better.
        """
        return [None] * flat_state.shape[0]

    def rows_independent(self, x: Tensor) -> bool:
        """
        Whether :meth:`forward_flat` computes each row of ``x`` (T, B, input_dim) on its own, so that
        calls on one row at a time give the batched call's numbers to the bit: on the native kernels
        with inputs they project themselves, row by row (up to ``KERNEL_PROJECTION_MAX_INPUT`` wide).
        The reference path's batched matrix products may round differently for another batch size.
        """
        return self.input_dim <= KERNEL_PROJECTION_MAX_INPUT and self._native_for(x) is not None

    def reference_sequence(self, x: Tensor, state: State, episode_starts: Optional[Tensor] = None) -> tuple[Tensor, State]:
        """
        :meth:`forward_sequence` through :meth:`step`, one step at a time in PyTorch: the reference
        the native kernels are tested against (and run with ``compile_step``).
        """
        self._check_state_type(state)
        self._check_inputs(x, state[0].shape[0], episode_starts)
        projected = self.controller.project_input(x)
        resets: list[bool] = [False] * x.shape[0]
        if episode_starts is not None:
            episode_starts = episode_starts.to(dtype=torch.bool, device=x.device)
            # One host sync per chunk, so steps without any reset skip the masking entirely.
            resets = episode_starts.any(dim=1).tolist()
        step = self._step_function()
        outputs = []
        # unbind, not projected[t]: indexing would make backward write T full-size gradients.
        for t, projected_t in enumerate(projected.unbind(0)):
            if resets[t]:
                assert episode_starts is not None
                state = self.reset_state(state, episode_starts[t])
            output, state = step(projected_t, state)
            outputs.append(output)
        features = torch.stack(outputs)
        if not torch.isfinite(features).all():
            raise ValueError(
                f"{type(self).__name__} produced non-finite features (NaN/Inf): the parameters or the "
                "carried state diverged; lower the learning rate or clip gradients (max_grad_norm)"
            )
        return features, state

    # --- native path ----------------------------------------------------------------------------

    def state_offsets(self) -> dict[str, int]:
        """Where each state field starts in the flat state of one batch row (the order of ``state_type``)."""
        offsets, start = {}, 0
        for name, size in zip(self.state_shapes(), self._state_layout[1]):
            offsets[name] = start
            start += size
        return offsets

    def native_config(self) -> dict[str, Any]:
        """
        This core's sizes for the native kernels: the controller's, ``off_<field>`` for each field of
        this core's own state (:meth:`state_offsets`), and what :meth:`_native_config` adds. Kernel
        offsets of fields this core does not have are left out (the kernels do not read them). The
        core and controller kinds are names; the kernels' numbers for them come from the library.
        """
        controller = self.controller
        recurrent = controller.weight_recurrent
        config = dict(
            controller=controller.kind,
            C=controller.hidden_dim,
            I=controller.weight_input.shape[1],
            G=controller.weight_input.shape[0],
            K=0 if recurrent is None else recurrent.shape[1],
            D=self.state_size,
            hidden_size=controller.hidden_size,
            cell_size=controller.cell_size,
            N=0, W=0, R=0, Hw=0, S=0, P=0, top_k=0,
        )  # fmt: skip
        config.update({f"off_{name}": offset for name, offset in self.state_offsets().items()})
        config.update(self._native_config())
        config["core"] = self.native_core
        return config

    def _native_config(self) -> dict[str, int]:
        return {}

    def _native_unsupported(self) -> Optional[str]:
        """Why this configuration has no native kernels, or None."""
        return None

    def _native_weights(self) -> tuple[Optional[Tensor], ...]:
        """The weights the kernels use, in ``native.WEIGHT_NAMES`` order."""
        controller = self.controller
        gru = controller.kind == "gru"
        interface = getattr(self, "interface", None)
        return (
            controller.weight_input,
            controller.bias,
            controller.weight_recurrent,
            controller.weight_hidden if gru else None,
            controller.bias_hidden if gru else None,
            None if interface is None else interface.weight,
            None if interface is None else interface.bias,
        )

    def _native_for(self, x: Tensor) -> Optional[native.NativeSequence]:
        """The kernels to run ``x`` with, or None for the reference path."""
        if self.backend == "reference" or self.compile_step:
            return None
        reason = self._native_unsupported()
        if reason is None and x.device.type != "cpu":
            reason = f"the native memory kernels run on CPU only; {x.device.type} tensors use the reference path"
        elif reason is None and x.dtype not in native.SUPPORTED_DTYPES:
            reason = f"the native memory kernels support float32 and float64; {x.dtype} uses the reference path"
        if reason is None and x.dtype not in self._native_kernels:
            try:
                row = self._cached_initial_row(x.device, x.dtype)
                init_row = torch.cat([field.reshape(-1) for field in row])
                self._native_kernels[x.dtype] = native.NativeSequence(self.native_config(), init_row, type(self).__name__)
            except native.NativeUnavailableError as error:
                reason = f"the native memory kernels are unavailable ({error}); the cores run the slower reference path"
        if reason is not None:
            if self.backend == "native":
                raise ValueError(f"backend='native' cannot run here: {reason}")
            _warn_once(reason)
            return None
        return self._native_kernels[x.dtype]

    def _step_function(self):
        if not self.compile_step:
            return self.step
        if self._compiled_step is None:
            self._compiled_step = torch.compile(self.step, dynamic=False)
        return self._compiled_step

    def __getstate__(self) -> dict[str, Any]:
        # A compiled function cannot be pickled or deep-copied; it is rebuilt on first use.
        state = super().__getstate__() if hasattr(super(), "__getstate__") else self.__dict__
        return {**state, "_compiled_step": None, "_initial_rows": {}, "_native_kernels": {}}

    def __setstate__(self, state: dict[str, Any]) -> None:
        # Models pickled before the native path existed lack its attributes.
        state.setdefault("backend", "auto")
        state.setdefault("_native_kernels", {})
        super().__setstate__(state)

    def _check_state_type(self, state: State) -> None:
        if not isinstance(state, self.state_type):
            raise TypeError(f"state must be a {self.state_type.__name__}, got {type(state).__name__}; use initial_state()")

    def _check_inputs(self, x: Tensor, batch_size: int, episode_starts: Optional[Tensor]) -> None:
        if x.dim() != 3 or x.shape[-1] != self.input_dim:
            raise ValueError(f"{type(self).__name__} expects x of shape (T, B, {self.input_dim}), got {tuple(x.shape)}")
        if batch_size != x.shape[1]:
            raise ValueError(f"state has batch size {batch_size} but x has batch size {x.shape[1]}")
        if episode_starts is not None and tuple(episode_starts.shape) != tuple(x.shape[:2]):
            raise ValueError(
                f"episode_starts must have shape (T, B) = {tuple(x.shape[:2])}, got {tuple(episode_starts.shape)}"
            )
        if not torch.isfinite(x).all():
            raise ValueError(
                f"{type(self).__name__} got non-finite input (NaN/Inf); check the observations (VecNormalize, VecCheckNan)"
            )

    def diagnostics(self, state: State) -> dict[str, float]:
        """Summary statistics of a state, for logging (``memory/`` keys)."""
        return {}


class ExternalMemoryCore(MemoryCore):
    """
    A core with an ``N x W`` memory read by R heads: the read vectors are fed back into the
    controller and appended to its output. Holds what the NTM and the DNC share.

    :param memory_units: N, number of memory slots
    :param memory_unit_size: W, size of each slot
    :param num_read_heads: R
    :param memory_init: constant value of every memory cell at an episode start
    :param sparse_top_k: K, sparse reads and writes (Rae et al., 2016): every weighting keeps
        its K largest entries (:func:`~sb3_memory.memory.addressing.top_k_weights`), so a step
        touches K slots and the gradient flows through them only. Content lookups count the slots
        that still hold the initial memory once (:meth:`unwritten_slots`). ``None`` for the dense
        model. Both cores have sparse native kernels
    """

    # A class default as well, so that models pickled before sparse addressing existed load dense.
    sparse_top_k: Optional[int] = None
    # What else a dense step updates, besides the slots, for the warning on large dense memories.
    dense_extra_state: str = ""
    # The state's weightings, whose non-zero slots mark a sparse state's written_blocks.
    weighting_fields: tuple[str, ...] = ("read_weights", "write_weights")
    # The state's fields held per slot: "rows", shaped (N, X) or (N,), or "heads", shaped (H, N).
    slot_fields: ClassVar[dict[str, str]] = {"memory": "rows", "read_weights": "heads", "write_weights": "heads"}

    def __init__(
        self,
        input_dim: int,
        controller_dim: int,
        controller: str,
        memory_units: int,
        memory_unit_size: int,
        num_read_heads: int,
        memory_init: float,
        compile_step: bool,
        backend: str,
        sparse_top_k: Optional[int] = None,
    ) -> None:
        self.memory_units = check_int("memory_units", memory_units)
        self.memory_unit_size = check_int("memory_unit_size", memory_unit_size)
        self.num_read_heads = check_int("num_read_heads", num_read_heads)
        self.memory_init = check_float("memory_init", memory_init)
        self.sparse_top_k = None
        if sparse_top_k is not None:
            note = "slots touched per step, at most memory_units; None is dense"
            self.sparse_top_k = check_int("sparse_top_k", sparse_top_k, 1, self.memory_units, note)
        super().__init__(input_dim, controller_dim, controller, num_read_heads * memory_unit_size, compile_step, backend)
        if self.memory_units >= DENSE_WARNING_MEMORY_UNITS and (
            self.sparse_top_k is None or self.sparse_top_k >= self.memory_units
        ):
            message = (
                f"{type(self).__name__} with memory_units={self.memory_units} is dense: every step reads and writes all "
                f"{self.memory_units} slots{self.dense_extra_state}, so each step costs (and each environment's state "
                "holds) that much. Pass sparse_top_k (e.g. sparse_top_k=8) for sparse reads and writes, whose cost "
                "follows the slots a step touches"
            )
            if message not in _warned:  # once: a policy builds two cores, and models are rebuilt on load
                _warned.add(message)
                warnings.warn(message, UserWarning, stacklevel=2)

    def sparse(self, weights: Tensor, renormalise: bool = False) -> Tensor:
        """``weights`` with their top ``sparse_top_k`` entries per row kept (unchanged when dense)."""
        if self.sparse_top_k is None:
            return weights
        return addressing.top_k_weights(weights, self.sparse_top_k, renormalise)

    def unwritten_slots(self, memory: Tensor) -> Optional[Tensor]:
        """
        The slots of ``memory`` (B, N, W) that still hold the initial memory, ``(B, N)``, for sparse
        lookups to count once (:func:`~sb3_memory.memory.addressing.count_unwritten_once`); ``None``
        when every slot counts: dense, ``sparse_top_k = N``, or an initial memory whose rows differ.
        """
        if self.sparse_top_k is None or self.sparse_top_k >= self.memory_units:
            return None
        initial = self._cached_initial_row(memory.device, memory.dtype).memory
        if not bool((initial == initial[:, :1]).all()):
            return None
        return (memory == initial).all(dim=-1)

    def written_blocks_shape(self) -> dict[str, tuple[int, ...]]:
        """
        The sparse state's last field, ``written_blocks`` (absent when dense): one entry per block of
        :data:`~sb3_memory.memory.addressing.WRITTEN_BLOCK_ROWS` slots, 1 where the episode's
        weightings have touched the block, so that the native kernels read those blocks and not
        all N slots (:func:`~sb3_memory.memory.addressing.written_blocks`). A state edited by hand
        outside the marked blocks must mark them (set the field to 1), or the kernels will not see
        the edit.
        """
        if self.sparse_top_k is None:
            return {}
        return {"written_blocks": (addressing.written_block_count(self.memory_units),)}

    def columns_that_may_differ(self, flat_state: Tensor) -> list[Optional[Tensor]]:
        """
        A sparse core's rows differ from the initial state only in the slots of the blocks their
        ``written_blocks`` marks, and in the fields that are not per slot (the read vectors, the
        controller's state, the record itself): those columns, found in O(marked slots), not O(N).
        """
        if self.sparse_top_k is None:
            return super().columns_that_may_differ(flat_state)
        offsets = self.state_offsets()
        n, rows = self.memory_units, addressing.WRITTEN_BLOCK_ROWS
        blocks = flat_state[:, offsets["written_blocks"] :][:, : addressing.written_block_count(n)]
        within = torch.arange(rows, device=flat_state.device)
        not_per_slot = self._columns_not_per_slot(flat_state.device)
        columns: list[Optional[Tensor]] = []
        for marked in blocks != 0:
            slots = (marked.nonzero().flatten()[:, None] * rows + within).flatten()
            slots = slots[slots < n]
            parts = [not_per_slot]
            for name, shape in self.state_shapes().items():
                if name not in self.slot_fields:
                    continue
                if self.slot_fields[name] == "rows":  # (N, X) or (N,): slot i holds [i X, (i + 1) X)
                    width = int(torch.Size(shape).numel()) // n
                    at = slots[:, None] * width + torch.arange(width, device=slots.device)
                else:  # "heads", (H, N): slot i at h N + i
                    at = torch.arange(shape[0], device=slots.device)[:, None] * n + slots
                parts.append(offsets[name] + at.flatten())
            columns.append(torch.cat(parts).sort().values)
        return columns

    def _columns_not_per_slot(self, device: torch.device) -> Tensor:
        offsets, columns = self.state_offsets(), []
        for name, shape in self.state_shapes().items():
            if name not in self.slot_fields:
                columns.append(torch.arange(int(torch.Size(shape).numel()), device=device) + offsets[name])
        return torch.cat(columns)

    def mark_written_blocks(self, state: State) -> State:
        """``state`` with the blocks its weightings touch marked in ``written_blocks`` (sparse cores)."""
        if self.sparse_top_k is None:
            return state
        weightings = [getattr(state, name) for name in self.weighting_fields]
        return state._replace(written_blocks=addressing.written_blocks(state.written_blocks, weightings))

    @property
    def output_dim(self) -> int:
        return self.controller_dim + self.num_read_heads * self.memory_unit_size

    def initial_row(self, device: torch.device, dtype: torch.dtype) -> State:
        row = super().initial_row(device, dtype)
        return row._replace(memory=torch.full_like(row.memory, self.memory_init))


def weighting_entropy(weights: Tensor) -> float:
    """Mean entropy (nats) of a batch of weightings (..., N)."""
    return float(-(weights * torch.log(weights.clamp_min(1e-12))).sum(-1).mean())
