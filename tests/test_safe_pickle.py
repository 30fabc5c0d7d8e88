"""The restricted unpickler: numpy arrays and builtins load; anything else is refused before it runs."""

from __future__ import annotations

import builtins
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from pointpeft.errors import DataError, UnsafePickleError
from pointpeft.utils.safe_pickle import safe_load


class _SystemCall:
    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


class _OpenCall:
    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return (builtins.open, (str(self.target), "w"))


class _EvalCall:
    def __reduce__(self):
        return (builtins.eval, ("__import__('os').getcwd()",))


@pytest.mark.parametrize("protocol", range(0, pickle.HIGHEST_PROTOCOL + 1))
def test_numpy_and_builtins_round_trip(protocol: int) -> None:
    pts = np.random.default_rng(0).standard_normal((7, 6)).astype(np.float32)
    obj = {"train": [(pts, 1, np.int32(4))], "test": [], "meta": {"n": 1.5, "s": "x", "b": b"\x00", "t": (1, 2)},
           "labels": [np.array([3], dtype=np.int64)], "set": {1, 2}}
    out = safe_load(pickle.dumps(obj, protocol=protocol))
    assert np.array_equal(out["train"][0][0], pts) and out["train"][0][0].dtype == np.float32
    assert out["train"][0][2] == 4 and isinstance(out["train"][0][2], np.integer)
    assert out["meta"] == obj["meta"] and out["set"] == {1, 2}
    assert out["labels"][0].tolist() == [3]


def test_reads_files_and_streams(tmp_path: Path) -> None:
    path = tmp_path / "a.pkl"
    path.write_bytes(pickle.dumps([np.arange(5)]))
    assert safe_load(path)[0].tolist() == [0, 1, 2, 3, 4]
    assert safe_load(str(path))[0].sum() == 10
    with open(path, "rb") as fh:
        assert len(safe_load(fh)[0]) == 5


@pytest.mark.parametrize("make", [_SystemCall, _OpenCall])
def test_malicious_pickle_refused_and_nothing_runs(tmp_path: Path, make) -> None:
    target = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"train": [make(target)]}))
    with pytest.raises(UnsafePickleError) as err:
        safe_load(path)
    msg = str(err.value)
    assert str(path) in msg
    assert ("system" in msg) or ("open" in msg)
    assert not target.exists()


def test_eval_and_arbitrary_classes_refused() -> None:
    with pytest.raises(UnsafePickleError, match="builtins.eval"):
        safe_load(pickle.dumps(_EvalCall()))
    with pytest.raises(UnsafePickleError, match="collections.Counter"):
        from collections import Counter

        safe_load(pickle.dumps(Counter("abc")))


def test_codecs_limited_to_latin1() -> None:
    # Protocol 2 numpy pickles encode their buffers with _codecs.encode(..., 'latin1'): allowed ...
    arr = np.arange(4, dtype=np.float32)
    assert np.array_equal(safe_load(pickle.dumps(arr, protocol=2)), arr)
    # ... but no other codec may be called through it.
    evil = b"\x80\x02c_codecs\nencode\nq\x00X\x03\x00\x00\x00abcq\x01X\x05\x00\x00\x00rot13q\x02\x86q\x03Rq\x04."
    with pytest.raises(UnsafePickleError, match="rot13"):
        safe_load(evil)


def test_garbage_is_a_data_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.pkl"
    path.write_bytes(b"not a pickle at all")
    with pytest.raises(DataError, match="bad.pkl"):
        safe_load(path)
    trunc = tmp_path / "trunc.pkl"
    trunc.write_bytes(pickle.dumps([np.zeros((100, 3))])[:50])
    with pytest.raises(DataError, match="trunc.pkl"):
        safe_load(trunc)
