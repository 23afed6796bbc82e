"""`device="cuda"` tensors on an emulated device (tests/runtime/fake_pycuda.py): storage, transfers,
views as metadata, the caching allocator's reuse and statistics, device errors, creation functions and
Module.to. Only a few kernels compile here (copies); ops are in test_device_ops.py."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import tracetorch as tt
import tracetorch.nn as nn
from runtime.cuda_memory import size_class
from tracetorch.device_array import DeviceArray
from tracetorch.jit.cuda_eager import movement_plan


def test_import_does_not_import_pycuda():
    code = "import sys, tracetorch, tracetorch.cuda; tracetorch.zeros(3) + 1; assert 'pycuda' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_without_a_device_cuda_tensors_are_refused():
    if tt.cuda.is_available():
        pytest.skip("a CUDA device is available here")
    with pytest.raises(RuntimeError, match="no usable CUDA device"):
        tt.zeros(3, device="cuda")
    with pytest.raises(RuntimeError, match="no usable CUDA device"):
        tt.ones(2).cuda()


# ---------------------------------------------------------------- layouts (no device needed)
@pytest.mark.parametrize("shape,view", [
    ((4, 6), lambda a: a.T),
    ((4, 6), lambda a: a[:, ::2]),
    ((4, 6), lambda a: a[1:, 3:]),
    ((2, 3, 4), lambda a: a.transpose(2, 0, 1)[1:, :, ::2]),
    ((3, 1, 5), lambda a: np.broadcast_to(a[:, :, 2:3], (2, 3, 4, 5))),
    ((5, 7), lambda a: a[2:3, 4:5]),
    ((6, 8), lambda a: a.reshape(3, 2, 8)[:, 1, 1::3].T),
])
def test_movement_plan_reads_exactly_the_view(shape, view):
    """The movement ops a program applies to a flat buffer give the view's elements, in order."""
    base = np.arange(np.prod(shape) + 3, dtype=np.int64)
    v = view(base[: np.prod(shape)].reshape(shape))
    offset = (v.__array_interface__["data"][0] - base.__array_interface__["data"][0]) // 8
    strides = tuple(s // 8 for s in v.strides)
    for lead in (0, 1):
        length, steps = movement_plan(v.shape, strides, lead)
        flat = np.concatenate([np.full(lead, -1), base[offset:], np.full(length, -2)])[:length]
        x = flat
        for op, attrs in steps:
            x = op.eager(x, **attrs)
        np.testing.assert_array_equal(x, v)


# ---------------------------------------------------------------- storage and transfers
def test_round_trips_and_attributes(fake_cuda):
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    x = tt.tensor(a, device="cuda")
    assert type(x._data) is DeviceArray and x.is_cuda and str(x.device) == "cuda:0" and x.device == "cuda"
    np.testing.assert_array_equal(x.cpu().numpy(), a)
    np.testing.assert_array_equal(tt.from_numpy(a).cuda().cpu().numpy(), a)
    np.testing.assert_array_equal(tt.from_numpy(a).to("cuda").to("cpu").numpy(), a)
    assert x.cpu().device == "cpu" and x.cuda() is x and tt.from_numpy(a).cpu().device == "cpu"
    assert x.shape == (3, 4) and x.stride() == (4, 1) and x.dtype is tt.float32 and x.is_contiguous()
    assert x[1, 2].item() == 6.0 and x.tolist() == a.tolist()
    assert float(x[2, 3]) == 11.0
    assert repr(tt.tensor([1.5, 2.0], device="cuda")) == "tensor([1.5000, 2.0000], device='cuda:0')"
    assert repr(tt.tensor([1, 2], device="cuda")) == "tensor([1, 2], device='cuda:0')"
    y = x.to("cuda", tt.float64)
    assert y.dtype is tt.float64 and y.is_cuda
    b16 = tt.tensor([1.0, 1.0 + 2 ** -10], dtype=tt.bfloat16, device="cuda")
    assert b16.dtype is tt.bfloat16 and b16.cpu().tolist() == [1.0, 1.0]


def test_numpy_of_a_cuda_tensor_raises_like_pytorch(fake_cuda):
    x = tt.ones(3, device="cuda")
    with pytest.raises(TypeError, match=r"can't convert cuda:0 device type tensor to numpy\. Use Tensor\.cpu\(\)"):
        x.numpy()
    with pytest.raises(TypeError, match="can't convert cuda:0 device type tensor to numpy"):
        np.asarray(x)


def test_creation_functions_on_the_device(fake_cuda):
    for t, want in [(tt.zeros(2, 3, device="cuda"), np.zeros((2, 3))),
                    (tt.ones(4, device="cuda", dtype=tt.int32), np.ones(4)),
                    (tt.full((2,), 7.5, device="cuda"), np.full(2, 7.5)),
                    (tt.arange(5, device="cuda"), np.arange(5)),
                    (tt.eye(3, device="cuda"), np.eye(3)),
                    (tt.empty(0, 2, device="cuda"), np.zeros((0, 2)))]:
        assert t.is_cuda
        np.testing.assert_array_equal(t.cpu().numpy(), want)
    x = tt.ones(2, 2, device="cuda", requires_grad=True)
    assert x.requires_grad and x.is_leaf and x.is_cuda
    assert tt.zeros_like(x).is_cuda and tt.ones_like(x).is_cuda and tt.full_like(x, 3).is_cuda
    assert not tt.zeros_like(x, device="cpu").is_cuda
    tt.manual_seed(3)
    cpu = [tt.rand(5), tt.randn(2, 3), tt.randint(0, 9, (4,))]
    tt.cuda.manual_seed(3)
    dev = [tt.rand(5, device="cuda"), tt.randn(2, 3, device="cuda"), tt.randint(0, 9, (4,), device="cuda")]
    for c, d in zip(cpu, dev):        # one counter-based stream: the same numbers on either device
        assert d.is_cuda and d.dtype is c.dtype
        np.testing.assert_array_equal(d.cpu().numpy(), c.numpy())
    assert tt.rand_like(dev[0]).is_cuda and tt.randn_like(dev[1]).is_cuda


def test_views_share_storage_and_are_metadata_only(fake_cuda):
    a = np.arange(24, dtype=np.float32).reshape(4, 6)
    x = tt.tensor(a, device="cuda")
    c = tt.from_numpy(a.copy())
    launches = len(fake_cuda["launches"])
    views = [lambda t: t.reshape(6, 4), lambda t: t.permute(1, 0), lambda t: t.T, lambda t: t[1:3, ::2],
             lambda t: t[2], lambda t: t.select(1, 3), lambda t: t.transpose(0, 1)[2:],
             lambda t: t[:, :1].expand(4, 5), lambda t: t.detach(), lambda t: t.view(2, 12)[1],
             lambda t: t.unsqueeze(0).flatten(1)]
    for view in views:
        v, w = view(x), view(c)
        assert v._data.block is x._data.block and v.is_cuda
        assert v.shape == w.shape and v.stride() == w.stride() and v.is_contiguous() == w.is_contiguous()
        np.testing.assert_array_equal(v.cpu().numpy(), w.numpy())
    assert len(fake_cuda["launches"]) == launches, "a view launched a kernel"


def test_writes_through_views_reach_the_base(fake_cuda):
    a = np.arange(24, dtype=np.float32).reshape(4, 6)
    x, c = tt.tensor(a, device="cuda"), tt.from_numpy(a.copy())
    for t in (x, c):
        t[1] = tt.full((6,), -1.0, device=t.device)     # a contiguous row
        t[:, 2].fill_(5.0)                               # a strided column
        t.T[3:, 1:3].copy_(tt.ones(3, 2))                # a transposed block, from a CPU tensor (copy_)
        t[0, 0] = 9.0
    np.testing.assert_array_equal(x.cpu().numpy(), c.numpy())
    with pytest.raises(RuntimeError, match="more than one element"):
        x[:, :1].expand(4, 3).fill_(0.0)


# ---------------------------------------------------------------- the caching allocator
def test_allocator_reuses_blocks_and_counts(fake_cuda):
    import tracetorch.device_array as device_array
    tt.zeros(1, device="cuda")                  # the runtime exists
    alloc = device_array.device_runtime().allocator
    tt.cuda.empty_cache()
    base = tt.cuda.memory_allocated()
    tt.cuda.reset_peak_memory_stats()
    assert tt.cuda.max_memory_allocated() == base
    x = tt.zeros(1000, device="cuda")             # 4000 bytes -> a 4096-byte class
    assert size_class(4000) == 4096 and size_class(0) == 512 and size_class((1 << 20) + 1) == 2 << 20
    assert tt.cuda.memory_allocated() == base + 4096
    v = x[10:20]                                  # a view holds the block too
    del x
    assert tt.cuda.memory_allocated() == base + 4096
    del v
    assert tt.cuda.memory_allocated() == base
    assert tt.cuda.memory_reserved() >= base + 4096 and alloc.cached_blocks() >= 1
    made = alloc.driver_allocations
    y = tt.ones(1020, device="cuda")              # same class: the cached block, no driver allocation
    assert alloc.driver_allocations == made and tt.cuda.memory_allocated() == base + 4096
    assert tt.cuda.max_memory_allocated() == base + 4096
    z = tt.ones(3000, device="cuda")
    assert tt.cuda.max_memory_allocated() == base + 4096 + 12288
    del y, z
    reserved = tt.cuda.memory_reserved()
    tt.cuda.empty_cache()
    assert tt.cuda.memory_reserved() == reserved - 4096 - 12288 and alloc.cached_blocks() == 0
    tt.cuda.reset_peak_memory_stats()
    assert tt.cuda.max_memory_allocated() == tt.cuda.memory_allocated()


# ---------------------------------------------------------------- devices meeting
def test_mixing_devices_raises_pytorchs_error(fake_cuda):
    x = tt.ones(3, device="cuda")
    with pytest.raises(RuntimeError, match=r"Expected all tensors to be on the same device, but found at least "
                                           r"two devices, cuda:0 and cpu! .*add"):
        x + tt.ones(3)
    with pytest.raises(RuntimeError, match="Expected all tensors to be on the same device.*matmul"):
        tt.ones(2, 3) @ tt.ones(3, 2, device="cuda")
    assert (x + tt.tensor(2.0)).cpu().tolist() == [3.0, 3.0, 3.0]      # a 0-d CPU tensor is a scalar
    assert x[tt.tensor([2, 0])].cpu().tolist() == [1.0, 1.0]            # CPU index tensors are copied over


def test_module_to_cuda_and_back(fake_cuda):
    tt.manual_seed(0)
    m = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    before = {k: v.numpy().copy() for k, v in m.state_dict().items()}
    params = list(m.parameters())
    assert m.to("cuda") is m and all(p.is_cuda for p in m.parameters()) and all(b.is_cuda for b in m.buffers())
    assert list(m.parameters())[0] is params[0]           # the same Parameter objects, moved
    m.cpu()
    for k, v in m.state_dict().items():
        assert not v.is_cuda
        np.testing.assert_array_equal(v.numpy(), before[k])


def test_save_and_load_of_cuda_tensors_follow_torch_load(fake_cuda):
    """tt.save stores a cuda tensor from a host copy (it raised AttributeError on the device array);
    tt.load puts it back on its device unless map_location sends it elsewhere, and map_location="cuda"
    moves CPU-saved tensors to the device (they stayed on the CPU)."""
    import io
    model = nn.Linear(3, 2).cuda()
    half = tt.tensor([[1.5, -2.0], [3.0, 0.25]], dtype=tt.bfloat16, device="cuda")
    buf = io.BytesIO()
    tt.save({"model": model.state_dict(), "half": half.t(), "host": tt.arange(3)}, buf)

    def load(map_location):
        buf.seek(0)
        return tt.load(buf, map_location=map_location)

    out = load(None)
    assert out["model"]["weight"].is_cuda and out["half"].is_cuda and not out["host"].is_cuda
    np.testing.assert_array_equal(out["model"]["weight"].cpu().numpy(), model.weight.detach().cpu().numpy())
    assert out["half"].dtype is tt.bfloat16
    np.testing.assert_array_equal(out["half"].cpu().float().numpy(), [[1.5, 3.0], [-2.0, 0.25]])
    for cpu_map in ("cpu", {"cuda:0": "cpu"}, lambda t, location: t):
        assert not load(cpu_map)["model"]["bias"].is_cuda
    assert load(lambda t, location: None)["model"]["bias"].is_cuda        # None keeps the saved location
    assert load("cuda")["host"].is_cuda and load("cuda")["host"].tolist() == [0, 1, 2]
    restored = nn.Linear(3, 2).cuda()
    restored.load_state_dict(out["model"])
    np.testing.assert_array_equal(restored.bias.detach().cpu().numpy(), model.bias.detach().cpu().numpy())


def test_image_transforms_keep_a_cuda_tensor_on_its_device(fake_cuda):
    """As torchvision's do: Normalize made its mean/std on the CPU (mixing devices raised) and the
    numpy geometry (crop, pad, affine) raised on a cuda tensor's numpy()."""
    T = tt.data.transforms
    image = tt.rand(3, 5, 5, generator=tt.Generator().manual_seed(0))
    for transform in (T.Normalize([0.5, 0.1, 0.2], [0.2, 0.3, 0.4]), T.RandomCrop(4, padding=2, padding_mode="reflect"),
                      T.Compose([T.RandomCrop(3), T.Normalize([0.1] * 3, [2.0] * 3)]), T.RandomAffine(30, (0.1, 0.1)),
                      T.CenterCrop(2), T.Pad(1)):
        tt.manual_seed(1)
        want = transform(image)
        tt.manual_seed(1)
        got = transform(image.cuda())
        assert got.is_cuda and got.dtype is want.dtype, transform
        np.testing.assert_array_equal(got.cpu().numpy(), want.numpy())


def test_as_tensor_puts_tensors_and_arrays_on_the_device_asked_for(fake_cuda):
    """torch.as_tensor(data, device=...): memory is shared only where data is already there."""
    a = np.arange(3, dtype=np.float32)
    on_cpu = tt.as_tensor(a, device="cpu")
    on_cpu[0] = 7.0
    assert a[0] == 7.0                                   # shared: already on the cpu
    for data in (a, tt.from_numpy(a), [7.0, 1.0, 2.0]):
        t = tt.as_tensor(data, device="cuda")
        assert t.device.type == "cuda" and t.cpu().tolist() == [7.0, 1.0, 2.0]
    c = tt.as_tensor(a, device="cuda")
    assert tt.as_tensor(c, device="cuda") is c and tt.as_tensor(c, dtype=tt.float64, device="cpu").dtype is tt.float64
