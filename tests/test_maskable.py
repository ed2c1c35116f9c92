"""MaskableMemoryPPO: invalid-action masking with memory, on sb3-contrib's masking pieces."""

from typing import Optional

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from sb3_contrib.common.maskable.evaluation import evaluate_policy as masked_evaluate_policy
from sb3_contrib.common.wrappers import ActionMasker
from stable_baselines3.common.env_util import make_vec_env
from test_algorithms import changed_parameters, snapshot

from sb3_memory import MaskableMemoryPPO, MemoryPPO
from sb3_memory.common.maskable import MaskableMemoryActorCriticPolicy, check_action_masks, mask_groups

TINY = dict(memory_units=4, memory_unit_size=4, controller_dim=16)


class RandomMaskEnv(gym.Env):
    """
    Random observations and a random set of valid actions at every step (at least one per
    dimension); the reward is 1 for a valid action. Episodes of 3 to 7 steps.
    """

    def __init__(self, action_space: spaces.Space) -> None:
        self.observation_space = spaces.Box(-1, 1, (3,), np.float32)
        self.action_space = action_space
        self._t, self._length = 0, 5
        self._mask = self._draw_mask()

    def _sizes(self) -> list[int]:
        if isinstance(self.action_space, spaces.Discrete):
            return [int(self.action_space.n)]
        if isinstance(self.action_space, spaces.MultiDiscrete):
            return [int(n) for n in self.action_space.nvec]
        if isinstance(self.action_space, spaces.MultiBinary):
            return [2] * int(np.prod(self.action_space.shape))  # one (0, 1) pair per entry
        return []  # Box: nothing to mask

    def _draw_mask(self) -> np.ndarray:
        parts = [np.zeros(0, dtype=bool)]
        for size in self._sizes():
            part = self.np_random.random(size) < 0.5
            part[self.np_random.integers(size)] = True
            parts.append(part)
        return np.concatenate(parts)

    def action_masks(self) -> np.ndarray:
        return self._mask

    def reset(self, *, seed: Optional[int] = None, options=None):
        super().reset(seed=seed)
        self._t, self._length = 0, int(self.np_random.integers(3, 8))
        self._mask = self._draw_mask()
        return self.np_random.uniform(-1, 1, 3).astype(np.float32), {}

    def step(self, action):
        valid = self.is_valid(action)
        self._t += 1
        self._mask = self._draw_mask()
        return self.np_random.uniform(-1, 1, 3).astype(np.float32), float(valid), self._t >= self._length, False, {}

    def is_valid(self, action) -> bool:
        values = np.atleast_1d(np.asarray(action)).astype(int)
        offset, valid = 0, True
        for size, value in zip(self._sizes(), values):
            valid &= bool(self._mask[offset + value])
            offset += size
        return valid


ACTION_SPACES = [spaces.Discrete(6), spaces.MultiDiscrete([3, 4]), spaces.MultiBinary(3)]


class CheckValid(gym.Wrapper):
    """Fails the test the moment an invalid action reaches the env."""

    def step(self, action):
        assert self.env.unwrapped.is_valid(action), f"masked action {action} was taken"
        return self.env.step(action)


def make_model(action_space: spaces.Space, policy: str = "DNCPolicy", **kwargs) -> MaskableMemoryPPO:
    env = make_vec_env(lambda: CheckValid(RandomMaskEnv(action_space)), n_envs=2, seed=0)
    settings = dict(n_steps=16, batch_size=32, n_epochs=2, sequence_length=8, seed=0)
    policy_kwargs = dict(controller_dim=16) if "LSTM" in policy else dict(TINY)
    return MaskableMemoryPPO(policy, env, policy_kwargs=policy_kwargs, **{**settings, **kwargs})


@pytest.mark.parametrize("action_space", ACTION_SPACES, ids=["discrete", "multidiscrete", "multibinary"])
@pytest.mark.parametrize("policy", ["NTMPolicy", "DNCPolicy", "LSTMPolicy"])
def test_masked_actions_are_never_taken(action_space, policy):
    model = make_model(action_space, policy)
    assert isinstance(model.policy, MaskableMemoryActorCriticPolicy)
    model.learn(96)  # CheckValid raises on any invalid action during training
    buffer = model.rollout_buffer
    assert buffer.action_masks.shape[-1] == model.rollout_buffer.mask_dims and not buffer.action_masks.all()
    # predict with masks: only valid actions, stochastic or not
    env = RandomMaskEnv(action_space)
    obs, _ = env.reset(seed=1)
    state, start = None, np.ones(1, dtype=bool)
    for step in range(30):
        action, state = model.predict(
            obs, state=state, episode_start=start, deterministic=step % 2 == 0, action_masks=env.action_masks()
        )
        assert env.is_valid(action)
        obs, _, done, _, _ = env.step(action)
        start = np.array([done])
        if done:
            obs, _ = env.reset()


def test_zero_learning_rate_replays_the_rollout_under_its_masks():
    model = make_model(spaces.Discrete(6), learning_rate=0.0)
    before = snapshot(model)
    model.learn(32)
    assert not changed_parameters(before, model)
    policy = model.policy
    unmasked_gap = 0.0
    with th.no_grad():
        for samples in model.rollout_buffer.get(model.batch_size):
            actions = samples.actions.long().flatten()
            args = (samples.observations, actions, samples.states, samples.episode_starts, None)
            values, log_prob, _, _ = policy.evaluate_actions_with_auxiliary(*args, action_masks=samples.action_masks)
            th.testing.assert_close(log_prob, samples.old_log_prob, atol=1e-5, rtol=0)
            th.testing.assert_close(values.flatten(), samples.old_values, atol=1e-5, rtol=0)
            _, unmasked, _, _ = policy.evaluate_actions_with_auxiliary(*args)
            unmasked_gap = max(unmasked_gap, (unmasked - log_prob).abs().max().item())
    assert unmasked_gap > 1e-3, "the masks did not matter: the check would be vacuous"


def test_save_and_load_keep_the_masked_policy(tmp_path):
    model = make_model(spaces.MultiDiscrete([3, 4]))
    model.learn(32)
    model.save(tmp_path / "masked.zip")
    loaded = MaskableMemoryPPO.load(tmp_path / "masked.zip", env=model.get_env())
    assert type(loaded.policy) is type(model.policy)
    env = RandomMaskEnv(spaces.MultiDiscrete([3, 4]))
    obs, _ = env.reset(seed=3)
    masks = env.action_masks()
    for deterministic in (True, False):
        th.manual_seed(0)
        expected = model.predict(obs, deterministic=deterministic, action_masks=masks)
        th.manual_seed(0)
        got = loaded.predict(obs, deterministic=deterministic, action_masks=masks)
        np.testing.assert_array_equal(got[0], expected[0])
        np.testing.assert_allclose(got[1], expected[1], atol=0, rtol=0)
    loaded.learn(32)


class MaskedCueEnv(gym.Env):
    """
    A cue (one of 2) at the first and the last step, 3 blank steps between, then a choice among 8
    actions of which two are valid, ``x`` and ``x + 4`` for a random ``x`` in 0..3; the cue says
    which to take: the lower half for cue 0, the upper half for cue 1. Reward 1 for it, 0 for the
    other valid one, -1 for an invalid action. The valid pair is never observed: with masks the
    task is solvable; without, the best policy takes a fixed action of the cued half, valid one
    time in 4, for an expected -0.5. Before the choice only action 0 is valid.
    """

    n_actions, delay = 8, 3

    def __init__(self) -> None:
        self.observation_space = spaces.Box(0, 1, (3,), np.float32)
        self.action_space = spaces.Discrete(self.n_actions)
        self._t = self._cue = 0
        self._pair = (0, 1)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self._t = 0
        self._cue = int(self.np_random.integers(2))
        low = int(self.np_random.integers(self.n_actions // 2))
        self._pair = (low, low + self.n_actions // 2)
        return self._obs(), {}

    def _obs(self) -> np.ndarray:
        obs = np.zeros(3, np.float32)
        choice = self._t == self.delay + 1
        if self._t == 0 or choice:
            obs[self._cue] = 1.0
        obs[2] = float(choice)
        return obs

    def action_masks(self) -> np.ndarray:
        mask = np.zeros(self.n_actions, dtype=bool)
        mask[list(self._pair) if self._t > self.delay else [0]] = True
        return mask

    def step(self, action):
        valid = bool(self.action_masks()[int(action)])
        if self._t <= self.delay:
            self._t += 1
            return self._obs(), 0.0 if valid else -1.0, not valid, False, {}
        reward = 1.0 if int(action) == self._pair[self._cue] else (0.0 if valid else -1.0)
        return self._obs(), reward, True, False, {}


# A learning test (two trainings of 30k steps, a minute of CPU): with the slow tests. The fast suite keeps
# the masks' mechanics: never taken, replayed in training, saved and loaded.
@pytest.mark.slow
def test_masking_is_what_makes_the_task_learnable():
    def train(algo):
        env = make_vec_env(lambda: ActionMasker(MaskedCueEnv(), lambda e: e.action_masks()), n_envs=8, seed=0)
        model = algo("NTMPolicy", env, n_steps=32, batch_size=128, learning_rate=1e-3, seed=0, policy_kwargs=dict(TINY))
        model.learn(30_000)
        return model, env

    masked, env = train(MaskableMemoryPPO)
    masked_return = masked_evaluate_policy(masked, env, n_eval_episodes=200)[0]
    unmasked, env = train(MemoryPPO)
    unmasked_return = masked_evaluate_policy(unmasked, env, n_eval_episodes=200, use_masking=False)[0]
    assert masked_return > 0.9, masked_return
    assert unmasked_return < 0.0, unmasked_return


def test_masks_are_refused_by_unmaskable_policies_and_needed_by_the_maskable_algorithm():
    env = make_vec_env(lambda: RandomMaskEnv(spaces.Discrete(3)), n_envs=1)
    plain = MemoryPPO("NTMPolicy", env, n_steps=8, batch_size=8, policy_kwargs=dict(TINY))
    with pytest.raises(ValueError, match="train with MaskableMemoryPPO"):
        plain.policy.predict(env.reset(), action_masks=np.ones((1, 3), dtype=bool))
    no_masks = make_vec_env("sb3_memory/PassiveTMaze-v0", n_envs=1, env_kwargs=dict(corridor_length=2))
    with pytest.raises(ValueError, match="ActionMasker"):
        MaskableMemoryPPO("NTMPolicy", no_masks, n_steps=8, batch_size=8, policy_kwargs=dict(TINY))
    box = make_vec_env(lambda: RandomMaskEnv(spaces.Box(-1, 1, (2,), np.float32)), n_envs=1)
    with pytest.raises(ValueError, match="supports Discrete, MultiDiscrete and MultiBinary"):
        MaskableMemoryPPO("NTMPolicy", box, n_steps=8, batch_size=8, policy_kwargs=dict(TINY))


def test_mask_groups_follow_sb3_contribs_flat_layout():
    assert mask_groups(spaces.Discrete(6)) == [6]
    assert mask_groups(spaces.MultiDiscrete([3, 4])) == [3, 4]
    assert mask_groups(spaces.MultiBinary(3)) == [2, 2, 2]
    with pytest.raises(ValueError, match="Discrete, MultiDiscrete and MultiBinary"):
        mask_groups(spaces.Box(-1, 1, (2,)))


def test_check_action_masks_names_the_env_and_dimension_with_no_valid_action():
    space = spaces.MultiDiscrete([3, 2])
    fine = np.array([[1, 0, 0, 0, 1], [0, 0, 1, 1, 1]], dtype=np.int8)
    assert check_action_masks(fine, space).dtype == bool
    empty = fine.copy()
    empty[1, 3:] = 0
    with pytest.raises(ValueError, match="action mask of env 1 allows no action for action dimension 1"):
        check_action_masks(empty, space)
    with pytest.raises(ValueError, match="3 entries per env, but MultiDiscrete"):
        check_action_masks(fine[:, :3], space)


class NoValidActionEnv(RandomMaskEnv):
    """Allows no action on the third step of each episode."""

    def action_masks(self) -> np.ndarray:
        return np.zeros_like(self._mask) if self._t == 2 else self._mask


def test_a_mask_with_no_valid_action_stops_training_with_a_clear_error():
    env = make_vec_env(lambda: NoValidActionEnv(spaces.Discrete(4)), n_envs=2, seed=0)
    model = MaskableMemoryPPO("NTMPolicy", env, n_steps=16, batch_size=16, seed=0,
                              policy_kwargs=dict(memory_units=4, memory_unit_size=3, controller_dim=8))  # fmt: skip
    with pytest.raises(ValueError, match=r"allows no action for the action: action_masks\(\) must leave"):
        model.learn(32)


def test_policy_aliases_are_written_out_classes_as_in_sb3():
    """Every alias names a class with a source definition (grep finds it), as SB3's policies.py do."""
    import inspect

    from sb3_memory import MemoryA2C
    from sb3_memory.ppo_mask import policies as mask_policies

    assert list(MaskableMemoryPPO.policy_aliases) == list(MemoryPPO.policy_aliases) == list(MemoryA2C.policy_aliases)
    for alias, policy_class in MaskableMemoryPPO.policy_aliases.items():
        assert policy_class is getattr(mask_policies, alias)
        assert f"class Maskable{alias}(" in inspect.getsource(policy_class)
        assert issubclass(policy_class, MaskableMemoryActorCriticPolicy)
        assert issubclass(policy_class, MemoryPPO.policy_aliases[alias])
