"""Turning a list of samples into a batch (PyTorch's ``default_collate``).

Tensors are stacked along a new first dimension; numpy arrays and Python or
numpy numbers become tensors (Python floats -> float64, ints -> int64, bools
-> bool); strings stay as they are; tuples, lists, namedtuples and dicts are
collated field by field (a tuple sample gives a list batch, like PyTorch; its
string fields are tuples, the columns zip makes).
"""
from __future__ import annotations

import collections.abc
import copy

import numpy as np

from ... import dtypes as D
from ...creation import from_numpy, tensor
from ...shape import stack
from ...tensor import Tensor

__all__ = ["default_collate", "default_convert"]

_ERR = "default_collate: batch must contain tensors, numpy arrays, numbers, dicts or lists; found {}"


def _is_namedtuple(x) -> bool:
    return isinstance(x, tuple) and hasattr(x, "_fields")


def _collate_arrays(batch: list) -> Tensor:
    first = batch[0]
    if first.dtype.kind in "SaUO":
        raise TypeError(_ERR.format(first.dtype))
    if all(a.shape == first.shape and a.dtype == first.dtype for a in batch):
        return from_numpy(np.stack(batch))  # one copy, instead of a tensor per sample
    return stack([from_numpy(np.asarray(a)) for a in batch])


def default_collate(batch):
    """Collate a list of samples into a batch; see the module docstring for the rules."""
    elem = batch[0]
    if isinstance(elem, Tensor):
        return stack(batch, 0)
    if isinstance(elem, (str, bytes)):  # before np.generic: np.str_ labels stay strings
        return batch
    if isinstance(elem, np.ndarray):
        return _collate_arrays(batch)
    if isinstance(elem, np.generic):
        if elem.dtype.kind in "SaUO":
            raise TypeError(_ERR.format(elem.dtype))
        return from_numpy(np.array(batch))
    if isinstance(elem, float):
        return tensor(batch, dtype=D.float64)
    if isinstance(elem, int):  # bool included: a list of bools becomes a bool tensor
        return tensor(batch)
    if isinstance(elem, collections.abc.Mapping):
        fields = {key: default_collate([d[key] for d in batch]) for key in elem}
        return _rebuild_mapping(elem, fields)
    if _is_namedtuple(elem):
        return type(elem)(*(default_collate(s) for s in zip(*batch)))
    if isinstance(elem, collections.abc.Sequence):
        size = len(elem)
        if any(len(e) != size for e in batch):
            raise RuntimeError("each element in list of batch should be of equal size")
        columns = [default_collate(s) for s in zip(*batch)]  # a string column stays a tuple, as in PyTorch
        if isinstance(elem, tuple):
            return columns
        return _rebuild_sequence(elem, columns)
    raise TypeError(_ERR.format(type(elem)))


def _rebuild_mapping(elem, fields: dict):
    """Keep the sample's mapping type where it can be rebuilt, else a dict."""
    try:
        if isinstance(elem, collections.abc.MutableMapping):
            clone = copy.copy(elem)
            clone.update(fields)
            return clone
        return type(elem)(fields)
    except TypeError:
        return fields


def _rebuild_sequence(elem, columns: list):
    try:
        if isinstance(elem, collections.abc.MutableSequence):
            clone = copy.copy(elem)
            for i, c in enumerate(columns):
                clone[i] = c
            return clone
        return type(elem)(columns)
    except TypeError:
        return columns


def default_convert(data):
    """Without auto-batching (``batch_size=None``): numpy arrays become tensors,
    containers are converted element-wise, everything else is left alone."""
    if isinstance(data, np.ndarray) and data.dtype.kind not in "SaUO":
        return from_numpy(data)
    if isinstance(data, np.generic) and data.dtype.kind not in "SaUO":
        return from_numpy(np.asarray(data))
    if isinstance(data, (str, bytes, Tensor)):
        return data
    if isinstance(data, collections.abc.Mapping):
        return _rebuild_mapping(data, {k: default_convert(v) for k, v in data.items()})
    if _is_namedtuple(data):
        return type(data)(*(default_convert(d) for d in data))
    if isinstance(data, tuple):
        return [default_convert(d) for d in data]
    if isinstance(data, collections.abc.Sequence):
        return _rebuild_sequence(data, [default_convert(d) for d in data])
    return data
