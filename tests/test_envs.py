"""Tests of the memory task suite (sb3_memory.envs).

The memory demand is checked both ways: a scripted oracle that remembers what it has observed
scores exactly the documented optimal return, and the best lookup-table policy mapping the
current observation to an action (fitted on some episodes, scored on held-out ones) scores the
documented chance return. The same estimator given a window of past observations must score
well above chance, which shows the chance test would catch information leaking into the
current observation.
"""

import copy
import importlib
import warnings
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Callable, Optional, cast

import gymnasium as gym
import numpy as np
import pytest
from stable_baselines3.common.env_checker import check_env

import sb3_memory.envs as memory_envs
from sb3_memory.envs import (
    ENV_IDS,
    AssociativeRecallEnv,
    CopyEnv,
    MemoryTaskEnv,
    PassiveTMazeEnv,
    RepeatAfterDelayEnv,
)
from sb3_memory.envs.tmaze import DOWN, LEFT, RIGHT, UP

# --------------------------------------------------------------------------------------------
# Scripted policies. They only see observations (never the env's internals).
# --------------------------------------------------------------------------------------------


class Policy:
    def reset(self) -> None:
        pass

    def act(self, obs: np.ndarray) -> int:
        raise NotImplementedError


class CopyOracle(Policy):
    def __init__(self, env: CopyEnv) -> None:
        self.num_symbols = env.num_symbols

    def reset(self) -> None:
        self.seen: list[int] = []
        self.recalled = 0

    def act(self, obs: np.ndarray) -> int:
        if obs[self.num_symbols] == 1.0:  # recall phase
            action = self.seen[self.recalled]
            self.recalled += 1
            return action
        self.seen.append(int(np.argmax(obs[: self.num_symbols])))
        return 0


class RepeatOracle(Policy):
    def __init__(self, env: RepeatAfterDelayEnv) -> None:
        self.num_symbols = env.num_symbols
        self.delay = env.delay

    def reset(self) -> None:
        self.seen: list[int] = []

    def act(self, obs: np.ndarray) -> int:
        self.seen.append(int(np.argmax(obs[: self.num_symbols])))
        if obs[self.num_symbols] == 1.0:  # this step is scored
            index = len(self.seen) - 1 - self.delay
            assert index >= 0, "scored-step flag raised before `delay` symbols were shown"
            return self.seen[index]
        return 0


class AssociativeRecallOracle(Policy):
    def __init__(self, env: AssociativeRecallEnv) -> None:
        self.num_keys = env.num_keys
        self.num_values = env.num_values

    def reset(self) -> None:
        self.memory: dict[int, int] = {}

    def act(self, obs: np.ndarray) -> int:
        key = int(np.argmax(obs[: self.num_keys]))
        if obs[-1] == 1.0:  # query
            return self.memory[key]
        assert key not in self.memory, "keys must be distinct within an episode"
        self.memory[key] = int(np.argmax(obs[self.num_keys : self.num_keys + self.num_values]))
        return 0


class TMazeOracle(Policy):
    def reset(self) -> None:
        self.turn: Optional[int] = None

    def act(self, obs: np.ndarray) -> int:
        if self.turn is None:  # first observation: read the cue
            assert obs[0] + obs[1] == 1.0
            self.turn = UP if obs[0] == 1.0 else DOWN
        return self.turn if obs[2] == 1.0 else RIGHT


def make_oracle(env: MemoryTaskEnv) -> Policy:
    if isinstance(env, CopyEnv):
        return CopyOracle(env)
    if isinstance(env, RepeatAfterDelayEnv):
        return RepeatOracle(env)
    if isinstance(env, AssociativeRecallEnv):
        return AssociativeRecallOracle(env)
    if isinstance(env, PassiveTMazeEnv):
        return TMazeOracle()
    raise TypeError(env)


class WrongAnswers(Policy):
    """The oracle, with every answer changed to a wrong one (the T-maze: the wrong turn)."""

    def __init__(self, env: MemoryTaskEnv) -> None:
        self.oracle = make_oracle(env)
        self.tmaze = isinstance(env, PassiveTMazeEnv)
        self.n = int(env.action_space.n)

    def reset(self) -> None:
        self.oracle.reset()

    def act(self, obs: np.ndarray) -> int:
        action = self.oracle.act(obs)
        if self.tmaze:
            return {UP: DOWN, DOWN: UP}.get(action, action)
        return (action + 1) % self.n


class RandomPolicy(Policy):
    def __init__(self, n: int, seed: int) -> None:
        self.n = n
        self.rng = np.random.default_rng(seed)

    def act(self, obs: np.ndarray) -> int:
        return int(self.rng.integers(self.n))


class TablePolicy(Policy):
    """Maps the last ``window`` observations to an action; ``window=1`` is memoryless."""

    def __init__(self, table: dict[tuple[bytes, ...], int], window: int) -> None:
        self.table = table
        self.window = window

    def reset(self) -> None:
        self.recent: list[bytes] = []

    def act(self, obs: np.ndarray) -> int:
        self.recent = ([*self.recent, obs.tobytes()])[-self.window :]
        return self.table.get(tuple(self.recent), 0)


@dataclass
class Episode:
    observations: list[np.ndarray] = field(default_factory=list)
    actions: list[int] = field(default_factory=list)
    rewards: list[float] = field(default_factory=list)
    infos: list[dict] = field(default_factory=list)

    @property
    def ret(self) -> float:
        return float(sum(self.rewards))


def run_episode(env: MemoryTaskEnv, policy: Policy, seed: Optional[int] = None) -> Episode:
    """Run one episode; also check that it ends by itself, exactly after episode_length steps."""
    obs, _ = env.reset(seed=seed)
    policy.reset()
    episode = Episode(observations=[obs])
    for step in range(env.episode_length):
        action = policy.act(obs)
        obs, reward, terminated, truncated, info = env.step(np.int64(action))
        episode.observations.append(obs)
        episode.actions.append(action)
        episode.rewards.append(float(reward))
        episode.infos.append(info)
        assert not truncated
        assert terminated == (step == env.episode_length - 1)
    return episode


def fit_table(env: MemoryTaskEnv, window: int, num_episodes: int, seed: int) -> dict[tuple[bytes, ...], int]:
    """
    Best lookup-table policy from the last ``window`` observations: for every window seen,
    the action the oracle (hence the correct answer) took most often there.
    """
    counts: dict[tuple[bytes, ...], Counter] = defaultdict(Counter)
    oracle = make_oracle(env)
    for i in range(num_episodes):
        obs, _ = env.reset(seed=seed + i)
        oracle.reset()
        recent: list[bytes] = []
        terminated = False
        while not terminated:
            recent = ([*recent, obs.tobytes()])[-window:]
            action = oracle.act(obs)
            counts[tuple(recent)][action] += 1
            obs, _, terminated, _, _ = env.step(np.int64(action))
    return {key: c.most_common(1)[0][0] for key, c in counts.items()}


def held_out_returns(env: MemoryTaskEnv, window: int, num_fit: int, num_eval: int) -> np.ndarray:
    table = fit_table(env, window, num_fit, seed=10_000)
    policy = TablePolicy(table, window)
    return np.array([run_episode(env, policy, seed=1_000_000 + i).ret for i in range(num_eval)])


# --------------------------------------------------------------------------------------------
# Cases
# --------------------------------------------------------------------------------------------

CASES: dict[str, Callable[[], MemoryTaskEnv]] = {
    "copy": lambda: CopyEnv(),
    "copy-tiny": lambda: CopyEnv(length=1, num_symbols=2),
    "copy-long": lambda: CopyEnv(length=40, num_symbols=3),
    "repeat": lambda: RepeatAfterDelayEnv(),
    "repeat-tiny": lambda: RepeatAfterDelayEnv(delay=1, num_symbols=2, episode_length=2),
    "repeat-long": lambda: RepeatAfterDelayEnv(delay=30, num_symbols=4),
    "recall": lambda: AssociativeRecallEnv(),
    "recall-tiny": lambda: AssociativeRecallEnv(num_pairs=1, num_keys=1, num_values=2),
    "recall-all-keys": lambda: AssociativeRecallEnv(num_pairs=6, num_keys=6, num_values=3),
    "tmaze": lambda: PassiveTMazeEnv(),
    "tmaze-tiny": lambda: PassiveTMazeEnv(corridor_length=1),
    "tmaze-penalty": lambda: PassiveTMazeEnv(corridor_length=7, penalty=-0.3),
}

DEFAULT_CASES = ["copy", "repeat", "recall", "tmaze"]
SYMBOL_CASES = [name for name in CASES if not name.startswith("tmaze")]

# Tolerance of the chance tests, in standard errors of the mean held-out return.
Z_TOLERANCE = 5.0


# --------------------------------------------------------------------------------------------
# API, registration, argument checks
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(CASES))
def test_check_env(name: str) -> None:
    env = CASES[name]()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_env(env)
    assert isinstance(env.observation_space, gym.spaces.Box)
    assert env.observation_space.dtype == np.float32
    assert isinstance(env.action_space, gym.spaces.Discrete)


@pytest.mark.parametrize(
    "env_id, cls, kwargs, attribute",
    [
        ("sb3_memory/Copy-v0", CopyEnv, {"length": 3}, "length"),
        ("sb3_memory/RepeatAfterDelay-v0", RepeatAfterDelayEnv, {"delay": 7}, "delay"),
        ("sb3_memory/AssociativeRecall-v0", AssociativeRecallEnv, {"num_pairs": 3}, "num_pairs"),
        ("sb3_memory/PassiveTMaze-v0", PassiveTMazeEnv, {"corridor_length": 9}, "corridor_length"),
    ],
)
def test_registered(env_id: str, cls: type, kwargs: dict, attribute: str) -> None:
    assert env_id in ENV_IDS
    spec = gym.spec(env_id)
    assert spec.max_episode_steps is None  # the envs end their episodes themselves
    env = gym.make(env_id, **kwargs)
    assert isinstance(env.unwrapped, cls)
    assert getattr(env.unwrapped, attribute) == kwargs[attribute]
    episode_length = cast(MemoryTaskEnv, env.unwrapped).episode_length
    env.reset(seed=0)
    for step in range(episode_length):
        _, _, terminated, truncated, _ = env.step(env.action_space.sample())
        assert not truncated
        assert terminated == (step == episode_length - 1)
    env.close()


def test_registration_is_idempotent() -> None:
    before = {env_id: gym.spec(env_id) for env_id in ENV_IDS}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        importlib.reload(memory_envs)
        memory_envs.register_envs()
    assert {env_id: gym.spec(env_id) for env_id in ENV_IDS} == before
    exported = {"CopyEnv", "RepeatAfterDelayEnv", "AssociativeRecallEnv", "PassiveTMazeEnv"}
    assert exported <= set(memory_envs.__all__)


@pytest.mark.parametrize(
    "cls, kwargs, message",
    [
        (CopyEnv, {"length": 0}, r"length must be an integer >= 1, got 0"),
        (CopyEnv, {"length": 2.5}, r"length must be an integer >= 1"),
        (CopyEnv, {"length": True}, r"length must be an integer >= 1"),
        (CopyEnv, {"num_symbols": 1}, r"num_symbols must be an integer >= 2, got 1"),
        (RepeatAfterDelayEnv, {"delay": 0}, r"delay must be an integer >= 1, got 0"),
        (RepeatAfterDelayEnv, {"num_symbols": 0}, r"num_symbols must be an integer >= 2"),
        (
            RepeatAfterDelayEnv,
            {"delay": 3, "episode_length": 3},
            r"episode_length must be an integer >= 4 \(greater than delay\), got 3",
        ),
        (AssociativeRecallEnv, {"num_pairs": 0}, r"num_pairs must be an integer in \[1, 16\]"),
        (
            AssociativeRecallEnv,
            {"num_pairs": 17},
            r"num_pairs must be an integer in \[1, 16\] \(keys are distinct, so at most num_keys\), got 17",
        ),
        (AssociativeRecallEnv, {"num_pairs": 5, "num_keys": 4}, r"num_pairs must be an integer in \[1, 4\]"),
        (AssociativeRecallEnv, {"num_keys": 0}, r"num_keys must be an integer >= 1"),
        (AssociativeRecallEnv, {"num_values": 1}, r"num_values must be an integer >= 2"),
        (PassiveTMazeEnv, {"corridor_length": 0}, r"corridor_length must be an integer >= 1, got 0"),
        (PassiveTMazeEnv, {"corridor_length": -5}, r"corridor_length must be an integer >= 1"),
        (PassiveTMazeEnv, {"penalty": 0.5}, r"penalty must be a finite number in \[-inf, 0.0\], got 0.5"),
        (PassiveTMazeEnv, {"penalty": float("nan")}, r"penalty must be a finite number"),
    ],
)
def test_bad_kwargs_raise(cls: type, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        cls(**kwargs)


@pytest.mark.parametrize("name", DEFAULT_CASES)
def test_step_misuse_raises(name: str) -> None:
    env = CASES[name]()
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.int64(0))
    env.reset(seed=0)
    with pytest.raises(ValueError, match="action must be an integer"):
        env.step(env.action_space.n)
    for _ in range(env.episode_length):
        env.step(np.int64(0))
    with pytest.raises(RuntimeError, match="reset"):  # the episode is over
        env.step(np.int64(0))


def test_documented_returns() -> None:
    assert CopyEnv(length=10, num_symbols=8).optimal_return == 10.0
    assert CopyEnv(length=10, num_symbols=8).chance_return == pytest.approx(1.25)
    env = RepeatAfterDelayEnv(delay=5, num_symbols=8)
    assert (env.episode_length, env.optimal_return, env.chance_return) == (25, 20.0, 2.5)
    env = RepeatAfterDelayEnv(delay=3, num_symbols=4, episode_length=11)
    assert (env.optimal_return, env.chance_return) == (8.0, 2.0)
    recall = AssociativeRecallEnv(num_values=4)
    assert (recall.episode_length, recall.optimal_return, recall.chance_return) == (9, 1.0, 0.25)
    maze = PassiveTMazeEnv()
    assert (maze.corridor_length, maze.episode_length) == (100, 101)
    assert (maze.optimal_return, maze.chance_return) == (1.0, 0.5)
    assert maze.penalty == pytest.approx(-0.01)


# --------------------------------------------------------------------------------------------
# Optimal and wrong answers
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(CASES))
def test_oracle_scores_optimal_return(name: str) -> None:
    env = CASES[name]()
    oracle = make_oracle(env)
    for seed in range(100):
        episode = run_episode(env, oracle, seed=seed)
        assert episode.ret == env.optimal_return
        assert episode.infos[-1]["is_success"] is True


@pytest.mark.parametrize("name", list(CASES))
def test_optimal_action_is_the_oracles_answer(name: str) -> None:
    """The env's own label (read from its internals) against the oracle (which sees only observations):
    the same action wherever the step is scored, None exactly where no action earns anything."""
    env = CASES[name]()
    oracle = make_oracle(env)
    with pytest.raises(RuntimeError, match="reset"):
        env.optimal_action()
    for seed in range(30):
        obs, _ = env.reset(seed=seed)
        oracle.reset()
        labelled = 0
        for _ in range(env.episode_length):
            answer, label = oracle.act(obs), env.optimal_action()
            if label is None:
                assert not isinstance(env, PassiveTMazeEnv)  # every T-maze step has a right move
                # No action earns anything here: a copy of the env paid for each of them gives 0.
                for action in range(env.action_space.n):
                    probe = copy.deepcopy(env)
                    assert probe.step(np.int64(action))[1] == 0.0
            else:
                assert label == answer
                labelled += 1
            obs, *_ = env.step(np.int64(answer))
        # The symbol tasks pay 1 per scored step; every T-maze step is labelled.
        assert labelled == (env.episode_length if isinstance(env, PassiveTMazeEnv) else env.optimal_return)
    with pytest.raises(RuntimeError, match="reset"):  # the episode is over
        env.optimal_action()


@pytest.mark.parametrize("name", list(CASES))
def test_wrong_answers_score_zero(name: str) -> None:
    env = CASES[name]()
    policy = WrongAnswers(env)
    for seed in range(50):
        episode = run_episode(env, policy, seed=seed)
        assert episode.ret == 0.0
        assert episode.infos[-1]["is_success"] is False


@pytest.mark.parametrize("name", SYMBOL_CASES)
def test_symbol_tasks_reward_only_scored_steps(name: str) -> None:
    env = CASES[name]()
    num_symbols = int(env.action_space.n)
    policy = RandomPolicy(num_symbols, seed=0)
    rewarded = 0.0
    for seed in range(100):
        episode = run_episode(env, policy, seed=seed)
        for obs, reward in zip(episode.observations[:-1], episode.rewards):
            assert reward in (0.0, 1.0)
            scored = obs[-1] == 1.0  # recall flag / scored-step flag / query flag
            if not scored:
                assert reward == 0.0
            rewarded += reward
        assert not episode.observations[-1].any()  # the terminal observation is blank
    assert rewarded > 0


# --------------------------------------------------------------------------------------------
# Memory demand: a memoryless policy is at chance
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, num_fit, num_eval",
    [
        ("copy", 300, 600),
        ("copy-long", 50, 300),
        ("repeat", 300, 600),
        ("repeat-long", 100, 300),
        ("recall", 1000, 2000),
        ("recall-all-keys", 1000, 2000),
        ("tmaze", 200, 2000),
        ("tmaze-tiny", 300, 2000),
    ],
)
def test_memoryless_policy_scores_chance(name: str, num_fit: int, num_eval: int) -> None:
    env = CASES[name]()
    returns = held_out_returns(env, window=1, num_fit=num_fit, num_eval=num_eval)
    standard_error = returns.std(ddof=1) / np.sqrt(len(returns))
    assert abs(returns.mean() - env.chance_return) <= Z_TOLERANCE * standard_error + 1e-12, (
        returns.mean(),
        env.chance_return,
        standard_error,
    )
    # Chance is far from optimal, so the tolerance cannot hide a leak.
    assert Z_TOLERANCE * standard_error < 0.25 * (env.optimal_return - env.chance_return)


@pytest.mark.parametrize(
    "env_factory, window",
    [
        (lambda: CopyEnv(length=2, num_symbols=3), 4),
        (lambda: RepeatAfterDelayEnv(delay=1, num_symbols=3, episode_length=6), 2),
        (lambda: AssociativeRecallEnv(num_pairs=2, num_keys=3, num_values=2), 3),
        (lambda: PassiveTMazeEnv(corridor_length=3), 4),
    ],
)
def test_lookup_table_with_memory_beats_chance(env_factory: Callable[[], MemoryTaskEnv], window: int) -> None:
    """Control for the test above: with enough past observations the same estimator is optimal."""
    env = env_factory()
    returns = held_out_returns(env, window=window, num_fit=500, num_eval=200)
    assert returns.mean() == pytest.approx(env.optimal_return)
    assert held_out_returns(env, window=1, num_fit=500, num_eval=200).mean() < 0.5 * (env.optimal_return + env.chance_return)


def test_tmaze_cue_only_at_first_step_and_junction_flag() -> None:
    env = PassiveTMazeEnv(corridor_length=12)
    oracle = TMazeOracle()
    for seed in range(20):
        episode = run_episode(env, oracle, seed=seed)
        first = episode.observations[0]
        assert first[:2].sum() == 1.0 and first[2] == 0.0
        for t, obs in enumerate(episode.observations[1:], start=1):
            assert obs[0] == obs[1] == 0.0
            assert obs[2] == float(t >= env.corridor_length)  # at the junction from t = L on
        assert episode.rewards[:-1] == [0.0] * env.corridor_length


@pytest.mark.parametrize("corridor_length, penalty", [(5, None), (5, -0.1), (20, None)])
def test_tmaze_penalty_for_lagging(corridor_length: int, penalty: Optional[float]) -> None:
    env = PassiveTMazeEnv(corridor_length=corridor_length, penalty=penalty)
    expected_penalty = -1.0 / corridor_length if penalty is None else penalty
    for first_action in (LEFT, UP, DOWN):  # all bump into a wall at the start: one step lost
        for seed in range(4):
            env.reset(seed=seed)
            rewards = [float(env.step(np.int64(first_action))[1])]
            for _ in range(corridor_length - 1):
                rewards.append(float(env.step(np.int64(RIGHT))[1]))
            # one step behind: at x = L - 1, the junction is not reached, no turn can win
            _, reward, terminated, _, info = env.step(np.int64(UP))
            rewards.append(float(reward))
            assert terminated and info["is_success"] is False
            assert rewards[:-1] == pytest.approx([expected_penalty] * corridor_length)
            assert sum(rewards) == pytest.approx(corridor_length * expected_penalty)


def test_tmaze_can_walk_back() -> None:
    """A left move in the corridor is legal (and penalised): x goes back by one."""
    env = PassiveTMazeEnv(corridor_length=4)
    env.reset(seed=0)
    actions = [RIGHT, RIGHT, LEFT, RIGHT]
    rewards = [float(env.step(np.int64(a))[1]) for a in actions]
    assert rewards == pytest.approx([0.0, 0.0, -0.25, -0.25])
    obs, reward, terminated, _, _ = env.step(np.int64(RIGHT))  # two steps behind: x = 3 < 4
    assert terminated and reward == 0.0 and obs[2] == 0.0


# --------------------------------------------------------------------------------------------
# Seeding
# --------------------------------------------------------------------------------------------


def _trajectory(env: MemoryTaskEnv, seed: Optional[int]) -> bytes:
    policy = RandomPolicy(int(env.action_space.n), seed=7)
    episode = run_episode(env, policy, seed=seed)
    rewards = np.array(episode.rewards, dtype=np.float32)
    return np.concatenate([np.stack(episode.observations).ravel(), rewards]).tobytes()


@pytest.mark.parametrize("name", list(CASES))
def test_same_seed_same_episode(name: str) -> None:
    env_a, env_b = CASES[name](), CASES[name]()
    for seed in (0, 1, 12345):
        assert _trajectory(env_a, seed) == _trajectory(env_b, seed)
        run_episode(env_b, RandomPolicy(int(env_b.action_space.n), seed=3))  # advance b's rng
        assert _trajectory(env_a, seed) == _trajectory(env_b, seed)


@pytest.mark.parametrize("name", DEFAULT_CASES)
def test_different_seeds_differ(name: str) -> None:
    env = CASES[name]()
    expected = 2 if name == "tmaze" else 16  # the T-maze has one random bit per episode
    assert len({_trajectory(env, seed) for seed in range(16)}) == expected
    # Unseeded resets continue the generator rather than repeating the episode.
    first = _trajectory(env, 0)
    assert len({first} | {_trajectory(env, None) for _ in range(15)}) == expected


@pytest.mark.parametrize(
    "env_id, kwargs",
    [
        ("sb3_memory/Copy-v0", {"length": 3}),
        ("sb3_memory/RepeatAfterDelay-v0", {"delay": 2, "episode_length": 5}),
        ("sb3_memory/AssociativeRecall-v0", {"num_pairs": 3}),
        ("sb3_memory/PassiveTMaze-v0", {"corridor_length": 4}),
    ],
)
def test_sb3_vec_env(env_id: str, kwargs: dict) -> None:
    """The registered ids work in an SB3 vectorised env (auto-reset, Monitor, success info)."""
    from stable_baselines3.common.env_util import make_vec_env

    vec_env = make_vec_env(env_id, n_envs=2, seed=0, env_kwargs=kwargs)
    episode_length = vec_env.get_attr("episode_length")[0]
    vec_env.reset()
    for step in range(2 * episode_length):
        _, _, dones, infos = vec_env.step(np.array([vec_env.action_space.sample() for _ in range(2)]))
        assert dones.tolist() == [(step + 1) % episode_length == 0] * 2
        for done, info in zip(dones, infos):
            if done:
                assert info["episode"]["l"] == episode_length
                assert isinstance(info["is_success"], bool)
                assert not info["TimeLimit.truncated"]
    vec_env.close()


@pytest.mark.parametrize("name", DEFAULT_CASES)
def test_render(name: str) -> None:
    env = CASES[name]()
    assert env.render() is None  # no render mode
    for mode in ("ansi", "rgb_array"):
        env = type(env)(render_mode=mode)
        obs, _ = env.reset(seed=0)
        frame = env.render()
        if mode == "ansi":
            assert isinstance(frame, str) and str(obs.astype(int).tolist()) in frame
        else:
            assert isinstance(frame, np.ndarray)
            assert frame.shape == (8, 8 * obs.shape[0], 3) and frame.dtype == np.uint8
            assert (frame[0, ::8, 0] == (obs * 255).astype(np.uint8)).all()
    with pytest.raises(ValueError, match="render_mode must be None or one of"):
        type(env)(render_mode="human")
