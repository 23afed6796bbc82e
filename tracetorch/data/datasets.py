"""Real datasets that need no network at run time.

Downloading at run time fails on machines and clusters without internet, so
these loaders only read files that a package ships: Fashion-MNIST from the
Debian package ``dataset-fashion-mnist`` (or the four standard IDX files), and
the UCI digits bundled inside scikit-learn.

The interface follows torchvision: ``ds[i]`` gives ``(img, label)`` with
``img`` a uint8 numpy array (standing in for a PIL image; ``ToTensor`` turns
it into a float CxHxW tensor in [0, 1]), and ``.data``/``.targets`` are
tracetorch tensors. ``ds.arrays()`` is the fast path for whole-array use.
"""

from __future__ import annotations

import gzip
import importlib.util
import operator
import os
import zlib
from pathlib import Path

import numpy as np

__all__ = ["FashionMNIST", "Digits", "read_idx", "locate_fashion_mnist"]

# Parsed IDX arrays keyed by (resolved path, mtime, size): each file is read
# once per process however many dataset objects use it. Arrays are read-only.
_IDX_CACHE: dict[tuple[str, int, int], np.ndarray] = {}
# Parsed digits (images, labels), keyed by the csv path.
_DIGITS_CACHE: dict[str, tuple[np.ndarray, np.ndarray]] = {}

_REPO_DATA = Path(__file__).resolve().parents[2] / ".data" / "fashion-mnist"
_SYSTEM_DATA = Path("/usr/share/datasets/fashion-mnist")
# A root may hold the files directly, in our folder name, or in torchvision's.
_SUBDIRS = ("", "fashion-mnist", "FashionMNIST/raw")
_FILES = {
    True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def read_idx(path) -> np.ndarray:
    """Read a uint8 IDX file (gzipped or plain) into a read-only array.

    Validates the header and the data length, so a truncated or wrong file
    fails here with its name instead of as a shape error much later.
    """
    path = Path(path)
    st = path.stat()
    key = (str(path.resolve()), st.st_mtime_ns, st.st_size)
    if key in _IDX_CACHE:
        return _IDX_CACHE[key]
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":  # gzip magic: decide by content, not by name
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise ValueError(f"{path}: corrupt gzip data ({e})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{path}: not an IDX file (bad magic {raw[:4]!r})")
    if raw[2] != 0x08:
        raise ValueError(f"{path}: IDX type byte 0x{raw[2]:02x}; only uint8 (0x08) is supported")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise ValueError(f"{path}: bad IDX header ({ndim} dimensions, {len(raw)} bytes)")
    dims = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    expected = header + int(np.prod(dims, dtype=np.int64))
    if len(raw) != expected:
        raise ValueError(
            f"{path}: IDX data length mismatch: header says shape {dims} "
            f"({expected} bytes in all), file has {len(raw)} bytes"
        )
    arr = np.frombuffer(raw, np.uint8, offset=header).reshape(dims)  # read-only view
    _IDX_CACHE[key] = arr
    return arr


def _find_file(folder: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (folder / name).is_file():
            return folder / name
    return None


def _search_roots(root) -> list[Path]:
    """Candidate roots in priority order, without duplicates."""
    roots = []
    if root is not None:
        roots.append(Path(root).expanduser())
    if os.environ.get("TRACETORCH_DATA"):
        roots.append(Path(os.environ["TRACETORCH_DATA"]).expanduser())
    roots += [_REPO_DATA, Path.cwd() / ".data" / "fashion-mnist", _SYSTEM_DATA]
    seen, out = set(), []
    for r in roots:
        k = str(r.resolve()) if r.exists() else str(r)
        if k not in seen:
            seen.add(k)
            out.append(r)
    return out


def locate_fashion_mnist(root=None, train: bool = True) -> tuple[Path, Path]:
    """Paths of the (images, labels) IDX files for one split.

    Looks in ``root``, ``$TRACETORCH_DATA``, ``.data/fashion-mnist`` (repo
    root, then current folder) and ``/usr/share/datasets/fashion-mnist``.
    """
    stems = _FILES[bool(train)]
    searched = []
    for base in _search_roots(root):
        for sub in _SUBDIRS:
            folder = base / sub if sub else base
            searched.append(folder)
            found = [_find_file(folder, s) for s in stems]
            if all(found):
                return found[0], found[1]
    places = "\n".join(f"  {p}" for p in searched)
    raise FileNotFoundError(
        f"Fashion-MNIST files {stems[0]}[.gz] and {stems[1]}[.gz] not found. Searched:\n"
        f"{places}\n"
        "Nothing is downloaded at run time. To get the files:\n"
        "  - in a tracetorch checkout: make data\n"
        "  - on Debian/Ubuntu: apt-get download dataset-fashion-mnist && "
        "dpkg -x dataset-fashion-mnist_*.deb DIR, then use "
        "DIR/usr/share/datasets/fashion-mnist\n"
        "  - elsewhere: on a machine with internet, download the four standard IDX files "
        "(train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, "
        "t10k-labels-idx1-ubyte.gz) from https://github.com/zalandoresearch/fashion-mnist\n"
        "and pass root=FOLDER or set TRACETORCH_DATA=FOLDER."
    )


def _readonly(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)
    return a


def _as_numpy(value) -> np.ndarray:
    return np.asarray(value.numpy() if hasattr(value, "numpy") else value)


class _ArrayDataset:
    """Images + labels held as numpy arrays; tensors are made on first use.

    ``.data``/``.targets`` are created lazily so ``arrays()`` and ``ds[i]``
    work without touching the tensor library. Assigning them (torchvision's
    ``ds.data = ds.data[:1000]`` idiom) also updates what ``ds[i]`` returns.
    """

    classes: list[str] = []

    def __init__(self, images, labels, transform=None, target_transform=None):
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise ValueError(f"images {images.shape} and labels {labels.shape} do not match")
        self._images, self._labels = images, labels
        self._data = self._targets = None
        self.transform, self.target_transform = transform, target_transform

    @property
    def data(self):
        if self._data is None:
            import tracetorch

            # A private writable copy: the cached arrays are shared and read-only.
            self._images = np.array(self._images)
            self._data = tracetorch.from_numpy(self._images)
        return self._data

    @data.setter
    def data(self, value):
        self._images = _as_numpy(value).astype(np.uint8, copy=False)
        self._data = value if hasattr(value, "numpy") else None

    @property
    def targets(self):
        if self._targets is None:
            import tracetorch

            self._labels = np.array(self._labels, dtype=np.int64)
            self._targets = tracetorch.from_numpy(self._labels)
        return self._targets

    @targets.setter
    def targets(self, value):
        self._labels = _as_numpy(value).astype(np.int64, copy=False)
        self._targets = value if hasattr(value, "numpy") else None

    @property
    def class_to_idx(self) -> dict[str, int]:
        return {c: i for i, c in enumerate(self.classes)}

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(images uint8 N x H x W, labels int64 N): no per-item Python work.

        May be read-only views of the shared cache; copy before writing.
        """
        return self._images, self._labels

    def __len__(self) -> int:
        return len(self._images)

    def __getitem__(self, index):
        index = operator.index(index)
        img, target = self._images[index].copy(), int(self._labels[index])
        if self.transform is not None:
            img = self.transform(img)
        if self.target_transform is not None:
            target = self.target_transform(target)
        return img, target

    def __repr__(self) -> str:
        lines = [f"Dataset {type(self).__name__}", f"    Number of datapoints: {len(self)}"]
        lines += [f"    {k}: {v}" for k, v in self._extra_repr()]
        if self.transform is not None:
            lines.append(f"    Transform: {self.transform!r}")
        if self.target_transform is not None:
            lines.append(f"    Target transform: {self.target_transform!r}")
        return "\n".join(lines)

    def _extra_repr(self):
        return []


class FashionMNIST(_ArrayDataset):
    """Fashion-MNIST (Zalando, MIT): 60,000 train / 10,000 test 28x28 images.

    ``download`` is accepted for torchvision compatibility but nothing is
    downloaded: missing files raise FileNotFoundError saying how to get them.
    """

    classes = [
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
        "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
    ]

    def __init__(self, root=None, train=True, transform=None, target_transform=None,
                 download=False):
        self.train = bool(train)
        self.images_path, self.labels_path = locate_fashion_mnist(root, self.train)
        self.root = self.images_path.parent
        images = read_idx(self.images_path)
        labels = _readonly(read_idx(self.labels_path).astype(np.int64))
        super().__init__(images, labels, transform, target_transform)

    def _extra_repr(self):
        return [("Root location", self.root), ("Split", "Train" if self.train else "Test")]


def _digits_csv() -> Path:
    spec = importlib.util.find_spec("sklearn")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "Digits needs the data file bundled with scikit-learn: "
            "pip install scikit-learn (or pip install 'tracetorch[data]')"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" / "digits.csv.gz"
    if not path.is_file():
        raise FileNotFoundError(f"scikit-learn is installed but {path} is missing")
    return path


class Digits(_ArrayDataset):
    """UCI handwritten digits from scikit-learn: 1,797 8x8 images, 10 classes.

    Pixel values are 0..16 (not 0..255), so ``ToTensor`` gives [0, 16/255];
    rescale or normalize accordingly.
    """

    classes = [str(d) for d in range(10)]

    def __init__(self, transform=None, target_transform=None):
        path = _digits_csv()
        key = str(path)
        if key not in _DIGITS_CACHE:
            table = np.loadtxt(path, delimiter=",", dtype=np.float64)  # 64 pixels, then the label
            images = _readonly(table[:, :64].astype(np.uint8).reshape(-1, 8, 8))
            labels = _readonly(table[:, 64].astype(np.int64))
            _DIGITS_CACHE[key] = images, labels
        super().__init__(*_DIGITS_CACHE[key], transform, target_transform)
