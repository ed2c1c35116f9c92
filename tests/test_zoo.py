"""rl-zoo3 integration (sb3_memory.zoo and zoo_configs/): train, enjoy, configs, samplers, distributed tuning."""

import argparse
import hashlib
import inspect
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import optuna
import pytest
import torch
import yaml
from gymnasium.spaces import MultiDiscrete
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from rl_zoo3.exp_manager import ExperimentManager
from rl_zoo3.utils import ALGOS
from sb3_contrib import RecurrentPPO
from sb3_contrib.common.recurrent.policies import RecurrentActorCriticPolicy
from stable_baselines3 import PPO
from stable_baselines3.common.policies import ActorCriticPolicy

from sb3_memory import DNCPolicy, MemoryA2C, MemoryDQN, MemoryPPO, NTMPolicy, zoo
from sb3_memory.common.callbacks import LengthCurriculum
from sb3_memory.dqn import NTMPolicy as DQNNTMPolicy
from sb3_memory.zoo_configs import CONFIG_DIR

optuna.logging.set_verbosity(optuna.logging.WARNING)

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = CONFIG_DIR
CONFIG_FILES = {algo: CONFIGS / f"{algo}.yml" for algo in ("memory_ppo", "memory_a2c", "ppo_lstm", "ppo")}
ENV_IDS = [
    "CartPoleNoVel-v1",
    "PendulumNoVel-v1",
    "sb3_memory/Copy-v0",
    "sb3_memory/RepeatAfterDelay-v0",
    "sb3_memory/AssociativeRecall-v0",
    "sb3_memory/PassiveTMaze-v0",
    "sb3_memory/BinaryCopy-v0",
    "sb3_memory/BinaryAssociativeRecall-v0",
]
# The capacity tasks: a DNC of 64 slots behind a 128-unit controller (RecurrentPPO: 128 units too).
CAPACITY_TASKS = ("sb3_memory/BinaryCopy-v0", "sb3_memory/BinaryAssociativeRecall-v0")
DEFAULT_ENV_KWARGS = {
    "sb3_memory/BinaryCopy-v0": {"bits": 8, "min_length": 1, "max_length": 20},
    "sb3_memory/BinaryAssociativeRecall-v0": {"bits": 8, "item_size": 3, "min_items": 2, "max_items": 6},
    "sb3_memory/Copy-v0": {"length": 10, "num_symbols": 8},
    "sb3_memory/RepeatAfterDelay-v0": {"delay": 5},
    "sb3_memory/AssociativeRecall-v0": {"num_pairs": 8},
    "sb3_memory/PassiveTMaze-v0": {"corridor_length": 100},
}
TMAZE = "sb3_memory/PassiveTMaze-v0"

# Cheap trial parameters for sample_memory_ppo_params (n_steps 32, batch_size 32, one epoch).
CHEAP_PPO_PARAMS = {
    "batch_size_pow": 5,
    "n_steps_pow": 5,
    "one_minus_gamma": 0.01,
    "one_minus_gae_lambda": 0.05,
    "learning_rate": 3e-4,
    "ent_coef": 0.01,
    "clip_range": 0.2,
    "n_epochs": 1,
    "max_grad_norm": 0.5,
    "net_arch": "tiny",
    "activation_fn": "tanh",
    "memory_units": 16,
    "memory_unit_size": 8,
    "num_read_heads": 1,
    "controller_dim": 32,
    "max_sequence_length": 16,
}


def load_config(algo: str) -> dict:
    with open(CONFIG_FILES[algo]) as file:
        return yaml.safe_load(file)


def zoo_command(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, "-m", "sb3_memory.zoo", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def make_manager(algo: str, env_id: str, log_folder: Path, **kwargs) -> ExperimentManager:
    kwargs.setdefault("config", str(CONFIG_FILES.get(algo, CONFIG_FILES["memory_ppo"])))
    return zoo.MemoryExperimentManager(
        argparse.Namespace(),
        algo,
        env_id,
        str(log_folder),
        eval_freq=-1,
        seed=0,
        verbose=0,
        device="cpu",
        **kwargs,
    )


# --------------------------------------------------------------------------------------------
# Registration
# --------------------------------------------------------------------------------------------


def test_registration_is_idempotent():
    from rl_zoo3.hyperparams_opt import HYPERPARAMS_CONVERTER, HYPERPARAMS_SAMPLER

    zoo.register()
    zoo.register()
    assert ALGOS["memory_ppo"] is MemoryPPO and ALGOS["memory_a2c"] is MemoryA2C
    assert HYPERPARAMS_SAMPLER["memory_ppo"] is zoo.sample_memory_ppo_params
    assert HYPERPARAMS_SAMPLER["memory_a2c"] is zoo.sample_memory_a2c_params
    assert HYPERPARAMS_CONVERTER["memory_ppo"] is zoo.convert_memory_onpolicy_params
    # Nothing of rl-zoo3 is patched: its class and train() are as installed.
    import rl_zoo3.train

    for name in ("objective", "load_trial", "create_callbacks", "read_hyperparameters", "__init__"):
        assert getattr(ExperimentManager, name).__module__ == "rl_zoo3.exp_manager", name
    assert rl_zoo3.train.ExperimentManager is ExperimentManager
    import gymnasium

    for env_id in ENV_IDS:
        assert env_id in gymnasium.registry


# sha256 of rl-zoo3 2.9.2's train(): sb3_memory.zoo points the ExperimentManager name it builds at
# MemoryExperimentManager for the call. When an upgrade changes train(), review that this still holds
# (it builds the manager by that global name, then setup_experiment / learn / save_trained_model or
# hyperparameters_optimization), then record the new hash.
RL_ZOO3_TRAIN_SHA256 = "7138a19afaa9a80d1adc2bc2ce17a9ec4bd8c933aa6d1a83ddc837d288096171"


def test_installed_rl_zoo3_train_is_the_one_reviewed():
    import rl_zoo3.train

    digest = hashlib.sha256(inspect.getsource(rl_zoo3.train.train).encode()).hexdigest()
    assert digest == RL_ZOO3_TRAIN_SHA256, "rl_zoo3.train.train changed: review sb3_memory.zoo's use of it (see above)"


def test_train_builds_the_subclass_for_the_call_only(monkeypatch):
    import rl_zoo3.train

    built = []
    monkeypatch.setattr(rl_zoo3.train, "train", lambda: built.append(rl_zoo3.train.ExperimentManager))
    zoo._run_train()
    assert built == [zoo.MemoryExperimentManager]
    assert rl_zoo3.train.ExperimentManager is ExperimentManager
    with pytest.raises(ZeroDivisionError), zoo._train_with_memory_experiment_manager():
        1 / 0  # noqa: B018
    assert rl_zoo3.train.ExperimentManager is ExperimentManager  # restored after an error too


def test_main_rejects_unknown_subcommand(capsys):
    assert zoo.main(["no_such_command"]) == 2
    assert "unknown subcommand" in capsys.readouterr().err
    assert zoo.main([]) == 2


# --------------------------------------------------------------------------------------------
# (a) train, (b) enjoy
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained_tmaze(tmp_path_factory) -> Path:
    log_folder = tmp_path_factory.mktemp("zoo_logs")
    result = zoo_command(
        "train", "--algo", "memory_ppo", "--env", TMAZE,
        "-conf", "zoo_configs/memory_ppo.yml",  # from the checkout, as the README says
        "-n", "256", "--log-folder", str(log_folder), "--eval-freq", "-1", "--seed", "0", "--num-threads", "1",
        "-params", "n_envs:2", "n_steps:64", "batch_size:64", "sequence_length:32", "n_epochs:1",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return log_folder


def test_train_saves_loadable_model(trained_tmaze):
    run_folder = trained_tmaze / "memory_ppo" / "sb3_memory-PassiveTMaze-v0_1"
    model_path = run_folder / "sb3_memory-PassiveTMaze-v0.zip"
    assert model_path.is_file()
    model = MemoryPPO.load(model_path, device="cpu")
    assert isinstance(model.policy, NTMPolicy)
    assert model.num_timesteps == 256
    assert (model.n_steps, model.batch_size, model.sequence_length) == (64, 64, 32)
    assert model.policy.critic_memory == "detached"
    assert model.policy.core_kwargs == {
        "memory_units": 16, "memory_unit_size": 16, "num_read_heads": 1, "controller_dim": 64,
    }  # fmt: skip
    saved = yaml.load((run_folder / "sb3_memory-PassiveTMaze-v0" / "config.yml").read_text(), Loader=yaml.UnsafeLoader)
    assert dict(saved)["env_kwargs"] == {"corridor_length": 100}


def test_enjoy_runs(trained_tmaze):
    result = zoo_command(
        "enjoy", "--algo", "memory_ppo", "--env", TMAZE, "-f", str(trained_tmaze),
        "-n", "20", "--no-render", "--num-threads", "1",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "sb3_memory-PassiveTMaze-v0.zip" in result.stdout


def test_enjoy_threads_memory_state(trained_tmaze, monkeypatch):
    """rl-zoo3's enjoy must hand our predict the state it returned, and episode starts."""
    calls = []
    original_predict = MemoryPPO.predict

    def spy(self, observation, state=None, episode_start=None, deterministic=False):
        action, new_state = original_predict(self, observation, state, episode_start, deterministic)
        calls.append((state, None if episode_start is None else np.array(episode_start), new_state))
        return action, new_state

    monkeypatch.setattr(MemoryPPO, "predict", spy)
    n_steps = 105  # one whole 101-step episode and the start of the next
    assert zoo.main(["enjoy", "--algo", "memory_ppo", "--env", TMAZE, "-f", str(trained_tmaze),
                     "-n", str(n_steps), "--no-render", "--num-threads", "1", "--verbose", "0"]) == 0  # fmt: skip
    assert len(calls) == n_steps
    assert calls[0][0] is None and calls[0][1].tolist() == [True]
    for (_, _, previous_state), (state, _, _) in zip(calls, calls[1:]):
        assert state is previous_state
    assert calls[0][2].ndim == 2 and calls[0][2].shape[0] == 1
    starts = [bool(call[1][0]) for call in calls]
    assert starts[0] and starts[101] and not any(starts[1:101])


def test_memory_dqn_trains_and_enjoys_through_the_zoo(tmp_path):
    """memory_dqn's config entry (the default without -conf), trained briefly through rl-zoo3, loads and enjoys."""
    common = ["--algo", "memory_dqn", "--env", TMAZE, "--num-threads", "1"]
    result = zoo_command(
        "train", *common, "-n", "600", "--log-folder", str(tmp_path),
        "--eval-freq", "-1", "--seed", "0", "-params", "learning_starts:200", "n_envs:2", "buffer_size:2000",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    model = MemoryDQN.load(tmp_path / "memory_dqn" / "sb3_memory-PassiveTMaze-v0_1" / "sb3_memory-PassiveTMaze-v0.zip")
    assert isinstance(model.policy, DQNNTMPolicy) and model.num_timesteps == 600
    assert (model.burn_in, model.train_length, model.return_steps) == (4, 8, 3)
    assert model.replay_buffer is None or model.replay_buffer.size() == 0  # the buffer is not saved with the model
    result = zoo_command("enjoy", *common, "-f", str(tmp_path), "--no-render", "-n", "30")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


# --------------------------------------------------------------------------------------------
# (c) configs
# --------------------------------------------------------------------------------------------


@pytest.mark.slow  # a learning test: 30 s of training
def test_quickstart_config_solves_its_task(tmp_path):
    """The README's zoo example as written: train with quickstart.yml, then enjoy reports >= 90% success."""
    env_id = "sb3_memory/PassiveTMazeJunction-v0"
    common = ["--algo", "memory_ppo", "--env", env_id, "--num-threads", "1"]
    result = zoo_command(
        "train", *common, "-conf", str(CONFIGS / "quickstart.yml"), "--log-folder", str(tmp_path), "--seed", "0",
        timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    result = zoo_command("enjoy", *common, "-f", str(tmp_path), "--no-render", "-n", "300")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    success = re.search(r"Success rate: ([0-9.]+)%", result.stdout)
    assert success is not None, result.stdout[-3000:]
    assert float(success.group(1)) >= 90.0, result.stdout[-1000:]


def test_the_build_step_puts_the_configs_in_the_package(tmp_path, monkeypatch):
    """What `pip wheel .` does with zoo_configs/ (build_support/zoo_configs.py), and config_path in that copy."""
    import importlib.util

    from setuptools.dist import Distribution

    spec = importlib.util.spec_from_file_location("zoo_configs_build", ROOT / "build_support" / "zoo_configs.py")
    assert spec is not None and spec.loader is not None
    build_support = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build_support)
    monkeypatch.chdir(ROOT)
    distribution = Distribution({"packages": ["sb3_memory", "sb3_memory.zoo_configs"], "script_name": "setup.py"})
    command = build_support.BuildPyWithZooConfigs(distribution)
    command.build_lib = str(tmp_path / "lib")
    command.ensure_finalized()
    command.run()
    built = tmp_path / "lib" / "sb3_memory" / "zoo_configs"
    sources = sorted((ROOT / "zoo_configs").glob("*.yml"))
    assert [path.name for path in sorted(built.glob("*.yml"))] == [path.name for path in sources] and len(sources) >= 7
    assert all((built / path.name).read_bytes() == path.read_bytes() for path in sources)
    assert {str(built / path.name) for path in sources} <= set(command.get_outputs())
    # An installed copy (only the built tree on the path) reads its own files, not a checkout's.
    found = subprocess.run(
        [sys.executable, "-c", "from sb3_memory.zoo_configs import config_path; print(config_path('memory_ppo'))"],
        cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(tmp_path / "lib")), capture_output=True, text=True,
    )  # fmt: skip
    assert found.stdout.strip() == str(built / "memory_ppo.yml"), found.stderr[-2000:]
    # The checkout itself reads zoo_configs/ (nothing is copied into sb3_memory/zoo_configs/ there).
    assert CONFIG_DIR == ROOT / "zoo_configs"


def test_configs_cover_the_same_envs_with_equal_budgets():
    configs = {algo: load_config(algo) for algo in CONFIG_FILES}
    for algo, config in configs.items():
        assert sorted(config) == sorted(ENV_IDS), algo
    for env_id in ENV_IDS:
        budgets = {algo: float(config[env_id]["n_timesteps"]) for algo, config in configs.items()}
        assert len(set(budgets.values())) == 1, (env_id, budgets)
        # Same rollout shape for the PPO variants (RecurrentPPO's default batch_size is 128).
        shapes = {
            algo: (
                configs[algo][env_id]["n_envs"],
                configs[algo][env_id]["n_steps"],
                configs[algo][env_id].get("batch_size", 128),
            )
            for algo in ("memory_ppo", "ppo_lstm", "ppo")
        }
        assert len(set(shapes.values())) == 1, (env_id, shapes)
        for algo in CONFIG_FILES:
            assert configs[algo][env_id].get("env_kwargs") == DEFAULT_ENV_KWARGS.get(env_id), (algo, env_id)


def test_ppo_lstm_baselines_are_rl_zoo3_tuned_entries():
    import rl_zoo3

    with open(Path(rl_zoo3.__file__).parent / "hyperparams" / "ppo_lstm.yml") as file:
        rl_zoo3_config = yaml.safe_load(file)
    ours = load_config("ppo_lstm")
    memory = load_config("memory_ppo")
    for env_id in ("CartPoleNoVel-v1", "PendulumNoVel-v1"):
        assert ours[env_id] == rl_zoo3_config[env_id]
        for key in ("n_envs", "n_timesteps", "n_steps", "gamma", "gae_lambda", "n_epochs", "learning_rate", "clip_range"):
            assert memory[env_id][key] == ours[env_id][key], (env_id, key)


@pytest.mark.parametrize("env_id", ENV_IDS)
@pytest.mark.parametrize("algo", list(CONFIG_FILES))
def test_config_entry_builds_model(algo, env_id, tmp_path):
    entry = load_config(algo)[env_id]
    manager = make_manager(algo, env_id, tmp_path)
    model, _ = manager.setup_experiment()
    try:
        assert type(model) is ALGOS[algo]
        assert model.n_envs == entry["n_envs"] and model.n_steps == entry["n_steps"]
        assert manager.n_timesteps == int(float(entry["n_timesteps"]))
        assert manager.env_kwargs == entry.get("env_kwargs", {})
        assert math.isclose(model.gamma, entry["gamma"])
        if algo in ("memory_ppo", "memory_a2c"):
            kwargs = model.policy.core_kwargs
            if env_id in CAPACITY_TASKS:
                assert type(model.policy) is DNCPolicy
                assert kwargs["memory_units"] == 64 and kwargs["controller_dim"] == 128
                assert model.gamma == 0.0 and isinstance(manager.callbacks[0], LengthCurriculum)
            else:
                assert type(model.policy) is NTMPolicy
                assert kwargs["memory_units"] in (16, 32) and kwargs["controller_dim"] == 64
            assert kwargs["memory_unit_size"] == 16 and kwargs["num_read_heads"] == 1
            assert model.policy.critic_memory == ("separate" if "NoVel" in env_id else "detached")
            assert model.sequence_length == entry["sequence_length"]
            assert model.n_steps % model.sequence_length == 0
            if algo == "memory_ppo":
                assert model.batch_size == entry["batch_size"] and model.batch_size % model.sequence_length == 0
            else:
                assert model.sequence_length == model.n_steps
        elif algo == "ppo_lstm":
            assert isinstance(model, RecurrentPPO) and isinstance(model.policy, RecurrentActorCriticPolicy)
            assert model.policy.lstm_actor.hidden_size == (128 if env_id in CAPACITY_TASKS else 64)
            assert model.batch_size == entry.get("batch_size", 128)
            if env_id in CAPACITY_TASKS:  # the wrapper RecurrentPPO needs, and the curriculum reaches through it
                assert model.action_space == MultiDiscrete([2] * 8)
                model.env.env_method("set_wrapper_attr", "max_length" if "Copy" in env_id else "max_items", 3)
                assert model.env.env_method("get_wrapper_attr", "max_length" if "Copy" in env_id else "max_items")[0] == 3
        else:
            assert type(model) is PPO and type(model.policy) is ActorCriticPolicy
            assert model.batch_size == entry["batch_size"]
        assert model.use_sde == entry.get("use_sde", False)
    finally:
        model.env.close()


# --------------------------------------------------------------------------------------------
# (d) samplers: policy_kwargs merge
# --------------------------------------------------------------------------------------------


def test_sampler_without_config():
    params = {**CHEAP_PPO_PARAMS, "n_steps_pow": 7, "batch_size_pow": 6, "max_sequence_length": 64}
    hyperparams = zoo.sample_memory_ppo_params(optuna.trial.FixedTrial(params), 0, 8, {})
    assert hyperparams == zoo.convert_memory_onpolicy_params(params)
    assert (hyperparams["n_steps"], hyperparams["batch_size"], hyperparams["sequence_length"]) == (128, 64, 64)
    assert hyperparams["policy_kwargs"] == {
        "net_arch": {"pi": [64], "vf": [64]},
        "activation_fn": torch.nn.Tanh,
        "memory_units": 16,
        "memory_unit_size": 8,
        "num_read_heads": 1,
        "controller_dim": 32,
    }
    assert not {"n_steps_pow", "batch_size_pow", "max_sequence_length", "memory_units"} & set(hyperparams)
    # sequence_length divides n_steps and batch_size
    params.update(n_steps_pow=5, batch_size_pow=9)
    assert zoo.sample_memory_ppo_params(optuna.trial.FixedTrial(params), 0, 8, {})["sequence_length"] == 32


def test_a2c_sampler_and_policy_dependent_keys():
    params = {
        "n_steps": 16, "one_minus_gamma": 0.01, "one_minus_gae_lambda": 0.05, "learning_rate": 7e-4,
        "max_grad_norm": 0.5, "ent_coef": 1e-6, "net_arch": "small", "activation_fn": "relu",
        "controller_dim": 128, "max_sequence_length": 64,
    }  # fmt: skip
    config = {"policy": "LSTMPolicy", "policy_kwargs": "dict(controller='gru', ortho_init=False)"}
    hyperparams = zoo.sample_memory_a2c_params(optuna.trial.FixedTrial(params), 0, 4, {"hyperparams": config})
    # An LSTM core has no external memory: only controller_dim is sampled; config keys survive.
    assert hyperparams["policy_kwargs"] == {
        "controller": "gru",
        "ortho_init": False,
        "net_arch": {"pi": [64, 64], "vf": [64, 64]},
        "activation_fn": torch.nn.ReLU,
        "controller_dim": 128,
    }
    assert hyperparams["n_steps"] == 16 and hyperparams["sequence_length"] == 16
    assert MemoryA2C("LSTMPolicy", "CartPole-v1", device="cpu", **hyperparams).policy.core_kwargs == {
        "controller": "gru",
        "controller_dim": 128,
    }


class CapturingMemoryPPO(MemoryPPO):
    """Records the models the objective builds and skips training."""

    built: ClassVar[list] = []

    def learn(self, *args, **kwargs):
        CapturingMemoryPPO.built.append(self)
        return self


def test_objective_merges_config_policy_kwargs(tmp_path, monkeypatch):
    """Through rl-zoo3's ExperimentManager.objective, with enqueued trials on two Optuna threads."""
    config_policy_kwargs = "dict(memory_units=24, controller='gru', critic_memory='none', ortho_init=False, shift_range=2)"
    manager = make_manager(
        "memory_ppo", TMAZE, tmp_path, optimize_hyperparameters=True, n_timesteps=64, n_evaluations=1,
        hyperparams={"n_envs": 1, "policy_kwargs": config_policy_kwargs},  # as `-params`
    )  # fmt: skip
    assert manager.setup_experiment() is None
    config_before = dict(manager._hyperparams["policy_kwargs"])
    monkeypatch.setitem(ALGOS, "memory_ppo", CapturingMemoryPPO)
    monkeypatch.setattr(CapturingMemoryPPO, "built", [])

    study = optuna.create_study(direction="maximize")
    trial_params = [
        {**CHEAP_PPO_PARAMS, "memory_units": 32, "num_read_heads": 2, "max_sequence_length": 64},
        {**CHEAP_PPO_PARAMS, "memory_units": 64, "net_arch": "small", "batch_size_pow": 6, "n_steps_pow": 6},
    ]
    for params in trial_params:
        study.enqueue_trial(params)
    study.optimize(manager.objective, n_trials=2, n_jobs=2)

    assert len(CapturingMemoryPPO.built) == 2
    by_units = {model.policy.core_kwargs["memory_units"]: model for model in CapturingMemoryPPO.built}
    assert sorted(by_units) == [32, 64]  # sampled memory_units wins over the config's 24
    for params in trial_params:
        model = by_units[params["memory_units"]]
        expected = zoo.convert_memory_onpolicy_params(params)
        assert model.policy.core_kwargs == {
            "memory_units": params["memory_units"],
            "memory_unit_size": params["memory_unit_size"],
            "num_read_heads": params["num_read_heads"],
            "controller_dim": params["controller_dim"],
            "controller": "gru",  # config only: survives
            "shift_range": 2,
        }
        assert model.policy.critic_memory == "none" and model.policy.ortho_init is False
        assert model.policy.net_arch == expected["policy_kwargs"]["net_arch"]
        assert (model.n_steps, model.batch_size, model.sequence_length) == (
            expected["n_steps"], expected["batch_size"], expected["sequence_length"],
        )  # fmt: skip
        assert model.n_epochs == params["n_epochs"]
        # not sampled, from the YAML entry: survives
        assert model.clip_range_vf is None and model.vf_coef == 0.5
    assert manager._hyperparams["policy_kwargs"] == config_before  # the config is not mutated
    assert zoo._CONFIG_HYPERPARAMS.get() is None
    assert all(trial.state == optuna.trial.TrialState.COMPLETE for trial in study.trials)


def test_trial_id_loading_merges_config_policy_kwargs(tmp_path):
    storage_path = str(tmp_path / "study.log")
    study = optuna.create_study(
        storage=JournalStorage(JournalFileBackend(storage_path)), study_name="load", direction="maximize"
    )
    for units in (32, 64):  # rl-zoo3 ignores --trial-id 0, so load trial 1
        study.enqueue_trial({**CHEAP_PPO_PARAMS, "memory_units": units, "net_arch": "small"})
    study.optimize(lambda trial: float(len(zoo.sample_memory_ppo_params(trial, 0, 1, {"hyperparams": {}}))), n_trials=2)

    manager = make_manager("memory_ppo", TMAZE, tmp_path, storage=storage_path, study_name="load", trial_id=1)
    hyperparams, _ = manager.read_hyperparameters()
    assert hyperparams["policy_kwargs"] == {
        "net_arch": {"pi": [64, 64], "vf": [64, 64]},  # trial wins over the YAML's [64]
        "activation_fn": torch.nn.Tanh,
        "memory_units": 64,
        "memory_unit_size": 8,
        "num_read_heads": 1,
        "controller_dim": 32,
        "critic_memory": "detached",  # YAML only: survives
    }
    assert hyperparams["n_steps"] == 32 and hyperparams["sequence_length"] == 16
    assert hyperparams["env_kwargs"] == {"corridor_length": 100}


# --------------------------------------------------------------------------------------------
# (e) two workers on one journal file
# --------------------------------------------------------------------------------------------


def _wait_for_a_claimed_trial(study_name: str, storage: Any, process: subprocess.Popen, timeout: float = 120.0) -> None:
    claimed = (optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.COMPLETE)
    deadline = time.monotonic() + timeout
    while not optuna.load_study(study_name=study_name, storage=storage).get_trials(states=claimed):
        if process.poll() is not None or time.monotonic() > deadline:
            return  # the assertions on the workers' output say what went wrong
        time.sleep(0.2)


# The URL storage (25 s) runs with the slow tests; the journal (18 s) in the fast suite.
@pytest.mark.parametrize("backend", ["journal", pytest.param("url", marks=pytest.mark.slow)])
def test_two_workers_share_one_study(tmp_path, backend):
    """A journal file, or a database URL (SQLite here; PostgreSQL and MySQL URLs take the same path)."""
    (tmp_path / "tuning").mkdir()
    if backend == "journal":
        storage_argument = str(tmp_path / "tuning" / "study.log")
        storage: Any = JournalStorage(JournalFileBackend(storage_argument))
    else:
        storage_argument = storage = f"sqlite:///{tmp_path / 'tuning' / 'study.db'}"
    study_name = "memory_ppo_tmaze"
    study = optuna.create_study(storage=storage, study_name=study_name, direction="maximize")
    # Enqueued cheap parameters keep the test fast; the workers pick them up through Optuna.
    for units in (16, 32):
        study.enqueue_trial({**CHEAP_PPO_PARAMS, "memory_units": units})

    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    workers = []
    for worker in range(2):
        command = [
            sys.executable, "-m", "sb3_memory.zoo", "train", "--algo", "memory_ppo", "--env", TMAZE,
            "-conf", str(CONFIG_FILES["memory_ppo"]), "-optimize",
            "--storage", storage_argument, "--study-name", study_name,
            "--n-trials", "1", "--n-jobs", "1", "-n", "128", "--eval-episodes", "2", "--n-evaluations", "1",
            "--no-optim-plots", "--num-threads", "1", "--log-folder", str(tmp_path / f"worker{worker}"),
        ]  # fmt: skip
        workers.append(
            subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        )
        if worker == 0:
            # The second worker starts once the first holds its trial: two processes popping the same
            # enqueued trial at once can both run it on SQLite (seen once in CI: "Cannot tell a
            # COMPLETE trial"); the workers still train side by side on one study.
            _wait_for_a_claimed_trial(study_name, storage, workers[0])
    outputs = [worker.communicate(timeout=180)[0] for worker in workers]
    for worker, output in zip(workers, outputs):
        assert worker.returncode == 0, output[-4000:]

    shared = optuna.load_study(study_name=study_name, storage=storage)
    assert len(shared.trials) == 2
    assert all(trial.state == optuna.trial.TrialState.COMPLETE for trial in shared.trials)
    assert sorted(trial.params["memory_units"] for trial in shared.trials) == [16, 32]
    assert all(trial.user_attrs["sequence_length"] == 16 for trial in shared.trials)
    for worker in range(2):
        assert list((tmp_path / f"worker{worker}" / "memory_ppo").glob("report_*.csv"))


@pytest.mark.parametrize("algo, env_id", [("memory_dqn", "CartPoleNoVel-v1"), ("memory_sac", "PendulumNoVel-v1")])
@pytest.mark.parametrize("policy", ["NTMPolicy", "DNCPolicy", "LSTMPolicy"])
def test_sampled_off_policy_configurations_construct_and_keep_the_config(algo, env_id, policy):
    """Every sampled MemoryDQN/MemorySAC configuration builds, with its sequence shape and the config's policy_kwargs."""
    import gymnasium

    sampler = zoo.HYPERPARAMS_SAMPLER[algo]
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0), direction="maximize")
    env = gymnasium.make(env_id)
    config = {"policy": policy, "policy_kwargs": "dict(activation_fn=nn.Tanh)"}
    for _ in range(8):
        trial = study.ask()
        hyperparams = sampler(trial, 0, 1, {"hyperparams": config})
        model = ALGOS[algo](policy, env, device="cpu", buffer_size=4096, **hyperparams)
        assert (model.burn_in, model.train_length, model.return_steps) == (
            trial.params["burn_in"], trial.params["train_length"], trial.params["n_steps"],
        )  # fmt: skip
        assert model.batch_size == 2 ** trial.params["batch_size_pow"] <= 64
        assert model.policy.activation_fn is torch.nn.Tanh  # the config's policy_kwargs survive the merge
        if policy != "LSTMPolicy":
            assert model.policy.core_kwargs["memory_units"] == trial.params["memory_units"]
        study.tell(trial, 0.0)
    assert zoo.HYPERPARAMS_CONVERTER[algo] is zoo.convert_memory_offpolicy_params


@pytest.mark.filterwarnings("ignore:You have specified a mini-batch size")  # batch_size > n_steps * n_envs, as in rl-zoo3
@pytest.mark.parametrize("algo", ["memory_ppo", "memory_a2c"])
@pytest.mark.parametrize("policy", ["NTMPolicy", "DNCPolicy", "LSTMPolicy"])
def test_sampled_configurations_construct(algo, policy):
    """rl-zoo3 prunes trials whose model raises ValueError/AssertionError: sampled values must all be valid."""
    import gymnasium

    sampler = zoo.HYPERPARAMS_SAMPLER[algo]
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0), direction="maximize")
    env = gymnasium.make("CartPoleNoVel-v1")
    config = {"policy": policy, "policy_kwargs": "dict(ortho_init=False)"}
    for _ in range(12):
        trial = study.ask()
        hyperparams = sampler(trial, 0, 1, {"hyperparams": config})
        model = ALGOS[algo](policy, env, device="cpu", **hyperparams)
        assert model.n_steps % model.sequence_length == 0
        assert getattr(model, "batch_size", model.n_steps) % model.sequence_length == 0
        assert model.policy.ortho_init is False
        study.tell(trial, 0.0)
