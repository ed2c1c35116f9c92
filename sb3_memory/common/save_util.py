"""Saving that a killed process cannot leave half done."""

import contextlib
import io
import os
import pathlib
import uuid
from collections.abc import Iterator
from typing import Union


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
