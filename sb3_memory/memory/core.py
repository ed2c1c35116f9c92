"""What every memory core shares: state handling, resets, flattening and the sequence loop."""

import functools
import math
from typing import Any, NamedTuple, Optional, Union

import torch
from torch import Tensor, nn

from sb3_memory.memory.controller import Controller


def check_positive_int(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


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
    :param compile_step: compile :meth:`step` with ``torch.compile`` on first use: fuses the
        many small tensor operations of a step (about 1.5-2x faster on CPU), at the price of
        tens of seconds of compilation per process and input shape
    """

    state_type: type

    def __init__(self, input_dim: int, controller_dim: int, controller: str, recurrent_input_dim: int, compile_step: bool = False) -> None:
        super().__init__()
        if not isinstance(compile_step, bool):
            raise TypeError(f"compile_step must be a bool, got {compile_step!r}")
        self.compile_step = compile_step
        self._compiled_step = None
        self.input_dim = check_positive_int("input_dim", input_dim)
        self.controller_dim = check_positive_int("controller_dim", controller_dim)
        self.controller = Controller(input_dim, recurrent_input_dim, controller_dim, controller)
        self._initial_rows: dict[tuple[torch.device, torch.dtype], NamedTuple] = {}

    # --- state layout -------------------------------------------------------------------------

    def state_shapes(self) -> dict[str, tuple[int, ...]]:
        """Shape of each state field for one batch row, in the order of ``state_type``."""
        raise NotImplementedError

    def initial_row(self, device: torch.device, dtype: torch.dtype) -> NamedTuple:
        """Initial state of one batch row; override to start from something other than zeros."""
        return self.state_type(*(torch.zeros((1, *shape), device=device, dtype=dtype) for shape in self.state_shapes().values()))

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

    def _cached_initial_row(self, device: torch.device, dtype: torch.dtype) -> NamedTuple:
        key = (torch.device(device), dtype)
        if key not in self._initial_rows:
            self._initial_rows[key] = self.initial_row(*key)
        return self._initial_rows[key]

    def initial_state(self, batch_size: int, device: Union[torch.device, str, None] = None, dtype: Optional[torch.dtype] = None) -> NamedTuple:
        """
        Initial state for a batch.

        :param batch_size: number of rows
        :param device: defaults to the device of the parameters
        :param dtype: defaults to the dtype of the parameters
        """
        check_positive_int("batch_size", batch_size)
        reference = next(self.parameters())
        row = self._cached_initial_row(device or reference.device, dtype or reference.dtype)
        return self.state_type(*(field.expand(batch_size, *field.shape[1:]).clone() for field in row))

    def reset_state(self, state: NamedTuple, mask: Tensor) -> NamedTuple:
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

    def flatten_state(self, state: NamedTuple) -> Tensor:
        """Concatenate all state fields into one ``(B, D)`` tensor."""
        return torch.cat([field.reshape(field.shape[0], -1) for field in state], dim=1)

    def unflatten_state(self, flat: Tensor) -> NamedTuple:
        """Inverse of :meth:`flatten_state`."""
        if flat.dim() != 2 or flat.shape[1] != self.state_size:
            raise ValueError(
                f"flat state must have shape (batch, {self.state_size}) for this core, got {tuple(flat.shape)}: "
                "was it made by a core with another configuration?"
            )
        shapes, sizes = self._state_layout
        # Contiguous copies: kernels on strided views may round differently from the original.
        return self.state_type(*(part.reshape(flat.shape[0], *shape).contiguous() for part, shape in zip(torch.split(flat, sizes, dim=1), shapes)))

    # --- computation --------------------------------------------------------------------------

    def step(self, projected_input: Tensor, state: NamedTuple) -> tuple[Tensor, NamedTuple]:
        """One time step, from the controller's projected input (see ``Controller.project_input``)."""
        raise NotImplementedError

    def forward(self, x: Tensor, state: NamedTuple, episode_starts: Optional[Tensor] = None) -> tuple[Tensor, NamedTuple]:
        """
        One time step for a batch.

        :param x: (B, input_dim)
        :param state: state of batch size B
        :param episode_starts: optional (B,) mask of rows to reset before the step
        :return: features (B, output_dim) and the new state
        """
        if x.dim() != 2:
            raise ValueError(f"forward expects x of shape (batch, {self.input_dim}), got {tuple(x.shape)}; use forward_sequence for (T, B, input_dim)")
        starts = None if episode_starts is None else episode_starts.reshape(1, -1)
        features, state = self.forward_sequence(x.unsqueeze(0), state, starts)
        return features[0], state

    def forward_sequence(self, x: Tensor, state: NamedTuple, episode_starts: Optional[Tensor] = None) -> tuple[Tensor, NamedTuple]:
        """
        Run the core over a time-major chunk.

        :param x: (T, B, input_dim)
        :param state: state before the first step, batch size B
        :param episode_starts: optional (T, B) mask; rows where it is true are reset to the
            initial state before step t
        :return: features (T, B, output_dim) and the state after the last step
        """
        self._check_inputs(x, state, episode_starts)
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

    def _step_function(self):
        if not self.compile_step:
            return self.step
        if self._compiled_step is None:
            self._compiled_step = torch.compile(self.step, dynamic=False)
        return self._compiled_step

    def __getstate__(self) -> dict[str, Any]:
        # A compiled function cannot be pickled or deep-copied; it is rebuilt on first use.
        state = super().__getstate__() if hasattr(super(), "__getstate__") else self.__dict__
        return {**state, "_compiled_step": None, "_initial_rows": {}}

    def _check_inputs(self, x: Tensor, state: NamedTuple, episode_starts: Optional[Tensor]) -> None:
        if x.dim() != 3 or x.shape[-1] != self.input_dim:
            raise ValueError(f"{type(self).__name__} expects x of shape (T, B, {self.input_dim}), got {tuple(x.shape)}")
        if not isinstance(state, self.state_type):
            raise TypeError(f"state must be a {self.state_type.__name__}, got {type(state).__name__}; use initial_state()")
        if state[0].shape[0] != x.shape[1]:
            raise ValueError(f"state has batch size {state[0].shape[0]} but x has batch size {x.shape[1]}")
        if episode_starts is not None and tuple(episode_starts.shape) != tuple(x.shape[:2]):
            raise ValueError(f"episode_starts must have shape (T, B) = {tuple(x.shape[:2])}, got {tuple(episode_starts.shape)}")
        if not torch.isfinite(x).all():
            raise ValueError(f"{type(self).__name__} got non-finite input (NaN/Inf); check the observations (VecNormalize, VecCheckNan)")

    def diagnostics(self, state: NamedTuple) -> dict[str, float]:
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
    """

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
    ) -> None:
        self.memory_units = check_positive_int("memory_units", memory_units)
        self.memory_unit_size = check_positive_int("memory_unit_size", memory_unit_size)
        self.num_read_heads = check_positive_int("num_read_heads", num_read_heads)
        if isinstance(memory_init, bool) or not isinstance(memory_init, (int, float)) or not math.isfinite(memory_init):
            raise ValueError(f"memory_init must be a finite number, got {memory_init!r}")
        self.memory_init = float(memory_init)
        super().__init__(input_dim, controller_dim, controller, num_read_heads * memory_unit_size, compile_step)

    @property
    def output_dim(self) -> int:
        return self.controller_dim + self.num_read_heads * self.memory_unit_size

    def initial_row(self, device: torch.device, dtype: torch.dtype) -> NamedTuple:
        row = super().initial_row(device, dtype)
        return row._replace(memory=torch.full_like(row.memory, self.memory_init))


def weighting_entropy(weights: Tensor) -> float:
    """Mean entropy (nats) of a batch of weightings (..., N)."""
    return float(-(weights * torch.log(weights.clamp_min(1e-12))).sum(-1).mean())
