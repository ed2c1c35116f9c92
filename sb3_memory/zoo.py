"""
rl-baselines3-zoo (rl-zoo3) integration: ``memory_ppo`` / ``memory_a2c`` / ``maskable_memory_ppo`` / ``memory_dqn`` /
``memory_sac`` algorithms, Optuna samplers
and a thin command-line wrapper around rl-zoo3's own entry points.

Usage (the flags after the subcommand are exactly rl-zoo3's; the wrapper only strips the subcommand)::

    python -m sb3_memory.zoo train --algo memory_ppo --env sb3_memory/PassiveTMazeJunction-v0 \
        -conf zoo_configs/quickstart.yml
    python -m sb3_memory.zoo enjoy --algo memory_ppo --env sb3_memory/PassiveTMazeJunction-v0 -f logs --no-render
    python -m sb3_memory.zoo train --algo memory_ppo --env CartPoleNoVel-v1 -conf zoo_configs/memory_ppo.yml \
        -optimize --storage tuning/cartpole.log --study-name memory_ppo_cartpole --n-trials 20 --no-optim-plots

``sb3-memory-zoo`` (console script) is the same as ``python -m sb3_memory.zoo``. Subcommands: ``train``
(``-optimize`` included), ``enjoy``, ``record_video`` and rl-zoo3's plot scripts (``plot_train``,
``plot_from_file``, ``all_plots``; they need ``rl_zoo3[plots]``). ``-conf`` takes a file (the checkout's
``zoo_configs/<algo>.yml`` or your own); without it, ``train --algo memory_*`` reads the package's own
config of that algorithm (:data:`DEFAULT_CONFIGS`, found by :func:`sb3_memory.zoo_configs.config_path`).
The ``sb3_memory/...`` tasks have no ``"human"`` render mode: ``enjoy`` them with ``--no-render``
(``record_video`` works, through their ``"rgb_array"`` mode).

Why a wrapper: rl-zoo3 builds its ``--algo`` choices from ``rl_zoo3.utils.ALGOS`` when the parser
is built, before ``--gym-packages`` modules are imported, so ``python -m rl_zoo3.train --algo memory_ppo
--gym-packages sb3_memory.zoo`` is rejected. Importing this module registers everything first.

Importing this module (idempotent, see :func:`register`):

* adds ``memory_ppo`` (:class:`~sb3_memory.MemoryPPO`), ``memory_a2c`` (:class:`~sb3_memory.MemoryA2C`),
  ``maskable_memory_ppo`` (:class:`~sb3_memory.MaskableMemoryPPO`), ``memory_dqn``
  (:class:`~sb3_memory.MemoryDQN`) and ``memory_sac`` (:class:`~sb3_memory.MemorySAC`) to rl-zoo3's
  ``ALGOS``, their samplers to ``HYPERPARAMS_SAMPLER`` and converters to ``HYPERPARAMS_CONVERTER``
  (used by ``--trial-id``);
* registers the ``sb3_memory/...`` tasks and rl-zoo3's ``...NoVel`` envs with gymnasium;
* changes nothing in rl-zoo3 itself. ``train`` builds a :class:`MemoryExperimentManager`, rl-zoo3's
  class subclassed (rl-zoo3's ``train()`` builds the class its module names ``ExperimentManager``;
  the wrapper points that name at the subclass for the call, see
  :func:`_train_with_memory_experiment_manager`). The subclass:

  - ``objective``: rl-zoo3 does ``kwargs.update(sampled_hyperparams)``, which *replaces* the
    config's ``policy_kwargs`` by the sampled ones (e.g. ``critic_memory``, ``controller``,
    ``ortho_init`` would be lost), and samplers are not given the config. For our algorithms it
    exposes the preprocessed config hyperparameters to the sampler (a ``ContextVar``, so it is per
    Optuna thread with ``--n-jobs``) and the sampler returns ``policy_kwargs`` merged.
  - ``load_trial`` (``--storage ... --study-name ... --trial-id N``): same merge, for our algorithms,
    with the config's entry read by rl-zoo3's own ``read_hyperparameters``.
  - ``create_callbacks``: ``maskable_memory_ppo`` evaluates with the eval env's action masks.
  - without ``-conf``, ``memory_*`` algorithms read the package's config.

**policy_kwargs merge rule** (``-optimize`` and ``--trial-id``): final ``policy_kwargs`` =
config ``policy_kwargs`` (after ``-params`` overrides, evaluated by rl-zoo3) updated with the sampled
ones; on a conflicting key the **sampled value wins**. Sampled keys: ``net_arch``, ``activation_fn``
and the memory shape keys the policy's core accepts (NTM/DNC: ``memory_units``, ``memory_unit_size``,
``num_read_heads``, ``controller_dim``; LSTM: ``controller_dim``). Everything else in the config
(``critic_memory``, ``controller``, ``ortho_init``, ``shift_range``, ...) survives. Top-level
hyperparameters follow rl-zoo3's rule (sampled ones replace the config's, the rest survive).
With ``--trial-id``, a ``-params policy_kwargs:...`` still replaces the whole dict (rl-zoo3 applies
``-params`` last); also note rl-zoo3 ignores ``--trial-id 0`` (it tests ``if self.trial_id``).

Recurrent treatment: rl-zoo3 2.9.2 hardcodes no list of recurrent algorithms. ``enjoy.py`` and
``record_video.py`` call ``model.predict(obs, state=..., episode_start=..., deterministic=...)`` for
every algorithm and feed the returned state back; evaluation (``EvalCallback``,
``TrialEvalCallback``) goes through SB3's ``evaluate_policy``, which does the same. The only
``ppo_lstm`` special case is the Hugging Face model listing (``utils.get_hf_trained_models``).
So no list needed patching; ``tests/test_zoo.py`` checks that enjoy threads our state.

Distributed tuning: start several workers with the same ``--storage`` and ``--study-name``. A
``--storage`` path ending in ``.log`` becomes ``JournalStorage(JournalFileBackend(path))`` in rl-zoo3
(file-locked, safe for processes on one machine or a shared file system; the folder is created); any
other value is passed to Optuna as an RDB URL (``sqlite:///...``, ``postgresql://...``). Without
``--study-name`` every worker gets its own random study (rl-zoo3 only warns). ``--n-trials`` counts per
worker, ``--max-total-trials`` across workers. Do not give all workers the same ``--seed`` (the seed
also seeds the TPE sampler, so they would propose the same trials); the default (-1) is random. Give
each worker its own ``--log-folder`` (or ``-uuid``) so their report files do not collide.
"""

import contextlib
import importlib
import inspect
import io
import math
import os
import runpy
import sys
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any, Optional

import optuna
import yaml
from rl_zoo3 import exp_manager as _zoo_exp_manager
from rl_zoo3.exp_manager import ExperimentManager
from rl_zoo3.hyperparams_opt import (
    HYPERPARAMS_CONVERTER,
    HYPERPARAMS_SAMPLER,
    convert_offpolicy_params,
    convert_onpolicy_params,
)
from rl_zoo3.utils import ALGOS, get_class_by_name
from sb3_contrib.common.maskable.callbacks import MaskableEvalCallback
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import EvalCallback

import sb3_memory.envs
from sb3_memory.a2c import MemoryA2C
from sb3_memory.common.policies import MemoryActorCriticPolicy
from sb3_memory.dqn import MemoryDQN
from sb3_memory.memory import CORES
from sb3_memory.ppo import MemoryPPO
from sb3_memory.ppo_mask import MaskableMemoryPPO
from sb3_memory.sac import MemorySAC
from sb3_memory.zoo_configs import config_path

__all__ = [
    "DEFAULT_CONFIGS",
    "MEMORY_ALGOS",
    "MEMORY_SHAPE_SPACE",
    "MemoryExperimentManager",
    "convert_memory_onpolicy_params",
    "main",
    "register",
    "sample_memory_a2c_params",
    "sample_memory_dqn_params",
    "sample_memory_ppo_params",
    "sample_memory_sac_params",
]

#: rl-zoo3 names of our algorithms.
MEMORY_ALGOS: dict[str, type[BaseAlgorithm]] = {
    "memory_ppo": MemoryPPO,
    "memory_a2c": MemoryA2C,
    "maskable_memory_ppo": MaskableMemoryPPO,
    "memory_dqn": MemoryDQN,
    "memory_sac": MemorySAC,
}
ON_POLICY_MEMORY_ALGOS = ("memory_ppo", "memory_a2c", "maskable_memory_ppo")
#: Replayed sequences' shape search space (MemoryDQN, MemorySAC): burn-in, trained steps, n-step return.
SEQUENCE_REPLAY_SPACE: dict[str, list[int]] = {"burn_in": [0, 4, 8, 16], "train_length": [8, 16, 32], "n_steps": [1, 3, 5]}

#: Memory shape search space (policy_kwargs keys); only the keys the policy's core accepts are sampled.
MEMORY_SHAPE_SPACE: dict[str, list[int]] = {
    "memory_units": [16, 32, 64],
    "memory_unit_size": [8, 16, 32],
    "num_read_heads": [1, 2, 4],
    "controller_dim": [32, 64, 128],
}
#: Candidate chunk lengths for truncated BPTT. The trial parameter is ``max_sequence_length``; the
#: sequence length used is its gcd with ``n_steps`` (and ``batch_size``), i.e. a divisor of both
#: (all candidates are powers of two, so it is ``min(max_sequence_length, n_steps, batch_size)``).
MAX_SEQUENCE_LENGTHS = [8, 16, 32, 64]

# Hyperparameters of the ExperimentManager whose objective is running (see _objective).
_CONFIG_HYPERPARAMS: ContextVar[Optional[dict[str, Any]]] = ContextVar("sb3_memory_zoo_config", default=None)


# --------------------------------------------------------------------------------------------
# Samplers
# --------------------------------------------------------------------------------------------


def _policy_class(policy: Any) -> Optional[type]:
    if isinstance(policy, str):
        if policy in MemoryPPO.policy_aliases:
            return MemoryPPO.policy_aliases[policy]
        if "." in policy:
            return get_class_by_name(policy)
        return None
    return policy if isinstance(policy, type) else None


def _memory_shape_keys(policy: Any) -> list[str]:
    """The keys of :data:`MEMORY_SHAPE_SPACE` that the policy's core accepts (all of them if unknown)."""
    policy_class = _policy_class(policy)
    if policy_class is None or not issubclass(policy_class, MemoryActorCriticPolicy):
        return list(MEMORY_SHAPE_SPACE)
    accepted = inspect.signature(CORES[policy_class.core_name]).parameters
    return [key for key in MEMORY_SHAPE_SPACE if key in accepted]


def _config_hyperparams(additional_args: dict) -> dict[str, Any]:
    """
    The configuration the sampled values are merged into: ``additional_args["hyperparams"]`` when a
    caller passes it, else the hyperparameters of the ExperimentManager whose objective is running.
    """
    if additional_args.get("hyperparams") is not None:
        return additional_args["hyperparams"]
    return _CONFIG_HYPERPARAMS.get() or {}


def _evaluate_policy_kwargs(policy_kwargs: Any) -> dict[str, Any]:
    if policy_kwargs is None:
        return {}
    if isinstance(policy_kwargs, str):
        # As rl-zoo3's _preprocess_hyperparams does, with its module's names (nn, th, ...).
        return eval(policy_kwargs, vars(_zoo_exp_manager))
    return dict(policy_kwargs)


def _merge_policy_kwargs(config_policy_kwargs: Any, hyperparams: dict[str, Any]) -> dict[str, Any]:
    """Config policy_kwargs updated with the sampled ones: sampled values win on conflicts."""
    merged = {**_evaluate_policy_kwargs(config_policy_kwargs), **hyperparams.get("policy_kwargs", {})}
    return {**hyperparams, "policy_kwargs": merged}


def convert_memory_onpolicy_params(sampled_params: dict[str, Any]) -> dict[str, Any]:
    """
    Trial parameters -> algorithm hyperparameters (also rl-zoo3's ``HYPERPARAMS_CONVERTER`` for
    ``--trial-id``): rl-zoo3's ``convert_onpolicy_params`` for the usual ones, memory shape keys
    into ``policy_kwargs``, ``max_sequence_length`` -> ``sequence_length`` (a divisor of ``n_steps``
    and, for PPO, of ``batch_size``). Not merged with any config.
    """
    params = dict(sampled_params)
    memory_shape = {key: params.pop(key) for key in MEMORY_SHAPE_SPACE if key in params}
    max_sequence_length = params.pop("max_sequence_length", None)
    hyperparams = convert_onpolicy_params(params)
    hyperparams["policy_kwargs"].update(memory_shape)
    if max_sequence_length is not None:
        hyperparams["sequence_length"] = math.gcd(
            max_sequence_length, hyperparams["n_steps"], hyperparams.get("batch_size", hyperparams["n_steps"])
        )
    return hyperparams


def _sample_memory_shape(trial: optuna.Trial, policy: Any, chunked: bool = True) -> dict[str, Any]:
    params: dict[str, Any] = {
        key: trial.suggest_categorical(key, MEMORY_SHAPE_SPACE[key]) for key in _memory_shape_keys(policy)
    }
    if chunked:  # on-policy: the TBPTT chunk
        params["max_sequence_length"] = trial.suggest_categorical("max_sequence_length", MAX_SEQUENCE_LENGTHS)
    return params


def _finish(trial: optuna.Trial, params: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    hyperparams = convert_memory_onpolicy_params(params)
    # Display true values, as rl-zoo3's samplers do.
    for key in ("gamma", "n_steps", "batch_size", "sequence_length"):
        if key in hyperparams:
            trial.set_user_attr(key, hyperparams[key])
    return _merge_policy_kwargs(config.get("policy_kwargs"), hyperparams)


def convert_memory_offpolicy_params(sampled_params: dict[str, Any]) -> dict[str, Any]:
    """
    Trial parameters -> MemoryDQN/MemorySAC hyperparameters (also ``HYPERPARAMS_CONVERTER`` for
    ``--trial-id``): rl-zoo3's ``convert_offpolicy_params``, with the memory shape keys moved into
    ``policy_kwargs``. ``batch_size`` counts replayed sequences. Not merged with any config.
    """
    params = dict(sampled_params)
    memory_shape = {key: params.pop(key) for key in MEMORY_SHAPE_SPACE if key in params}
    hyperparams = convert_offpolicy_params(params)
    hyperparams["policy_kwargs"].update(memory_shape)
    return hyperparams


def _sample_offpolicy_common(trial: optuna.Trial, config: dict[str, Any]) -> dict[str, Any]:
    """What MemoryDQN's and MemorySAC's searches share: rl-zoo3's off-policy ranges, with batches of
    8-64 sequences (instead of 4-2048 transitions), the sequence shape and the memory shape."""
    params = {
        "one_minus_gamma": trial.suggest_float("one_minus_gamma", 0.0001, 0.03, log=True),
        "batch_size_pow": trial.suggest_int("batch_size_pow", 3, 6),
        "learning_rate": trial.suggest_float("learning_rate", 1e-5, 0.002, log=True),
        "train_freq": trial.suggest_int("train_freq", 1, 10),
        "net_arch": trial.suggest_categorical("net_arch", ["small", "medium"]),
    }
    params.update({key: trial.suggest_categorical(key, values) for key, values in SEQUENCE_REPLAY_SPACE.items()})
    params.update(_sample_memory_shape(trial, config.get("policy"), chunked=False))
    return params


def _finish_offpolicy(trial: optuna.Trial, params: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    hyperparams = convert_memory_offpolicy_params(params)
    for key in ("gamma", "batch_size", "gradient_steps"):
        trial.set_user_attr(key, hyperparams[key])
    return _merge_policy_kwargs(config.get("policy_kwargs"), hyperparams)


def sample_memory_dqn_params(trial: optuna.Trial, n_actions: int, n_envs: int, additional_args: dict) -> dict[str, Any]:
    """
    Sampler for MemoryDQN (``HYPERPARAMS_SAMPLER["memory_dqn"]``): rl-zoo3's DQN search space
    (exploration, target updates, gradient steps per collection) with batches of sequences, plus
    the sequence shape (:data:`SEQUENCE_REPLAY_SPACE`) and the memory shape; merged with the config's
    ``policy_kwargs`` as :func:`sample_memory_ppo_params` is.
    """
    config = _config_hyperparams(additional_args)
    params = _sample_offpolicy_common(trial, config)
    params["subsample_steps"] = trial.suggest_int("subsample_steps", 1, min(params["train_freq"], 8))
    params["exploration_final_eps"] = trial.suggest_float("exploration_final_eps", 0, 0.2)
    params["exploration_fraction"] = trial.suggest_float("exploration_fraction", 0, 0.5)
    params["target_update_interval"] = trial.suggest_int("target_update_interval", 1, 20000, log=True)
    return _finish_offpolicy(trial, params, config)


def sample_memory_sac_params(trial: optuna.Trial, n_actions: int, n_envs: int, additional_args: dict) -> dict[str, Any]:
    """
    Sampler for MemorySAC (``HYPERPARAMS_SAMPLER["memory_sac"]``): rl-zoo3's SAC search space
    (Polyak ``tau``), otherwise as :func:`sample_memory_dqn_params`.
    """
    config = _config_hyperparams(additional_args)
    params = _sample_offpolicy_common(trial, config)
    params["tau"] = trial.suggest_float("tau", 0.001, 0.08, log=True)
    return _finish_offpolicy(trial, params, config)


def sample_memory_ppo_params(trial: optuna.Trial, n_actions: int, n_envs: int, additional_args: dict) -> dict[str, Any]:
    """
    Sampler for MemoryPPO (rl-zoo3's ``HYPERPARAMS_SAMPLER["memory_ppo"]``).

    rl-zoo3's PPO search space (``batch_size`` 32-512 and ``n_steps`` 32-2048 instead of 4-1024 and
    32-4096: memory policies cost more per step), plus the memory shape (:data:`MEMORY_SHAPE_SPACE`,
    the keys the policy's core accepts) and the TBPTT chunk length (``max_sequence_length``).
    The returned ``policy_kwargs`` are the config's updated with the sampled ones (sampled wins).

    :param additional_args: rl-zoo3's; an optional ``"hyperparams"`` entry (config hyperparameters,
        ``policy`` and ``policy_kwargs`` are used) replaces those of the running ExperimentManager
    """
    config = _config_hyperparams(additional_args)
    params = {
        "batch_size_pow": trial.suggest_int("batch_size_pow", 5, 9),
        "n_steps_pow": trial.suggest_int("n_steps_pow", 5, 11),
        "one_minus_gamma": trial.suggest_float("one_minus_gamma", 0.0001, 0.03, log=True),
        "one_minus_gae_lambda": trial.suggest_float("one_minus_gae_lambda", 0.0001, 0.1, log=True),
        "learning_rate": trial.suggest_float("learning_rate", 1e-5, 0.002, log=True),
        "ent_coef": trial.suggest_float("ent_coef", 0.00000001, 0.1, log=True),
        "clip_range": trial.suggest_categorical("clip_range", [0.1, 0.2, 0.3, 0.4]),
        "n_epochs": trial.suggest_categorical("n_epochs", [1, 5, 10, 20]),
        "max_grad_norm": trial.suggest_float("max_grad_norm", 0.3, 2),
        "net_arch": trial.suggest_categorical("net_arch", ["tiny", "small", "medium"]),
        "activation_fn": trial.suggest_categorical("activation_fn", ["tanh", "relu"]),
    }
    params.update(_sample_memory_shape(trial, config.get("policy")))
    return _finish(trial, params, config)


def sample_memory_a2c_params(trial: optuna.Trial, n_actions: int, n_envs: int, additional_args: dict) -> dict[str, Any]:
    """
    Sampler for MemoryA2C (rl-zoo3's ``HYPERPARAMS_SAMPLER["memory_a2c"]``).

    rl-zoo3's A2C search space (``n_steps`` in 8-512 instead of 32-2048), plus the memory shape and
    ``max_sequence_length`` as in :func:`sample_memory_ppo_params`, with the same merge rule.
    """
    config = _config_hyperparams(additional_args)
    params = {
        "n_steps": trial.suggest_categorical("n_steps", [8, 16, 32, 64, 128, 256, 512]),
        "one_minus_gamma": trial.suggest_float("one_minus_gamma", 0.0001, 0.03, log=True),
        "one_minus_gae_lambda": trial.suggest_float("one_minus_gae_lambda", 0.0001, 0.1, log=True),
        "learning_rate": trial.suggest_float("learning_rate", 1e-5, 0.002, log=True),
        "max_grad_norm": trial.suggest_float("max_grad_norm", 0.3, 2),
        "ent_coef": trial.suggest_float("ent_coef", 0.00000001, 0.1, log=True),
        "net_arch": trial.suggest_categorical("net_arch", ["small", "medium"]),
        "activation_fn": trial.suggest_categorical("activation_fn", ["tanh", "relu"]),
    }
    params.update(_sample_memory_shape(trial, config.get("policy")))
    return _finish(trial, params, config)


# --------------------------------------------------------------------------------------------
# ExperimentManager for our algorithms (see the module docstring)
# --------------------------------------------------------------------------------------------

#: The config each algorithm reads when ``-conf`` is not given (``maskable_memory_ppo``: MemoryPPO's).
DEFAULT_CONFIGS = {
    "memory_ppo": "memory_ppo",
    "memory_a2c": "memory_a2c",
    "maskable_memory_ppo": "memory_ppo",
    "memory_dqn": "memory_dqn",
    "memory_sac": "memory_sac",
}


class MemoryExperimentManager(ExperimentManager):
    """
    rl-zoo3's ``ExperimentManager`` (same arguments), with what our algorithms need; other
    algorithms behave exactly as with rl-zoo3's own class:

    * without ``config``, a ``memory_*`` algorithm reads this package's config
      (:data:`DEFAULT_CONFIGS`; rl-zoo3's default is a file in its own folder, which has none);
    * ``objective`` (``-optimize``) lets the samplers see the config's hyperparameters, so that
      the sampled ``policy_kwargs`` are merged into the config's instead of replacing them;
    * ``load_trial`` (``--trial-id``) merges the trial's ``policy_kwargs`` into the config's too;
    * ``create_callbacks``: ``maskable_memory_ppo`` is evaluated with the eval env's action masks.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._uses_default_config = False
        config = inspect.signature(ExperimentManager.__init__).bind(self, *args, **kwargs).arguments.get("config")
        if config is None and self.algo in DEFAULT_CONFIGS:
            self.config = str(config_path(DEFAULT_CONFIGS[self.algo]))
            self._uses_default_config = True
        # The config's policy_kwargs, read before a --trial-id trial is merged into them.
        self._config_policy_kwargs: Any = None

    def read_hyperparameters(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """rl-zoo3's, keeping the config's ``policy_kwargs`` for :meth:`load_trial`'s merge."""
        if self.algo in MEMORY_ALGOS and self.storage and self.study_name and self.trial_id:
            self._config_policy_kwargs = self._config_entry().get("policy_kwargs")
        try:
            return super().read_hyperparameters()
        except ValueError as error:
            if not self._uses_default_config or not str(error).startswith("Hyperparameters not found"):
                raise
            with open(self.config) as file:
                known = sorted(yaml.safe_load(file))
            raise ValueError(
                f"{self.config} (the default config of {self.algo}) has no entry for {self.env_name.gym_id}; it has "
                f"{known}. Pass your own file with -conf (an entry named after the env, or 'default')"
            ) from error

    def _config_entry(self) -> dict[str, Any]:
        """The config's entry for the env as rl-zoo3 reads it, without a trial or ``-params`` (quietly)."""
        saved = self.trial_id, self.custom_hyperparams
        self.trial_id, self.custom_hyperparams = None, None
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # rl-zoo3 always prints what it read
                entry, _ = super().read_hyperparameters()
        finally:
            self.trial_id, self.custom_hyperparams = saved
        return entry

    def load_trial(
        self, storage: str, study_name: str, trial_id: Optional[int] = None, convert: bool = True
    ) -> dict[str, Any]:
        """rl-zoo3's; for our algorithms, the trial's ``policy_kwargs`` merged into the config's (sampled wins)."""
        params = super().load_trial(storage, study_name, trial_id, convert)
        if self.algo in MEMORY_ALGOS and convert and "policy_kwargs" in params:
            params = _merge_policy_kwargs(self._config_policy_kwargs, params)
        return params

    def objective(self, trial: optuna.Trial) -> float:
        """rl-zoo3's, with the config's hyperparameters visible to our samplers (see :func:`_config_hyperparams`)."""
        token = _CONFIG_HYPERPARAMS.set(self._hyperparams if self.algo in MEMORY_ALGOS else None)
        try:
            return super().objective(trial)
        finally:
            _CONFIG_HYPERPARAMS.reset(token)

    def create_callbacks(self) -> None:
        """rl-zoo3's; for ``maskable_memory_ppo``, its evaluation callback passes the eval env's action masks."""
        super().create_callbacks()
        if self.algo != "maskable_memory_ppo":
            return
        for index, callback in enumerate(self.callbacks):
            if type(callback) is EvalCallback:
                self.callbacks[index] = MaskableEvalCallback(
                    callback.eval_env,
                    callback_on_new_best=callback.callback_on_new_best,
                    n_eval_episodes=callback.n_eval_episodes,
                    eval_freq=callback.eval_freq,
                    log_path=None if callback.log_path is None else os.path.dirname(callback.log_path),
                    best_model_save_path=callback.best_model_save_path,
                    deterministic=callback.deterministic,
                    verbose=callback.verbose,
                )


@contextlib.contextmanager
def _train_with_memory_experiment_manager() -> Iterator[None]:
    """
    Let rl-zoo3's ``train()`` build a :class:`MemoryExperimentManager`: it builds the class its
    module names ``ExperimentManager`` and offers no other hook. The name is swapped for the call
    only, after checking that it is the class we subclass (``tests/test_zoo.py`` also watches the
    hash of ``train``'s source, as ``tests/test_sb3_forks.py`` does for SB3's).
    """
    import rl_zoo3.train as zoo_train

    if zoo_train.ExperimentManager is not ExperimentManager or "ExperimentManager" not in zoo_train.train.__code__.co_names:
        raise RuntimeError(
            "rl_zoo3.train no longer builds rl_zoo3.exp_manager.ExperimentManager by that name: sb3_memory.zoo cannot "
            "hand it MemoryExperimentManager; please report this with your rl-zoo3 version"
        )
    zoo_train.ExperimentManager = MemoryExperimentManager  # type: ignore[misc]
    try:
        yield
    finally:
        zoo_train.ExperimentManager = ExperimentManager  # type: ignore[misc]


def register() -> None:
    """
    Register our algorithms, samplers and converters with rl-zoo3 and the environments with
    gymnasium (see the module docstring). Idempotent; runs on import. Nothing of rl-zoo3 is
    patched: ``train`` runs through :class:`MemoryExperimentManager`.
    """
    import rl_zoo3.import_envs  # noqa: F401  (CartPoleNoVel-v1, PendulumNoVel-v1, ...)

    sb3_memory.envs.register_envs()
    ALGOS.update(MEMORY_ALGOS)
    HYPERPARAMS_SAMPLER.update(
        {
            "memory_ppo": sample_memory_ppo_params,
            "memory_a2c": sample_memory_a2c_params,
            "maskable_memory_ppo": sample_memory_ppo_params,
            "memory_dqn": sample_memory_dqn_params,
            "memory_sac": sample_memory_sac_params,
        }
    )
    HYPERPARAMS_CONVERTER.update({name: convert_memory_onpolicy_params for name in ON_POLICY_MEMORY_ALGOS})
    HYPERPARAMS_CONVERTER.update(
        {"memory_dqn": convert_memory_offpolicy_params, "memory_sac": convert_memory_offpolicy_params}
    )


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def _run_enjoy() -> None:
    from rl_zoo3.enjoy import enjoy

    enjoy()


def _run_train() -> None:
    from rl_zoo3.train import train

    with _train_with_memory_experiment_manager():
        train()


def _run_record_video() -> None:
    # rl_zoo3.record_video is a script (its code lives under `if __name__ == "__main__"`).
    runpy.run_module("rl_zoo3.record_video", run_name="__main__")


def _run_plot(name: str) -> None:
    getattr(importlib.import_module("rl_zoo3.plots"), name)()


SUBCOMMANDS = {
    "train": _run_train,
    "enjoy": _run_enjoy,
    "record_video": _run_record_video,
    "plot_train": lambda: _run_plot("plot_train"),
    "plot_from_file": lambda: _run_plot("plot_from_file"),
    "all_plots": lambda: _run_plot("all_plots"),
}

_USAGE = f"""usage: sb3-memory-zoo {{{",".join(SUBCOMMANDS)}}} [rl-zoo3 arguments ...]

Runs rl-zoo3's own script with the sb3_memory algorithms (memory_ppo, memory_a2c, maskable_memory_ppo,
memory_dqn, memory_sac) registered; without -conf, train reads the package's config of a memory_* algorithm.
Hyperparameter search: `train ... -optimize` (see `sb3-memory-zoo train --help`).
Example: sb3-memory-zoo train --algo memory_ppo --env sb3_memory/PassiveTMaze-v0 -conf zoo_configs/memory_ppo.yml
"""


def _has_option(args: list[str], option: str) -> bool:
    return any(arg == option or arg.startswith(option + "=") for arg in args)


def main(argv: Optional[list[str]] = None) -> int:
    """
    ``sb3-memory-zoo SUBCOMMAND [rl-zoo3 arguments]``: register, drop the subcommand from ``sys.argv``
    and run rl-zoo3's entry point, which parses ``sys.argv`` itself. ``train`` and ``enjoy`` get
    ``--num-threads 1`` unless it is given or ``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS`` is set.

    :param argv: arguments after the program name (default: ``sys.argv[1:]``)
    :return: exit status (0; rl-zoo3's argparse exits on bad arguments)
    """
    args = sys.argv[1:] if argv is None else list(argv)
    if not args or args[0] in ("-h", "--help"):
        print(_USAGE)
        return 0 if args else 2
    command, rest = args[0], args[1:]
    if command not in SUBCOMMANDS:
        print(f"sb3-memory-zoo: unknown subcommand {command!r}\n\n{_USAGE}", file=sys.stderr)
        return 2
    register()
    if (
        command in ("train", "enjoy")
        and not _has_option(rest, "--num-threads")
        and not any(os.environ.get(v) for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"))
    ):
        # rl-zoo3 leaves torch's default (one thread per core), which collapses on a busy machine.
        rest = [*rest, "--num-threads", "1"]
    saved_argv = sys.argv
    sys.argv = [f"sb3-memory-zoo {command}", *rest]
    try:
        SUBCOMMANDS[command]()
    finally:
        sys.argv = saved_argv
    return 0


if __name__ == "__main__":
    # `python -m sb3_memory.zoo`: run the importable module's main, so that everything is registered
    # once, by `sb3_memory.zoo` (not a second copy of this file running as `__main__`).
    from sb3_memory.zoo import main as _main

    sys.exit(_main())
else:
    register()
