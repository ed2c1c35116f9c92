"""Saving that a killed process cannot leave half done, and loading that names a file's algorithm."""

import contextlib
import io
import json
import os
import pathlib
import uuid
import zipfile
from collections.abc import Iterable, Iterator
from typing import Any, Optional, Union


def zip_path(path: Union[str, os.PathLike]) -> pathlib.Path:
    """The file SB3's ``save`` writes for ``path``: ``.zip`` appended when it has no suffix."""
    path = pathlib.Path(path)
    return path if path.suffix else path.with_name(path.name + ".zip")


@contextlib.contextmanager
def atomic_write(path: pathlib.Path) -> Iterator[io.BufferedWriter]:
    """
    Open a temporary file beside ``path`` for writing; on success it replaces ``path`` in one step.

    A process killed while writing (a checkpoint in the middle of a long run) leaves the previous
    ``path`` as it was, never a truncated file under its name; an exception removes the temporary
    file. The data is flushed to disk before the rename, so a power cut cannot leave an empty file.

    :param path: the file to write
    :return: the open temporary file
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    # Hidden and unlike path's own pattern (rl_model_*_steps.zip), so nothing scanning the folder takes it for a save.
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with temporary.open("wb") as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


#: The algorithm that saves a policy of each module, with its family: a file saved by one family
#: does not load into another (``MemoryPPO.load`` of a MemoryDQN file failed on a sequence length).
POLICY_MODULE_ALGORITHMS: dict[str, tuple[str, str]] = {
    "sb3_memory.common.policies": ("on-policy", "MemoryPPO (or MemoryA2C)"),
    "sb3_memory.common.maskable": ("on-policy", "MaskableMemoryPPO"),
    "sb3_memory.dqn.policies": ("dqn", "MemoryDQN"),
    "sb3_memory.sac.policies": ("sac", "MemorySAC"),
}


def saved_data(path: Union[str, os.PathLike, io.BufferedIOBase]) -> Optional[dict[str, Any]]:
    """
    The plain-JSON ``data`` entry of a model SB3 saved (its settings; objects appear as their
    ``:serialized:`` text and a few readable fields), read without unpickling anything; None when
    there is no such file or entry.

    :param path: as SB3's ``load`` takes it (a path, with or without ``.zip``, or a file-like)
    """
    try:
        if isinstance(path, io.BufferedIOBase):
            if not path.seekable():
                return None
            position = path.tell()
            try:
                with zipfile.ZipFile(path) as archive:
                    data = json.loads(archive.read("data"))
            finally:
                path.seek(position)
        else:
            target = pathlib.Path(path)
            target = target if target.is_file() else zip_path(target)
            if not target.is_file():
                return None  # SB3's load names the missing file
            with zipfile.ZipFile(target) as archive:
                data = json.loads(archive.read("data"))
    except (zipfile.BadZipFile, KeyError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def saved_policy_module(path: Union[str, os.PathLike, io.BufferedIOBase]) -> Optional[str]:
    """The module of the policy class a saved model names (see :func:`saved_data`), or None."""
    policy_class = (saved_data(path) or {}).get("policy_class")
    module = policy_class.get("__module__") if isinstance(policy_class, dict) else None
    return module if isinstance(module, str) else None


def check_saved_algorithm(
    path: Union[str, os.PathLike, io.BufferedIOBase], algorithm: str, policy_modules: Iterable[str]
) -> None:
    """
    Raise a ValueError when the file at ``path`` holds a model of another algorithm family than
    ``algorithm``'s, naming the algorithm to load it with.

    :param path: the file ``load`` was given
    :param algorithm: the loading class's name, e.g. ``"MemoryPPO"``
    :param policy_modules: the modules of the loading algorithm's ``policy_aliases``
    """
    saved = saved_policy_module(path)
    if saved is None:
        return
    families = {POLICY_MODULE_ALGORITHMS[module][0] for module in policy_modules if module in POLICY_MODULE_ALGORITHMS}
    if saved in POLICY_MODULE_ALGORITHMS:
        family, saved_by = POLICY_MODULE_ALGORITHMS[saved]
        if family not in families:
            name = saved_by.split(" ")[0]
            raise ValueError(
                f"{path} holds a {saved_by} model (its policy is from {saved}), not a {algorithm} one: "
                f"load it with {name}.load"
            )
    elif saved.split(".")[0] in ("stable_baselines3", "sb3_contrib"):
        library = saved.split(".")[0]
        raise ValueError(
            f"{path} holds a {library} model without memory (its policy is from {saved}), not a {algorithm} one: "
            f"load it with {library}'s own algorithm class"
        )
