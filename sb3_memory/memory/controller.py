"""Controllers of the memory cores: LSTM, GRU and feed-forward.

A controller sees the observation features and the previous step's read vectors. The
observation part of its input projection does not depend on the recurrence, so it is computed
for a whole sequence in one matrix product (:meth:`Controller.project_input`); only the read
vectors and the hidden state are multiplied step by step.
"""

import math

import torch
from torch import Tensor, nn

CONTROLLER_TYPES = ("lstm", "gru", "mlp")


class Controller(nn.Module):
    """
    Recurrent (or feed-forward) controller with a split input projection.

    :param input_dim: size of the observation features
    :param recurrent_input_dim: size of the inputs fed back each step (flattened read vectors)
    :param hidden_dim: size of the controller output
    :param kind: ``"lstm"``, ``"gru"`` or ``"mlp"``
    """

    def __init__(self, input_dim: int, recurrent_input_dim: int, hidden_dim: int, kind: str = "lstm") -> None:
        super().__init__()
        if kind not in CONTROLLER_TYPES:
            raise ValueError(f"controller must be one of {CONTROLLER_TYPES}, got {kind!r}")
        self.kind = kind
        self.hidden_dim = hidden_dim
        self.recurrent_input_dim = recurrent_input_dim
        gates = {"lstm": 4, "gru": 3, "mlp": 1}[kind]
        # LSTM: one product for [reads, hidden]; GRU keeps the hidden product apart because its
        # reset gate scales only that part; MLP has no hidden state.
        self.weight_input = nn.Parameter(torch.empty(gates * hidden_dim, input_dim))
        self.bias = nn.Parameter(torch.zeros(gates * hidden_dim))
        recurrent_cols = recurrent_input_dim + (hidden_dim if kind == "lstm" else 0)
        # Without fed-back inputs (LSTMCore with a GRU) there is nothing to multiply.
        self.weight_recurrent = nn.Parameter(torch.empty(gates * hidden_dim, recurrent_cols)) if recurrent_cols else None
        if kind == "gru":
            self.weight_hidden = nn.Parameter(torch.empty(3 * hidden_dim, hidden_dim))
            self.bias_hidden = nn.Parameter(torch.zeros(3 * hidden_dim))
        self.reset_parameters()

    @property
    def hidden_size(self) -> int:
        """Size of the hidden state carried between steps (0 for ``mlp``)."""
        return 0 if self.kind == "mlp" else self.hidden_dim

    @property
    def cell_size(self) -> int:
        """Size of the LSTM cell state (0 for ``gru`` and ``mlp``)."""
        return self.hidden_dim if self.kind == "lstm" else 0

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.hidden_dim)
        for param in self.parameters():
            nn.init.uniform_(param, -bound, bound)
        if self.kind == "lstm":
            # Forget-gate bias of 1 keeps the cell open early in training (Jozefowicz et al., 2015).
            with torch.no_grad():
                self.bias[self.hidden_dim : 2 * self.hidden_dim].fill_(1.0)

    def project_input(self, x: Tensor) -> Tensor:
        """
        Input part of the gate pre-activations, for any leading shape.

        :param x: (..., input_dim)
        :return: (..., gates * hidden_dim)
        """
        return nn.functional.linear(x, self.weight_input, self.bias)

    def step(
        self, projected_input: Tensor, recurrent_input: Tensor, hidden: Tensor, cell: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """
        One controller step.

        :param projected_input: (B, gates * hidden_dim) from :meth:`project_input`
        :param recurrent_input: (B, recurrent_input_dim)
        :param hidden: (B, hidden_size)
        :param cell: (B, cell_size)
        :return: output (B, hidden_dim), new hidden, new cell
        """
        size = self.hidden_dim
        if self.kind == "lstm":
            assert self.weight_recurrent is not None  # an LSTM always multiplies its hidden state
            gates = torch.addmm(projected_input, torch.cat([recurrent_input, hidden], dim=1), self.weight_recurrent.t())
            in_forget_out = torch.sigmoid(gates[:, : 3 * size])
            candidate = torch.tanh(gates[:, 3 * size :])
            cell = in_forget_out[:, size : 2 * size] * cell + in_forget_out[:, :size] * candidate
            hidden = in_forget_out[:, 2 * size :] * torch.tanh(cell)
            return hidden, hidden, cell
        if self.kind == "gru":
            from_input = projected_input
            if self.weight_recurrent is not None:
                from_input = torch.addmm(projected_input, recurrent_input, self.weight_recurrent.t())
            from_hidden = torch.addmm(self.bias_hidden, hidden, self.weight_hidden.t())
            reset_update = torch.sigmoid(from_input[:, : 2 * size] + from_hidden[:, : 2 * size])
            candidate = torch.tanh(from_input[:, 2 * size :] + reset_update[:, :size] * from_hidden[:, 2 * size :])
            hidden = torch.lerp(candidate, hidden, reset_update[:, size:])
            return hidden, hidden, cell
        assert self.weight_recurrent is not None  # an MLP controller is only built with fed-back reads
        output = torch.relu(torch.addmm(projected_input, recurrent_input, self.weight_recurrent.t()))
        return output, hidden, cell
