"""A restricted unpickler for the data files the point-cloud community ships as pickles.

Point-MAE's ``modelnet40_*_8192pts_fps.dat`` and Point-BERT's ``ModelNetFewshot/*/N.pkl`` are plain pickles, and
``pickle.load`` on a downloaded file runs whatever callable the file names. :func:`safe_load` only lets a pickle
rebuild numpy arrays, dtypes and numpy scalars plus builtin containers and scalars; any other global is refused
with :class:`~pointpeft.errors.UnsafePickleError` *before* it is called, so nothing in the file gets to run.
"""

from __future__ import annotations

import _compat_pickle
import builtins
import codecs
import io
import os
import pickle
from collections import OrderedDict
from pathlib import Path
from typing import IO, Any

import numpy as np

from pointpeft.errors import UnsafePickleError

try:  # numpy >= 2 keeps the implementation in numpy._core; numpy 1.x in numpy.core
    from numpy._core import multiarray as _multiarray
    from numpy._core import numeric as _numeric
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core import multiarray as _multiarray  # type: ignore[no-redef]
    from numpy.core import numeric as _numeric  # type: ignore[no-redef]


def _latin1_encode(obj: str, encoding: str = "latin1", errors: str = "strict") -> bytes:
    """``_codecs.encode`` as protocol-2 pickles of numpy arrays use it, limited to the latin-1 codec."""
    if codecs.lookup(encoding).name != "iso8859-1":
        raise UnsafePickleError(f"_codecs.encode with codec {encoding!r} refused (only latin-1 is allowed)")
    return codecs.encode(obj, "latin1", errors)


_NUMPY_GLOBALS: dict[str, Any] = {
    "_reconstruct": _multiarray._reconstruct,
    "scalar": _multiarray.scalar,
    "_frombuffer": getattr(_numeric, "_frombuffer", None),
}

#: (module, name) -> object a pickle may reference. Everything else is refused.
ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {}
for _mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
    ALLOWED_GLOBALS[(_mod, "_reconstruct")] = _NUMPY_GLOBALS["_reconstruct"]
    ALLOWED_GLOBALS[(_mod, "scalar")] = _NUMPY_GLOBALS["scalar"]
if _NUMPY_GLOBALS["_frombuffer"] is not None:
    for _mod in ("numpy.core.numeric", "numpy._core.numeric"):
        ALLOWED_GLOBALS[(_mod, "_frombuffer")] = _NUMPY_GLOBALS["_frombuffer"]
ALLOWED_GLOBALS[("numpy", "ndarray")] = np.ndarray
ALLOWED_GLOBALS[("numpy", "dtype")] = np.dtype
ALLOWED_GLOBALS[("_codecs", "encode")] = _latin1_encode
ALLOWED_GLOBALS[("collections", "OrderedDict")] = OrderedDict
for _name in ("dict", "list", "tuple", "set", "frozenset", "int", "float", "complex", "bool", "str", "bytes",
              "bytearray"):
    ALLOWED_GLOBALS[("builtins", _name)] = getattr(builtins, _name)
# numpy's concrete dtype classes (numpy.dtypes.Float32DType ...) appear in some numpy-2 pickles of dtypes.
for _name in dir(getattr(np, "dtypes", object())):
    if _name.endswith("DType"):
        ALLOWED_GLOBALS[("numpy.dtypes", _name)] = getattr(np.dtypes, _name)


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, fh: IO[bytes], source: str) -> None:
        super().__init__(fh, encoding="latin1")
        self._source = source

    def find_class(self, module: str, name: str) -> Any:
        # Python 2 names (__builtin__.set ...), mapped as pickle's own fix_imports does
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        obj = ALLOWED_GLOBALS.get((module, name))
        if obj is None:
            raise UnsafePickleError(
                f"{self._source}: refused to load global {module}.{name} — only numpy arrays and builtin "
                "containers may appear in a data pickle (nothing from the file was run)"
            )
        return obj

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(f"{self._source}: refused persistent id {pid!r} in a data pickle")


def safe_load(file_or_path: str | os.PathLike | IO[bytes] | bytes) -> Any:
    """Unpickle numpy arrays, numpy scalars and builtin containers only; anything else raises UnsafePickleError."""
    if isinstance(file_or_path, (bytes, bytearray)):
        return _load(io.BytesIO(file_or_path), "<bytes>")
    if isinstance(file_or_path, (str, os.PathLike)):
        path = Path(file_or_path)
        with open(path, "rb") as fh:
            return _load(fh, str(path))
    return _load(file_or_path, str(getattr(file_or_path, "name", "<stream>")))


def _load(fh: IO[bytes], source: str) -> Any:
    try:
        return _RestrictedUnpickler(fh, source).load()
    except UnsafePickleError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as e:
        from pointpeft.errors import DataError

        raise DataError(f"{source}: not a readable pickle ({type(e).__name__}: {e})") from None
