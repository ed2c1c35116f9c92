"""The methods forked from Stable-Baselines3 stay comparable with the originals they were written from.

Each fork records the stable-baselines3 release it was written from and the sha256 of the original's
source in that release. With that release installed, another hash fails the test, naming the function
to re-read. pyproject.toml admits a range of releases (scripts/check_lowest.sh runs the oldest): with
another release installed, an original whose source is the same is checked as usual, and one that
differs is reported as drift, a ForkDriftWarning listing what the fork does not carry, not a failure.

To move a fork to a new release: install it, read each drift warning, carry the upstream change into
the fork (marked with MARKER), then record the release and the new hash here.
"""

import dataclasses
import difflib
import hashlib
import inspect
import re
import warnings
from typing import Any, Callable, Optional

import pytest
import stable_baselines3
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
INSTALLED = stable_baselines3.__version__
# How many lines of upstream drift a warning shows; the rest is counted.
DRIFT_LINES_SHOWN = 40


class ForkDriftWarning(UserWarning):
    """The installed stable-baselines3 changed a forked original since the release the fork was written from."""


@dataclasses.dataclass(frozen=True)
class Fork:
    """
    One method of sb3_memory that started as a copy of a stable-baselines3 method.

    :param name: test id
    :param original: the stable-baselines3 method
    :param fork: sb3_memory's method written from it
    :param written_from: the stable-baselines3 release whose ``original`` the fork was written from
    :param sha256: sha256 of ``inspect.getsource(original)`` in that release
    :param line_for_line: the fork is the original plus hunks that carry MARKER; ``False`` for a
        rewrite (the memory state changes most of the method), of which only the original is watched
    """

    name: str
    original: Callable[..., Any]
    fork: Callable[..., Any]
    written_from: str
    sha256: str
    line_for_line: bool


PREDICT_2_9_2 = "47903eef7db6a63f80543db7f2e54891707da2aa103e6602358481a3974ed873"
SAMPLE_ACTION_2_9_2 = "91b38e02c778434778fc1236b6a5c13b915cc7d6f978d5060ddb84b13d0fd29f"
FORKS = [
    Fork("PPO.train", PPO.train, MemoryPPO.train, "2.9.2",
         "7c8d09940123242f0ac401c5ec2cc858b8bf3339f571c222382f048ffd8306ae", line_for_line=True),
    Fork("A2C.train", A2C.train, MemoryA2C.train, "2.9.2",
         "298ebd063ccbd98935e536541b6b75d2a2f2305e75140b975228a2ecb4b5e656", line_for_line=True),
    Fork("OnPolicyAlgorithm.collect_rollouts", OnPolicyAlgorithm.collect_rollouts, MemoryOnPolicyAlgorithm.collect_rollouts,
         "2.9.2", "07f9eed35d9d7392f6ce287dc9d55aede83d8b0f93d34cb5d643410cdf11e3b7", line_for_line=True),
    Fork("BasePolicy.predict (actor-critic)", BasePolicy.predict, MemoryActorCriticPolicy.predict, "2.9.2",
         PREDICT_2_9_2, line_for_line=False),
    Fork("BasePolicy.predict (DQN)", BasePolicy.predict, MemoryDQNPolicy.predict, "2.9.2", PREDICT_2_9_2,
         line_for_line=False),
    Fork("DQN.train", DQN.train, MemoryDQN.train, "2.9.2",
         "696507cb4053336a892a34781e07fc6884c8d43673ea5cc7cb463f64e086c17e", line_for_line=False),
    Fork("DQN.predict", DQN.predict, MemoryDQN.predict, "2.9.2",
         "bd134514b2b5fa6d78df2cec6bcdd4045c653fcb28ccf70a5368e118852eeffa", line_for_line=False),
    Fork("OffPolicyAlgorithm._sample_action (DQN)", OffPolicyAlgorithm._sample_action, MemoryDQN._sample_action,
         "2.9.2", SAMPLE_ACTION_2_9_2, line_for_line=False),
    Fork("SAC.train", SAC.train, MemorySAC.train, "2.9.2",
         "0ac7abe1c18ba7fe1b8a5bbf2b301b6fff4f4573aa02c4342187a953600ce50c", line_for_line=False),
    Fork("OffPolicyAlgorithm._sample_action (SAC)", OffPolicyAlgorithm._sample_action, MemorySAC._sample_action,
         "2.9.2", SAMPLE_ACTION_2_9_2, line_for_line=False),
    Fork("OffPolicyAlgorithm._store_transition", OffPolicyAlgorithm._store_transition,
         MemoryOffPolicyMixin._store_transition, "2.9.2",
         "3acfadcbf8b1ea11b80e9d54a75bc894112b146c5cb164b26c2d419fbc48ec54", line_for_line=False),
]  # fmt: skip
LINE_FOR_LINE = [fork for fork in FORKS if fork.line_for_line]


def digest(source: str) -> str:
    return hashlib.sha256(source.encode()).hexdigest()


def unmarked_hunks(upstream: str, ours: str) -> tuple[list[str], float]:
    """
    The differences between an original's source and its fork's that carry no MARKER.

    :param upstream: the original's source
    :param ours: the fork's source
    :return: each unmarked hunk as ``- upstream line`` / ``+ fork line`` text, and difflib's
        similarity ratio of the two
    """
    upstream_lines, our_lines = upstream.splitlines(), ours.splitlines()
    matcher = difflib.SequenceMatcher(a=upstream_lines, b=our_lines, autojunk=False)
    unmarked = []
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        added = our_lines[j1:j2]
        # A hunk is marked when one of its new lines carries the marker; a pure deletion cannot be.
        if tag != "equal" and not any(MARKER in line for line in added):
            unmarked.append("\n".join(["- " + line for line in upstream_lines[i1:i2]] + ["+ " + line for line in added]))
    return unmarked, matcher.ratio()


def check_original(fork: Fork, installed_version: str, upstream: str) -> Optional[str]:
    """
    Compare an installed original with the one its fork was written from.

    :param fork: the recorded fork
    :param installed_version: the installed stable-baselines3 release
    :param upstream: the installed original's source
    :return: ``None`` where the source is the one forked; else, on another release, the drift
        (also warned as a ForkDriftWarning)
    :raises AssertionError: the source differs on the release the fork was written from
    """
    where = f"{fork.fork.__module__}.{fork.fork.__qualname__}"
    if digest(upstream) == fork.sha256:
        return None
    if installed_version == fork.written_from:
        raise AssertionError(
            f"stable-baselines3 {installed_version}'s {fork.original.__qualname__} is not the source {where} was "
            f"written from (sha256 {digest(upstream)}, recorded {fork.sha256}): re-read {fork.original.__qualname__} "
            f"in {fork.original.__module__}, carry any change into the fork, then update the hash in this test"
        )
    if fork.line_for_line:
        hunks, _ = unmarked_hunks(upstream, inspect.getsource(fork.fork))
        lines = "\n\n".join(hunks).splitlines()
        shown = "\n".join(lines[:DRIFT_LINES_SHOWN])
        more = f"\n... {len(lines) - DRIFT_LINES_SHOWN} more lines" if len(lines) > DRIFT_LINES_SHOWN else ""
        summary = f"{len(hunks)} unmarked hunks (- stable-baselines3 {installed_version}, + fork):\n{shown}{more}"
    else:
        summary = (
            f"{where} is a rewrite: diff {fork.original.__qualname__} between the two releases "
            f"({len(upstream.splitlines())} lines in {installed_version}) to see what it may need"
        )
    drift = (
        f"{fork.name}: stable-baselines3 {installed_version}'s {fork.original.__qualname__} differs from "
        f"{fork.written_from}'s, which {where} was written from; {summary}"
    )
    warnings.warn(drift, ForkDriftWarning)
    return drift


@pytest.mark.parametrize("fork", FORKS, ids=[fork.name for fork in FORKS])
def test_installed_original_is_the_one_forked(fork: Fork) -> None:
    check_original(fork, INSTALLED, inspect.getsource(fork.original))


@pytest.mark.parametrize("fork", LINE_FOR_LINE, ids=[fork.name for fork in LINE_FOR_LINE])
def test_every_difference_from_the_original_is_marked(fork: Fork) -> None:
    upstream = inspect.getsource(fork.original)
    unmarked, ratio = unmarked_hunks(upstream, inspect.getsource(fork.fork))
    # Most of the method is SB3's own text, on any release in the range.
    assert ratio > 0.8
    if digest(upstream) != fork.sha256 and INSTALLED != fork.written_from:
        pytest.skip(
            f"stable-baselines3 {INSTALLED}'s {fork.original.__qualname__} is not the {fork.written_from} source "
            f"the fork was written from: its {len(unmarked)} unmarked hunks are upstream drift (ForkDriftWarning)"
        )
    assert not unmarked, f"unmarked changes in {fork.fork.__qualname__}:\n\n" + "\n\n".join(unmarked)


def edited_upstream(fork: Fork) -> str:
    """The original's source with a line an upstream release might add, after its signature's first line."""
    first, rest = inspect.getsource(fork.original).split("\n", 1)
    return f"{first}\n        upstream_added_this_line = True\n{rest}"


def test_an_edited_original_fails_on_the_release_it_was_forked_from() -> None:
    fork = FORKS[0]
    with pytest.raises(AssertionError, match=r"re-read PPO\.train in stable_baselines3\.ppo\.ppo"):
        check_original(fork, fork.written_from, edited_upstream(fork))


@pytest.mark.parametrize("fork", [FORKS[0], FORKS[-1]], ids=["line for line", "rewrite"])
def test_an_edited_original_on_another_release_is_reported_as_drift(fork: Fork) -> None:
    # Recorded from the installed source, so that this runs the same on any installed release.
    upstream = inspect.getsource(fork.original)
    fork = dataclasses.replace(fork, sha256=digest(upstream))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert check_original(fork, "0.0.1", upstream) is None
    with pytest.warns(ForkDriftWarning, match=rf"differs from {re.escape(fork.written_from)}'s") as record:
        drift = check_original(fork, "0.0.1", edited_upstream(fork))
    (warning,) = record
    assert str(warning.message) == drift
    if fork.line_for_line:
        already_unmarked = len(unmarked_hunks(upstream, inspect.getsource(fork.fork))[0])
        assert f"{already_unmarked + 1} unmarked hunks" in drift
        assert re.search(r"^- +upstream_added_this_line = True$", drift, re.MULTILINE)
    else:
        assert "is a rewrite" in drift


def test_predict_keeps_sb3s_guard_against_gym_reset_tuples():
    import gymnasium as gym

    from sb3_memory import MemoryPPO

    env = gym.make("sb3_memory/PassiveTMaze-v0", corridor_length=3)
    model = MemoryPPO("LSTMPolicy", env, n_steps=8, batch_size=8, policy_kwargs=dict(controller_dim=4))
    with pytest.raises(ValueError, match=r"got a tuple \(obs, info\).*env.reset\(\)\[0\]"):
        model.predict(env.reset(seed=0))
    action, _ = model.predict(env.reset(seed=0)[0])
    assert env.action_space.contains(action)
