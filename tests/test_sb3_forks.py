"""The methods forked from Stable-Baselines3 stay line-for-line comparable with the originals.

When an SB3 upgrade changes an original, the hash test fails: review the upstream change, carry
it into the fork, then record the new hash here. The marker test keeps every difference visible.
"""

import difflib
import hashlib
import inspect
from typing import Any, Callable

import pytest
from stable_baselines3 import A2C, DQN, PPO, SAC
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
from stable_baselines3.common.policies import BasePolicy

from sb3_memory import MemoryA2C, MemoryDQN, MemoryPPO, MemorySAC
from sb3_memory.common.off_policy_algorithm import MemoryOffPolicyMixin
from sb3_memory.common.on_policy_algorithm import MemoryOnPolicyAlgorithm
from sb3_memory.common.policies import MemoryActorCriticPolicy
from sb3_memory.dqn.policies import MemoryDQNPolicy

MARKER = "# sb3-memory"
# sha256 of the originals in stable-baselines3 2.9.2, the version the forks were made from.
Fork = tuple[Callable[..., Any], Callable[..., Any], str]
FORKS: list[Fork] = [
    (PPO.train, MemoryPPO.train, "7c8d09940123242f0ac401c5ec2cc858b8bf3339f571c222382f048ffd8306ae"),
    (A2C.train, MemoryA2C.train, "298ebd063ccbd98935e536541b6b75d2a2f2305e75140b975228a2ecb4b5e656"),
    (
        OnPolicyAlgorithm.collect_rollouts,
        MemoryOnPolicyAlgorithm.collect_rollouts,
        "07f9eed35d9d7392f6ce287dc9d55aede83d8b0f93d34cb5d643410cdf11e3b7",
    ),
]
IDS = ["PPO.train", "A2C.train", "OnPolicyAlgorithm.collect_rollouts"]
# Rewritten rather than forked line for line (the memory state changes most of the method): only
# the original's hash is watched, so an SB3 change to it is reviewed here.
REWRITTEN: list[Fork] = [
    (BasePolicy.predict, MemoryActorCriticPolicy.predict, "47903eef7db6a63f80543db7f2e54891707da2aa103e6602358481a3974ed873"),
    (BasePolicy.predict, MemoryDQNPolicy.predict, "47903eef7db6a63f80543db7f2e54891707da2aa103e6602358481a3974ed873"),
    (DQN.train, MemoryDQN.train, "696507cb4053336a892a34781e07fc6884c8d43673ea5cc7cb463f64e086c17e"),
    (DQN.predict, MemoryDQN.predict, "bd134514b2b5fa6d78df2cec6bcdd4045c653fcb28ccf70a5368e118852eeffa"),
    (
        OffPolicyAlgorithm._sample_action,
        MemoryDQN._sample_action,
        "91b38e02c778434778fc1236b6a5c13b915cc7d6f978d5060ddb84b13d0fd29f",
    ),
    (SAC.train, MemorySAC.train, "0ac7abe1c18ba7fe1b8a5bbf2b301b6fff4f4573aa02c4342187a953600ce50c"),
    (
        OffPolicyAlgorithm._sample_action,
        MemorySAC._sample_action,
        "91b38e02c778434778fc1236b6a5c13b915cc7d6f978d5060ddb84b13d0fd29f",
    ),
    (
        OffPolicyAlgorithm._store_transition,
        MemoryOffPolicyMixin._store_transition,
        "3acfadcbf8b1ea11b80e9d54a75bc894112b146c5cb164b26c2d419fbc48ec54",
    ),
]
REWRITTEN_IDS = [
    "BasePolicy.predict (actor-critic)",
    "BasePolicy.predict (DQN)",
    "DQN.train",
    "DQN.predict",
    "OffPolicyAlgorithm._sample_action (DQN)",
    "SAC.train",
    "OffPolicyAlgorithm._sample_action (SAC)",
    "OffPolicyAlgorithm._store_transition",
]


def digest(function) -> str:
    return hashlib.sha256(inspect.getsource(function).encode()).hexdigest()


@pytest.mark.parametrize("original,fork,expected", FORKS + REWRITTEN, ids=[*IDS, *REWRITTEN_IDS])
def test_installed_original_is_the_one_forked(original, fork, expected):
    assert digest(original) == expected, (
        f"stable-baselines3's {original.__qualname__} changed since the fork in {fork.__module__} was made: "
        "review the change, carry it into the fork, then update the hash in this test"
    )


@pytest.mark.parametrize("original,fork,expected", FORKS, ids=IDS)
def test_every_difference_from_the_original_is_marked(original, fork, expected):
    upstream = inspect.getsource(original).splitlines()
    ours = inspect.getsource(fork).splitlines()
    matcher = difflib.SequenceMatcher(a=upstream, b=ours, autojunk=False)
    unmarked = []
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            continue
        added = ours[j1:j2]
        # A hunk is marked when one of its new lines carries the marker; a pure deletion cannot be.
        if not any(MARKER in line for line in added):
            unmarked.append("\n".join(["- " + line for line in upstream[i1:i2]] + ["+ " + line for line in added]))
    assert not unmarked, f"unmarked changes in {fork.__qualname__}:\n\n" + "\n\n".join(unmarked)
    # Most of the method is SB3's own text.
    assert matcher.ratio() > 0.8


def test_predict_keeps_sb3s_guard_against_gym_reset_tuples():
    import gymnasium as gym

    from sb3_memory import MemoryPPO

    env = gym.make("sb3_memory/PassiveTMaze-v0", corridor_length=3)
    model = MemoryPPO("LSTMPolicy", env, n_steps=8, batch_size=8, policy_kwargs=dict(controller_dim=4))
    with pytest.raises(ValueError, match=r"got a tuple \(obs, info\).*env.reset\(\)\[0\]"):
        model.predict(env.reset(seed=0))
    action, _ = model.predict(env.reset(seed=0)[0])
    assert env.action_space.contains(action)
