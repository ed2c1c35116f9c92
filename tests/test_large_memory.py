"""Large memories in training: how a rollout carries the state, and the warning on large dense cores.

A rollout step updates the state in place, and runs a large core one environment at a time (see
``MemoryActorCriticPolicy._core_forward``). These tests pin that down against the plain path (a
new tensor per step, the cores' parts split and joined): the same rollout to the bit, with
episodes starting inside the chunks.
"""

import os
import warnings
from typing import Any

import numpy as np
import pytest
import torch as th
from stable_baselines3.common.callbacks import BaseCallback
from test_algorithms import N_STEPS, RecordSteps, collect_one_rollout, make_model, short_episode_env

from sb3_memory import MemoryA2C, MemoryPPO
from sb3_memory.common import policies
from sb3_memory.common.buffers import compact_states
from sb3_memory.common.on_policy_algorithm import MemoryOnPolicyAlgorithm
from sb3_memory.memory import DNCCell, NTMCell, core, native

SPARSE_DNC = dict(memory_units=64, memory_unit_size=4, controller_dim=16, sparse_top_k=4)
CASES = [
    ("DNCPolicy", SPARSE_DNC),
    ("DNCPolicy", {**SPARSE_DNC, "critic_memory": "shared"}),
    ("NTMPolicy", dict(memory_units=64, memory_unit_size=4, controller_dim=16, sparse_top_k=4)),
    ("DNCPolicy", dict(memory_units=8, memory_unit_size=4, controller_dim=16)),  # dense
]


# One environment at a time is the native kernels' path (they compute each row on its own); as in
# test_native.py, CI (CI=true) fails instead of skipping where they cannot be built.
needs_kernels = pytest.mark.skipif(
    os.environ.get("CI", "").lower() not in ("1", "true", "yes") and not native.is_available(),
    reason="no C++ compiler for the native kernels",
)


class CountRowCalls:
    """Counts the cores' ``forward_flat`` calls on one environment's state."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.row_calls = 0
        original = core.MemoryCore.forward_flat

        def counted(module: Any, x: th.Tensor, flat_state: th.Tensor, episode_starts: Any = None, **kwargs: Any) -> Any:
            self.row_calls += int(flat_state.shape[0] == 1)
            return original(module, x, flat_state, episode_starts, **kwargs)

        monkeypatch.setattr(core.MemoryCore, "forward_flat", counted)


def rollout(policy: str, policy_kwargs: dict[str, Any], algo: type = MemoryPPO) -> tuple[Any, RecordSteps]:
    model = make_model(algo, policy, short_episode_env, n_envs=3, sequence_length=4, policy_kwargs=policy_kwargs)
    recorder = RecordSteps()
    collect_one_rollout(model, recorder)
    return model, recorder


@needs_kernels
@pytest.mark.parametrize("algo", [MemoryPPO, MemoryA2C])
@pytest.mark.parametrize("policy, policy_kwargs", CASES)
def test_rollout_in_place_equals_the_plain_path(monkeypatch, policy, policy_kwargs, algo):
    # Every core run one environment at a time, as a 65,536-slot memory is.
    monkeypatch.setattr(policies, "ROW_CALL_MIN_STATE_BYTES", 0)
    counter = CountRowCalls(monkeypatch)
    model, recorder = rollout(policy, policy_kwargs, algo)
    assert counter.row_calls >= N_STEPS * 3  # the environments' rows did go through one by one
    with monkeypatch.context() as plain:
        plain.setattr(MemoryOnPolicyAlgorithm, "_rollout_state_out", lambda self, state: None)
        reference, reference_recorder = rollout(policy, policy_kwargs, algo)

    # Episodes start inside the rollout, so rows are reset to the initial state mid-chunk.
    assert model.rollout_buffer.episode_starts[1:].sum() >= 6
    for name in ("observations", "actions", "rewards", "episode_starts", "values", "log_probs", "advantages"):
        np.testing.assert_array_equal(getattr(model.rollout_buffer, name), getattr(reference.rollout_buffer, name))
    for state, expected_state in zip(recorder.new_states, reference_recorder.new_states, strict=True):
        assert th.equal(state, expected_state)
    # In place: by the time a callback sees a step, its state is the new state.
    assert model._rollout_state_out(model._last_memory_state) is model._last_memory_state
    assert th.equal(model._last_memory_state, reference._last_memory_state)
    # The buffer kept the states the policy had at the chunk starts (rebuilt from compact ones),
    # copied before the step updated them.
    stored = model.rollout_buffer.stored_chunk_states()
    assert th.equal(stored, reference.rollout_buffer.stored_chunk_states())
    for chunk in range(N_STEPS // 4):
        assert th.equal(stored[chunk], reference_recorder.states[chunk * 4])


@needs_kernels
def test_large_cores_run_one_environment_at_a_time_only_above_the_threshold(monkeypatch):
    counter = CountRowCalls(monkeypatch)
    rollout("DNCPolicy", SPARSE_DNC)
    assert counter.row_calls == 0  # 2,256 floats per environment: batched, as before
    monkeypatch.setattr(policies, "ROW_CALL_MIN_STATE_BYTES", DNCCell(8, **SPARSE_DNC).state_size * 4)
    rollout("DNCPolicy", SPARSE_DNC)
    assert counter.row_calls > 0


@needs_kernels
def test_chunks_replayed_from_the_stored_states_reach_the_next_stored_state_to_the_bit(monkeypatch):
    monkeypatch.setattr(policies, "ROW_CALL_MIN_STATE_BYTES", 0)
    model, _ = rollout("DNCPolicy", SPARSE_DNC)
    buffer, policy = model.rollout_buffer, model.policy
    stored = buffer.stored_chunk_states()  # rebuilt from the compact ones
    obs = th.as_tensor(buffer.observations)  # (n_steps, n_envs, obs_dim), time-major as training replays
    starts = th.as_tensor(buffer.episode_starts)
    ends = [*stored[1:], model._last_memory_state]
    with th.no_grad():
        for chunk, end in enumerate(ends):
            steps = slice(chunk * 4, (chunk + 1) * 4)
            # Training's batched call over whole chunks, from the state the rollout stored.
            _, latent_vf, state, _ = policy._run_cores(obs[steps].reshape(-1, 4), stored[chunk], starts[steps].reshape(-1))
            assert th.equal(state, end)
            values = policy.value_net(policy.mlp_extractor.forward_critic(latent_vf)).reshape(4, -1)
            th.testing.assert_close(values, th.as_tensor(buffer.values[steps]), atol=1e-5, rtol=0)


@pytest.mark.parametrize("policy", ["DNCPolicy", "NTMPolicy"])
def test_compact_states_compare_only_the_touched_blocks_and_keep_the_same_entries(policy):
    """
    With 300 slots (five blocks of written_blocks) an episode of a few steps touches few blocks:
    the policy names those columns (and the fields that are not per slot), and a compact state
    made from them holds exactly the entries a comparison of every column finds.
    """
    kwargs = dict(memory_units=300, memory_unit_size=4, controller_dim=16, sparse_top_k=4)
    model, recorder = rollout(policy, kwargs)
    initial = model.policy.initial_state(1)
    states = th.cat([state for state in recorder.states if not th.equal(state, initial.expand_as(state))])
    columns = model.policy.columns_that_may_differ(states)
    assert all(c is not None and len(c) < model.policy.state_size // 2 for c in columns)
    everything = compact_states(states, initial)
    assert sum(len(index) for index, _ in everything) > 0
    for (index, values), (expected_index, expected_values) in zip(compact_states(states, initial, columns), everything):
        assert th.equal(index, expected_index) and th.equal(values, expected_values)


def test_rollouts_update_the_state_in_place_and_do_not_save_it(tmp_path):
    model = make_model(MemoryPPO, "DNCPolicy", short_episode_env, policy_kwargs=SPARSE_DNC)
    start = model.policy.initial_state(2)
    model._last_memory_state = start
    model.learn(N_STEPS * 2, reset_num_timesteps=False)
    assert model._last_memory_state is start and not th.equal(start, model.policy.initial_state(2))

    class KeepEndStates(BaseCallback):
        def __init__(self) -> None:
            super().__init__()
            self.ends: list[th.Tensor] = []

        def _on_step(self) -> bool:
            return True

        def _on_rollout_end(self) -> None:
            assert isinstance(self.model, MemoryPPO) and self.model._last_memory_state is not None
            self.ends.append(self.model._last_memory_state.clone())

    keep = KeepEndStates()
    model.learn(N_STEPS * 2 * 2, callback=keep, reset_num_timesteps=False)
    assert not th.equal(keep.ends[0], keep.ends[1])  # the second rollout went on from the first's end
    model.save(tmp_path / "model.zip")
    assert "_last_memory_state" in model._excluded_save_params()
    loaded = MemoryPPO.load(tmp_path / "model.zip")
    assert loaded._last_memory_state is None


def test_forward_writes_state_out_or_the_state_in_place_and_refuses_the_rest():
    model = make_model(MemoryPPO, "DNCPolicy", short_episode_env, policy_kwargs=SPARSE_DNC)
    policy = model.policy
    obs = th.zeros((2, 4))
    state, starts = policy.initial_state(2), th.ones(2)
    joint = th.cat([state, state])
    with th.no_grad():
        with pytest.raises(ValueError, match="overlaps the state it is computed from without being it"):
            policy(obs, joint[:2], starts, state_out=joint[1:3])
        with pytest.raises(ValueError, match="shape"):
            policy(obs, state, starts, state_out=th.empty((3, policy.state_size)))
        out = th.full_like(state, float("nan"))
        _, _, _, new_state = policy(obs, state, starts, state_out=out)
        assert new_state is out and th.equal(out, policy(obs, state, starts)[3])
        _, _, _, in_place = policy(obs, state, starts, state_out=state)
        assert in_place is state and th.equal(state, out)
    with pytest.raises(ValueError, match=r"in place needs torch\.no_grad"):
        policy(obs, state, starts, state_out=state)


# --------------------------------------------------------------------------------------------
# The warning on large dense cores
# --------------------------------------------------------------------------------------------


@pytest.fixture
def fresh_warnings(monkeypatch):
    monkeypatch.setattr(core, "_warned", set())


@pytest.mark.parametrize("cell", [NTMCell, DNCCell])
@pytest.mark.parametrize("sparse_top_k", [None, 2048])
def test_large_dense_core_warns_once_naming_sparse_top_k(fresh_warnings, cell, sparse_top_k):
    with pytest.warns(UserWarning, match="memory_units=2048 is dense.*sparse_top_k") as record:
        cell(4, memory_units=2048, memory_unit_size=2, controller_dim=4, sparse_top_k=sparse_top_k)
        cell(4, memory_units=2048, memory_unit_size=2, controller_dim=4, sparse_top_k=sparse_top_k)
    assert sum("sparse_top_k" in str(item.message) for item in record) == 1


@pytest.mark.parametrize("cell", [NTMCell, DNCCell])
@pytest.mark.parametrize("memory_units, sparse_top_k", [(2047, None), (2048, 8), (4096, 2047)])
def test_small_or_sparse_cores_do_not_warn(fresh_warnings, cell, memory_units, sparse_top_k):
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*dense")
        cell(4, memory_units=memory_units, memory_unit_size=2, controller_dim=4, sparse_top_k=sparse_top_k)


def test_the_policy_warns_once_for_its_two_dense_cores(fresh_warnings):
    with pytest.warns(UserWarning) as record:
        make_model(MemoryPPO, "NTMPolicy", short_episode_env, policy_kwargs=dict(memory_units=2048, memory_unit_size=2))
    assert sum("sparse_top_k" in str(item.message) for item in record) == 1
