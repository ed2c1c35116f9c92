"""The native fast path of the memory cores: fused forward and backward passes over a chunk.

A step of an NTM or DNC is about 60 tiny tensor operations; in eager PyTorch their per-operation
overhead, not their arithmetic, sets the speed, and the backward pass doubles it. The kernels in
``csrc/memory_kernels.cpp`` run a whole time-major chunk in one call, with a hand-written backward
pass, and are checked against the PyTorch reference (``MemoryCore.reference_sequence``) in the
tests: same features, final state and gradients.

The C++ file uses no PyTorch headers. It is compiled on first use with the system C++ compiler,
one library per scalar type (seconds each, once per machine: the libraries are cached under
``$SB3_MEMORY_CACHE``, by default ``~/.cache/sb3_memory``), and called through :mod:`ctypes` on
the tensors' memory. Without a compiler the cores fall back to the reference path (see
``MemoryCore``'s ``backend``).
"""

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Any, Optional

import torch
from torch import Tensor

SOURCE = Path(__file__).with_name("csrc") / "memory_kernels.cpp"
# The interface this module speaks; the library reports its own (SMEM_ABI_VERSION in the C++ file).
ABI_VERSION = 9
CORE_IDS = {"ntm": 0, "dnc": 1, "plain": 2}
CONTROLLER_IDS = {"lstm": 0, "gru": 1, "mlp": 2}
SUPPORTED_DTYPES = {torch.float32: "SMEM_FLOAT32", torch.float64: "SMEM_FLOAT64"}
# Weights in the order the kernels take them; a core passes None for those it does not have. With
# w_in and b_in the kernels project the inputs themselves, one row at a time (step_input there);
# without, the inputs come projected.
WEIGHT_NAMES = ("w_in", "b_in", "w_rec", "w_hid", "b_hid", "w_if", "b_if")


class NativeUnavailableError(RuntimeError):
    """The native kernels could not be built or loaded on this machine."""


def _names(function: Any) -> list[str]:
    function.restype = ctypes.c_char_p
    return [name for name in function().decode().split(",") if name]


class Interface:
    """
    The kernels' calling interface as the library itself declares it (``SMEM_CONFIG_FIELDS``,
    ``SMEM_BUFFER_FIELDS`` and ``SMEM_STATUS_CODES`` in the C++ file): the ctypes structures are
    built from the exported field lists, so Python never repeats the C layout.

    :param library: a loaded kernel library
    :raises NativeUnavailableError: the library speaks another ABI version, or its structure sizes
        disagree with the fields it lists
    """

    def __init__(self, library: ctypes.CDLL) -> None:
        library.smem_abi_version.restype = ctypes.c_int64
        version = int(library.smem_abi_version())
        if version != ABI_VERSION:
            raise NativeUnavailableError(
                f"the kernel library speaks ABI {version}, this sb3_memory speaks {ABI_VERSION}: "
                f"delete the cached libraries in {cache_dir()} and run again"
            )
        self.config_fields = _names(library.smem_config_fields)
        self.buffer_fields = _names(library.smem_buffer_fields)
        self.buffer_names = frozenset(self.buffer_fields)
        config_type: Any = type(
            "SmemConfig", (ctypes.Structure,), {"_fields_": [(n, ctypes.c_int64) for n in self.config_fields]}
        )
        buffers_type: Any = type(
            "SmemBuffers", (ctypes.Structure,), {"_fields_": [(n, ctypes.c_void_p) for n in self.buffer_fields]}
        )
        self.config_type, self.buffers_type = config_type, buffers_type
        for name, structure in (("config", config_type), ("buffers", buffers_type)):
            size_function = getattr(library, f"smem_{name}_size")
            size_function.restype = ctypes.c_int64
            if int(size_function()) != ctypes.sizeof(structure):
                raise NativeUnavailableError(
                    f"the kernels' Smem{name.capitalize()} is {size_function()} bytes, but its fields make "
                    f"{ctypes.sizeof(structure)}: the C++ declaration and SMEM_{name.upper()}_FIELDS disagree"
                )
        self.status_names = {
            int(value): name for name, value in (item.split("=") for item in _names(library.smem_status_names))
        }
        self.statuses = {name: value for value, name in self.status_names.items()}


_lock = threading.Lock()
_libraries: dict[torch.dtype, ctypes.CDLL] = {}
_interfaces: dict[torch.dtype, Interface] = {}
_failures: dict[torch.dtype, str] = {}


def cache_dir() -> Path:
    """Where compiled kernels are kept: ``$SB3_MEMORY_CACHE``, else ``$XDG_CACHE_HOME/sb3_memory``."""
    if os.environ.get("SB3_MEMORY_CACHE"):
        return Path(os.environ["SB3_MEMORY_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "sb3_memory"


def _compiler() -> Optional[str]:
    for candidate in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if candidate and shutil.which(candidate):
            return candidate
    return None


def _cpu_identity() -> str:
    # -march=native code must not be reused on a CPU with fewer instruction-set extensions.
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith(("flags", "Features")):
                    return line
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _flag_sets() -> list[list[str]]:
    common = ["-O3", "-std=c++17", "-shared", "-fPIC", "-fopenmp-simd", "-fno-math-errno", "-ffp-contract=off"]
    common += os.environ.get("SB3_MEMORY_CXXFLAGS", "").split()  # e.g. "-g" to profile the kernels
    return [[*common, "-march=native"], common]


def _build(compiler: str, dtype: torch.dtype) -> Path:
    source = SOURCE.read_bytes()
    directory = cache_dir()
    errors = []
    for flags in _flag_sets():
        flags = [*flags, f"-D{SUPPORTED_DTYPES[dtype]}"]
        key = hashlib.sha256(source + " ".join([compiler, *flags, _cpu_identity()]).encode()).hexdigest()[:16]
        target = directory / f"memory_kernels-{key}.so"
        if target.exists():
            return target
        directory.mkdir(parents=True, exist_ok=True)
        # Compile to a private name, then rename: concurrent processes never load half a file.
        handle, partial = tempfile.mkstemp(suffix=".so", dir=directory)
        os.close(handle)
        result = subprocess.run([compiler, *flags, str(SOURCE), "-o", partial], capture_output=True, text=True)
        if result.returncode == 0:
            os.replace(partial, target)
            return target
        os.unlink(partial)
        errors.append(f"{compiler} {' '.join(flags)}: {result.stderr.strip()[-2000:]}")
    raise NativeUnavailableError("compilation failed:\n" + "\n".join(errors))


def load_library(dtype: torch.dtype = torch.float32) -> ctypes.CDLL:
    """
    The compiled kernels for one scalar type, built on first use.

    :raises NativeUnavailableError: no C++ compiler, a failed build, or an unwritable cache
    """
    if dtype not in SUPPORTED_DTYPES:
        raise NativeUnavailableError(f"no native kernels for {dtype}; they support {list(SUPPORTED_DTYPES)}")
    with _lock:
        if dtype in _libraries:
            return _libraries[dtype]
        if dtype in _failures:
            raise NativeUnavailableError(_failures[dtype])
        try:
            compiler = _compiler()
            if compiler is None:
                raise NativeUnavailableError("no C++ compiler found (looked for $CXX, c++, g++, clang++)")
            library = ctypes.CDLL(str(_build(compiler, dtype)))
            interface = Interface(library)
        except (NativeUnavailableError, OSError) as error:
            _failures[dtype] = str(error)
            raise NativeUnavailableError(_failures[dtype]) from None
        config_pointer = ctypes.POINTER(interface.config_type)
        library.smem_tape_size.restype = ctypes.c_int64
        library.smem_tape_size.argtypes = [config_pointer]
        library.smem_tape_fields.restype = None
        library.smem_tape_fields.argtypes = [config_pointer, ctypes.POINTER(ctypes.c_int64)]
        for function in (library.smem_forward, library.smem_backward):
            function.restype = ctypes.c_int
            function.argtypes = [config_pointer, ctypes.POINTER(interface.buffers_type)]
        _libraries[dtype] = library
        _interfaces[dtype] = interface
        return library


def is_available(dtype: torch.dtype = torch.float32) -> bool:
    """Whether the native kernels for ``dtype`` are built (or can be) on this machine."""
    try:
        load_library(dtype)
    except NativeUnavailableError:
        return False
    return True


def _pointer(tensor: Optional[Tensor]) -> Optional[int]:
    return None if tensor is None else tensor.data_ptr()


class NativeSequence:
    """
    The kernels bound to one core configuration (sizes and flat-state offsets) and scalar type.

    :param config: every field of the kernels' ``SmemConfig`` but ``T`` and ``B``
    :param init_row: the flat initial state of one row, ``(D,)``, copied in at episode starts; its
        dtype selects the kernels
    :param name: the core's name, for error messages
    """

    def __init__(self, config: dict[str, int], init_row: Tensor, name: str = "memory core") -> None:
        self.dtype = init_row.dtype
        self.library = load_library(self.dtype)
        self.interface = _interfaces[self.dtype]
        expected = set(self.interface.config_fields) - {"T", "B"}
        # A core lists the offsets of its own state fields only; the kernels ignore the others.
        config = {**{name: 0 for name in expected if name.startswith("off_")}, **config}
        if expected != set(config):
            raise ValueError(
                f"native config for {name}: missing {sorted(expected - set(config))}, "
                f"unknown {sorted(set(config) - expected)} (the kernels' fields: {self.interface.config_fields})"
            )
        self.config = self.interface.config_type(T=0, B=0, **config)
        self.init_row = init_row.contiguous()
        self.tape_size = int(self.library.smem_tape_size(ctypes.byref(self.config)))
        fields = (ctypes.c_int64 * 5)()
        self.library.smem_tape_fields(ctypes.byref(self.config), fields)
        # Offsets in a step's tape record (see smem_tape_fields)
        self.tape_x, self.tape_out, self.tape_draw, self.tape_dfh, self.tape_hidden = list(fields)
        self.feature_size = config["C"] + config["R"] * config["W"]
        self.name = name

    def _call(self, function: Any, steps: int, batch: int, **buffers: Optional[Tensor]) -> int:
        for name, tensor in buffers.items():
            if tensor is not None and tensor.dtype != self.dtype and name != "starts":
                raise TypeError(f"{name} is {tensor.dtype}, but these kernels are {self.dtype}")
        self.config.T, self.config.B = steps, batch
        if not buffers.keys() <= self.interface.buffer_names:  # runs at every rollout step: no sets built here
            unknown = sorted(set(buffers) - self.interface.buffer_names)
            raise ValueError(f"the kernels have no buffers {unknown}; they take {self.interface.buffer_fields}")
        pointers = self.interface.buffers_type(**{name: _pointer(tensor) for name, tensor in buffers.items()})
        return function(ctypes.byref(self.config), ctypes.byref(pointers))

    def forward(
        self, inputs: Tensor, state: Tensor, starts: Optional[Tensor], weights: tuple[Optional[Tensor], ...], record: bool
    ) -> tuple[Tensor, Tensor, Optional[Tensor]]:
        """
        Run the chunk.

        :param inputs: (T, B, I) contiguous, the controller's inputs
        :param state: (B, D) contiguous
        :param starts: (T, B) uint8, or None
        :param weights: in :data:`WEIGHT_NAMES` order
        :param record: keep the tape for :meth:`backward`
        :return: features (T, B, F), final state (B, D), tape (or None)
        """
        steps, batch = inputs.shape[0], inputs.shape[1]
        features = inputs.new_empty((steps, batch, self.feature_size))
        final = state.new_empty(state.shape)
        tape = inputs.new_empty((batch, steps, self.tape_size)) if record else None
        status = self._call(
            self.library.smem_forward, steps, batch, inputs=inputs, state0=state, starts=starts,
            init_row=self.init_row, features=features, state_T=final, tape=tape, **dict(zip(WEIGHT_NAMES, weights)),
        )  # fmt: skip
        if status != 0:
            raise self._status_error(status)
        return features, final, tape

    def backward(
        self,
        tape: Tensor,
        inputs: Tensor,
        state: Tensor,
        final: Tensor,
        starts: Optional[Tensor],
        weights: tuple[Optional[Tensor], ...],
        d_features: Tensor,
        d_state: Optional[Tensor],
        state_grad: bool = True,
    ) -> tuple[Tensor, Optional[Tensor], tuple[Optional[Tensor], ...]]:
        """
        Gradients of the inputs, the initial state (None unless ``state_grad``: a stored state needs
        none, and at large N it is the biggest tensor a call writes) and the weights (``inputs``,
        ``state`` and ``final``: the forward's; the sparse cores rebuild their memory from the states).
        """
        batch, steps = tape.shape[0], tape.shape[1]
        config = self.config
        d_projected = tape.new_empty((steps, batch, config.G))
        d_state0 = tape.new_empty((batch, config.D)) if state_grad else None
        status = self._call(
            self.library.smem_backward, steps, batch, starts=starts, init_row=self.init_row, tape=tape, state0=state,
            state_T=final,
            d_features=d_features, d_state_T=d_state,
            d_projected=d_projected, d_state0=d_state0, **dict(zip(WEIGHT_NAMES, weights)),
        )  # fmt: skip
        if status != 0:
            raise self._status_error(status)
        # Each weight gradient is one matrix product over all (row, step) records of the tape:
        # d(out) / dW summed over the chunk = d(out)^T @ (what W multiplied).
        records = tape.reshape(batch * steps, self.tape_size)
        gates = d_projected.transpose(0, 1).reshape(batch * steps, config.G)
        w_in, _, w_rec, w_hid, _, w_if, _ = weights
        d_inputs, d_w_in, d_b_in = d_projected, None, None  # inputs the caller projected
        if w_in is not None:
            d_inputs = d_projected @ w_in
            d_w_in = d_projected.reshape(steps * batch, config.G).t() @ inputs.reshape(steps * batch, config.I)
            d_b_in = d_projected.sum(dim=(0, 1))

        def columns(start: int, width: int) -> Tensor:
            return records[:, start : start + width]

        d_w_rec = None if w_rec is None else gates.t() @ columns(self.tape_x, config.K)
        d_w_hid = d_b_hid = d_w_if = d_b_if = None
        if w_hid is not None:
            d_fh = columns(self.tape_dfh, 3 * config.C)
            d_w_hid = d_fh.t() @ columns(self.tape_hidden, config.C)
            d_b_hid = d_fh.sum(0)
        if w_if is not None:
            d_raw = columns(self.tape_draw, config.P)
            d_w_if = d_raw.t() @ columns(self.tape_out, config.C)
            d_b_if = d_raw.sum(0)
        return d_inputs, d_state0, (d_w_in, d_b_in, d_w_rec, d_w_hid, d_b_hid, d_w_if, d_b_if)

    def _status_error(self, status: int) -> Exception:
        if status == self.interface.statuses["non_finite_features"]:
            return ValueError(
                f"{self.name} produced non-finite features (NaN/Inf): the parameters or the carried state "
                "diverged; lower the learning rate or clip gradients (max_grad_norm)"
            )
        name = self.interface.status_names.get(status, "not a status the library declares")
        return RuntimeError(f"native memory kernel failed with status {status} ({name})")


class _FusedSequenceFunction(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        kernel: NativeSequence,
        starts: Optional[Tensor],
        inputs: Tensor,
        state: Tensor,
        *weights: Optional[Tensor],
    ):  # type: ignore[override]
        features, final, tape = kernel.forward(inputs, state, starts, weights, record=True)
        ctx.kernel = kernel
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(tape, inputs, state, final, starts, *weights)
        return features, final

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, d_features: Optional[Tensor], d_final: Optional[Tensor]):  # type: ignore[override]
        tape, inputs, state, final, starts, *weights = ctx.saved_tensors
        if d_features is None:
            d_features = tape.new_zeros((tape.shape[1], tape.shape[0], ctx.kernel.feature_size))
        d_inputs, d_state0, d_weights = ctx.kernel.backward(
            tape,
            inputs,
            state,
            final,
            starts,
            tuple(weights),
            d_features.contiguous(),
            None if d_final is None else d_final.contiguous(),
            state_grad=ctx.needs_input_grad[3],
        )
        return (None, None, d_inputs, d_state0, *d_weights)


def fused_sequence(
    kernel: NativeSequence, inputs: Tensor, state: Tensor, starts: Optional[Tensor], weights: tuple[Optional[Tensor], ...]
) -> tuple[Tensor, Tensor]:
    """
    Features and final state of a chunk through the native kernels, differentiable with respect to
    the controller's inputs, the initial flat state and the weights.

    :param inputs: (T, B, I), what the controller projects (inside the kernels, one row at a time), or
        (T, B, G) already projected when the weights hold no ``w_in``
    :param state: (B, D) flat state before the first step
    :param starts: (T, B) episode starts (any dtype; nonzero resets the row before that step), or None
    :param weights: in :data:`WEIGHT_NAMES` order, None where the core has no such weight
    """
    inputs = inputs.contiguous()
    state = state.contiguous()
    starts = None if starts is None else starts.to(torch.uint8).contiguous()
    weights = tuple(None if weight is None else weight.contiguous() for weight in weights)
    needs_grad = torch.is_grad_enabled() and any(
        tensor is not None and tensor.requires_grad for tensor in (inputs, state, *weights)
    )
    if not needs_grad:
        features, final, _ = kernel.forward(inputs, state, starts, weights, record=False)
        return features, final
    return _FusedSequenceFunction.apply(kernel, starts, inputs, state, *weights)
