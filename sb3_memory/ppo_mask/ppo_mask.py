"""PPO with memory and invalid-action masking."""

from typing import ClassVar, Optional, TypeVar, Union

import numpy as np
from gymnasium import spaces
from sb3_contrib.common.maskable.utils import get_action_masks, is_masking_supported
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.type_aliases import MaybeCallback
from stable_baselines3.common.vec_env import VecEnv

from sb3_memory.common.maskable import (
    MaskableMemoryActorCriticPolicy,
    MaskableMemoryDictRolloutBuffer,
    MaskableMemoryRolloutBuffer,
    check_action_masks,
)
from sb3_memory.ppo import MemoryPPO
from sb3_memory.ppo_mask.policies import POLICY_ALIASES

SelfMaskableMemoryPPO = TypeVar("SelfMaskableMemoryPPO", bound="MaskableMemoryPPO")


class MaskableMemoryPPO(MemoryPPO):
    """
    :class:`~sb3_memory.MemoryPPO` with invalid-action masking, as sb3-contrib's ``MaskablePPO``:
    at every rollout step the env's ``action_masks()`` (read through sb3-contrib's
    ``get_action_masks``) restricts the policy to valid actions; the buffer keeps the masks and
    training replays each chunk under them. ``predict`` takes ``action_masks``; evaluate with
    sb3-contrib's ``MaskableEvalCallback`` or ``sb3_contrib.common.maskable.evaluation.evaluate_policy``.

    Discrete, MultiDiscrete and MultiBinary actions; the env (or each env of a VecEnv) must have
    an ``action_masks()`` method, for example through ``sb3_contrib.common.wrappers.ActionMasker``.
    Arguments are those of :class:`~sb3_memory.MemoryPPO`; the policy aliases are the same names
    (``"NTMPolicy"``, ``"DNCPolicy"``, ...) with masking.
    """

    policy_aliases: ClassVar[dict[str, type[BasePolicy]]] = POLICY_ALIASES
    rollout_buffer_classes = (MaskableMemoryRolloutBuffer, MaskableMemoryDictRolloutBuffer)
    policy: MaskableMemoryActorCriticPolicy

    def _setup_model(self) -> None:
        if not isinstance(self.action_space, (spaces.Discrete, spaces.MultiDiscrete, spaces.MultiBinary)):
            raise ValueError(
                f"invalid-action masking supports Discrete, MultiDiscrete and MultiBinary actions, not {self.action_space}; "
                "use MemoryPPO for continuous actions"
            )
        if self.env is not None:
            self._check_masking(self.env)
        super()._setup_model()
        if not isinstance(self.policy, MaskableMemoryActorCriticPolicy):
            raise TypeError(
                f"MaskableMemoryPPO needs a maskable memory policy (e.g. 'DNCPolicy'), got {type(self.policy).__name__}"
            )

    @staticmethod
    def _check_masking(env: VecEnv) -> None:
        if not is_masking_supported(env):
            raise ValueError(
                "MaskableMemoryPPO needs envs with an action_masks() method giving the valid actions: "
                "wrap each env in sb3_contrib.common.wrappers.ActionMasker"
            )

    def _action_masks(self, env: VecEnv) -> Optional[np.ndarray]:
        self._check_masking(env)
        return check_action_masks(get_action_masks(env), self.action_space)

    def predict(  # type: ignore[override]
        self,
        observation: Union[np.ndarray, dict[str, np.ndarray]],
        state: Optional[np.ndarray] = None,
        episode_start: Optional[np.ndarray] = None,
        deterministic: bool = False,
        action_masks: Optional[np.ndarray] = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`MemoryPPO.predict` restricted to the actions that ``action_masks`` allows."""
        return self.policy.predict(observation, state, episode_start, deterministic, action_masks=action_masks)

    def learn(  # type: ignore[override]
        self: SelfMaskableMemoryPPO,
        total_timesteps: int,
        callback: MaybeCallback = None,
        log_interval: int = 1,
        tb_log_name: str = "MaskableMemoryPPO",
        reset_num_timesteps: bool = True,
        progress_bar: bool = False,
    ) -> SelfMaskableMemoryPPO:
        return super().learn(
            total_timesteps=total_timesteps,
            callback=callback,
            log_interval=log_interval,
            tb_log_name=tb_log_name,
            reset_num_timesteps=reset_num_timesteps,
            progress_bar=progress_bar,
        )
