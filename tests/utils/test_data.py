"""tt.utils.data: datasets, samplers, collation and the DataLoader (in-process and with workers)."""

import gc
import os
from collections import namedtuple

import numpy as np
import pytest

import tracetorch as tt
from tracetorch.data import transforms as T
from tracetorch.utils.data import (BatchSampler, ConcatDataset, DataLoader, Dataset, IterableDataset,
                                   RandomSampler, SequentialSampler, Subset, SubsetRandomSampler, TensorDataset,
                                   default_collate, get_worker_info, random_split)


# ------------------------------------------------------------------ fixtures
class ImageDataset(Dataset):
    """Like FashionMNIST: sample i is (uint8 H x W numpy image, int label)."""

    def __init__(self, n=23, size=6, transform=None, seed=0):
        rng = np.random.default_rng(seed)
        self.images = rng.integers(0, 256, (n, size, size), dtype=np.uint8)
        self.labels = rng.integers(0, 10, n)
        self.transform = transform

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        img = self.images[i].copy()
        return (self.transform(img) if self.transform else img), int(self.labels[i])


class FailingDataset(Dataset):
    def __len__(self):
        return 8

    def __getitem__(self, i):
        if i == 5:
            raise ValueError(f"bad sample {i}")
        return i


class RandomValueDataset(Dataset):
    """Each sample is a draw from the default generator, plus the worker id."""

    def __len__(self):
        return 8

    def __getitem__(self, i):
        info = get_worker_info()
        return float(tt.rand(1)), -1 if info is None else info.id


def tensor_dataset(n=10):
    x = tt.arange(n * 3, dtype=tt.float32).reshape(n, 3)
    return TensorDataset(x, tt.arange(n))


def as_arrays(batch):
    """A batch (nested lists/tuples/dicts of tensors) as plain numpy for comparisons."""
    if isinstance(batch, tt.Tensor):
        return batch.numpy().tolist(), batch.dtype.name
    if isinstance(batch, dict):
        return {k: as_arrays(v) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return [as_arrays(b) for b in batch]
    return batch


def epoch_arrays(loader):
    return [as_arrays(b) for b in loader]


# ------------------------------------------------------------------ datasets
def test_tensor_dataset_items_and_size_check():
    ds = tensor_dataset(4)
    x, y = ds[2]
    assert len(ds) == 4 and x.tolist() == [6.0, 7.0, 8.0] and y.item() == 2
    with pytest.raises(AssertionError, match="size mismatch"):     # PyTorch's error type
        TensorDataset(tt.zeros(3, 2), tt.zeros(4))


def test_subset_and_concat():
    base = tensor_dataset(6)
    sub = Subset(base, [4, 0, 2])
    assert len(sub) == 3 and sub[0][1].item() == 4 and sub[2][1].item() == 2
    cat = ConcatDataset([sub, base])
    assert len(cat) == 9
    assert [cat[i][1].item() for i in (0, 2, 3, 8, -1, -9)] == [4, 2, 0, 5, 5, 4]
    assert (base + sub)[7][1].item() == 0
    with pytest.raises(ValueError):
        cat[-10]


def test_random_split_sizes_disjoint_and_deterministic():
    ds = list(range(20))
    parts = random_split(ds, [5, 15], generator=tt.Generator().manual_seed(3))
    assert [len(p) for p in parts] == [5, 15]
    idx = [p.indices for p in parts]
    assert sorted(idx[0] + idx[1]) == ds
    again = random_split(ds, [5, 15], generator=tt.Generator().manual_seed(3))
    assert [p.indices for p in again] == idx
    other = random_split(ds, [5, 15], generator=tt.Generator().manual_seed(4))
    assert [p.indices for p in other] != idx
    assert [parts[0][i] for i in range(5)] == idx[0]
    with pytest.raises(ValueError, match="Sum of input lengths"):
        random_split(ds, [5, 14])


def test_random_split_fractions_follow_pytorch_rounding():
    # floor(n * f) each, then the remainder round-robin from the first split
    assert [len(p) for p in random_split(range(10), [0.3, 0.3, 0.4])] == [3, 3, 4]
    assert [len(p) for p in random_split(range(11), [0.5, 0.5])] == [6, 5]
    assert [len(p) for p in random_split(range(7), [0.25, 0.25, 0.5])] == [2, 2, 3]
    parts = random_split(range(11), [0.5, 0.5], generator=tt.Generator().manual_seed(0))
    assert sorted(parts[0].indices + parts[1].indices) == list(range(11))
    with pytest.raises(ValueError, match="between 0 and 1"):
        random_split(range(10), [1.5, -0.5])


def test_random_split_default_generator_follows_manual_seed():
    tt.manual_seed(11)
    a = [p.indices for p in random_split(range(12), [4, 8])]
    tt.manual_seed(11)
    assert [p.indices for p in random_split(range(12), [4, 8])] == a


# ------------------------------------------------------------------ samplers
def test_samplers():
    assert list(SequentialSampler(range(4))) == [0, 1, 2, 3]
    g = tt.Generator().manual_seed(0)
    rs = RandomSampler(range(7), generator=g)
    first, second = list(rs), list(rs)
    assert sorted(first) == sorted(second) == list(range(7)) and first != second
    more = list(RandomSampler(range(5), num_samples=12, generator=g))
    assert len(more) == 12 and sorted(more[:5]) == sorted(more[5:10]) == list(range(5))
    drawn = list(RandomSampler(range(3), replacement=True, num_samples=70, generator=g))
    assert len(drawn) == 70 and set(drawn) == {0, 1, 2}
    sub = list(SubsetRandomSampler([10, 20, 30], generator=g))
    assert sorted(sub) == [10, 20, 30]
    with pytest.raises(ValueError, match="num_samples"):
        RandomSampler(range(3), num_samples=0)


def test_batch_sampler():
    bs = BatchSampler(SequentialSampler(range(7)), 3, drop_last=False)
    assert list(bs) == [[0, 1, 2], [3, 4, 5], [6]] and len(bs) == 3
    bs = BatchSampler(SequentialSampler(range(7)), 3, drop_last=True)
    assert list(bs) == [[0, 1, 2], [3, 4, 5]] and len(bs) == 2
    with pytest.raises(ValueError, match="batch_size"):
        BatchSampler(range(3), 0, False)


# ------------------------------------------------------------------ collate
def test_default_collate_numbers_and_arrays():
    floats = default_collate([1.5, 2.0])
    assert floats.dtype == tt.float64 and floats.tolist() == [1.5, 2.0]
    ints = default_collate([3, 4])
    assert ints.dtype == tt.int64 and ints.tolist() == [3, 4]
    assert default_collate([True, False]).dtype == tt.bool
    assert default_collate([np.float32(1), np.float32(2)]).dtype == tt.float32
    assert default_collate([np.int32(1), np.int32(2)]).dtype == tt.int32
    arrays = default_collate([np.full((2, 2), i, np.uint8) for i in range(3)])
    assert arrays.dtype == tt.uint8 and arrays.shape == (3, 2, 2)
    np.testing.assert_array_equal(arrays.numpy()[:, 0, 0], [0, 1, 2])
    stacked = default_collate([tt.tensor([1.0, 2.0]), tt.tensor([3.0, 4.0])])
    assert stacked.tolist() == [[1.0, 2.0], [3.0, 4.0]]
    assert default_collate(["a", "b"]) == ["a", "b"]


def test_default_collate_containers():
    batch = default_collate([(1, {"x": 1.0, "s": "p"}), (2, {"x": 2.0, "s": "q"})])
    assert isinstance(batch, list)  # tuples collate to lists, as in PyTorch
    assert batch[0].tolist() == [1, 2]
    assert batch[1]["x"].tolist() == [1.0, 2.0] and batch[1]["x"].dtype == tt.float64
    assert batch[1]["s"] == ["p", "q"]
    P = namedtuple("P", "a b")
    p = default_collate([P(1, 2.0), P(3, 4.0)])
    assert isinstance(p, P) and p.a.tolist() == [1, 3] and p.b.tolist() == [2.0, 4.0]
    assert [t.tolist() for t in default_collate([[1, 2], [3, 4]])] == [[1, 3], [2, 4]]
    with pytest.raises(RuntimeError, match="equal size"):
        default_collate([[1, 2], [3]])
    with pytest.raises(TypeError, match="default_collate"):
        default_collate([object(), object()])
    with pytest.raises(RuntimeError, match="equal size"):
        default_collate([tt.zeros(2), tt.zeros(3)])


def test_default_collate_strings_as_pytorch():
    """numpy strings (labels read from a numpy array) were refused as numpy scalars; a string column
    of tuple samples is the tuple zip makes, as in PyTorch (a dict's field is a list)."""
    labels = np.array(["cat", "dog"])
    assert default_collate([labels[0], labels[1]]) == ["cat", "dog"]
    batch = default_collate([(1, "a", {"s": "p"}), (2, "b", {"s": "q"})])
    assert batch[1] == ("a", "b") and batch[2]["s"] == ["p", "q"]
    P = namedtuple("P", "n s")
    assert default_collate([P(1, "x"), P(2, "y")]).s == ("x", "y")
    assert default_collate([(np.str_("u"), 1.5), (np.str_("v"), 2.5)])[0] == ("u", "v")


# ------------------------------------------------------------------ DataLoader
def test_loader_sequential_order_len_and_drop_last():
    ds = tensor_dataset(10)
    loader = DataLoader(ds, batch_size=4)
    batches = list(loader)
    assert len(loader) == 3 and [b[1].tolist() for b in batches] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert batches[0][0].shape == (4, 3) and batches[0][0].dtype == tt.float32
    assert batches[0][1].dtype == tt.int64
    np.testing.assert_array_equal(batches[2][0].numpy(), ds.tensors[0].numpy()[8:])
    dropped = DataLoader(ds, batch_size=4, drop_last=True)
    assert len(dropped) == 2 and [b[1].tolist() for b in dropped] == [[0, 1, 2, 3], [4, 5, 6, 7]]


def test_loader_shuffle_is_seeded_and_new_each_epoch():
    ds = tensor_dataset(30)

    def orders(loader, epochs):
        return [sum((b[1].tolist() for b in loader), []) for _ in range(epochs)]

    a = orders(DataLoader(ds, batch_size=7, shuffle=True, generator=tt.Generator().manual_seed(5)), 2)
    b = orders(DataLoader(ds, batch_size=7, shuffle=True, generator=tt.Generator().manual_seed(5)), 2)
    assert a == b
    assert sorted(a[0]) == sorted(a[1]) == list(range(30))
    assert a[0] != a[1] and a[0] != list(range(30))
    c = orders(DataLoader(ds, batch_size=7, shuffle=True, generator=tt.Generator().manual_seed(6)), 1)
    assert c[0] != a[0]
    tt.manual_seed(9)
    d = orders(DataLoader(ds, batch_size=7, shuffle=True), 2)
    tt.manual_seed(9)
    assert orders(DataLoader(ds, batch_size=7, shuffle=True), 2) == d


def test_tensor_fast_path_matches_per_sample_collation():
    ds = tensor_dataset(13)
    sub = Subset(ds, [12, 3, 5, 7, 0, 1, 2])
    for data in (ds, sub):
        fast = DataLoader(data, batch_size=4, shuffle=True, generator=tt.Generator().manual_seed(1))
        slow = DataLoader(data, batch_size=4, shuffle=True, generator=tt.Generator().manual_seed(1),
                          collate_fn=lambda samples: default_collate(samples))
        assert epoch_arrays(fast) == epoch_arrays(slow)


def test_getitems_is_called_once_per_batch():
    class Batched(Dataset):
        calls = []

        def __len__(self):
            return 6

        def __getitem__(self, i):
            raise AssertionError("per-sample path used")

        def __getitems__(self, indices):
            self.calls.append(list(indices))
            return [i * 10 for i in indices]

    batches = [b.tolist() for b in DataLoader(Batched(), batch_size=4)]
    assert batches == [[0, 10, 20, 30], [40, 50]] and Batched.calls == [[0, 1, 2, 3], [4, 5]]


def test_loader_numpy_samples_through_to_tensor():
    ds = ImageDataset(n=10, size=5, transform=T.ToTensor())
    loader = DataLoader(ds, batch_size=4)
    images, labels = next(iter(loader))
    assert images.shape == (4, 1, 5, 5) and images.dtype == tt.float32
    assert labels.dtype == tt.int64 and labels.tolist() == ds.labels[:4].tolist()
    np.testing.assert_allclose(images.numpy()[:, 0], ds.images[:4] / np.float32(255), rtol=1e-7)
    raw_images, _ = next(iter(DataLoader(ImageDataset(n=10, size=5), batch_size=4)))
    assert raw_images.dtype == tt.uint8 and raw_images.shape == (4, 5, 5)


def test_loader_without_batching_and_custom_batch_sampler():
    ds = ImageDataset(n=3, size=2)
    items = list(DataLoader(ds, batch_size=None))
    assert len(items) == 3 and isinstance(items[0], list)  # default_convert: tuple -> list
    assert items[0][0].dtype == tt.uint8 and items[0][1] == int(ds.labels[0])
    loader = DataLoader(tensor_dataset(5), batch_sampler=[[4, 0], [2]])
    assert [b[1].tolist() for b in loader] == [[4, 0], [2]] and len(loader) == 2


def test_loader_argument_checks():
    ds = tensor_dataset(4)
    with pytest.raises(ValueError, match="mutually exclusive with shuffle"):
        DataLoader(ds, sampler=SequentialSampler(ds), shuffle=True)
    with pytest.raises(ValueError, match="batch_sampler option is mutually exclusive"):
        DataLoader(ds, batch_size=2, batch_sampler=[[0]])
    with pytest.raises(ValueError, match="num_workers"):
        DataLoader(ds, num_workers=-1)
    with pytest.raises(ValueError, match="persistent_workers"):
        DataLoader(ds, persistent_workers=True)


class Stream(IterableDataset):
    """0..n-1, split between workers by get_worker_info()."""

    def __init__(self, n):
        self.n = n

    def __iter__(self):
        info = get_worker_info()
        start, step = (0, 1) if info is None else (info.id, info.num_workers)
        return iter(range(start, self.n, step))

    def __len__(self):
        return self.n


def test_iterable_dataset():
    loader = DataLoader(Stream(7), batch_size=3)
    assert [b.tolist() for b in loader] == [[0, 1, 2], [3, 4, 5], [6]] and len(loader) == 3
    assert len(DataLoader(Stream(7), batch_size=3, drop_last=True)) == 2
    with pytest.raises(ValueError, match="IterableDataset"):
        DataLoader(Stream(3), shuffle=True)
    parallel = DataLoader(Stream(11), batch_size=2, num_workers=2)
    values = sum((b.tolist() for b in parallel), [])
    assert sorted(values) == list(range(11))


# ------------------------------------------------------------------ workers
def test_workers_give_the_same_batches_as_the_main_process():
    ds = ImageDataset(n=23, size=4, transform=T.ToTensor())
    kwargs = dict(batch_size=5, shuffle=True)
    ref = epoch_arrays(DataLoader(ds, generator=tt.Generator().manual_seed(2), **kwargs))
    got = epoch_arrays(DataLoader(ds, generator=tt.Generator().manual_seed(2), num_workers=2, **kwargs))
    assert got == ref
    tds = tensor_dataset(17)
    ref = epoch_arrays(DataLoader(tds, batch_size=4, drop_last=True))
    assert epoch_arrays(DataLoader(tds, batch_size=4, drop_last=True, num_workers=2)) == ref


def test_persistent_workers_over_epochs():
    ds = ImageDataset(n=9, size=3)

    def loader(workers, persistent=False):
        return DataLoader(ds, batch_size=2, shuffle=True, generator=tt.Generator().manual_seed(4),
                          num_workers=workers, persistent_workers=persistent)

    par, twin = loader(2, True), loader(2, True)
    first = iter(par)
    pids = [w.pid for w in first._workers]
    assert epoch_arrays(first) == epoch_arrays(loader(0))  # the first epoch is an ordinary one
    next(iter(par))  # abandon an epoch half-way: its late results must not leak into the next
    third = iter(par)
    assert third is first and [w.pid for w in third._workers] == pids
    epoch3 = epoch_arrays(third)
    next(iter(twin))
    next(iter(twin))
    assert epoch_arrays(twin) == epoch3
    labels = sorted(sum((labels for _, (labels, _) in epoch3), []))
    assert labels == sorted(ds.labels.tolist())
    workers = first._workers
    del first, third, par
    for w in workers:
        w.join(timeout=10)
        assert not w.is_alive()


def test_worker_exception_is_reraised_with_its_traceback():
    loader = DataLoader(FailingDataset(), batch_size=2, num_workers=2)
    it = iter(loader)
    assert next(it).tolist() == [0, 1] and next(it).tolist() == [2, 3]
    with pytest.raises(ValueError, match="Caught ValueError in DataLoader worker process 0") as info:
        next(it)
    text = str(info.value)
    assert "bad sample 5" in text and 'raise ValueError(f"bad sample {i}")' in text
    assert next(it).tolist() == [6, 7]  # the other batches are still served


def test_worker_errors_of_other_kinds():
    class Lookup(Dataset):
        def __len__(self):
            return 2

        def __getitem__(self, i):
            return {}["missing"]

    with pytest.raises(KeyError) as info:
        list(DataLoader(Lookup(), num_workers=1))
    assert "\nOriginal Traceback" in str(info.value)  # real newlines, not an escaped repr

    class Decode(Dataset):  # its exception type cannot be rebuilt from a message alone
        def __len__(self):
            return 2

        def __getitem__(self, i):
            return b"\xff".decode("utf-8")

    with pytest.raises(RuntimeError, match="Caught UnicodeDecodeError in DataLoader worker process 0"):
        list(DataLoader(Decode(), num_workers=1))

    def bad_init(worker_id):
        raise OSError(f"init failed in {worker_id}")

    with pytest.raises(OSError, match="init failed in 0"):
        list(DataLoader(tensor_dataset(4), batch_size=2, num_workers=1, worker_init_fn=bad_init))


def test_worker_init_fn_seeds_and_worker_info():
    def init(worker_id):
        assert get_worker_info().id == worker_id
        tt.manual_seed(1000 + worker_id * 7)

    def run(generator_seed, init_fn=None):
        loader = DataLoader(RandomValueDataset(), batch_size=1, num_workers=2, worker_init_fn=init_fn,
                            generator=tt.Generator().manual_seed(generator_seed))
        return [(v.item(), w.item()) for v, w in loader]

    a = run(0)
    assert [w for _, w in a] == [0, 1] * 4  # batches are dealt round-robin
    assert a == run(0)  # reproducible
    values = [v for v, _ in a]
    assert len(set(values)) == 8  # the two workers' streams differ
    assert [v for v, _ in run(1)] != values  # a new base seed gives new streams
    seeded = run(0, init)
    tt.manual_seed(1000)
    expected_w0 = [float(tt.rand(1)) for _ in range(4)]
    assert [v for v, w in seeded if w == 0] == expected_w0


def test_workers_shut_down_when_exhausted_or_dropped():
    loader = DataLoader(tensor_dataset(8), batch_size=2, num_workers=2)
    it = iter(loader)
    workers = it._workers
    assert len(list(it)) == 4
    assert not any(w.is_alive() for w in workers)
    it = iter(loader)
    next(it)
    workers = it._workers
    del it
    for w in workers:
        w.join(timeout=10)
        assert w.exitcode == 0  # exited on its own, not terminated


def test_workers_exit_cleanly_when_the_iterator_dies_in_a_cycle():
    # A garbage collection finalizes the index queues before the iterator's
    # __del__ runs, so the exit sentinel cannot be sent: workers must notice
    # the done event instead of being terminated after a timeout.
    it = iter(DataLoader(tensor_dataset(8), batch_size=2, num_workers=2))
    next(it)
    workers = it._workers
    it.cycle = it
    del it
    gc.collect()
    for w in workers:
        w.join(timeout=10)
        assert w.exitcode == 0


def test_dead_worker_is_reported():
    class Dies(Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            os._exit(3)

    with pytest.raises(RuntimeError, match="exited unexpectedly"):
        list(DataLoader(Dies(), batch_size=2, num_workers=1))


def test_spawn_context_workers():
    ds = tensor_dataset(9)
    loader = DataLoader(ds, batch_size=4, num_workers=2, multiprocessing_context="spawn")
    assert epoch_arrays(loader) == epoch_arrays(DataLoader(ds, batch_size=4))


def test_public_paths():
    assert tt.utils.data.DataLoader is DataLoader and tt.utils.data.random_split is random_split
    assert tt.data.transforms.ToTensor is T.ToTensor


def test_real_fashion_mnist_test_split_through_to_tensor():
    from tracetorch.data.datasets import FashionMNIST
    try:
        ds = FashionMNIST(train=False, transform=T.ToTensor())
    except FileNotFoundError:
        pytest.skip("Fashion-MNIST files not installed (make data)")
    images, labels = ds.arrays()
    loader = DataLoader(ds, batch_size=100, shuffle=True, generator=tt.Generator().manual_seed(0))
    assert len(loader) == 100
    seen = 0
    for i, (x, y) in enumerate(loader):
        assert x.shape == (100, 1, 28, 28) and x.dtype == tt.float32 and y.dtype == tt.int64
        if i == 0:  # each sample is a dataset image / 255 with that image's label
            for img, label in zip(x.numpy()[:3], y.tolist()[:3]):
                matches = np.flatnonzero((images == np.rint(img[0] * 255)).all(axis=(1, 2)))
                assert label in labels[matches].tolist()
        seen += len(y)
    assert seen == 10000
