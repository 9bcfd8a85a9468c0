"""One way to write a file: atomically, with the usual permissions.

Checkpoints, caches, fetched data, evaluation reports, pictures and the run status all
go through :func:`atomic_write`: the content goes to a temporary file beside the target,
which is then renamed over it, so a crash, a full disk or a signal leaves either the old
file or the new one, never half of one. The file gets ``0o666`` less the umask (what
``open`` gives), not ``mkstemp``'s private ``0o600``.

A ``SIGKILL`` still leaves the temporary file: its name carries the host and the writer's
PID (``.<stem>.<host>-<pid>.<random><suffix>``), so :func:`remove_stale_temporaries` can
remove the ones whose writer on this host is gone.
"""

from __future__ import annotations

import os
import re
import socket
import tempfile
from pathlib import Path
from typing import Callable

from tzkgraph.core.errors import TzkError

__all__ = ["atomic_write", "remove_stale_temporaries"]


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
        fd, tmp = tempfile.mkstemp(prefix=_prefix(path), suffix=path.suffix, dir=path.parent)
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


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", socket.gethostname()) or "host"


def _prefix(path: Path) -> str:
    return f".{path.stem}.{_host()}-{os.getpid()}."


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Removes the temporary files of :func:`atomic_write` for ``path`` whose writer is dead.

    Only files written on this host are judged (a PID means nothing on another one);
    a live writer's file, or one whose name this module did not make, is left alone.

    Returns:
        The files removed.
    """
    path = Path(path)
    pattern = re.compile(re.escape(f".{path.stem}.{_host()}-") + r"(\d+)\." + r".*" + re.escape(path.suffix) + "$")
    removed = []
    if not path.parent.is_dir():
        return removed
    for candidate in path.parent.iterdir():
        match = pattern.fullmatch(candidate.name)
        if match and int(match.group(1)) != os.getpid() and not _alive(int(match.group(1))):
            try:
                candidate.unlink()
                removed.append(candidate)
            except FileNotFoundError:  # another process removed it first
                pass
    return removed
