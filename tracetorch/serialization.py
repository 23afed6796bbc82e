"""`tt.save` / `tt.load`: checkpoints of state dicts that never execute code on load.

A checkpoint is a zip archive (entries stored uncompressed) holding

    data.json        {"format": "tracetorch", "version": 1, "root": VALUE}
    tensors/N.npy    one numpy .npy file per distinct tensor (N = 0, 1, ...)

VALUE is JSON. null, true/false, numbers, strings and lists stand for
themselves; every other value is a JSON object with one tag:

    {"tensor": N, "dtype": "bfloat16", "shape": [2, 3], "requires_grad": false, "parameter": false}
                                                     (+ "device": "cuda:0" for a tensor saved off the CPU)
    {"ndarray": N}                                   a numpy array stored like a tensor
    {"tuple": [VALUE, ...]}
    {"dict": [[KEY, VALUE], ...], "ordered": false}  keys keep their type (int keys stay ints)
    {"float": "nan" | "inf" | "-inf"}
    {"dtype": "float32"}   {"device": "cpu"}

Tensors keep their tracetorch dtype name; bfloat16 data is stored as the uint16
bit patterns. A cuda tensor is stored from a host copy and, as with torch.load,
loads back on its device unless `map_location` sends it elsewhere. A tensor
reached twice is stored once and loads as one object.
Loading parses JSON and reads arrays with `allow_pickle=False`, so a checkpoint
cannot run code. `tt.load` also reads a plain `.npz` archive (from `np.savez`)
as a dict of tensors.
"""
from __future__ import annotations

import collections
import json
import math
import os
import zipfile
from typing import Any

import numpy as np

from . import dtypes as D
from .device import as_device, device as Device
from .tensor import Tensor

FORMAT = "tracetorch"
VERSION = 1
_MANIFEST = "data.json"


# ---------------------------------------------------------------- save
def save(obj: Any, f, pickle_module=None, pickle_protocol=None, _use_new_zipfile_serialization=True) -> None:
    """Write `obj` (tensors, numbers, strings, None, and lists/tuples/dicts of them) to a path or binary file.

    `pickle_module` and `pickle_protocol` are accepted for PyTorch compatibility and ignored.
    """
    encoder = _Encoder()
    root = encoder.encode(obj, "obj")
    manifest = json.dumps({"format": FORMAT, "version": VERSION, "root": root}, allow_nan=False)
    if isinstance(f, (str, os.PathLike)):
        f = os.fspath(f)
    with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr(_MANIFEST, manifest)
        for i, arr in enumerate(encoder.arrays):
            with zf.open(_array_name(i), "w", force_zip64=arr.nbytes > (1 << 30)) as fh:
                np.lib.format.write_array(fh, arr, allow_pickle=False)


class _Encoder:
    """Turns a Python value into the JSON VALUE above, collecting the arrays to write."""

    def __init__(self):
        self.arrays: list[np.ndarray] = []
        self._index: dict[int, int] = {}
        self._keep_alive: list = []     # ids stay unique while the walk runs

    def encode(self, obj, where: str):
        if obj is None or isinstance(obj, (bool, str)):
            return obj
        if isinstance(obj, int):
            return int(obj)
        if isinstance(obj, float):
            return obj if math.isfinite(obj) else {"float": repr(float(obj))}
        if isinstance(obj, Tensor):
            return self._tensor(obj)
        if isinstance(obj, np.ndarray):
            if obj.dtype == object:
                raise TypeError(f"tt.save: cannot save a numpy object array at {where}")
            return {"ndarray": self._add_array(obj, obj)}
        if isinstance(obj, np.generic):
            return self.encode(obj.item(), where)
        if isinstance(obj, dict):
            items = []
            for key, value in obj.items():
                if not (key is None or isinstance(key, (bool, int, float, str, tuple))):
                    raise TypeError(f"tt.save: cannot save a dict key of type {type(key).__name__} at {where}")
                items.append([self.encode(key, f"{where} key {key!r}"), self.encode(value, f"{where}[{key!r}]")])
            return {"dict": items, "ordered": isinstance(obj, collections.OrderedDict)}
        if isinstance(obj, list):
            return [self.encode(v, f"{where}[{i}]") for i, v in enumerate(obj)]
        if isinstance(obj, tuple):
            return {"tuple": [self.encode(v, f"{where}[{i}]") for i, v in enumerate(obj)]}
        if isinstance(obj, D.DType):
            return {"dtype": obj.name}
        if isinstance(obj, Device):
            return {"device": str(obj)}
        raise TypeError(f"tt.save: cannot save a {type(obj).__name__} at {where}; checkpoints hold tensors, "
                        "numbers, strings, None, and lists, tuples and dicts of them")

    def _tensor(self, t: Tensor) -> dict:
        data = t._data if type(t._data) is np.ndarray else np.asarray(t._data)    # a device array's host copy
        if t._dtype is D.bfloat16:
            data = (D.round_bfloat16(data).view(np.uint32) >> 16).astype(np.uint16)
        entry = {"tensor": self._add_array(t, data), "dtype": t._dtype.name, "shape": list(t._data.shape),
                 "requires_grad": bool(t.requires_grad), "parameter": bool(t._is_param)}
        if t.device.type != "cpu":
            entry["device"] = str(t.device)
        return entry

    def _add_array(self, owner, data: np.ndarray) -> int:
        key = id(owner)
        if key not in self._index:
            self._index[key] = len(self.arrays)
            self.arrays.append(data)
            self._keep_alive.append(owner)
        return self._index[key]


def _array_name(i: int) -> str:
    return f"tensors/{i}.npy"


# ---------------------------------------------------------------- load
def load(f, map_location=None, pickle_module=None, *, weights_only=True, mmap=None, **kwargs) -> Any:
    """Read what `save` wrote. Nothing is unpickled whatever `weights_only` says.

    Tensors load on the device they were saved from; `map_location` may be None, a device ("cpu",
    "cuda"), a dict of location names ({"cuda:0": "cpu"}), or a callable applied to each loaded CPU
    tensor as `fn(tensor, saved_location)` (returning None keeps the saved location).
    """
    if isinstance(map_location, (str, Device)):
        as_device(map_location).check_available()
    name = os.fspath(f) if isinstance(f, (str, os.PathLike)) else getattr(f, "name", "<file>")
    try:
        zf = zipfile.ZipFile(os.fspath(f) if isinstance(f, (str, os.PathLike)) else f)
    except zipfile.BadZipFile as e:
        raise RuntimeError(f"tt.load: {name} is not a tracetorch checkpoint (truncated or corrupt: {e})") from None
    with zf:
        try:
            return _read_archive(zf, name, map_location)
        except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError, TypeError, IndexError) as e:
            raise RuntimeError(f"tt.load: {name} is truncated or corrupt ({type(e).__name__}: {e})") from None


def _read_archive(zf: zipfile.ZipFile, name: str, map_location):
    names = zf.namelist()
    if _MANIFEST not in names:
        if any(n == "data.pkl" or n.endswith("/data.pkl") for n in names):
            raise RuntimeError(f"tt.load: {name} is a PyTorch pickle checkpoint; tracetorch never unpickles. "
                               "Convert it to plain tensors first (e.g. np.savez of each state_dict entry).")
        if names and all(n.endswith(".npy") for n in names):
            return {n[:-4]: _apply_map_location(_tensor_from_numpy(_read_array(zf, n)), map_location)
                    for n in names}
        raise RuntimeError(f"tt.load: {name} has no {_MANIFEST}; it is not a tracetorch checkpoint")
    manifest = json.loads(zf.read(_MANIFEST).decode("utf-8"))
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise RuntimeError(f"tt.load: {name} is not a tracetorch checkpoint (unknown format)")
    if manifest.get("version") != VERSION:
        raise RuntimeError(f"tt.load: {name} has checkpoint version {manifest.get('version')}; this tracetorch "
                           f"reads version {VERSION}")
    return _Decoder(zf, map_location).decode(manifest["root"])


def _read_array(zf: zipfile.ZipFile, entry: str) -> np.ndarray:
    with zf.open(entry) as fh:
        return np.lib.format.read_array(fh, allow_pickle=False)


class _Decoder:
    def __init__(self, zf: zipfile.ZipFile, map_location):
        self.zf = zf
        self.map_location = map_location
        self._loaded: dict[tuple, Any] = {}

    def decode(self, v):
        if v is None or isinstance(v, (bool, int, float, str)):
            return v
        if isinstance(v, list):
            return [self.decode(x) for x in v]
        if not isinstance(v, dict) or len(v) == 0:
            raise ValueError(f"unexpected entry {v!r} in {_MANIFEST}")
        if "tensor" in v:
            return self._tensor(v)
        if "dict" in v:
            cls = collections.OrderedDict if v.get("ordered") else dict
            return cls((self.decode(k), self.decode(x)) for k, x in v["dict"])
        if "tuple" in v:
            return tuple(self.decode(x) for x in v["tuple"])
        if "float" in v:
            return float(v["float"])
        if "ndarray" in v:
            return self._array(v["ndarray"])
        if "dtype" in v:
            return D.as_dtype(v["dtype"])
        if "device" in v:
            return Device(v["device"])
        raise ValueError(f"unknown tag {sorted(v)} in {_MANIFEST}")

    def _array(self, i: int) -> np.ndarray:
        key = ("array", i)
        if key not in self._loaded:
            self._loaded[key] = _read_array(self.zf, _array_name(int(i)))
        return self._loaded[key]

    def _tensor(self, v: dict) -> Tensor:
        key = ("tensor", v["tensor"])
        if key in self._loaded:
            return self._loaded[key]
        dtype = D.as_dtype(v["dtype"])
        arr = _read_array(self.zf, _array_name(int(v["tensor"])))
        if dtype is D.bfloat16:
            if arr.dtype != np.uint16:
                raise ValueError(f"bfloat16 tensor {v['tensor']} is stored as {arr.dtype}, expected uint16")
            arr = (arr.astype(np.uint32) << 16).view(np.float32)
        elif arr.dtype != dtype.np:
            raise ValueError(f"tensor {v['tensor']} is stored as {arr.dtype}, but data.json says {dtype.name}")
        if list(arr.shape) != list(v["shape"]):
            raise ValueError(f"tensor {v['tensor']} has shape {list(arr.shape)}, but data.json says {v['shape']}")
        t = _apply_map_location(Tensor._make(arr, dtype), self.map_location, v.get("device", "cpu"))
        if v.get("parameter"):
            t = _as_parameter(t, bool(v.get("requires_grad")))
        elif v.get("requires_grad"):
            t.requires_grad_(True)
        self._loaded[key] = t
        return t


def _tensor_from_numpy(arr: np.ndarray) -> Tensor:
    return Tensor._make(arr, D.from_numpy_dtype(arr.dtype))


def _as_parameter(t: Tensor, requires_grad: bool) -> Tensor:
    try:
        from .nn import Parameter
    except ImportError:
        return t.requires_grad_(requires_grad) if requires_grad else t
    return Parameter(t, requires_grad=requires_grad)


def _apply_map_location(t: Tensor, map_location, location: str = "cpu") -> Tensor:
    """The CPU tensor `t`, saved from device `location`, where torch.load would put it: back on
    `location`, or where `map_location` (a device, a {saved: target} dict, or fn(tensor, saved)
    returning a tensor or None) sends it."""
    if callable(map_location) and not isinstance(map_location, (str, Device)):
        out = map_location(t, location)
        if isinstance(out, Tensor):
            return out
        target = location
    elif isinstance(map_location, dict):
        target = map_location.get(location, location)
    else:
        target = location if map_location is None else map_location
    target = as_device(target)
    if target.type == "cpu":
        return t
    target.check_available()
    return t.to(target)


__all__ = ["save", "load"]
