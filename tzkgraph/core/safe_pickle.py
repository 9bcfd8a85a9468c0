"""A restricted unpickler that rebuilds numpy arrays and refuses every other global."""

from __future__ import annotations

import importlib
import io
import pickle
from typing import IO, Any, Callable

from tzkgraph.core.errors import DataError

__all__ = ["UnsafePickleError", "RestrictedUnpickler", "ALLOWED_GLOBALS", "safe_load", "safe_loads"]

# A pickle is a program: every GLOBAL opcode names a callable the loader will
# import and (usually) call. Only these names, which rebuild ndarrays, dtypes
# and numpy scalars from bytes, are admitted. Pickles written by numpy < 2 say
# ``numpy.core.multiarray``; numpy >= 2 moved it to ``numpy._core.multiarray``.
# Not admitted, so such pickles are refused: Python 3 protocol-2 pickles (they
# rebuild bytes with ``_codecs.encode``) and protocol-5 ones (``_frombuffer``).
ALLOWED_GLOBALS: frozenset[tuple[str, str]] = frozenset(
    {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
    }
)


class UnsafePickleError(DataError, pickle.UnpicklingError):
    """A pickle names a global outside :data:`ALLOWED_GLOBALS`; it was not loaded."""


def _resolve(module: str, name: str) -> Callable[..., Any]:
    """Import an allowed global without touching the deprecated ``numpy.core`` shim."""
    if module.startswith("numpy.core."):
        try:  # numpy >= 2: the real module, no DeprecationWarning
            return getattr(importlib.import_module("numpy._core." + module[len("numpy.core.") :]), name)
        except ImportError:  # numpy < 2 has only numpy.core
            pass
    elif module.startswith("numpy._core."):
        try:
            return getattr(importlib.import_module(module), name)
        except ImportError:  # numpy < 2 reading a pickle written by numpy >= 2
            module = "numpy.core." + module[len("numpy._core.") :]
    return getattr(importlib.import_module(module), name)


class RestrictedUnpickler(pickle.Unpickler):
    """A :class:`pickle.Unpickler` whose ``find_class`` admits only numpy array reconstruction.

    Anything else (``os.system``, ``builtins.eval``, a class from the pickling
    program) raises :class:`UnsafePickleError` naming the refused global,
    before it is imported or called.

    Arguments:
        file: a binary file object to read the pickle from.
        encoding: how to decode Python 2 ``str`` objects; ``"latin1"`` is
            what numpy arrays pickled by Python 2 need.

    Example:
        >>> with gzip.open("mnist.pkl.gz") as f:
        ...     data = RestrictedUnpickler(f, encoding="latin1").load()
    """

    def __init__(self, file: IO[bytes], *, encoding: str = "latin1"):
        super().__init__(file, encoding=encoding)

    def find_class(self, module: str, name: str) -> Callable[..., Any]:
        """Return the allowed global ``module.name`` or refuse it.

        Raises:
            UnsafePickleError: ``(module, name)`` is not in :data:`ALLOWED_GLOBALS`.
        """
        if (module, name) not in ALLOWED_GLOBALS:
            raise UnsafePickleError(
                f"refused to unpickle global '{module}.{name}': only numpy arrays may be loaded from a data pickle"
            )
        return _resolve(module, name)

    def persistent_load(self, pid: Any) -> Any:
        """Refuse persistent ids, which would otherwise bypass ``find_class``."""
        raise UnsafePickleError(f"refused to unpickle persistent id {pid!r}: only numpy arrays may be loaded")


def safe_load(file: IO[bytes], *, encoding: str = "latin1") -> Any:
    """Load one pickle from a binary file with :class:`RestrictedUnpickler`.

    Arguments:
        file: a binary file object (e.g. from :func:`gzip.open`).
        encoding: decoding for Python 2 ``str`` objects.

    Returns:
        The unpickled object (nested tuples/lists/dicts of numpy arrays).
    """
    return RestrictedUnpickler(file, encoding=encoding).load()


def safe_loads(data: bytes, *, encoding: str = "latin1") -> Any:
    """Load one pickle from bytes with :class:`RestrictedUnpickler`.

    Arguments:
        data: the pickle's bytes.
        encoding: decoding for Python 2 ``str`` objects.

    Returns:
        The unpickled object.
    """
    return safe_load(io.BytesIO(data), encoding=encoding)
