"""Devices: "cpu" (numpy storage) and "cuda" (device storage, tracetorch/device_array.py; one device, cuda:0)."""
from __future__ import annotations


class device:
    __slots__ = ("type", "index")

    def __init__(self, type_or_str="cpu", index=None):
        if isinstance(type_or_str, device):
            type_or_str, index = type_or_str.type, type_or_str.index
        s = str(type_or_str)
        if ":" in s:
            s, idx = s.split(":", 1)
            index = int(idx)
        if s not in ("cpu", "cuda"):
            raise RuntimeError(f"Expected one of cpu, cuda device type at start of device string: {type_or_str}")
        self.type = s
        self.index = index

    def __repr__(self) -> str:
        return f"device(type='{self.type}'" + (f", index={self.index})" if self.index is not None else ")")

    def __str__(self) -> str:
        return self.type if self.index is None else f"{self.type}:{self.index}"

    def __eq__(self, other) -> bool:
        if isinstance(other, str):
            other = device(other)
        return isinstance(other, device) and self.type == other.type and (
            self.index == other.index or None in (self.index, other.index))

    def __hash__(self) -> int:
        return hash(self.type)

    def check_available(self) -> None:
        if self.type == "cuda":
            from . import cuda
            if not cuda.is_available():
                raise RuntimeError("CUDA device requested but tracetorch found no usable CUDA device "
                                   "(install the 'cuda' extra, pycuda, on a machine with an NVIDIA GPU)")
            if self.index not in (None, 0):
                raise RuntimeError(f"tracetorch uses one CUDA device (cuda:0); got {self}")


CPU = device("cpu")
CUDA = device("cuda", 0)


def as_device(d) -> device:
    if d is None:
        return CPU
    return d if isinstance(d, device) else device(d)
