"""ONNX export: whole episodes in onnxruntime beside model.predict, state carried by each side."""

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from stable_baselines3.common.env_util import make_vec_env

from sb3_memory import MemoryPPO
from sb3_memory.export import export_onnx

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


class EpisodesEnv(gym.Env):
    """Random observations from any space, episodes of 3 to 7 steps, reward from the action."""

    def __init__(self, observation_space: spaces.Space, action_space: spaces.Space) -> None:
        self.observation_space, self.action_space = observation_space, action_space
        self._t, self._length = 0, 5

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.observation_space.seed(int(self.np_random.integers(2**31)))
        self._t, self._length = 0, int(self.np_random.integers(3, 8))
        return self.observation_space.sample(), {}

    def step(self, action):
        self._t += 1
        reward = float(np.asarray(action, dtype=np.float32).reshape(-1)[0])
        return self.observation_space.sample(), reward, self._t >= self._length, False, {}


OBSERVATIONS = {
    "box": (spaces.Box(-1, 1, (3,), np.float32), ""),
    "discrete": (spaces.Discrete(5), ""),
    "image": (spaces.Box(0, 255, (36, 36, 1), np.uint8), "Cnn"),
}
CORES = {
    "NTM": dict(memory_units=6, memory_unit_size=4, controller_dim=16),
    "DNC": dict(memory_units=6, memory_unit_size=4, controller_dim=16),
    "LSTM": dict(controller_dim=16),
}


def run_side_by_side(model, env, path, episodes: int = 20, share_state: bool = False):
    """
    Step both for ``episodes`` finished episodes; return the largest action, value and state gaps.

    Each side carries its own state, unless ``share_state``: then the graph starts every step from
    PyTorch's state. The DNC needs that: its allocation sorts usages, and slots with equal
    histories tie; any two implementations can round such a tie differently and from then on
    allocate different slots (see tests/test_native.py). Step by step, they must agree.
    """
    session = ort.InferenceSession(str(path))
    n = env.num_envs
    obs = env.reset()
    state = model.policy.initial_state(n).numpy()
    onnx_state = np.zeros((n, model.policy.state_size), np.float32)  # reset inside the graph
    starts = np.ones(n, dtype=bool)
    finished, gaps = 0, dict(action=0.0, value=0.0, state=0.0)
    while finished < episodes:
        with th.no_grad():
            obs_tensor = model.policy.obs_to_tensor(obs)[0]
            value = model.policy.predict_values(obs_tensor, th.as_tensor(state), th.as_tensor(starts, dtype=th.float32))
        state_before = state
        action, state = model.predict(obs, state=state, episode_start=starts, deterministic=True)
        given = state_before if share_state else onnx_state
        inputs = {"observation": np.asarray(obs), "state": given, "episode_start": starts.astype(np.float32)}
        onnx_action, onnx_value, onnx_state = session.run(None, inputs)
        gaps["action"] = max(gaps["action"], float(np.abs(onnx_action.reshape(action.shape) - action).max()))
        gaps["state"] = max(gaps["state"], float(np.abs(onnx_state - state).max()))
        gaps["value"] = max(gaps["value"], float(np.abs(onnx_value - value.numpy()).max()))
        obs, _, dones, _ = env.step(action)
        starts = dones
        finished += int(dones.sum())
    return gaps


@pytest.mark.parametrize("observation", list(OBSERVATIONS))
@pytest.mark.parametrize("core", list(CORES))
def test_onnx_and_pytorch_agree_over_whole_episodes(core, observation, tmp_path):
    observation_space, prefix = OBSERVATIONS[observation]
    env = make_vec_env(lambda: EpisodesEnv(observation_space, spaces.Discrete(3)), n_envs=2, seed=0)
    critic = "separate" if core == "DNC" else "shared"
    model = MemoryPPO(f"{prefix}{core}Policy", env, n_steps=16, batch_size=32, seed=0,
                      policy_kwargs=dict(critic_memory=critic, **CORES[core]))  # fmt: skip
    model.learn(64)
    path = export_onnx(model, tmp_path / "policy.onnx")
    metadata = {prop.key: prop.value for prop in onnx.load(str(path)).metadata_props}
    assert int(metadata["state_size"]) == model.policy.state_size
    # The model's own env: images as the policy takes them (channel-first, SB3's VecTransposeImage).
    gaps = run_side_by_side(model, model.get_env(), path, share_state=core == "DNC")
    assert gaps["action"] == 0  # discrete actions agree exactly
    assert gaps["state"] < 1e-5 and gaps["value"] < 1e-5, gaps


def test_continuous_actions_agree_within_tolerance(tmp_path):
    env = make_vec_env(lambda: EpisodesEnv(OBSERVATIONS["box"][0], spaces.Box(-1, 1, (2,), np.float32)), n_envs=2, seed=0)
    model = MemoryPPO("DNCPolicy", env, n_steps=16, batch_size=32, seed=0, policy_kwargs=dict(CORES["DNC"]))
    model.learn(64)
    gaps = run_side_by_side(model, env, export_onnx(model, tmp_path / "policy.onnx"), share_state=True)
    assert gaps["action"] < 1e-5 and gaps["state"] < 1e-5 and gaps["value"] < 1e-5, gaps


def test_unsupported_policies_are_named(tmp_path):
    space = spaces.Dict({"x": spaces.Box(-1, 1, (2,), np.float32)})
    env = make_vec_env(lambda: EpisodesEnv(space, spaces.Discrete(2)), n_envs=1)
    model = MemoryPPO("MultiInputNTMPolicy", env, n_steps=8, batch_size=8, policy_kwargs=dict(CORES["NTM"]))
    with pytest.raises(ValueError, match="Dict observations are not supported"):
        export_onnx(model, tmp_path / "policy.onnx")
    with pytest.raises(TypeError, match="exports the actor-critic policies of MemoryPPO, MemoryA2C and MaskableMemoryPPO"):
        export_onnx(object(), tmp_path / "policy.onnx")  # type: ignore[arg-type]


@pytest.mark.parametrize("policy", ["NTMPolicy", "DNCPolicy"])
def test_sparse_cores_are_refused_before_tracing(policy, tmp_path):
    env = make_vec_env(lambda: EpisodesEnv(OBSERVATIONS["box"][0], spaces.Discrete(2)), n_envs=1)
    kwargs = dict(CORES[policy[:3]], sparse_top_k=2, backend="reference")
    model = MemoryPPO(policy, env, n_steps=8, batch_size=8, policy_kwargs=kwargs)
    with pytest.raises(ValueError, match=r"sparse cores \(sparse_top_k\) is not supported yet"):
        export_onnx(model, tmp_path / "policy.onnx")
    assert not (tmp_path / "policy.onnx").exists()


def test_gsde_exports_unless_squashed(tmp_path, monkeypatch):
    """Unsquashed gSDE exports and matches predict; squash_output is refused before any tracing."""
    env = make_vec_env(lambda: EpisodesEnv(OBSERVATIONS["box"][0], spaces.Box(-1, 1, (2,), np.float32)), n_envs=2, seed=0)
    model = MemoryPPO("NTMPolicy", env, n_steps=16, batch_size=32, seed=0, use_sde=True, policy_kwargs=dict(CORES["NTM"]))
    model.learn(32)
    gaps = run_side_by_side(model, env, export_onnx(model, tmp_path / "policy.onnx"), episodes=8)
    assert gaps["action"] < 1e-5 and gaps["state"] < 1e-5 and gaps["value"] < 1e-5, gaps
    squashed = MemoryPPO(
        "NTMPolicy", env, n_steps=16, batch_size=32, use_sde=True, policy_kwargs=dict(squash_output=True, **CORES["NTM"])
    )
    traced = []
    monkeypatch.setattr(th.onnx, "export", lambda *args, **kwargs: traced.append(args))
    with pytest.raises(ValueError, match=r"squashed actions \(gSDE with squash_output=True\) is not supported yet"):
        export_onnx(squashed, tmp_path / "squashed.onnx")
    assert traced == []


def test_export_creates_its_folder_and_writes_one_file(tmp_path):
    env = make_vec_env(lambda: EpisodesEnv(OBSERVATIONS["box"][0], spaces.Discrete(3)), n_envs=1, seed=0)
    model = MemoryPPO("LSTMPolicy", env, n_steps=8, batch_size=8, seed=0, policy_kwargs=dict(CORES["LSTM"]))
    target = tmp_path / "new" / "folder" / "policy.onnx"
    path = export_onnx(model, target)
    assert path == target and sorted(p.name for p in target.parent.iterdir()) == ["policy.onnx"]
    session = ort.InferenceSession(str(path))  # self-contained: loads with no side file
    assert [i.name for i in session.get_inputs()] == ["observation", "state", "episode_start"]
