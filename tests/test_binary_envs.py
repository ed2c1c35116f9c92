"""Tests of the bit-vector capacity tasks (sb3_memory.envs.binary) and the self-walking T-maze.

As in test_envs.py, the scripted policies see only observations: an oracle that parses the
episode from what it has seen must score the documented optimum, so the observation layout,
the answer timing and the scoring are all pinned by the oracle, not by the env's own fields.
"""

import warnings
from typing import Any, Callable, Optional

import gymnasium as gym
import numpy as np
import pytest
from stable_baselines3.common.env_checker import check_env

from sb3_memory.envs import ENV_IDS, BinaryAssociativeRecallEnv, BinaryCopyEnv, BinaryTaskEnv, PassiveTMazeEnv
from sb3_memory.envs.tmaze import DOWN, LEFT, RIGHT, UP


class CopyOracle:
    """Keeps every vector until the delimiter, then emits them in order."""

    def __init__(self, bits: int) -> None:
        self.bits = bits

    def reset(self) -> None:
        self.seen: list[np.ndarray] = []
        self.answering, self.answered = False, 0

    def act(self, obs: np.ndarray) -> np.ndarray:
        if self.answering:
            action = self.seen[self.answered]
            self.answered += 1
            return action
        if obs[self.bits] == 1.0:  # delimiter: answers start at the next step
            self.answering = True
        else:
            self.seen.append(obs[: self.bits].astype(np.int8))
        return np.zeros(self.bits, dtype=np.int8)


class RecallOracle:
    """Parses the items and the query from the observations, then emits the item after the query."""

    def __init__(self, bits: int, item_size: int) -> None:
        self.bits, self.item_size = bits, item_size

    def reset(self) -> None:
        self.items: list[list[np.ndarray]] = []
        self.query: Optional[list[np.ndarray]] = None
        self.answer: Optional[list[np.ndarray]] = None

    def act(self, obs: np.ndarray) -> np.ndarray:
        zeros = np.zeros(self.bits, dtype=np.int8)
        if self.answer is not None:
            return self.answer.pop(0)
        if obs[self.bits] == 1.0:
            self.items.append([])
        elif obs[self.bits + 1] == 1.0:
            if self.query is None:
                self.query = []
            else:  # the second query delimiter: look the query up
                assert len(self.query) == self.item_size
                matches = [i for i, item in enumerate(self.items[:-1]) if np.array_equal(item, self.query)]
                self.answer = [v.copy() for v in self.items[matches[0] + 1]]
        elif self.query is not None:
            self.query.append(obs[: self.bits].astype(np.int8))
        else:
            self.items[-1].append(obs[: self.bits].astype(np.int8))
        return zeros


def make_oracle(env: BinaryTaskEnv):
    if isinstance(env, BinaryCopyEnv):
        return CopyOracle(env.bits)
    assert isinstance(env, BinaryAssociativeRecallEnv)
    return RecallOracle(env.bits, env.item_size)


CASES: dict[str, Callable[[], BinaryTaskEnv]] = {
    "copy": lambda: BinaryCopyEnv(),
    "copy-fixed": lambda: BinaryCopyEnv(bits=3, min_length=7, max_length=7),
    "copy-one-bit": lambda: BinaryCopyEnv(bits=1, min_length=1, max_length=3),
    "recall": lambda: BinaryAssociativeRecallEnv(),
    "recall-small": lambda: BinaryAssociativeRecallEnv(bits=4, item_size=1, min_items=2, max_items=2),
}


def play(env: BinaryTaskEnv, policy, seed: int, corrupt: Optional[Callable[[np.ndarray], np.ndarray]] = None):
    """One episode; returns (return, rewards, last info, steps)."""
    obs, _ = env.reset(seed=seed)
    policy.reset()
    rewards: list[float] = []
    info: dict[str, Any] = {}
    done = False
    while not done:
        action = policy.act(obs)
        if corrupt is not None and env.optimal_action() is not None:
            action = corrupt(action)
        obs, reward, terminated, truncated, info = env.step(action)
        assert not truncated
        rewards.append(reward)
        done = terminated
    return sum(rewards), rewards, info, len(rewards)


@pytest.mark.parametrize("name", list(CASES))
def test_check_env(name: str) -> None:
    env = CASES[name]()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_env(env)
    assert isinstance(env.action_space, gym.spaces.MultiBinary) and env.action_space.n == env.bits


@pytest.mark.parametrize("name", list(CASES))
def test_oracle_from_observations_scores_every_bit(name: str) -> None:
    env = CASES[name]()
    for seed in range(30):
        ret, rewards, info, steps = play(env, make_oracle(env), seed)
        assert steps == env.episode_length
        assert ret == env.answer_steps and info["bit_accuracy"] == 1.0 and info["is_success"] is True
        assert rewards[-1] == 1.0 and sum(r > 0 for r in rewards) == env.answer_steps


@pytest.mark.parametrize("name", list(CASES))
def test_optimal_action_is_the_oracles_answer_at_scored_steps_only(name: str) -> None:
    env = CASES[name]()
    oracle = make_oracle(env)
    for seed in range(10):
        obs, _ = env.reset(seed=seed)
        oracle.reset()
        done, labelled = False, 0
        while not done:
            answer, label = oracle.act(obs), env.optimal_action()
            if label is not None:
                np.testing.assert_array_equal(label, answer)
                labelled += 1
            obs, _, done, _, _ = env.step(answer)
        assert labelled == env.answer_steps
    with pytest.raises(RuntimeError, match="call reset"):
        env.optimal_action()


@pytest.mark.parametrize("name", list(CASES))
def test_reward_is_the_share_of_right_bits(name: str) -> None:
    env = CASES[name]()
    bits = env.bits
    for flipped in range(bits + 1):

        def corrupt(action: np.ndarray, flipped: int = flipped) -> np.ndarray:
            action = action.copy()
            action[:flipped] ^= 1
            return action

        ret, rewards, info, _ = play(env, make_oracle(env), seed=flipped, corrupt=corrupt)
        share = (bits - flipped) / bits
        assert ret == pytest.approx(share * env.answer_steps)
        assert info["bit_accuracy"] == pytest.approx(share)
        assert info["is_success"] is (flipped == 0)
        assert set(np.round(rewards, 12)) <= {0.0, round(share, 12)}


def test_unscored_steps_earn_nothing_whatever_the_action() -> None:
    env = BinaryCopyEnv(bits=4, min_length=5, max_length=5)
    env.reset(seed=0)
    for _ in range(6):  # five vectors and the delimiter
        assert env.optimal_action() is None
        _, reward, _, _, _ = env.step(np.ones(4, dtype=np.int8))
        assert reward == 0.0
    assert env.optimal_action() is not None


def test_copy_layout_and_lengths() -> None:
    env = BinaryCopyEnv(bits=8, min_length=3, max_length=6)
    lengths = set()
    for seed in range(200):
        obs, _ = env.reset(seed=seed)
        length = (env.episode_length - 1) // 2
        lengths.add(length)
        assert env.episode_length == 2 * length + 1 and env.answer_steps == length
        observations = [obs]
        for _ in range(env.episode_length):
            obs, _, done, _, _ = env.step(np.zeros(8, dtype=np.int8))
            observations.append(obs)
        assert done
        stack = np.stack(observations)
        assert stack[:length, 8].sum() == 0 and stack[length, 8] == 1.0 and stack[length, :8].sum() == 0
        assert not stack[length + 1 :].any()  # answer steps (and the terminal observation) show nothing
    assert lengths == {3, 4, 5, 6}
    assert env.optimal_return == 4.5 and env.chance_return == 2.25


def test_recall_answer_is_the_item_after_the_query_and_never_past_the_end() -> None:
    env = BinaryAssociativeRecallEnv(bits=6, item_size=2, min_items=2, max_items=5)
    counts = set()
    for seed in range(200):
        env.reset(seed=seed)
        n = (env.episode_length - 2 * 2 - 2) // 3
        counts.add(n)
        inputs, targets = env._inputs, env._targets
        items = [inputs[i * 3 + 1 : i * 3 + 3, :6] for i in range(n)]
        query = inputs[n * 3 + 1 : n * 3 + 3, :6]
        index = next(i for i, item in enumerate(items[:-1]) if np.array_equal(item, query))
        np.testing.assert_array_equal(targets[-2:], items[index + 1])
        assert (targets[:-2] == -1).all()
    assert counts == {2, 3, 4, 5}
    assert env.optimal_return == 2.0 and env.chance_return == 1.0


@pytest.mark.parametrize("name", ["copy", "recall"])
def test_memoryless_policy_scores_half_the_bits(name: str) -> None:
    """The best memoryless policy (a per-bit majority vote per observation, fitted on other
    episodes) gets a coin flip's share: the answer steps' observations carry no answer."""
    env = CASES[name]()
    votes: dict[bytes, np.ndarray] = {}
    for seed in range(300):
        obs, _ = env.reset(seed=seed)
        done = False
        while not done:
            label = env.optimal_action()
            if label is not None:
                votes.setdefault(obs.tobytes(), np.zeros(env.bits)).__iadd__(2 * label - 1)
            obs, _, done, _, _ = env.step(np.zeros(env.bits, dtype=np.int8))
    table = {key: (vote > 0).astype(np.int8) for key, vote in votes.items()}
    accuracies = []
    for seed in range(10_000, 10_400):
        obs, _ = env.reset(seed=seed)
        done = False
        info: dict[str, Any] = {}
        while not done:
            obs, _, done, _, info = env.step(table.get(obs.tobytes(), np.zeros(env.bits, dtype=np.int8)))
        accuracies.append(info["bit_accuracy"])
    standard_error = np.std(accuracies) / np.sqrt(len(accuracies))
    assert abs(np.mean(accuracies) - 0.5) < 5 * standard_error


@pytest.mark.parametrize(
    "cls, kwargs, message",
    [
        (BinaryCopyEnv, {"bits": 0}, r"bits must be an integer >= 1, got 0"),
        (BinaryCopyEnv, {"min_length": 0}, r"min_length must be an integer >= 1, got 0"),
        (
            BinaryCopyEnv,
            {"min_length": 5, "max_length": 4},
            r"max_length must be an integer >= 5 \(at least min_length\), got 4",
        ),
        (BinaryCopyEnv, {"max_length": 2.0}, r"max_length must be an integer"),
        (BinaryAssociativeRecallEnv, {"min_items": 1}, r"min_items must be an integer >= 2 \(the query needs an item"),
        (BinaryAssociativeRecallEnv, {"item_size": 0}, r"item_size must be an integer >= 1"),
        (BinaryAssociativeRecallEnv, {"min_items": 4, "max_items": 3}, r"max_items must be an integer >= 4"),
    ],
)
def test_bad_kwargs_raise(cls: type, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        cls(**kwargs)


@pytest.mark.parametrize("name", ["copy", "recall"])
def test_step_misuse_raises(name: str) -> None:
    env = CASES[name]()
    with pytest.raises(RuntimeError, match="call reset"):
        env.step(np.zeros(env.bits, dtype=np.int8))
    env.reset(seed=0)
    bad_actions: list[Any] = [np.zeros(env.bits + 1, dtype=np.int8), np.full(env.bits, 2), 3]
    for bad in bad_actions:
        with pytest.raises(ValueError, match=rf"action must be {env.bits} zeros and ones \(MultiBinary\({env.bits}\)\)"):
            env.step(bad)
    for _ in range(env.episode_length):
        env.step(np.zeros(env.bits, dtype=np.int8))
    with pytest.raises(RuntimeError, match="call reset"):
        env.step(np.zeros(env.bits, dtype=np.int8))


@pytest.mark.parametrize("name", ["copy", "recall"])
def test_same_seed_same_episode_other_seed_other_episode(name: str) -> None:
    env = CASES[name]()
    env.reset(seed=3)
    first = env._inputs.copy()
    env.reset(seed=3)
    np.testing.assert_array_equal(env._inputs, first)
    env.reset(seed=4)
    assert env._inputs.shape != first.shape or not np.array_equal(env._inputs, first)


@pytest.mark.parametrize(
    "env_id, cls, defaults",
    [
        ("sb3_memory/BinaryCopy-v0", BinaryCopyEnv, {"bits": 8, "min_length": 1, "max_length": 20}),
        ("sb3_memory/BinaryAssociativeRecall-v0", BinaryAssociativeRecallEnv, {"bits": 8, "item_size": 3, "max_items": 6}),
        ("sb3_memory/PassiveTMazeJunction-v0", PassiveTMazeEnv, {"auto_walk": True, "corridor_length": 50}),
        ("sb3_memory/PassiveTMaze-v0", PassiveTMazeEnv, {"auto_walk": False, "corridor_length": 100}),
    ],
)
def test_registered_with_defaults(env_id: str, cls: type, defaults: dict) -> None:
    assert env_id in ENV_IDS
    env = gym.make(env_id).unwrapped
    assert isinstance(env, cls)
    assert {key: getattr(env, key) for key in defaults} == defaults
    if cls is PassiveTMazeEnv:
        maze = gym.make(env_id, corridor_length=7).unwrapped
        assert isinstance(maze, PassiveTMazeEnv) and maze.corridor_length == 7


def test_sb3_vec_env_reports_bit_accuracy() -> None:
    from stable_baselines3.common.env_util import make_vec_env

    vec_env = make_vec_env("sb3_memory/BinaryCopy-v0", n_envs=2, seed=0, env_kwargs=dict(min_length=2, max_length=4))
    vec_env.reset()
    finished = 0
    for _ in range(60):
        _, _, dones, infos = vec_env.step(np.zeros((2, 8), dtype=np.int8))
        for done, info in zip(dones, infos):
            if done:
                finished += 1
                assert 0.0 <= info["bit_accuracy"] <= 1.0
                assert info["episode"]["r"] == pytest.approx(info["bit_accuracy"] * (info["episode"]["l"] - 1) / 2)
    assert finished > 10


# --------------------------------------------------------------------------------------------
# The T-maze that walks itself (auto_walk=True)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("corridor_length", [1, 4, 30])
def test_auto_walk_reaches_the_junction_whatever_the_corridor_actions(corridor_length: int) -> None:
    env = PassiveTMazeEnv(corridor_length=corridor_length, auto_walk=True)
    rng = np.random.default_rng(0)
    for seed in range(20):
        obs, _ = env.reset(seed=seed)
        turn = UP if obs[0] == 1.0 else DOWN
        rewards = []
        for _t in range(corridor_length):
            assert obs[2] == 0.0
            obs, reward, done, _, _ = env.step(int(rng.integers(0, 4)))  # walking left, up, down: no matter
            rewards.append(reward)
            assert not done
        assert obs[2] == 1.0 and rewards == [0.0] * corridor_length  # at the junction on time, no penalty
        wrong = DOWN if turn == UP else UP
        action = turn if seed % 2 == 0 else (wrong if seed % 4 == 1 else RIGHT)
        _, reward, done, _, info = env.step(action)
        assert done and info["is_success"] is (action == turn) and reward == float(action == turn)


def test_without_auto_walk_a_wasted_step_loses_the_goal() -> None:
    env = PassiveTMazeEnv(corridor_length=3)
    obs, _ = env.reset(seed=0)
    turn = UP if obs[0] == 1.0 else DOWN
    _, reward, _, _, _ = env.step(LEFT)
    assert reward < 0
    for action in (RIGHT, RIGHT, turn):
        _, _, done, _, info = env.step(action)
    assert done and info["is_success"] is False


def test_auto_walk_must_be_a_bool() -> None:
    with pytest.raises(ValueError, match="auto_walk must be True or False, got 'yes'"):
        PassiveTMazeEnv(auto_walk="yes")  # type: ignore[arg-type]  # the wrong type is the test
