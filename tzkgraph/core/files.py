"""One way to write a file: atomically, with the usual permissions.

Checkpoints, caches, fetched data, evaluation reports, pictures and the run status all
go through :func:`atomic_write`: the content goes to a temporary file beside the target,
which is then renamed over it, so a crash, a full disk or a signal leaves either the old
file or the new one, never half of one. The file gets ``0o666`` less the umask (what
``open`` gives), not ``mkstemp``'s private ``0o600``.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable

from tzkgraph.core.errors import TzkError

__all__ = ["atomic_write"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write: Callable[[str], None], *, mkdir: bool = True) -> Path:
    """Calls ``write(tmp)`` on a temporary file beside ``path``, then renames it over ``path``.

    Arguments:
        path: the file to write.
        write: writes the content to the path it is given (``torch.save``, ``h5py``, ...).
        mkdir: create ``path``'s folder first.

    Returns:
        ``path``.

    Raises:
        TzkError: the folder or file cannot be written (one line); nothing is left behind.
            Any other error from ``write`` propagates, also leaving nothing behind.
    """
    path = Path(path)
    tmp = None
    try:
        if mkdir:
            path.parent.mkdir(parents=True, exist_ok=True)
        # the target's suffix too: writers such as torchvision's save_image read the format from it
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
        os.close(fd)
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except OSError as error:
        reason = error.strerror or str(error)
        raise TzkError(f"{path}: cannot write ({type(error).__name__}: {reason})") from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)
    return path
