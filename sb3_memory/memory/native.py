"""The native fast path of the memory cores: fused forward and backward passes over a chunk.

A step of an NTM or DNC is about 60 tiny tensor operations; in eager PyTorch their per-operation
overhead, not their arithmetic, sets the speed, and the backward pass doubles it. The kernels in
``csrc/`` run a whole time-major chunk in one call, with a hand-written backward pass, and are
checked against the PyTorch reference (``MemoryCore.reference_sequence``) in the tests: same
features, final state and gradients.

The C++ uses no PyTorch headers. It is compiled when the package is built, one library per scalar
type and instruction-set level (:mod:`sb3_memory.memory.kernel_build`); at load time the widest
level this CPU runs is chosen (``$SB3_MEMORY_ISA`` forces one). A source checkout that was not
built, or whose ``csrc/`` changed since, compiles the library on first use with the system C++
compiler instead, under a file lock, into ``$SB3_MEMORY_CACHE`` (default ``~/.cache/sb3_memory``).

PyTorch sees the kernels as two registered operators, ``sb3_memory::chunk_forward`` and
``sb3_memory::chunk_backward`` (:func:`torch.library.custom_op`, with autograd and fake-tensor
rules), so they work under ``torch.compile``. Each call builds its own calling structures: calls
from several threads at once are independent.
"""

import ctypes
import importlib.machinery
import os
import subprocess
import sys
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Any, Optional

import torch
from filelock import FileLock
from torch import Tensor

from sb3_memory.memory import addressing, kernel_build

PACKAGE_DIR = Path(__file__).parent
SOURCE = kernel_build.SOURCE
# The interface this module speaks; the library reports its own (SMEM_ABI_VERSION in csrc/interface.h).
ABI_VERSION = 13
SUPPORTED_DTYPES = {torch.float32: "float32", torch.float64: "float64"}
# Weights in the order the kernels take them; a core passes None for those it does not have. With
# w_in and b_in the kernels project the inputs themselves, one row at a time (step_input there);
# without, the inputs come projected.
WEIGHT_NAMES = ("w_in", "b_in", "w_rec", "w_hid", "b_hid", "w_if", "b_if")
# Set to build the kernels from csrc/ (into the cache) even where the package holds built ones,
# e.g. with sanitizer flags in $SB3_MEMORY_CXXFLAGS.
BUILD_ENV = "SB3_MEMORY_BUILD"


class NativeUnavailableError(RuntimeError):
    """The native kernels could not be built or loaded on this machine."""


NON_FINITE_ADVICE = (
    "produced non-finite features (NaN/Inf): the parameters or the carried state diverged; lower the learning "
    "rate or clip gradients (max_grad_norm)"
)


class NonFiniteFeaturesError(ValueError):
    """A kernel call produced NaN or Inf features (:func:`fused_sequence` names the core)."""


def _names(function: Any) -> list[str]:
    function.restype = ctypes.c_char_p
    return [name for name in function().decode().split(",") if name]


def _numbered(function: Any) -> dict[str, int]:
    return {name: int(value) for name, value in (item.split("=") for item in _names(function))}


class Interface:
    """
    The kernels' calling interface as the library itself declares it (``SMEM_CONFIG_FIELDS``,
    ``SMEM_BUFFER_FIELDS``, ``SMEM_STATUS_CODES`` and the core and controller kinds in
    ``csrc/interface.h``): the ctypes structures and the kind numbers are read from the library, so
    Python never repeats the C declarations.

    :param library: a loaded kernel library
    :raises NativeUnavailableError: the library speaks another ABI version, or its structure sizes
        disagree with the fields it lists
    """

    def __init__(self, library: Any) -> None:
        library.smem_abi_version.restype = ctypes.c_int64
        version = int(library.smem_abi_version())
        if version != ABI_VERSION:
            raise NativeUnavailableError(
                f"the kernel library speaks ABI {version}, this sb3_memory speaks {ABI_VERSION}: reinstall "
                f"sb3-memory (pip install .), or delete the cached libraries in {cache_dir()} and run again"
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
        self.statuses = _numbered(library.smem_status_names)
        self.status_names = {value: name for name, value in self.statuses.items()}
        self.core_ids = _numbered(library.smem_core_names)
        self.controller_ids = _numbered(library.smem_controller_names)
        library.smem_written_block_rows.restype = ctypes.c_int64
        block_rows = int(library.smem_written_block_rows())
        if block_rows != addressing.WRITTEN_BLOCK_ROWS:
            raise NativeUnavailableError(
                f"the kernels mark written_blocks of {block_rows} slots, the reference of "
                f"{addressing.WRITTEN_BLOCK_ROWS}: csrc/sparse_common.h's kCheckBlock and addressing.py disagree"
            )


class KernelLibrary:
    """
    One loaded kernel library and its interface.

    :param path: the shared library
    :param level: its instruction-set level (``kernel_build.levels()``)
    :param origin: ``"package"`` (built with the package) or ``"cache"`` (built here on first use)
    """

    def __init__(self, path: Path, level: str, origin: str) -> None:
        self.path, self.level, self.origin = path, level, origin
        self.cdll = ctypes.CDLL(str(path))
        self.interface = Interface(self.cdll)
        config_pointer = ctypes.POINTER(self.interface.config_type)
        self.cdll.smem_tape_size.restype = ctypes.c_int64
        self.cdll.smem_tape_size.argtypes = [config_pointer]
        for fields in (self.cdll.smem_tape_fields, self.cdll.smem_gradient_fields):
            fields.restype = None
            fields.argtypes = [config_pointer, ctypes.POINTER(ctypes.c_int64)]
        for function in (self.cdll.smem_forward, self.cdll.smem_backward):
            function.restype = ctypes.c_int
            function.argtypes = [config_pointer, ctypes.POINTER(self.interface.buffers_type)]
        self.cdll.smem_init_layout.restype = ctypes.c_int64
        self.cdll.smem_init_layout.argtypes = [config_pointer, ctypes.c_void_p]

    def __repr__(self) -> str:
        return f"KernelLibrary({self.level}, {self.origin}: {self.path})"


_lock = threading.Lock()
_libraries: dict[torch.dtype, KernelLibrary] = {}
_failures: dict[torch.dtype, str] = {}


def cache_dir() -> Path:
    """Where kernels built on first use are kept: ``$SB3_MEMORY_CACHE``, else ``$XDG_CACHE_HOME/sb3_memory``."""
    if os.environ.get("SB3_MEMORY_CACHE"):
        return Path(os.environ["SB3_MEMORY_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "sb3_memory"


def _compiler() -> Optional[str]:
    import shutil

    for candidate in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if candidate and shutil.which(candidate):
            return candidate
    return None


def _library_digest(path: Path) -> Optional[str]:
    """The csrc/ digest a built library was compiled from (None for a build that does not record it)."""
    try:
        function = ctypes.CDLL(str(path)).smem_source_digest
    except (OSError, AttributeError):
        return None
    function.restype = ctypes.c_char_p
    return function().decode()


def packaged_library(level: str, dtype: torch.dtype) -> Optional[Path]:
    """The library of ``level`` and ``dtype`` built with the package, or None where the build made none."""
    stem = kernel_build.library_stem(level, SUPPORTED_DTYPES[dtype])
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        candidate = PACKAGE_DIR / f"{stem}{suffix}"
        if candidate.exists():
            return candidate
    return None


def build_flags(level: str, dtype: torch.dtype) -> list[str]:
    """The flags a first-use build compiles with: the package's own, plus ``$SB3_MEMORY_CXXFLAGS``."""
    return [
        *kernel_build.COMPILE_FLAGS,
        "-shared",
        *kernel_build.level_flags(level),
        f"-D{kernel_build.DTYPE_MACROS[SUPPORTED_DTYPES[dtype]]}",
        kernel_build.digest_define(kernel_build.source_digest()),
        *os.environ.get("SB3_MEMORY_CXXFLAGS", "").split(),  # e.g. "-g" to profile, or sanitizers
    ]


def _build(compiler: str, dtype: torch.dtype, level: str) -> Path:
    """Compile the library into the cache, once per source, flags and compiler, under a file lock."""
    import hashlib

    flags = build_flags(level, dtype)
    key = hashlib.sha256(" ".join([compiler, *flags]).encode()).hexdigest()[:16]
    directory = cache_dir()
    target = directory / f"{kernel_build.library_stem(level, SUPPORTED_DTYPES[dtype])}-{key}.so"
    if target.exists():
        return target
    directory.mkdir(parents=True, exist_ok=True)
    # The lock makes parallel workers wait for one build instead of each compiling; the private name
    # and rename keep a half-written file from ever being loaded.
    with FileLock(str(target) + ".lock"):
        if target.exists():
            return target
        handle, partial = tempfile.mkstemp(suffix=".so", dir=directory)
        os.close(handle)
        result = subprocess.run([compiler, *flags, str(SOURCE), "-o", partial], capture_output=True, text=True)
        if result.returncode != 0:
            os.unlink(partial)
            raise NativeUnavailableError(f"compilation failed: {compiler} {' '.join(flags)}:\n{result.stderr.strip()[-2000:]}")
        os.replace(partial, target)
    return target


def _find_library(dtype: torch.dtype) -> KernelLibrary:
    level = kernel_build.select_level()
    digest = kernel_build.source_digest() if SOURCE.exists() else None
    packaged = packaged_library(level, dtype)
    stale = packaged is not None and digest is not None and _library_digest(packaged) != digest
    if packaged is not None and not stale and not os.environ.get(BUILD_ENV) and not os.environ.get("SB3_MEMORY_CXXFLAGS"):
        return KernelLibrary(packaged, level, "package")
    compiler = _compiler()
    if compiler is None:
        if packaged is not None:  # stale, but better than the reference path
            warnings.warn(f"the kernels in {packaged} were built from other sources than {SOURCE.parent}", RuntimeWarning)
            return KernelLibrary(packaged, level, "package")
        raise NativeUnavailableError(
            "this copy of sb3-memory holds no built kernels and no C++ compiler was found (looked for $CXX, c++, "
            "g++, clang++): install it from a wheel or with `pip install .`, or install a compiler"
        )
    if not SOURCE.exists():
        raise NativeUnavailableError(f"no kernel sources at {SOURCE.parent} to build from")
    return KernelLibrary(_build(compiler, dtype, level), level, "cache")


def load_library(dtype: torch.dtype = torch.float32) -> KernelLibrary:
    """
    The kernels for one scalar type: the package's build for this CPU's level, else one built here.

    :raises NativeUnavailableError: no build for this CPU and none can be made (no compiler, a failed
        build), or a library of another interface
    :raises ValueError: ``$SB3_MEMORY_ISA`` names a level this CPU cannot run
    """
    if dtype not in SUPPORTED_DTYPES:
        raise NativeUnavailableError(f"no native kernels for {dtype}; they support {list(SUPPORTED_DTYPES)}")
    library = _libraries.get(dtype)
    if library is not None:
        return library
    with _lock:
        if dtype in _libraries:
            return _libraries[dtype]
        if dtype in _failures:
            raise NativeUnavailableError(_failures[dtype])
        try:
            library = _find_library(dtype)
        except (NativeUnavailableError, OSError) as error:
            _failures[dtype] = str(error)
            raise NativeUnavailableError(_failures[dtype]) from None
        _libraries[dtype] = library
        return library


def is_available(dtype: torch.dtype = torch.float32) -> bool:
    """Whether the native kernels for ``dtype`` are built (or can be) on this machine."""
    try:
        load_library(dtype)
    except NativeUnavailableError:
        return False
    return True


def _interface(dtype: torch.dtype = torch.float32) -> Interface:
    return load_library(dtype).interface


def core_ids() -> dict[str, int]:
    """The kernels' number for each core kind (``ntm``, ``dnc``, ``plain``), as the library declares them."""
    return _interface().core_ids


def controller_ids() -> dict[str, int]:
    """The kernels' number for each controller kind (``lstm``, ``gru``, ``mlp``), as the library declares them."""
    return _interface().controller_ids


# Transparent huge pages: Linux backs a range with 2 MB pages where madvise(MADV_HUGEPAGE) asks
# (the kernels' default mode, "madvise"), as PyTorch does for every tensor under
# THP_MEM_ALLOC_ENABLE=1.
_HUGE_PAGE_BYTES = 2 << 20
_MADV_HUGEPAGE = 14  # linux/mman.h


def _libc_madvise() -> Optional[Any]:
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    function.restype = ctypes.c_int
    return function


_madvise = _libc_madvise()


def empty_state(shape: tuple[int, ...], like: Tensor) -> Tensor:
    """
    ``like.new_empty(shape)``, where large on a Linux CPU advised to be backed by 2 MB pages. A
    fresh tensor's memory is mapped on first touch, one fault per 4 kB page: at 65,536 slots the
    faults on new state tensors (a training chunk's rebuilt start states, a call's final state)
    cost training more than the kernels' own work. The advice changes no number, and is ignored
    where the system has huge pages off.
    """
    out = like.new_empty(shape)
    nbytes = out.numel() * out.element_size()
    if _madvise is not None and out.device.type == "cpu" and nbytes >= 4 * _HUGE_PAGE_BYTES:
        start = -(-out.data_ptr() // _HUGE_PAGE_BYTES) * _HUGE_PAGE_BYTES  # the whole huge pages inside it
        end = (out.data_ptr() + nbytes) // _HUGE_PAGE_BYTES * _HUGE_PAGE_BYTES
        if end > start:
            _madvise(start, end - start, _MADV_HUGEPAGE)  # advice: a refusal (EINVAL) changes nothing
    return out


def _pointer(tensor: Optional[Tensor]) -> Optional[int]:
    return None if tensor is None or tensor.numel() == 0 else tensor.data_ptr()


class NativeSequence:
    """
    The kernels bound to one core configuration (sizes and flat-state offsets) and scalar type. It
    holds no state that a call changes, so one instance serves any number of threads.

    :param config: every field of the kernels' ``SmemConfig`` but ``T`` and ``B``; ``core`` and
        ``controller`` by name (``"dnc"``, ``"lstm"``...)
    :param init_row: the flat initial state of one row, ``(D,)``, copied in at episode starts; its
        dtype selects the kernels
    :param name: the core's name, for error messages
    """

    def __init__(self, config: dict[str, Any], init_row: Tensor, name: str = "memory core") -> None:
        self.dtype = init_row.dtype
        self.library = load_library(self.dtype)
        interface = self.interface = self.library.interface
        # T, B and state0_stride are each call's; init_layout is what the library finds in init_row (below).
        expected = set(interface.config_fields) - {"T", "B", "state0_stride", "init_layout"}
        # A core lists the offsets of its own state fields only; the kernels ignore the others.
        config = {**{field: 0 for field in expected if field.startswith("off_")}, **config}
        if expected != set(config):
            raise ValueError(
                f"native config for {name}: missing {sorted(expected - set(config))}, "
                f"unknown {sorted(set(config) - expected)} (the kernels' fields: {interface.config_fields})"
            )
        for field, ids in (("core", interface.core_ids), ("controller", interface.controller_ids)):
            if isinstance(config[field], str):
                if config[field] not in ids:
                    raise ValueError(f"the kernels have no {field} {config[field]!r}; they know {sorted(ids)}")
                config[field] = ids[config[field]]
        self.init_row = init_row.contiguous()
        if self.init_row.shape != (int(config["D"]),):
            raise ValueError(
                f"native config for {name}: init_row must have shape ({config['D']},), got {tuple(init_row.shape)}"
            )
        # What the sparse cores may assume of the initial row (alike memory rows, a laid-out link),
        # checked here once rather than at every call: a large memory's check reads megabytes.
        config["init_layout"] = 0
        values = [int(config.get(field, 0)) for field in interface.config_fields]
        config["init_layout"] = int(
            self.library.cdll.smem_init_layout(ctypes.byref(interface.config_type(*values)), self.init_row.data_ptr())
        )
        # The configuration as the operators take it: the struct's fields in order, the call's as 0.
        self.config_values = [int(config.get(field, 0)) for field in interface.config_fields]
        self.config = dict(config)
        probe = interface.config_type(*self.config_values)
        self.tape_size = int(self.library.cdll.smem_tape_size(ctypes.byref(probe)))
        self.feature_size = int(config["C"] + config["R"] * config["W"])
        self.name = name

    def forward(
        self, inputs: Tensor, state: Tensor, starts: Optional[Tensor], weights: tuple[Optional[Tensor], ...], record: bool
    ) -> tuple[Tensor, Tensor, Optional[Tensor]]:
        """
        Run the chunk (the ``sb3_memory::chunk_forward`` operator, without autograd).

        :param inputs: (T, B, I) contiguous, the controller's inputs
        :param state: (B, D) contiguous
        :param starts: (T, B) uint8, or None
        :param weights: in :data:`WEIGHT_NAMES` order
        :param record: keep the tape for :meth:`backward`
        :return: features (T, B, F), final state (B, D), tape (or None)
        """
        features, final, tape = _run_forward(
            self.config_values, self.feature_size, self.tape_size, record, inputs, state, starts, self.init_row, *weights
        )
        return features, final, tape if record else None

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
        The tape is only read.
        """
        return _backward_with_weights(
            self.config_values, self.tape_size, tape, inputs, state, final, starts, self.init_row,
            weights, d_features, d_state, state_grad,
        )  # fmt: skip


def _config_field(config: list[int], interface: Interface, name: str) -> int:
    return config[interface.config_fields.index(name)]


def _status_error(interface: Interface, status: int) -> Exception:
    if status == interface.statuses["non_finite_features"]:
        return NonFiniteFeaturesError(f"a memory core {NON_FINITE_ADVICE}")
    name = interface.status_names.get(status, "not a status the library declares")
    return RuntimeError(f"native memory kernel failed with status {status} ({name})")


def _call(
    library: KernelLibrary, function: Any, config: list[int], steps: int, batch: int, buffers: dict[str, Optional[Tensor]]
) -> None:
    """One kernel call with structures of its own: nothing shared with another thread's call."""
    interface = library.interface
    for name, tensor in buffers.items():
        if tensor is not None and name != "starts" and tensor.dtype != buffers["init_row"].dtype:  # type: ignore[union-attr]
            raise TypeError(f"{name} is {tensor.dtype}, but these kernels are {buffers['init_row'].dtype}")  # type: ignore[union-attr]
    structure = interface.config_type(*config)
    structure.T, structure.B = steps, batch
    state0 = buffers.get("state0")
    structure.state0_stride = structure.D if state0 is None else state0.stride(0)
    pointers = interface.buffers_type(**{name: _pointer(tensor) for name, tensor in buffers.items()})
    status = function(ctypes.byref(structure), ctypes.byref(pointers))
    if status != 0:
        raise _status_error(interface, status)


def _contiguous(tensor: Optional[Tensor]) -> Optional[Tensor]:
    return None if tensor is None else tensor.contiguous()


def _rows(state: Tensor) -> Tensor:
    """
    ``state`` (B, D) as the kernels read it: each row contiguous, the rows any distance apart
    (``state0_stride``). One core's columns of a policy's joint state qualify as they are: at
    65,536 slots a copy of them cost training as much as the kernels' own reads.
    """
    return state if state.stride(1) == 1 and state.stride(0) >= state.shape[1] else state.contiguous()


def _fields(library: KernelLibrary, function: Any, config: list[int]) -> tuple[int, int, int]:
    """The three numbers ``smem_tape_fields`` or ``smem_gradient_fields`` gives for ``config``."""
    fields = (ctypes.c_int64 * 3)()
    function(ctypes.byref(library.interface.config_type(*config)), fields)
    return fields[0], fields[1], fields[2]


def _forward_implementation(
    config: list[int],
    feature_size: int,
    tape_size: int,
    record: bool,
    inputs: Tensor,
    state: Tensor,
    starts: Optional[Tensor],
    init_row: Tensor,
    w_in: Optional[Tensor],
    b_in: Optional[Tensor],
    w_rec: Optional[Tensor],
    w_hid: Optional[Tensor],
    b_hid: Optional[Tensor],
    w_if: Optional[Tensor],
    b_if: Optional[Tensor],
) -> tuple[Tensor, Tensor, Tensor]:
    """Features (T, B, F), final state (B, D) and the tape (B, T, TS), empty unless ``record``."""
    weights = (w_in, b_in, w_rec, w_hid, b_hid, w_if, b_if)
    final = empty_state(tuple(state.shape), state)
    return _forward_into(config, feature_size, tape_size, record, inputs, state, starts, init_row, weights, final)


def _forward_into(
    config: list[int],
    feature_size: int,
    tape_size: int,
    record: bool,
    inputs: Tensor,
    state: Tensor,
    starts: Optional[Tensor],
    init_row: Tensor,
    weight_tensors: tuple[Optional[Tensor], ...],
    final: Tensor,
) -> tuple[Tensor, Tensor, Tensor]:
    """The forward call, with the final state written into ``final`` (contiguous: another buffer, or ``state`` itself)."""
    library = load_library(init_row.dtype)
    steps, batch = inputs.shape[0], inputs.shape[1]
    inputs, state = inputs.contiguous(), _rows(state)
    features = inputs.new_empty((steps, batch, feature_size))
    tape = inputs.new_empty((batch, steps, tape_size) if record else (0,))
    weights = dict(zip(WEIGHT_NAMES, map(_contiguous, weight_tensors)))
    buffers = dict(inputs=inputs, state0=state, starts=_contiguous(starts), init_row=init_row.contiguous(), **weights)
    _call(
        library, library.cdll.smem_forward, config, steps, batch,
        {**buffers, "features": features, "state_T": final, "tape": tape if record else None},
    )  # fmt: skip
    return features, final, tape


_chunk_forward = torch.library.custom_op("sb3_memory::chunk_forward", mutates_args=(), device_types="cpu")(
    _forward_implementation
)


@_chunk_forward.register_fake
def _(config, feature_size, tape_size, record, inputs, state, starts, init_row, *weights):  # type: ignore[no-untyped-def]
    steps, batch = inputs.shape[0], inputs.shape[1]
    tape_shape = (batch, steps, tape_size) if record else (0,)
    return inputs.new_empty((steps, batch, feature_size)), state.new_empty(state.shape), inputs.new_empty(tape_shape)


@torch.library.custom_op("sb3_memory::chunk_backward", mutates_args=(), device_types="cpu")
def _chunk_backward(
    config: list[int],
    state_grad: bool,
    tape: Tensor,
    state: Tensor,
    final: Tensor,
    starts: Optional[Tensor],
    init_row: Tensor,
    w_in: Optional[Tensor],
    b_in: Optional[Tensor],
    w_rec: Optional[Tensor],
    w_hid: Optional[Tensor],
    b_hid: Optional[Tensor],
    w_if: Optional[Tensor],
    b_if: Optional[Tensor],
    d_features: Tensor,
    d_state: Optional[Tensor],
) -> tuple[Tensor, Tensor, Tensor]:
    """
    The gradients of the projected inputs (T, B, G) and of the initial state (B, D), empty unless
    ``state_grad``, and the gradient records (B, T, size; ``smem_gradient_fields``), from which the
    weights' gradients follow. The tape is only read.
    """
    library = load_library(init_row.dtype)
    batch, steps = tape.shape[0], tape.shape[1]
    width = _config_field(config, library.interface, "G")
    d_projected = tape.new_empty((steps, batch, width))
    d_state0 = empty_state((batch, state.shape[1]), tape) if state_grad else tape.new_empty((0,))
    d_records = tape.new_empty((batch, steps, _fields(library, library.cdll.smem_gradient_fields, config)[2]))
    weights = dict(zip(WEIGHT_NAMES, map(_contiguous, (w_in, b_in, w_rec, w_hid, b_hid, w_if, b_if))))
    _call(
        library, library.cdll.smem_backward, config, steps, batch,
        dict(
            starts=_contiguous(starts), init_row=init_row.contiguous(), tape=tape, state0=_rows(state),
            state_T=final.contiguous(), d_features=d_features.contiguous(), d_state_T=_contiguous(d_state),
            d_projected=d_projected, d_state0=d_state0 if state_grad else None, d_records=d_records, **weights,
        ),
    )  # fmt: skip
    return d_projected, d_state0, d_records


@_chunk_backward.register_fake
def _(config, state_grad, tape, state, final, starts, init_row, *rest):  # type: ignore[no-untyped-def]
    library = load_library(init_row.dtype)
    batch, steps = tape.shape[0], tape.shape[1]
    width = _config_field(config, library.interface, "G")
    record_size = _fields(library, library.cdll.smem_gradient_fields, config)[2]
    return (
        tape.new_empty((steps, batch, width)),
        tape.new_empty((batch, state.shape[1]) if state_grad else (0,)),
        tape.new_empty((batch, steps, record_size)),
    )


_PLAIN_TENSORS = (Tensor, torch.nn.Parameter)


def _run_forward(  # type: ignore[no-untyped-def]
    config: list[int],
    feature_size: int,
    tape_size: int,
    record: bool,
    *tensors: Optional[Tensor],
    state_out: Optional[Tensor] = None,
):
    # Inference on plain tensors, outside any tracing: the operator's own implementation, called
    # directly. The dispatcher and the operator's autograd wrapper cost about 0.1-0.2 ms a call,
    # as much as a rollout step's kernel at small sizes; with nothing to record and nothing tracing,
    # they have nothing to do. It writes the final state straight into state_out: at a large memory
    # that saves allocating and copying megabytes per call. Everything else (training,
    # torch.compile, fake tensors, dispatch modes) goes through the registered operator.
    if (
        not record
        and not torch.compiler.is_compiling()
        and torch._C._len_torch_dispatch_stack() == 0
        and all(tensor is None or type(tensor) in _PLAIN_TENSORS for tensor in (*tensors, state_out))
    ):
        inputs, state, starts, init_row, *weights = tensors
        assert state is not None  # the operator's schema: only the weights and starts may be None
        final = empty_state(tuple(state.shape), state) if state_out is None else state_out
        return _forward_into(config, feature_size, tape_size, record, inputs, state, starts, init_row, tuple(weights), final)  # type: ignore[arg-type]
    features, final, tape = torch.ops.sb3_memory.chunk_forward(config, feature_size, tape_size, record, *tensors)
    if state_out is not None:
        state_out.copy_(final)
        final = state_out
    return features, final, tape


def _backward_with_weights(
    config: list[int],
    tape_size: int,
    tape: Tensor,
    inputs: Tensor,
    state: Tensor,
    final: Tensor,
    starts: Optional[Tensor],
    init_row: Tensor,
    weights: tuple[Optional[Tensor], ...],
    d_features: Tensor,
    d_state: Optional[Tensor],
    state_grad: bool,
) -> tuple[Tensor, Optional[Tensor], tuple[Optional[Tensor], ...]]:
    d_projected, d_state0, d_records = torch.ops.sb3_memory.chunk_backward(
        config, state_grad, tape, state, final, starts, init_row, *weights, d_features, d_state
    )
    library = load_library(init_row.dtype)
    size = {name: _config_field(config, library.interface, name) for name in ("I", "G", "K", "C", "P")}
    batch, steps = tape.shape[0], tape.shape[1]
    tape_x, tape_out, tape_hidden = _fields(library, library.cdll.smem_tape_fields, config)
    grad_draw, grad_dfh, _ = _fields(library, library.cdll.smem_gradient_fields, config)
    # Each weight gradient is one matrix product over all (row, step) records of the tape:
    # d(out) / dW summed over the chunk = d(out)^T @ (what W multiplied).
    records = tape.reshape(batch * steps, tape_size)
    gradients = d_records.reshape(batch * steps, d_records.shape[2])
    gates = d_projected.transpose(0, 1).reshape(batch * steps, size["G"])
    w_in, _, w_rec, w_hid, _, w_if, _ = weights
    d_inputs, d_w_in, d_b_in = d_projected, None, None  # inputs the caller projected
    if w_in is not None:
        d_inputs = d_projected @ w_in
        d_w_in = d_projected.reshape(steps * batch, size["G"]).t() @ inputs.reshape(steps * batch, size["I"])
        d_b_in = d_projected.sum(dim=(0, 1))

    def columns(start: int, width: int) -> Tensor:
        return records[:, start : start + width]

    d_w_rec = None if w_rec is None else gates.t() @ columns(tape_x, size["K"])
    d_w_hid = d_b_hid = d_w_if = d_b_if = None
    if w_hid is not None:
        d_fh = gradients[:, grad_dfh : grad_dfh + 3 * size["C"]]
        d_w_hid = d_fh.t() @ columns(tape_hidden, size["C"])
        d_b_hid = d_fh.sum(0)
    if w_if is not None:
        d_raw = gradients[:, grad_draw : grad_draw + size["P"]]
        d_w_if = d_raw.t() @ columns(tape_out, size["C"])
        d_b_if = d_raw.sum(0)
    return d_inputs, d_state0 if state_grad else None, (d_w_in, d_b_in, d_w_rec, d_w_hid, d_b_hid, d_w_if, d_b_if)


# What autograd needs to run chunk_forward backwards, besides the tensors: set by fused_sequence
# for each call (a custom operator's arguments can only be tensors, numbers, strings and lists).
def _setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, Tensor, Tensor]) -> None:
    config, _, tape_size, record, x, state, starts, init_row, *weights = inputs
    _features, final, tape = output
    ctx.config, ctx.tape_size, ctx.record = config, tape_size, record
    ctx.save_for_backward(tape, x, state, final, starts, init_row, *weights)
    # The tape is the backward's record, not a result: no gradient flows into it. And an output that
    # the loss does not use (the final state, often) gets None, not a tensor of zeros: the backward
    # treats None as zero without writing megabytes of zeros first.
    ctx.mark_non_differentiable(tape)
    ctx.set_materialize_grads(False)


def _chunk_forward_backward(ctx: Any, d_features: Optional[Tensor], d_final: Optional[Tensor], _d_tape: Any):  # type: ignore[no-untyped-def]
    if not ctx.record:
        raise RuntimeError("sb3_memory::chunk_forward ran with record=False, so it kept no tape to differentiate")
    tape, inputs, state, final, starts, init_row, *weights = ctx.saved_tensors
    library = load_library(init_row.dtype)
    if d_features is None:
        feature_size = _config_field(ctx.config, library.interface, "C") + _config_field(
            ctx.config, library.interface, "R"
        ) * _config_field(ctx.config, library.interface, "W")
        d_features = tape.new_zeros((tape.shape[1], tape.shape[0], feature_size))
    d_inputs, d_state0, d_weights = _backward_with_weights(
        ctx.config, ctx.tape_size, tape, inputs, state, final, starts, init_row,
        tuple(weights), d_features, d_final, bool(ctx.needs_input_grad[5]),
    )  # fmt: skip
    return (None, None, None, None, d_inputs, d_state0, None, None, *d_weights)


_chunk_forward.register_autograd(_chunk_forward_backward, setup_context=_setup_context)


def fused_sequence(
    kernel: NativeSequence,
    inputs: Tensor,
    state: Tensor,
    starts: Optional[Tensor],
    weights: tuple[Optional[Tensor], ...],
    state_out: Optional[Tensor] = None,
) -> tuple[Tensor, Tensor]:
    """
    Features and final state of a chunk through the native kernels, differentiable with respect to
    the controller's inputs, the initial flat state and the weights.

    :param inputs: (T, B, I), what the controller projects (inside the kernels, one row at a time), or
        (T, B, G) already projected when the weights hold no ``w_in``
    :param state: (B, D) flat state before the first step
    :param starts: (T, B) episode starts (any dtype; nonzero resets the row before that step), or None
    :param weights: in :data:`WEIGHT_NAMES` order, None where the core has no such weight
    :param state_out: where to write the final state, without gradient (see ``MemoryCore.forward_flat``)
    """
    starts = None if starts is None else starts.to(torch.uint8)
    record = torch.is_grad_enabled() and any(
        tensor is not None and tensor.requires_grad for tensor in (inputs, state, *weights)
    )
    try:
        features, final, _ = _run_forward(
            kernel.config_values,
            kernel.feature_size,
            kernel.tape_size,
            record,
            inputs,
            state,
            starts,
            kernel.init_row,
            *weights,
            state_out=state_out,
        )
    except NonFiniteFeaturesError:
        raise NonFiniteFeaturesError(f"{kernel.name} {NON_FINITE_ADVICE}") from None
    return features, final
