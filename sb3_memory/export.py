"""Export a memory policy's step to ONNX, with its whole recurrent state as an input and an output.

The exported graph is one deterministic policy step::

    (observation, state, episode_start) -> (action, value, new_state)

``state`` is the policy's flat state (``(batch, policy.state_size)``, the array ``predict``
returns); rows whose ``episode_start`` is 1 are reset inside the graph, so a deployer can start
from zeros. The graph computes what ``model.predict(..., deterministic=True)`` computes: the same
preprocessing, the cores' reference step (the native kernels are CPU code, not graph operations;
the DNC's allocation uses its sort-free equivalent, as ONNX has no stable sort), the
distribution's mode, and Box actions clipped to the action space.

Needs ``pip install "sb3-memory[export]"`` (onnx, onnxscript; onnxruntime to run it).
"""

import inspect
import tempfile
import warnings
from pathlib import Path
from typing import Union

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.base_class import BaseAlgorithm
from torch import nn

from sb3_memory.common.policies import MemoryActorCriticPolicy
from sb3_memory.common.save_util import POLICY_MODULE_ALGORITHMS
from sb3_memory.memory import MemoryCore

INPUT_NAMES = ["observation", "state", "episode_start"]
OUTPUT_NAMES = ["action", "value", "new_state"]


class PolicyStep(nn.Module):
    """
    One deterministic step of a memory policy as plain tensor operations (what :func:`export_onnx` traces).

    :param policy: the policy (copied: the original keeps its settings)
    """

    initial_state: th.Tensor
    action_low: th.Tensor
    action_high: th.Tensor

    def __init__(self, policy: MemoryActorCriticPolicy) -> None:
        super().__init__()
        if isinstance(policy.observation_space, spaces.Dict):
            raise ValueError("ONNX export takes Box and Discrete observations; Dict observations are not supported yet")
        if isinstance(policy.action_space, spaces.Box) and policy.squash_output:
            # Said before tracing: the exporter's own failure on the squashed graph is ~170 lines.
            raise ValueError(
                "ONNX export of squashed actions (gSDE with squash_output=True) is not supported yet; "
                "gSDE without squash_output exports"
            )
        if policy.core_kwargs.get("sparse_top_k") is not None:
            # Measured: ONNX's TopK breaks the ties of a fresh memory (every slot alike) otherwise
            # than torch.topk, and the sparse DNC's allocation needs a stable sort, which ONNX lacks.
            raise ValueError(
                "ONNX export of sparse cores (sparse_top_k) is not supported yet: the graph would choose other "
                "slots than predict where similarities tie; export a dense model (sparse_top_k=None)"
            )
        # Rebuilt as SB3 loads a policy (a deep copy would trip over the distribution SB3 keeps),
        # with cores that trace to graph operations: the reference step, and for the DNC the
        # sort-free allocation (the same weights: neither setting owns parameters).
        parameters = policy._get_constructor_parameters()
        accepted = inspect.signature(type(policy.core)).parameters
        graph_settings = {"backend": "reference", "compile_step": False, "allocation": "rank"}
        parameters.update({name: value for name, value in graph_settings.items() if name in accepted})
        copied = type(policy)(**parameters)
        copied.load_state_dict(policy.state_dict())
        policy = copied.cpu().eval()
        self.policy = policy
        self.register_buffer("initial_state", policy.initial_state(1)[0])
        action_space = policy.action_space
        if isinstance(action_space, spaces.Box):
            self.register_buffer("action_low", th.as_tensor(action_space.low, dtype=th.float32))
            self.register_buffer("action_high", th.as_tensor(action_space.high, dtype=th.float32))

    @staticmethod
    def _cores(policy: MemoryActorCriticPolicy) -> list[MemoryCore]:
        return [core for core in (policy.core, policy.critic_core) if core is not None]

    @staticmethod
    def _step(core: MemoryCore, features: th.Tensor, flat_state: th.Tensor) -> tuple[th.Tensor, th.Tensor]:
        output, state = core.step(core.controller.project_input(features), core.unflatten_state(flat_state))
        return output, core.flatten_state(state)

    def forward(self, observation: th.Tensor, state: th.Tensor, episode_start: th.Tensor) -> tuple[th.Tensor, ...]:
        policy = self.policy
        state = th.where(episode_start.reshape(-1, 1) > 0.5, self.initial_state, state)
        features = policy.extract_features(observation)
        pi_features, vf_features = (features, features) if isinstance(features, th.Tensor) else features
        actor_state, critic_state = policy.split_state(state)
        latent_pi, actor_state = self._step(policy.core, pi_features, actor_state)
        if policy.critic_core is not None:
            assert critic_state is not None
            latent_vf, critic_state = self._step(policy.critic_core, vf_features, critic_state)
        elif policy.critic_projection is not None:
            latent_vf = policy.critic_projection(vf_features)
        else:
            latent_vf = latent_pi
        value = policy.value_net(policy.mlp_extractor.forward_critic(latent_vf))
        action = self._mode(policy.action_net(policy.mlp_extractor.forward_actor(latent_pi)))
        return action, value, policy.join_state(actor_state, critic_state)

    def _mode(self, action_params: th.Tensor) -> th.Tensor:
        """The distribution's mode, as SB3's ``get_actions(deterministic=True)`` and ``predict`` give it."""
        space = self.policy.action_space
        if isinstance(space, spaces.Discrete):
            return th.argmax(th.softmax(action_params, dim=-1), dim=-1)
        if isinstance(space, spaces.MultiDiscrete):
            splits = th.split(action_params, [int(n) for n in space.nvec], dim=-1)
            return th.stack([th.argmax(th.softmax(logits, dim=-1), dim=-1) for logits in splits], dim=-1)
        if isinstance(space, spaces.MultiBinary):
            return th.round(th.sigmoid(action_params))
        if isinstance(space, spaces.Box):
            action = action_params.reshape(-1, *space.shape)
            return th.maximum(th.minimum(action, self.action_high), self.action_low)
        raise ValueError(f"ONNX export does not support {space} actions")


def export_onnx(model: Union[BaseAlgorithm, MemoryActorCriticPolicy], path: Union[str, Path]) -> Path:
    """
    Write one deterministic step of a memory policy to an ONNX file (see the module docstring).

    :param model: a trained MemoryPPO / MemoryA2C / MaskableMemoryPPO (masks are not exported), or its policy;
        MemoryDQN and MemorySAC models are not supported yet
    :param path: the ``.onnx`` file to write, self-contained (its folder is created if needed)
    :return: the path; the graph's inputs are ``observation`` ``(batch, *observation shape)``,
        ``state`` ``(batch, state_size)`` float32 and ``episode_start`` ``(batch,)`` float32, its
        outputs ``action``, ``value`` ``(batch, 1)`` and ``new_state``; ``state_size`` is also in
        the file's metadata
    """
    policy = model.policy if isinstance(model, BaseAlgorithm) else model
    if not isinstance(policy, MemoryActorCriticPolicy):
        module = type(policy).__module__
        owner = POLICY_MODULE_ALGORITHMS[module][1] if module in POLICY_MODULE_ALGORITHMS else None
        got = f"a {owner} model's {type(policy).__name__}" if owner else f"{module}.{type(policy).__name__}"
        raise TypeError(
            f"export_onnx exports the actor-critic policies of MemoryPPO, MemoryA2C and MaskableMemoryPPO (NTM, DNC "
            f"or LSTM cores), got {got}: MemoryDQN and MemorySAC policies, and policies without memory, are not "
            "supported yet"
        )
    step = PolicyStep(policy)
    import onnx  # the [export] extra: imported once the model is known to be exportable

    space = policy.observation_space
    observation = th.as_tensor(np.stack([space.sample(), space.sample()]))
    state = policy.initial_state(2).cpu()
    episode_start = th.ones(2)
    batch = th.export.Dim("batch")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # The exporter may write the weights to a side file (<name>.onnx.data): export in a private
    # folder, then save one self-contained file at the target.
    with tempfile.TemporaryDirectory() as folder, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's own progress and deprecation chatter
        traced = Path(folder) / "policy.onnx"
        th.onnx.export(
            step,
            (observation, state, episode_start),
            str(traced),
            dynamo=True,
            input_names=INPUT_NAMES,
            output_names=OUTPUT_NAMES,
            dynamic_shapes=({0: batch}, {0: batch}, {0: batch}),
            verbose=False,
        )
        graph = onnx.load(str(traced))
    onnx.helper.set_model_props(graph, {"state_size": str(policy.state_size), "sb3_memory_policy": type(policy).__name__})
    onnx.save(graph, str(path))
    return path
