"""What a new user hit (issue tables): each case gets correct behaviour or an error that names the fix."""

import argparse
import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from stable_baselines3.common.env_util import make_vec_env

from sb3_memory import MemoryA2C, MemoryDQN, MemoryPPO, MemorySAC, viz
from sb3_memory.common.algorithm_checks import check_action_space
from sb3_memory.dqn.policies import MemoryDQNPolicy as DQNPolicy
from sb3_memory.memory import DNCCell, NTMCell
from sb3_memory.memory.checks import check_float, check_int

TINY = dict(memory_units=4, memory_unit_size=3, controller_dim=8)


def tiny(policy: str = "NTMPolicy") -> dict:
    """A fresh dict each time: SB3's A2C writes its optimizer into the policy_kwargs it is given."""
    return dict(controller_dim=8) if "LSTM" in policy else dict(TINY)


class SpaceEnv(gym.Env):
    """Observations from any space; reward for action 1 when the first observation entry is odd."""

    def __init__(self, observation_space: spaces.Space) -> None:
        self.observation_space, self.action_space = observation_space, spaces.Discrete(2)
        self._t = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.observation_space.seed(seed)
        self._t = 0
        return self.observation_space.sample(), {}

    def step(self, action):
        self._t += 1
        obs = self.observation_space.sample()
        return obs, float(action), self._t >= 6, False, {}


MULTI_DISCRETE = spaces.MultiDiscrete([3, 4])


@pytest.mark.parametrize("policy", ["NTMPolicy", "DNCPolicy", "LSTMPolicy"])
def test_multidiscrete_observations_train(policy):
    env = make_vec_env(lambda: SpaceEnv(MULTI_DISCRETE), n_envs=2)
    model = MemoryPPO(policy, env, n_steps=8, batch_size=16, policy_kwargs=tiny(policy))
    assert model.policy.core.input_dim == 7 and type(model.policy.core.input_dim) is int  # one-hot 3 + 4
    # SB3's preprocessing one-hot encodes each entry: the core sees which code, not its number.
    features = model.policy.extract_features(model.policy.obs_to_tensor(np.array([[2, 3], [0, 1]]))[0])
    features = features[0] if isinstance(features, tuple) else features
    expected = th.tensor([[0, 0, 1, 0, 0, 0, 1], [1, 0, 0, 0, 1, 0, 0]], dtype=th.float32)
    th.testing.assert_close(features, expected, rtol=0, atol=0)
    before = [p.detach().clone() for p in model.policy.parameters()]
    model.learn(32)
    assert model.num_timesteps == 32
    assert any(not th.equal(a, b) for a, b in zip(before, model.policy.parameters())), "the update changed nothing"


@pytest.mark.parametrize("algo", [MemoryPPO, MemoryA2C])
def test_multidiscrete_inside_a_dict_trains(algo):
    space = spaces.Dict({"codes": MULTI_DISCRETE, "x": spaces.Box(-1, 1, (2,), np.float32)})
    env = make_vec_env(lambda: SpaceEnv(space), n_envs=2)
    sizes = dict(n_steps=8, batch_size=16) if algo is MemoryPPO else dict(n_steps=8)
    model = algo("MultiInputDNCPolicy", env, **sizes, policy_kwargs=tiny())
    assert model.policy.core.input_dim == 9  # one-hot 3 + 4, and the box's 2
    before = [p.detach().clone() for p in model.policy.parameters()]
    model.learn(32)
    assert model.num_timesteps == 32
    assert any(not th.equal(a, b) for a, b in zip(before, model.policy.parameters())), "the update changed nothing"


def test_numpy_integers_are_accepted_wherever_ints_are():
    kwargs = {key: np.int64(value) for key, value in TINY.items()}
    env = make_vec_env("sb3_memory/PassiveTMaze-v0", n_envs=2, env_kwargs=dict(corridor_length=np.int32(3)))
    model = MemoryPPO("NTMPolicy", env, n_steps=8, batch_size=16, sequence_length=np.int64(4), policy_kwargs=kwargs)
    assert model.policy.core.memory_units == 4 and type(model.policy.core.memory_units) is int
    model.learn(np.int64(16))
    assert model.num_timesteps == 16
    assert NTMCell(np.int64(5), shift_range=np.int8(1), num_write_heads=np.uint8(2)).num_write_heads == 2
    assert DNCCell(5, memory_init=np.float32(0.5)).memory_init == 0.5
    with pytest.raises(ValueError, match="memory_units must be an integer >= 1, got True"):
        NTMCell(5, memory_units=True)
    with pytest.raises(ValueError, match="must be an integer"):
        check_int("n", np.float64(3.0))
    with pytest.raises(ValueError, match="finite number"):
        check_float("x", np.float32("nan"))


@pytest.mark.parametrize("policy", ["NTMPolicy", "DNCPolicy", "LSTMPolicy", "CnnDNCPolicy"])
def test_dict_observations_with_a_box_policy_name_the_multi_input_policy(policy):
    space = spaces.Dict({"x": spaces.Box(-1, 1, (2,), np.float32)})
    env = make_vec_env(lambda: SpaceEnv(space), n_envs=1)
    name = policy.replace("Cnn", "")
    with pytest.raises(ValueError, match=f"use 'MultiInput{name}'"):
        MemoryPPO(policy, env, n_steps=8, batch_size=8, policy_kwargs=tiny())


@pytest.mark.parametrize("episode_start", [np.ones(3, dtype=bool), True, np.zeros((2, 2))])
def test_predict_names_a_wrong_episode_start(episode_start):
    env = make_vec_env("sb3_memory/PassiveTMaze-v0", n_envs=2, env_kwargs=dict(corridor_length=3))
    model = MemoryPPO("DNCPolicy", env, n_steps=8, batch_size=16, policy_kwargs=tiny())
    with pytest.raises(ValueError, match=r"episode_start must have one entry per environment \(2\)"):
        model.predict(env.reset(), episode_start=episode_start)


def test_a_degenerate_default_sequence_length_warns_with_the_fix():
    env = make_vec_env("sb3_memory/PassiveTMaze-v0", n_envs=1, env_kwargs=dict(corridor_length=3))
    with pytest.warns(UserWarning, match=r"sequence_length defaults to 1.*batch_size that is a multiple of 32 \(e.g. 64\)"):
        model = MemoryPPO("NTMPolicy", env, n_steps=64, batch_size=63, policy_kwargs=tiny())
    assert model.sequence_length == 1
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert MemoryPPO("NTMPolicy", env, n_steps=64, batch_size=64, policy_kwargs=tiny()).sequence_length == 32
        assert MemoryPPO("NTMPolicy", env, n_steps=64, batch_size=63, sequence_length=1, policy_kwargs=tiny())
    assert not [w for w in caught if "sequence_length" in str(w.message)]  # chosen, or long enough: no warning


@pytest.mark.parametrize("steps", [-5, 2.5, "100"])
def test_learn_rejects_a_bad_budget(steps):
    env = make_vec_env("sb3_memory/PassiveTMaze-v0", n_envs=1, env_kwargs=dict(corridor_length=3))
    model = MemoryA2C("NTMPolicy", env, policy_kwargs=tiny())
    with pytest.raises(ValueError, match="total_timesteps must be an integer >= 0"):
        model.learn(steps)
    assert model.num_timesteps == 0


@pytest.mark.parametrize("algo", [MemoryPPO, MemoryA2C])
def test_learn_takes_integral_floats_as_sb3_does(algo):
    env = make_vec_env("sb3_memory/PassiveTMaze-v0", n_envs=2, env_kwargs=dict(corridor_length=3))
    sizes = dict(n_steps=8, batch_size=16) if algo is MemoryPPO else dict(n_steps=8)
    model = algo("NTMPolicy", env, **sizes, policy_kwargs=tiny())
    model.learn(3.2e1)
    assert model.num_timesteps == 32
    with pytest.raises(ValueError, match=r"total_timesteps must be an integer >= 0 .*whole\), got 32.5"):
        model.learn(32.5)


def test_a_recurrent_ppo_policy_name_points_at_its_match():
    env = make_vec_env("sb3_memory/PassiveTMaze-v0", n_envs=2)
    with pytest.raises(ValueError, match=r"'MlpLstmPolicy' unknown to MemoryPPO: choose one of 'NTMPolicy', .*'LSTMPolicy'"):
        MemoryPPO("MlpLstmPolicy", env)
    with pytest.raises(ValueError, match="CnnLstmPolicy is 'CnnLSTMPolicy' here"):
        MemoryA2C("CnnLstmPolicy", env)
    with pytest.raises(ValueError, match="'NTM' unknown to MemoryPPO: choose one of 'NTMPolicy'") as error:
        MemoryPPO("NTM", env)
    assert "sb3-contrib" not in str(error.value)


class RewardAtStep(SpaceEnv):
    """Gives ``reward`` at the episode's third step and after."""

    def __init__(self, reward: float) -> None:
        super().__init__(spaces.Box(-1, 1, (2,), np.float32))
        self.reward = reward

    def step(self, action):
        obs, _, terminated, truncated, info = super().step(action)
        return obs, self.reward if self._t >= 3 else 0.0, terminated, truncated, info


@pytest.mark.parametrize("algo", [MemoryPPO, MemoryA2C])
def test_a_nan_reward_is_named_before_the_update(algo):
    env = make_vec_env(lambda: RewardAtStep(float("nan")), n_envs=2)
    sizes = dict(n_steps=8, batch_size=16) if algo is MemoryPPO else dict(n_steps=8)
    model = algo("NTMPolicy", env, **sizes, policy_kwargs=tiny())
    before = [p.detach().clone() for p in model.policy.parameters()]
    with pytest.raises(ValueError, match=r"non-finite reward \(NaN/Inf\) in env\(s\) \[0, 1\] at step 6: .*VecCheckNan"):
        model.learn(16)
    assert all(th.equal(a, b) for a, b in zip(before, model.policy.parameters())), "a NaN reached the update"


def test_overflowing_returns_are_named_as_such():
    env = make_vec_env(lambda: RewardAtStep(3e38), n_envs=1)  # finite rewards whose sum overflows float32
    model = MemoryPPO("LSTMPolicy", env, n_steps=8, batch_size=8, gamma=1.0, policy_kwargs=tiny("LSTMPolicy"))
    with pytest.raises(ValueError, match=r"non-finite (return|advantage) .*scale the rewards down"):
        model.learn(8)


# --------------------------------------------------------------------------------------------
# Errors that name the fix: viz, load, policy names, action spaces, export, the zoo's configs
# --------------------------------------------------------------------------------------------


def tmaze(n_envs: int = 1):
    return make_vec_env("sb3_memory/PassiveTMaze-v0", n_envs=n_envs, env_kwargs=dict(corridor_length=3))


def saved_dqn(tmp_path, policy: str = "NTMPolicy"):
    model = MemoryDQN(policy, tmaze(), buffer_size=64, learning_starts=16, policy_kwargs=tiny(policy))
    model.save(tmp_path / "dqn.zip")
    return tmp_path / "dqn.zip"


def test_viz_of_an_lstm_policy_says_there_is_no_memory_to_draw(tmp_path, monkeypatch):
    model = MemoryPPO("LSTMPolicy", tmaze(), n_steps=8, batch_size=8, policy_kwargs=tiny("LSTMPolicy"))
    steps = []
    monkeypatch.setattr(model, "predict", lambda *args, **kwargs: steps.append(1))
    expected = r"LSTMPolicy has no external memory to draw .*: sb3_memory\.viz draws .* NTMPolicy and DNCPolicy models"
    with pytest.raises(ValueError, match=expected):
        viz.record_episode(model, gym.make("sb3_memory/PassiveTMaze-v0", corridor_length=3))
    assert not steps, "the error comes before the episode runs"
    model.save(tmp_path / "lstm.zip")
    made = []
    monkeypatch.setattr(gym, "make", lambda *args, **kwargs: made.append(args))
    with pytest.raises(ValueError, match=expected):
        viz.main(["--model", str(tmp_path / "lstm.zip"), "--env", "sb3_memory/PassiveTMaze-v0"])
    assert not made, "the error comes before the environment is made"


def test_viz_reads_the_algorithm_from_the_file_and_names_a_wrong_algo(tmp_path):
    path = saved_dqn(tmp_path)
    assert viz.algorithm_of_file(path) == "memory_dqn"
    with pytest.raises(ValueError, match=r"--algo memory_ppo, but .*dqn.zip holds a memory_dqn model: pass --algo memory_dqn"):
        viz.main(["--algo", "memory_ppo", "--model", str(path), "--env", "sb3_memory/PassiveTMaze-v0"])
    out = tmp_path / "trace.png"
    viz.main(
        ["--model", str(path), "--env", "sb3_memory/PassiveTMaze-v0", "--env-kwargs", "corridor_length:3", "--out", str(out)]
    )
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_loading_another_algorithms_file_names_the_algorithm_to_load_it_with(tmp_path):
    path = saved_dqn(tmp_path)
    expected = r"dqn.zip holds a MemoryDQN model .*not a MemoryPPO one: load it with MemoryDQN\.load"
    with pytest.raises(ValueError, match=expected):
        MemoryPPO.load(path)
    with pytest.raises(ValueError, match=expected.replace("dqn.zip ", ".*")), open(path, "rb") as file:
        MemoryPPO.load(file)  # a file-like: read, then rewound for SB3
    assert isinstance(MemoryDQN.load(path).policy, DQNPolicy)  # the right class still loads it
    ppo = MemoryPPO("NTMPolicy", tmaze(), n_steps=8, batch_size=8, policy_kwargs=tiny())
    ppo.save(tmp_path / "ppo")  # without the suffix, as SB3 allows
    assert MemoryPPO.load(tmp_path / "ppo").n_steps == 8


@pytest.mark.parametrize(
    "algo, policy, expected",
    [
        (MemoryDQN, "MlpPolicy", r"'MlpPolicy' unknown to MemoryDQN: choose one of 'NTMPolicy', .*'LSTMPolicy'.*; "
         r"for a memory use 'NTMPolicy' .*, for SB3's memoryless MlpPolicy use stable_baselines3\.DQN"),
        (MemorySAC, "MlpLstmPolicy", r"'MlpLstmPolicy' unknown to MemorySAC: choose one of 'NTMPolicy', .*"
         r"sb3-contrib's MlpLstmPolicy is 'LSTMPolicy' here"),
        (MemorySAC, "MlpPolicy", r"for SB3's memoryless MlpPolicy use stable_baselines3\.SAC"),
    ],
)  # fmt: skip
def test_off_policy_algorithms_name_their_policies(algo, policy, expected):
    env_id = "Pendulum-v1" if algo is MemorySAC else "CartPole-v1"
    with pytest.raises(ValueError, match=expected):
        algo(policy, env_id)


@pytest.mark.parametrize(
    "algo, env_id, expected",
    [
        (MemoryDQN, "Pendulum-v1", r"MemoryDQN takes Discrete actions only, got Box\(.*\): use MemorySAC for Box actions, "
         r"or MemoryPPO / MemoryA2C \(any action space\)"),
        (MemorySAC, "CartPole-v1", r"MemorySAC takes Box actions only, got Discrete\(2\): use MemoryDQN for Discrete "
         r"actions, or MemoryPPO / MemoryA2C"),
    ],
)  # fmt: skip
def test_off_policy_algorithms_name_the_algorithm_for_an_action_space(algo, env_id, expected):
    with pytest.raises(ValueError, match=expected):
        algo("NTMPolicy", env_id)
    with pytest.raises(ValueError, match=expected):
        algo("NTMPolicy", make_vec_env(env_id, n_envs=2))
    space = spaces.MultiDiscrete([2, 3])
    with pytest.raises(ValueError, match=rf"{algo.__name__} takes .* got MultiDiscrete\(\[2 3\]\): use MemoryPPO / MemoryA2C"):
        check_action_space(algo.__name__, space)


def test_export_of_an_off_policy_model_says_what_is_supported(tmp_path):
    from sb3_memory.export import export_onnx

    model = MemoryDQN("NTMPolicy", tmaze(), buffer_size=64, policy_kwargs=tiny())
    expected = (
        r"exports the actor-critic policies of MemoryPPO, MemoryA2C and MaskableMemoryPPO .*got a MemoryDQN model's "
        r"NTMPolicy: MemoryDQN and MemorySAC policies.* not supported yet"
    )
    with pytest.raises(TypeError, match=expected):
        export_onnx(model, tmp_path / "policy.onnx")
    assert not (tmp_path / "policy.onnx").exists()


def test_zoo_train_without_conf_reads_the_packages_config(tmp_path):
    from sb3_memory import zoo
    from sb3_memory.zoo_configs import config_path

    def manager(algo: str, env_id: str = "sb3_memory/PassiveTMaze-v0", **kwargs):
        return zoo.MemoryExperimentManager(argparse.Namespace(), algo, env_id, str(tmp_path), verbose=0, **kwargs)

    dqn = manager("memory_dqn")
    assert dqn.config == str(config_path("memory_dqn"))
    hyperparams, _ = dqn.read_hyperparameters()
    assert hyperparams["policy"] == "NTMPolicy" and hyperparams["burn_in"] == 4
    assert manager("maskable_memory_ppo").config == str(config_path("memory_ppo"))
    assert manager("memory_ppo", config="mine.yml").config == "mine.yml"
    assert "rl_zoo3" in manager("ppo").config  # other algorithms keep rl-zoo3's own default
    with pytest.raises(ValueError, match=r"memory_dqn.yml \(the default config of memory_dqn\) has no entry for CartPole-v1"
                       r".*Pass your own file with -conf"):  # fmt: skip
        manager("memory_dqn", "CartPole-v1").read_hyperparameters()


def test_citation_and_license_agree_with_the_package():
    """CITATION.cff (validated against the CFF 1.2.0 schema when written) names this version, MIT and both papers."""
    import re
    from pathlib import Path

    import yaml

    root = Path(__file__).resolve().parents[1]
    citation = yaml.safe_load((root / "CITATION.cff").read_text(encoding="utf-8"))
    pyproject = (root / "pyproject.toml").read_text()
    version = re.search(r'(?m)^version = "([^"]+)"', pyproject)
    assert version is not None and citation["cff-version"] == "1.2.0" and citation["version"] == version.group(1)
    assert citation["license"] == "MIT" and re.search(r'(?m)^license = .*"MIT"', pyproject)
    assert (root / "LICENSE").read_text().startswith("MIT License\n\nCopyright (c) 2026 the sb3-memory developers")
    identifiers = {ref["title"]: ref.get("doi") or ref["identifiers"][0]["value"] for ref in citation["references"]}
    assert identifiers == {
        "Neural Turing Machines": "arXiv:1410.5401",
        "Hybrid computing using a neural network with dynamic external memory": "10.1038/nature20101",
    }
    dnc = citation["references"][1]
    assert (dnc["journal"], dnc["volume"], dnc["start"], dnc["end"], dnc["year"]) == ("Nature", 538, 471, 476, 2016)
    assert f"## [{version.group(1)}] - Unreleased" in (root / "CHANGELOG.md").read_text()
