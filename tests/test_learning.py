"""Slow learning tests (deselected by default; run with ``pytest -m slow``)."""

import pytest
import rl_zoo3.import_envs  # noqa: F401  (registers CartPoleNoVel-v1)
from stable_baselines3 import PPO
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.vec_env import VecNormalize
from torch import nn

from sb3_memory import MemoryPPO

# rl-zoo3's tuned ppo_lstm hyperparameters for CartPoleNoVel-v1.
ZOO_KWARGS = dict(n_steps=32, batch_size=256, gae_lambda=0.8, gamma=0.98, n_epochs=20, ent_coef=0.0)


def linear(start: float):
    return lambda progress_remaining: progress_remaining * start


def train_and_evaluate(algo, policy: str, policy_kwargs: dict, seed: int = 0, steps: int = 100_000) -> float:
    env = VecNormalize(make_vec_env("CartPoleNoVel-v1", n_envs=8, seed=seed), norm_reward=True)
    model = algo(
        policy,
        env,
        learning_rate=linear(1e-3),
        clip_range=linear(0.2),
        seed=seed,
        policy_kwargs=dict(ortho_init=False, activation_fn=nn.ReLU, net_arch=dict(pi=[64], vf=[64]), **policy_kwargs),
        **ZOO_KWARGS,
    )
    model.learn(steps)
    eval_env = VecNormalize(make_vec_env("CartPoleNoVel-v1", n_envs=1, seed=seed + 100), training=False, norm_reward=False)
    eval_env.obs_rms = env.obs_rms
    mean, _ = evaluate_policy(model, eval_env, n_eval_episodes=20, deterministic=True)
    return float(mean)  # type: ignore[arg-type]  # a float unless return_episode_rewards


@pytest.mark.slow
@pytest.mark.parametrize(
    "policy,policy_kwargs",
    [
        # The critic gets its own core, as the tuned RecurrentPPO config gives it its own LSTM
        # (enable_critic_lstm=True). With one shared core the DNC reached only 153 with seed 0.
        ("NTMPolicy", dict(controller_dim=64, memory_units=32, memory_unit_size=16, critic_memory="separate")),
        (
            "DNCPolicy",
            dict(controller_dim=64, memory_units=32, memory_unit_size=16, num_read_heads=2, critic_memory="separate"),
        ),
    ],
)
def test_memory_ppo_solves_cartpole_without_velocities(policy, policy_kwargs):
    assert train_and_evaluate(MemoryPPO, policy, policy_kwargs) >= 450


@pytest.mark.slow
def test_memoryless_ppo_cannot_solve_cartpole_without_velocities():
    assert train_and_evaluate(PPO, "MlpPolicy", {}) < 450
