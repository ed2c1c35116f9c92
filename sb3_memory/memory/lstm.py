"""Plain recurrent core without external memory, for control experiments in the same framework."""

from typing import NamedTuple

from torch import Tensor

from sb3_memory.memory.core import MemoryCore


class LSTMState(NamedTuple):
    """State of :class:`LSTMCore`, batch first."""

    controller_hidden: Tensor  # (B, C), (B, 0) for an mlp controller
    controller_cell: Tensor  # (B, C) for an lstm controller, else (B, 0)


class LSTMCore(MemoryCore):
    """
    The controller of the memory cores on its own: same input path, resets and flat state as
    :class:`NTMCell` and :class:`DNCCell`, so that comparisons isolate the external memory.

    :param input_dim: size of the input features
    :param controller_dim: hidden size
    :param controller: ``"lstm"`` (default) or ``"gru"``
    :param compile_step: compile the reference step with ``torch.compile`` (see :class:`MemoryCore`)
    :param backend: ``"auto"``, ``"native"`` or ``"reference"`` (see :class:`MemoryCore`)
    """

    state_type = LSTMState
    native_core = "plain"

    def __init__(
        self,
        input_dim: int,
        controller_dim: int = 64,
        controller: str = "lstm",
        compile_step: bool = False,
        backend: str = "auto",
    ) -> None:
        if controller == "mlp":
            raise ValueError("LSTMCore needs a recurrent controller: use controller='lstm' or 'gru'")
        super().__init__(
            input_dim, controller_dim, controller, recurrent_input_dim=0, compile_step=compile_step, backend=backend
        )

    def state_shapes(self) -> dict[str, tuple[int, ...]]:
        return {"controller_hidden": (self.controller.hidden_size,), "controller_cell": (self.controller.cell_size,)}

    @property
    def output_dim(self) -> int:
        return self.controller_dim

    def step(self, projected_input: Tensor, state: LSTMState) -> tuple[Tensor, LSTMState]:
        empty = projected_input[:, :0]
        output, hidden, cell = self.controller.step(projected_input, empty, state.controller_hidden, state.controller_cell)
        return output, LSTMState(hidden, cell)
