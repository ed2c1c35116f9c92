"""
The kernels as a library: which build a CPU loads, the registered PyTorch operators (fake tensors,
autograd, ``torch.compile``) and calls from several threads at once.
"""

import os
import threading

import numpy as np
import pytest
import torch

from sb3_memory import MemoryPPO
from sb3_memory.envs import PassiveTMazeEnv
from sb3_memory.memory import DNCCell, NTMCell, kernel_build, native

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
pytestmark = pytest.mark.skipif(not IN_CI and not native.is_available(), reason="no native kernels on this machine")

AVX512 = frozenset({"avx", "avx2", "avx512f", "avx512vl", "avx512bw", "avx512dq"})


# --- which build a CPU runs ------------------------------------------------------------------


def test_levels_follow_the_cpu_features():
    assert kernel_build.supported_levels(frozenset({"sse2"}), "x86_64") == ("baseline",)
    assert kernel_build.supported_levels(frozenset({"avx", "avx2"}), "x86_64") == ("baseline", "avx2")
    assert kernel_build.supported_levels(AVX512, "x86_64") == ("baseline", "avx2", "avx512")
    # AVX-512 without its VL/BW/DQ parts (Knights Landing) is not the level the code was built for.
    assert kernel_build.supported_levels(frozenset({"avx", "avx2", "avx512f"}), "x86_64") == ("baseline", "avx2")
    assert kernel_build.supported_levels(None, "aarch64") == ("baseline",)
    assert kernel_build.levels("aarch64") == ("baseline",) and kernel_build.level_flags("baseline", "aarch64") == ()
    assert "-march=native" not in " ".join(
        flag for level in kernel_build.X86_LEVELS for flag in kernel_build.level_flags(level, "x86_64")
    )


def test_the_widest_level_is_chosen_unless_one_is_forced(monkeypatch):
    monkeypatch.delenv(kernel_build.ISA_ENV, raising=False)
    assert kernel_build.select_level(AVX512, "x86_64") == "avx512"
    monkeypatch.setenv(kernel_build.ISA_ENV, "AVX2")
    assert kernel_build.select_level(AVX512, "x86_64") == "avx2"
    monkeypatch.setenv(kernel_build.ISA_ENV, "avx512")
    with pytest.raises(ValueError, match=r"illegal instruction.*unset SB3_MEMORY_ISA"):
        kernel_build.select_level(frozenset({"avx", "avx2"}), "x86_64")
    monkeypatch.setenv(kernel_build.ISA_ENV, "sse9")
    with pytest.raises(ValueError, match="not a level; use one of"):
        kernel_build.select_level(AVX512, "x86_64")


@pytest.fixture
def fresh_libraries(monkeypatch):
    """An empty library cache for this test (the process's loaded libraries are left alone)."""
    monkeypatch.setattr(native, "_libraries", {})
    monkeypatch.setattr(native, "_failures", {})


def test_the_installed_package_holds_a_build_for_this_cpu(fresh_libraries):
    """After `pip install .` (as CI does) the kernels come from the package, at this CPU's widest level."""
    library = native.load_library(torch.float32)
    assert library.level == kernel_build.select_level()
    if IN_CI and not os.environ.get(native.BUILD_ENV):  # check_kernels.sh builds sanitized ones on purpose
        assert library.origin == "package", library
    if library.origin == "package":
        assert native._library_digest(library.path) == kernel_build.source_digest()


@pytest.mark.parametrize("level", kernel_build.levels())
def test_a_forced_level_is_loaded_or_refused(monkeypatch, fresh_libraries, level):
    monkeypatch.setenv(kernel_build.ISA_ENV, level)
    if level not in kernel_build.supported_levels():
        with pytest.raises(ValueError, match="illegal instruction"):
            native.load_library(torch.float64)
        return
    library = native.load_library(torch.float64)
    assert library.level == level
    if library.origin == "package":
        assert kernel_build.library_stem(level, "float64") in library.path.name


def test_a_stale_build_is_rebuilt_from_the_sources(monkeypatch, fresh_libraries, tmp_path):
    """A checkout whose csrc/ changed after `pip install -e .` builds the kernels anew instead of running old code."""
    if native.packaged_library(kernel_build.select_level(), torch.float32) is None:
        pytest.skip("this copy holds no built kernels")
    built = []
    monkeypatch.setattr(kernel_build, "source_digest", lambda: "0123456789abcdef")
    monkeypatch.setattr(native, "_build", lambda compiler, dtype, level: built.append(level) or tmp_path / "x.so")
    monkeypatch.setattr(native, "KernelLibrary", lambda path, level, origin: (path, level, origin))
    assert native._find_library(torch.float32) == (tmp_path / "x.so", kernel_build.select_level(), "cache")
    assert built == [kernel_build.select_level()]


def test_without_a_build_or_a_compiler_the_error_says_how_to_get_one(monkeypatch, fresh_libraries):
    monkeypatch.setattr(native, "packaged_library", lambda level, dtype: None)
    monkeypatch.setattr(native, "_compiler", lambda: None)
    with pytest.raises(native.NativeUnavailableError, match=r"no built kernels and no C\+\+ compiler.*pip install"):
        native.load_library(torch.float32)
    assert not native.is_available(torch.float32)


def test_parallel_first_use_builds_compile_once(monkeypatch, tmp_path):
    """Workers that start together wait on the file lock for one build, instead of each compiling."""
    monkeypatch.setenv("SB3_MEMORY_CACHE", str(tmp_path))
    compiled = []
    gate = threading.Barrier(4)

    def fake_compiler(command, **kwargs):
        compiled.append(command)
        with open(command[-1], "wb") as partial:
            partial.write(b"built")
        return type("Result", (), {"returncode": 0, "stderr": ""})()

    monkeypatch.setattr(native.subprocess, "run", fake_compiler)
    results = []

    def build() -> None:
        gate.wait()
        results.append(native._build("c++", torch.float32, "baseline"))

    threads = [threading.Thread(target=build) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(compiled) == 1 and len(set(results)) == 1 and results[0].read_bytes() == b"built"
    assert [path for path in tmp_path.iterdir() if path.suffix == ".so"] == [results[0]]


def test_the_kind_numbers_come_from_the_library():
    """native.py repeats no C++ enum: the names map to the numbers the library declares."""
    interface = native.load_library(torch.float32).interface
    assert set(interface.core_ids) == {"ntm", "dnc", "plain"}
    assert set(interface.controller_ids) == {"lstm", "gru", "mlp"}
    assert len(set(interface.core_ids.values())) == 3 and len(set(interface.controller_ids.values())) == 3
    core_ = DNCCell(input_dim=3, controller_dim=4, memory_units=5, memory_unit_size=2)
    row = core_.flatten_state(core_.initial_state(1))[0]
    kernel = native.NativeSequence(core_.native_config(), row, "DNCCell")
    fields = native.load_library(torch.float32).interface.config_fields
    assert kernel.config_values[fields.index("core")] == interface.core_ids["dnc"]
    with pytest.raises(ValueError, match="no core 'sam'"):
        native.NativeSequence({**core_.native_config(), "core": "sam"}, row, "DNCCell")


# --- the registered operators -----------------------------------------------------------------


def _chunk_arguments(record: bool, steps: int = 5, batch: int = 3):
    torch.manual_seed(0)
    core_ = DNCCell(input_dim=4, controller_dim=6, memory_units=7, memory_unit_size=3, num_read_heads=2).double()
    kernel = core_._native_for(torch.zeros(1, 1, 4, dtype=torch.float64))
    assert kernel is not None
    inputs = torch.randn(steps, batch, 4, dtype=torch.float64, requires_grad=record)
    state = core_.flatten_state(core_.initial_state(batch, dtype=torch.float64)).clone().requires_grad_(record)
    starts = torch.zeros(steps, batch, dtype=torch.uint8)
    starts[2, 1] = 1
    weights = [w if w is None else w.detach().requires_grad_(record) for w in core_._native_weights()]
    return (
        kernel.config_values,
        kernel.feature_size,
        kernel.tape_size,
        record,
        inputs,
        state,
        starts,
        kernel.init_row,
        *weights,
    )


@pytest.mark.parametrize("record", [True, False], ids=["training", "inference"])
def test_the_forward_operator_passes_pytorchs_checks(record):
    """torch.library.opcheck: schema, fake-tensor shapes, autograd registration, and AOT dispatch (torch.compile's path)."""
    torch.library.opcheck(torch.ops.sb3_memory.chunk_forward.default, _chunk_arguments(record))


def test_the_backward_reads_the_tape_and_can_run_twice():
    """The backward writes its gradient records to a buffer of its own: the saved tape stays as the
    forward left it, and a second backward through the same graph gives the same gradients."""
    arguments = _chunk_arguments(record=True)
    features, final, tape = torch.ops.sb3_memory.chunk_forward(*arguments)
    assert not tape.requires_grad
    before = tape.clone()
    leaves = [argument for argument in arguments if isinstance(argument, torch.Tensor) and argument.requires_grad]
    loss = features.square().sum() + final.sum()
    first = torch.autograd.grad(loss, leaves, retain_graph=True)
    assert torch.equal(tape, before)
    second = torch.autograd.grad(loss, leaves)
    assert torch.equal(tape, before)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


def test_an_unused_final_state_gets_the_gradient_of_zeros():
    """Autograd passes None, not zeros, for an output the loss does not use; the backward treats it as zero."""
    arguments = _chunk_arguments(record=True)
    leaves = [argument for argument in arguments if isinstance(argument, torch.Tensor) and argument.requires_grad]
    features, final, _ = torch.ops.sb3_memory.chunk_forward(*arguments)
    without = torch.autograd.grad(features.square().sum(), leaves)
    features, final, _ = torch.ops.sb3_memory.chunk_forward(*arguments)
    with_zeros = torch.autograd.grad(features.square().sum() + (final * 0).sum(), leaves)
    for a, b in zip(without, with_zeros):
        assert torch.equal(a, b)


def _operator_calls(function) -> int:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        function()
    return sum(event.name == "sb3_memory::chunk_forward" for event in profile.events())


def test_inference_calls_the_implementation_directly_with_the_operators_results():
    """Eager inference skips the dispatcher (its cost is a small rollout step's); training, and any
    tracing, go through the registered operator. Both give the same bits, and the direct call
    writes the final state into a given buffer."""
    arguments = _chunk_arguments(record=False)
    with torch.no_grad():
        assert _operator_calls(lambda: native._run_forward(*arguments)) == 0
        direct = native._run_forward(*arguments)
        through_operator = torch.ops.sb3_memory.chunk_forward(*arguments)
        state_out = torch.full_like(direct[1], float("nan"))
        into = native._run_forward(*arguments, state_out=state_out)
    assert into[1] is state_out
    for a, b, c in zip(direct[:2], through_operator[:2], into[:2]):
        assert torch.equal(a, b) and torch.equal(a, c)
    assert _operator_calls(lambda: native._run_forward(*_chunk_arguments(record=True))) == 1


@pytest.mark.parametrize("backend", ["native", "reference"])
@pytest.mark.parametrize(
    "cell, kwargs",
    [(DNCCell, {"sparse_top_k": 3}), (NTMCell, {"sparse_top_k": 3}), (DNCCell, {}), (NTMCell, {})],
)
def test_a_state_updated_in_place_equals_one_written_elsewhere(cell, kwargs, backend):
    """state_out=state (inference): the same features and state to the bit as a new tensor, over
    chunks with episode starts, batched and one row at a time (as rollouts run a large memory)."""
    if backend == "native" and not native.is_available():
        pytest.skip("no C++ compiler for the native kernels")
    torch.manual_seed(0)
    core_ = cell(input_dim=4, controller_dim=6, memory_units=24, memory_unit_size=3, backend=backend, **kwargs)
    x = torch.randn(5, 3, 4)
    starts = torch.zeros(5, 3)
    starts[2, 1] = 1.0
    with torch.no_grad():
        state = core_.flatten_state(core_.initial_state(3))
        for _ in range(3):
            features, expected = core_.forward_flat(x, state, starts)
            in_place = state.clone()
            got_features, got = core_.forward_flat(x, in_place, starts, state_out=in_place)
            assert got is in_place and torch.equal(got_features, features) and torch.equal(in_place, expected)
            row = state[1:2].clone()
            _, row_expected = core_.forward_flat(x[:, 1:2], row, starts[:, 1:2])
            core_.forward_flat(x[:, 1:2], row, starts[:, 1:2], state_out=row)
            assert torch.equal(row, row_expected)
            state = expected
    assert not torch.equal(state, core_.flatten_state(core_.initial_state(3)))


def test_a_state_out_that_cannot_be_written_is_refused():
    core_ = DNCCell(input_dim=4, controller_dim=6, memory_units=7, memory_unit_size=3)
    x = torch.zeros(2, 3, 4)
    state = core_.flatten_state(core_.initial_state(3))
    rows = torch.cat([state, state])
    with pytest.raises(ValueError, match="overlaps"):
        core_.forward_flat(x, rows[:3], state_out=rows[1:4])
    with pytest.raises(ValueError, match=r"in place needs torch\.no_grad"):
        core_.forward_flat(x, state, state_out=state)
    with pytest.raises(ValueError, match="contiguous"):
        core_.forward_flat(x, state, state_out=torch.zeros(state.shape[1], 3).t())
    with pytest.raises(ValueError, match="like the state"):
        core_.forward_flat(x, state, state_out=torch.zeros(2, state.shape[1]))
    with pytest.raises(ValueError, match="need no gradient"):
        core_.forward_flat(x, state, state_out=torch.zeros_like(state, requires_grad=True))


def test_torch_compile_of_a_policy_with_native_cores_matches_eager():
    model = MemoryPPO("DNCPolicy", PassiveTMazeEnv(corridor_length=3), n_steps=32, batch_size=32, seed=0, device="cpu")
    policy = model.policy
    assert policy.core._native_for(torch.zeros(1, 1, policy.core.input_dim)) is not None
    generator = torch.Generator().manual_seed(0)
    steps, batch = 6, 4
    obs = torch.rand((steps * batch, *model.observation_space.shape), generator=generator)
    actions = torch.randint(0, int(model.action_space.n), (steps * batch,), generator=generator).float()
    starts = torch.zeros(steps * batch)
    starts[batch * 3 + 1] = 1.0
    state = policy.initial_state(batch)

    def loss_and_outputs(evaluate):
        policy.zero_grad(set_to_none=True)
        values, log_prob, entropy = evaluate(obs, actions, state, starts)
        (values.sum() + log_prob.sum() + entropy.sum()).backward()
        grads = {name: parameter.grad.clone() for name, parameter in policy.named_parameters() if parameter.grad is not None}
        return values.detach(), log_prob.detach(), grads

    eager = loss_and_outputs(policy.evaluate_actions)
    compiled = loss_and_outputs(torch.compile(policy.evaluate_actions, backend="aot_eager"))
    torch.testing.assert_close(compiled[0], eager[0], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(compiled[1], eager[1], rtol=1e-6, atol=1e-6)
    assert compiled[2].keys() == eager[2].keys() and any(name.startswith("core.") for name in eager[2])
    for name in eager[2]:
        torch.testing.assert_close(compiled[2][name], eager[2][name], rtol=1e-6, atol=1e-6, msg=name)


# --- threads ----------------------------------------------------------------------------------


@pytest.mark.parametrize("policy", ["NTMPolicy", "DNCPolicy"])
def test_threads_predicting_on_one_model_get_the_sequential_results(policy):
    """
    Four threads call predict on one model at once, each with its own batch size, many times over.
    The kernels run without the GIL, so a call that shared its sizes with another (as the binding
    once did) would read or write the other's rows: every result must equal the sequential one.
    """
    model = MemoryPPO(
        policy, PassiveTMazeEnv(corridor_length=3), n_steps=32, batch_size=32, seed=0, device="cpu",
        policy_kwargs=dict(memory_units=16, memory_unit_size=8),
    )  # fmt: skip
    rng = np.random.default_rng(0)
    shape = model.observation_space.shape
    batches = {size: rng.random((size, *shape)).astype(np.float32) for size in (1, 2, 5, 11)}

    def rollout(observations: np.ndarray) -> list:
        state, results = None, []
        starts = np.ones(len(observations), dtype=bool)
        for step in range(6):
            actions, state = model.predict(observations * (step + 1) / 6, state, starts, deterministic=True)
            starts = np.zeros_like(starts)
            results.append((actions.copy(), state.copy()))
        return results

    expected = {size: rollout(observations) for size, observations in batches.items()}
    mismatches: list = []

    def worker(size: int) -> None:
        for _ in range(25):
            for (actions, state), (want_actions, want_state) in zip(rollout(batches[size]), expected[size]):
                if not (np.array_equal(actions, want_actions) and np.array_equal(state, want_state)):
                    mismatches.append(size)

    threads = [threading.Thread(target=worker, args=(size,)) for size in batches]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not mismatches, f"threads disagreed with the sequential results for batch sizes {sorted(set(mismatches))}"
