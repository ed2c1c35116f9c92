"""LengthCurriculum: promotions from the training episodes' score, through wrappers, within bounds."""

import numpy as np
import pytest
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.logger import configure

from sb3_memory import MemoryPPO
from sb3_memory.common.callbacks import LengthCurriculum

COPY = "sb3_memory/BinaryCopy-v0"


def started(callback: LengthCurriculum, n_envs: int = 2, **env_kwargs) -> LengthCurriculum:
    # make_vec_env wraps each env in Monitor, so the value has to pass through a wrapper.
    env = make_vec_env(COPY, n_envs=n_envs, seed=0, env_kwargs=env_kwargs)
    model = MemoryPPO("LSTMPolicy", env, n_steps=8, batch_size=16, policy_kwargs=dict(controller_dim=8))
    model.set_logger(configure(None, []))
    callback.init_callback(model)
    callback.on_training_start({}, {})
    return callback


def finish(callback: LengthCurriculum, scores: list[float]) -> None:
    """Report one step at which every env of the callback finishes an episode with these scores."""
    infos = [{"bit_accuracy": score} for score in scores]
    callback.update_locals({"dones": np.ones(len(scores), dtype=bool), "infos": infos})
    callback.on_step()


def max_lengths(callback: LengthCurriculum) -> list[int]:
    return list(callback.training_env.get_attr("max_length"))


def test_start_reaches_every_env_and_stop_defaults_to_the_built_value():
    callback = started(LengthCurriculum(start=3), max_length=7)
    assert max_lengths(callback) == [3, 3]
    assert callback.stop == 7
    # The envs' episodes follow the new bound: 2L + 1 steps with L <= 3.
    env = callback.training_env.envs[0].unwrapped
    lengths = set()
    for seed in range(40):
        env.reset(seed=seed)
        lengths.add(env.episode_length)
    assert max(lengths) == 2 * 3 + 1 and min(lengths) == 3


def test_promotes_only_on_a_full_window_at_the_threshold_then_counts_afresh():
    callback = started(LengthCurriculum(start=2, window=4, threshold=0.9, increment=2), max_length=7)
    finish(callback, [1.0, 1.0])
    assert max_lengths(callback) == [2, 2]  # window not full yet
    finish(callback, [0.8, 0.9])
    # mean of [1, 1, 0.8, 0.9] is 0.925 >= 0.9
    assert callback.value == 4 and max_lengths(callback) == [4, 4]
    # The window was cleared: two good episodes are not enough for the next promotion.
    finish(callback, [1.0, 1.0])
    assert callback.value == 4
    finish(callback, [0.5, 0.5])
    assert callback.value == 4  # mean 0.75 < 0.9
    finish(callback, [1.0, 1.0])
    finish(callback, [1.0, 1.0])
    assert callback.value == 6


def test_never_passes_stop_and_ignores_steps_without_an_episode_end():
    callback = started(LengthCurriculum(start=2, window=2, increment=5), max_length=4)
    callback.update_locals({"dones": np.zeros(2, dtype=bool), "infos": [{"bit_accuracy": 1.0}] * 2})
    callback.on_step()
    assert callback.value == 2
    finish(callback, [1.0, 1.0])
    assert callback.value == 4 and max_lengths(callback) == [4, 4]
    finish(callback, [1.0, 1.0])
    assert callback.value == 4


@pytest.mark.parametrize(
    ("kwargs", "env_kwargs", "match"),
    [
        (dict(start=9), dict(max_length=5), "start=9 is above the envs' max_length=5"),
        (dict(start=2), dict(min_length=3, max_length=5), "start=2 is below the envs' min_length=3"),
    ],
)
def test_start_outside_the_envs_bounds_is_an_error(kwargs, env_kwargs, match):
    with pytest.raises(ValueError, match=match):
        started(LengthCurriculum(**kwargs), **env_kwargs)


@pytest.mark.parametrize("kwargs", [dict(start=0), dict(increment=0), dict(window=0), dict(start=4, stop=3)])
def test_bad_arguments_are_errors(kwargs):
    with pytest.raises(ValueError):
        LengthCurriculum(**kwargs)
