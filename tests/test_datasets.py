"""Dataset loaders: the IDX reader, the file search, and the real data when present.

Everything but the .data/.targets tests works through numpy only, so it runs
while the tensor core is still incomplete.
"""

import gzip
import importlib.util

import numpy as np
import pytest

from tracetorch.data import datasets as D


def write_idx(path, array, gz=None):
    """Write a uint8 IDX file (gzipped when the name ends in .gz)."""
    array = np.asarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
    raw = header + array.tobytes()
    gz = str(path).endswith(".gz") if gz is None else gz
    path.write_bytes(gzip.compress(raw) if gz else raw)
    return path


def make_split(folder, n, train=True, gz=True, seed=0):
    """A fake Fashion-MNIST split of n images; returns (images, labels)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = (np.arange(n) % 10).astype(np.uint8)
    img_stem, lbl_stem = D._FILES[train]
    ext = ".gz" if gz else ""
    write_idx(folder / (img_stem + ext), images)
    write_idx(folder / (lbl_stem + ext), labels)
    return images, labels


@pytest.fixture
def no_default_data(tmp_path, monkeypatch):
    """Hide every default location, so only what a test sets up is found."""
    monkeypatch.delenv("TRACETORCH_DATA", raising=False)
    monkeypatch.setattr(D, "_REPO_DATA", tmp_path / "repo" / ".data" / "fashion-mnist")
    monkeypatch.setattr(D, "_SYSTEM_DATA", tmp_path / "usr-share")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return tmp_path


# --- IDX reader -------------------------------------------------------------

@pytest.mark.parametrize("name", ["x-idx3-ubyte.gz", "x-idx3-ubyte"])
def test_read_idx_roundtrip(tmp_path, name):
    a = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    out = D.read_idx(write_idx(tmp_path / name, a))
    assert out.dtype == np.uint8 and out.shape == (2, 3, 4)
    np.testing.assert_array_equal(out, a)
    assert not out.flags.writeable  # shared through the cache


def test_read_idx_detects_gzip_by_content(tmp_path):
    a = np.arange(5, dtype=np.uint8)
    np.testing.assert_array_equal(D.read_idx(write_idx(tmp_path / "plain.gz", a, gz=False)), a)
    np.testing.assert_array_equal(D.read_idx(write_idx(tmp_path / "zipped", a, gz=True)), a)


def test_read_idx_caches(tmp_path):
    p = write_idx(tmp_path / "a.idx", np.zeros((3, 2)))
    first = D.read_idx(p)
    assert D.read_idx(p) is first
    assert any(key[0] == str(p.resolve()) for key in D._IDX_CACHE)


@pytest.mark.parametrize(
    "raw, match",
    [
        (b"\x01\x00\x08\x01\x00\x00\x00\x01\x07", "bad magic"),
        (b"\x00\x00\x0d\x01\x00\x00\x00\x01\x07", "type byte"),
        (b"\x00\x00\x08\x00", "header"),
        (b"\x00\x00\x08\x02\x00\x00\x00\x02", "header"),
        (b"\x00\x00", "bad magic"),
    ],
)
def test_read_idx_bad_header(tmp_path, raw, match):
    p = tmp_path / "bad-idx"
    p.write_bytes(raw)
    with pytest.raises(ValueError, match=match) as info:
        D.read_idx(p)
    assert "bad-idx" in str(info.value)


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("delta", [-1, +1])
def test_read_idx_wrong_length(tmp_path, gz, delta):
    a = np.ones((4, 5), np.uint8)
    raw = bytes([0, 0, 8, 2]) + np.asarray(a.shape, ">u4").tobytes() + a.tobytes()
    raw = raw[:delta] if delta < 0 else raw + b"\x00"
    p = tmp_path / "short-idx"
    p.write_bytes(gzip.compress(raw) if gz else raw)
    with pytest.raises(ValueError, match="length mismatch") as info:
        D.read_idx(p)
    assert "short-idx" in str(info.value)


def test_read_idx_truncated_gzip(tmp_path):
    p = write_idx(tmp_path / "cut.gz", np.arange(1000, dtype=np.uint8) % 251)
    p.write_bytes(p.read_bytes()[:-20])
    with pytest.raises(ValueError, match="cut.gz"):
        D.read_idx(p)


# --- FashionMNIST on synthetic files -----------------------------------------

def test_dataset_api(tmp_path, no_default_data):
    images, labels = make_split(tmp_path / "root", 7, train=True)
    ds = D.FashionMNIST(root=tmp_path / "root", train=True)
    assert len(ds) == 7 and ds.train
    img, y = ds[3]
    assert isinstance(y, int) and y == 3
    assert img.dtype == np.uint8 and img.shape == (28, 28)
    np.testing.assert_array_equal(img, images[3])
    img[:] = 0  # items are copies: the cache stays intact
    np.testing.assert_array_equal(ds[3][0], images[3])
    np.testing.assert_array_equal(ds[-1][0], images[-1])
    with pytest.raises(IndexError):
        ds[7]
    assert len(list(ds)) == 7
    x, t = ds.arrays()
    assert x.dtype == np.uint8 and t.dtype == np.int64
    np.testing.assert_array_equal(t, labels)
    assert len(ds.classes) == 10 and ds.class_to_idx["Ankle boot"] == 9
    assert "Split: Train" in repr(ds)


def test_transforms_applied(tmp_path, no_default_data):
    make_split(tmp_path / "root", 3, train=False)
    ds = D.FashionMNIST(tmp_path / "root", train=False,
                        transform=lambda im: im.shape, target_transform=lambda y: -y)
    assert ds[2] == ((28, 28), -2)


def test_train_and_test_splits_pick_their_files(tmp_path, no_default_data):
    make_split(tmp_path / "root", 5, train=True)
    make_split(tmp_path / "root", 2, train=False)
    assert len(D.FashionMNIST(tmp_path / "root", train=True)) == 5
    assert len(D.FashionMNIST(tmp_path / "root", train=False)) == 2


def test_plain_names_and_subfolders(tmp_path, no_default_data):
    make_split(tmp_path / "a" / "fashion-mnist", 4, gz=False)
    assert len(D.FashionMNIST(tmp_path / "a")) == 4
    make_split(tmp_path / "tv" / "FashionMNIST" / "raw", 6)  # torchvision's layout
    assert len(D.FashionMNIST(tmp_path / "tv")) == 6


def test_search_order(tmp_path, no_default_data, monkeypatch):
    make_split(tmp_path / "explicit", 3)
    make_split(tmp_path / "env", 4)
    make_split(D._REPO_DATA, 5)
    make_split(tmp_path / "cwd" / ".data" / "fashion-mnist", 6)
    make_split(D._SYSTEM_DATA, 8)
    monkeypatch.setenv("TRACETORCH_DATA", str(tmp_path / "env"))
    assert len(D.FashionMNIST(root=tmp_path / "explicit")) == 3
    assert len(D.FashionMNIST(root=tmp_path / "nothing-here")) == 4
    assert len(D.FashionMNIST()) == 4
    monkeypatch.delenv("TRACETORCH_DATA")
    assert len(D.FashionMNIST()) == 5
    monkeypatch.setattr(D, "_REPO_DATA", tmp_path / "gone")
    assert len(D.FashionMNIST()) == 6
    monkeypatch.chdir(tmp_path)
    assert len(D.FashionMNIST()) == 8


def test_not_found_message(tmp_path, no_default_data, monkeypatch):
    monkeypatch.setenv("TRACETORCH_DATA", str(tmp_path / "envdir"))
    with pytest.raises(FileNotFoundError) as info:
        D.FashionMNIST(root=tmp_path / "rootdir")
    msg = str(info.value)
    for expected in ["rootdir", "envdir", str(D._REPO_DATA), str(D._SYSTEM_DATA),
                     "make data", "apt-get download dataset-fashion-mnist", "dpkg -x",
                     "TRACETORCH_DATA", "train-images-idx3-ubyte"]:
        assert expected in msg


def test_mismatched_counts_rejected(tmp_path, no_default_data):
    folder = tmp_path / "root"
    make_split(folder, 5)
    write_idx(folder / "train-labels-idx1-ubyte.gz", np.zeros(4))
    with pytest.raises(ValueError, match="do not match"):
        D.FashionMNIST(folder)


# --- tensors (need the tensor core) ------------------------------------------

def _tracetorch_or_skip():
    tt = pytest.importorskip("tracetorch")
    if not hasattr(tt, "from_numpy"):
        pytest.skip("tracetorch.from_numpy is not implemented yet")
    return tt


def test_data_and_targets_tensors(tmp_path, no_default_data):
    _tracetorch_or_skip()
    images, labels = make_split(tmp_path / "root", 6)
    ds = D.FashionMNIST(tmp_path / "root")
    assert tuple(ds.data.shape) == (6, 28, 28)
    assert tuple(ds.targets.shape) == (6,)
    assert np.asarray(ds.data.numpy()).dtype == np.uint8
    assert np.asarray(ds.targets.numpy()).dtype == np.int64
    np.testing.assert_array_equal(ds.data.numpy(), images)
    np.testing.assert_array_equal(ds.targets.numpy(), labels)
    # torchvision's subsetting idiom
    ds.data, ds.targets = ds.data[:2], ds.targets[:2]
    assert len(ds) == 2 and ds[1][1] == 1
    np.testing.assert_array_equal(ds[1][0], images[1])


# --- the real data -----------------------------------------------------------

def _real(train):
    try:
        return D.FashionMNIST(train=train)
    except FileNotFoundError:
        pytest.skip("Fashion-MNIST not found: run make data")


@pytest.mark.parametrize("train, n", [(True, 60000), (False, 10000)])
def test_real_fashion_mnist(train, n):
    ds = _real(train)
    images, labels = ds.arrays()
    assert len(ds) == n
    assert images.shape == (n, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (n,) and labels.dtype == np.int64
    assert labels.min() == 0 and labels.max() == 9
    assert (np.bincount(labels, minlength=10) == n // 10).all()
    assert 0 < images.mean() < 255 and images.max() == 255
    img, y = ds[0]
    assert img.shape == (28, 28) and 0 <= y <= 9
    assert D.FashionMNIST(train=train).arrays()[0] is images  # read once per process


# --- Digits ------------------------------------------------------------------

def test_digits():
    if importlib.util.find_spec("sklearn") is None:
        pytest.skip("scikit-learn not installed (pip install scikit-learn)")
    ds = D.Digits()
    images, labels = ds.arrays()
    assert len(ds) == 1797
    assert images.shape == (1797, 8, 8) and images.dtype == np.uint8
    assert images.max() == 16 and images.min() == 0
    assert set(np.unique(labels)) == set(range(10))
    img, y = ds[0]
    assert img.shape == (8, 8) and y == 0


def test_digits_without_sklearn(monkeypatch):
    monkeypatch.setattr(D.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ImportError, match="pip install scikit-learn"):
        D.Digits()
