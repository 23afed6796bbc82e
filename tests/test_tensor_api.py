"""The Tensor attributes and methods of API.md's "Tensors" section."""
import copy
import operator
import pickle

import numpy as np
import pytest

import tracetorch as tt

X = np.array([[1.5, -2.0, 3.25], [4.0, 0.5, -6.0]])


def make(requires_grad=False):
    return tt.tensor(X, dtype=tt.float32, requires_grad=requires_grad)


class TestAttributes:
    def test_shape_size_dim_numel(self):
        x = make()
        assert x.shape == (2, 3) and isinstance(x.shape, tuple) and x.shape[1] == 3
        assert x.size() == (2, 3) and x.size(0) == 2 and x.size(-1) == 3
        assert x.size()[1:] == (3,) and isinstance(x.size()[1:], tt.Size)
        assert x.shape.numel() == 6 and repr(x.shape).endswith("Size([2, 3])")
        assert x.dim() == 2 and x.ndim == 2 and tt.tensor(1.0).dim() == 0
        assert x.numel() == 6 and x.nelement() == 6 and tt.numel(x) == 6 and tt.zeros(0, 3).numel() == 0
        assert len(x) == 2 and [r.tolist() for r in x] == X.tolist()

    def test_dtype_device_and_flags(self):
        x = make()
        assert x.dtype is tt.float32 and x.dtype is tt.float
        assert x.is_floating_point() and not tt.tensor([1]).is_floating_point()
        assert x.device == tt.device("cpu") and str(x.device) == "cpu" and x.device.type == "cpu"
        assert not x.is_cuda
        assert x.grad is None and not x.requires_grad and x.is_leaf
        assert x.is_contiguous() and not x.t().is_contiguous()
        assert x.stride() == (3, 1) and x.t().stride() == (1, 3) and x.element_size() == 4

    def test_dtype_aliases(self):
        assert tt.float is tt.float32 and tt.double is tt.float64 and tt.half is tt.float16
        assert tt.long is tt.int64 and tt.int is tt.int32 and tt.bool is not bool
        assert tt.tensor([True]).dtype is tt.bool
        assert tt.bfloat16.is_floating_point and not tt.int64.is_floating_point

    def test_T_and_mT(self):
        x = tt.arange(24.0).reshape(2, 3, 4)
        a = np.arange(24.0).reshape(2, 3, 4)
        np.testing.assert_array_equal(x.T.numpy(), a.transpose(2, 1, 0))
        np.testing.assert_array_equal(x.mT.numpy(), a.transpose(0, 2, 1))
        np.testing.assert_array_equal(make().T.numpy(), X.T)
        assert tt.ones(3).T.shape == (3,)
        with pytest.raises(RuntimeError, match="tensor.mT is only supported on matrices or batches of matrices"):
            tt.ones(3).mT


class TestAutogradMembers:
    def test_requires_grad_backward_grad(self):
        x = make().requires_grad_()
        assert x.requires_grad and x.is_leaf
        y = (x * x).sum()
        assert not y.is_leaf and y.requires_grad
        y.backward()
        np.testing.assert_allclose(x.grad.numpy(), 2 * X)
        z = make(requires_grad=True)
        (z * 3).backward(gradient=tt.ones(2, 3))
        assert z.grad.tolist() == [[3.0] * 3] * 2

    def test_retain_grad_detach_detach_(self):
        x = make(requires_grad=True)
        y = x * 2
        y.retain_grad()
        y.sum().backward()
        assert y.grad.tolist() == [[1.0] * 3] * 2
        d = y.detach()
        assert not d.requires_grad and np.shares_memory(d.numpy(), y.detach().numpy())
        y2 = x * 2
        assert y2.detach_() is y2 and y2.is_leaf and not y2.requires_grad


class TestConversion:
    def test_numpy_item_tolist(self):
        x = make()
        n = x.numpy()
        assert isinstance(n, np.ndarray) and n.dtype == np.float32 and np.shares_memory(n, x.numpy())
        np.testing.assert_array_equal(n, X.astype(np.float32))
        with pytest.raises(RuntimeError, match=r"Can't call numpy\(\) on Tensor that requires grad"):
            make(requires_grad=True).numpy()
        assert make(requires_grad=True).detach().numpy().shape == (2, 3)
        v = tt.tensor(3.5).item()
        assert v == 3.5 and type(v) is float
        assert type(tt.tensor([7]).item()) is int and tt.tensor(True).item() is True
        assert x.tolist() == X.tolist() and tt.tensor(2).tolist() == 2
        assert tt.tensor([[1, 2], [3, 4]]).tolist() == [[1, 2], [3, 4]]
        assert float(tt.tensor([2.5])) == 2.5 and int(tt.tensor(7.9)) == 7
        assert f"{tt.tensor(2.5):.2f}" == "2.50"

    def test_dtype_conversions(self):
        x = tt.tensor([-2.7, 0.0, 2.5])
        cases = [("float", tt.float32, np.float32), ("double", tt.float64, np.float64),
                 ("long", tt.int64, np.int64), ("int", tt.int32, np.int32), ("bool", tt.bool, np.bool_),
                 ("half", tt.float16, np.float16)]
        for method, dtype, np_type in cases:
            y = getattr(x, method)()
            assert y.dtype is dtype
            np.testing.assert_array_equal(y.numpy(), np.array([-2.7, 0.0, 2.5], np.float32).astype(np_type))
        assert tt.tensor(-2.5).long().item() == -2      # truncation toward zero
        assert x.float() is x                             # no-op conversions return self, as in PyTorch

    def test_type_as_and_to(self):
        x = tt.tensor([1, 2])
        assert x.type_as(tt.ones(1, dtype=tt.float64)).dtype is tt.float64
        assert x.to(tt.float16).dtype is tt.float16 and x.to(dtype=tt.float32).tolist() == [1.0, 2.0]
        assert x.to(tt.ones(1, dtype=tt.int32)).dtype is tt.int32
        assert x.to("cpu") is x and x.to(tt.device("cpu")) is x and x.cpu() is x
        assert x.to("cpu", tt.float64).dtype is tt.float64
        assert x.to(device="cpu", dtype=tt.int32).dtype is tt.int32
        c = x.to(tt.int64, copy=True)
        assert c is not x and not np.shares_memory(c.numpy(), x.numpy())

    def test_to_keeps_autograd(self):
        x = tt.tensor([1.0, 2.0], dtype=tt.float64, requires_grad=True)
        y = x.to(tt.float32)
        assert y.requires_grad and y.dtype is tt.float32
        (y * y).sum().backward()
        assert x.grad.dtype is tt.float64 and x.grad.tolist() == [2.0, 4.0]

    def test_clone_and_contiguous(self):
        x = make(requires_grad=True)
        c = x.clone()
        assert not c.is_leaf and not np.shares_memory(c.detach().numpy(), x.detach().numpy())
        c.sum().backward()
        assert x.grad.tolist() == [[1.0] * 3] * 2
        t = make().t()
        assert t.contiguous().is_contiguous() and t.contiguous().tolist() == X.T.tolist()

    def test_copy_and_pickle(self):
        x = make(requires_grad=True)
        d = copy.deepcopy(x)
        assert d.requires_grad and d.tolist() == x.tolist() and not np.shares_memory(d.detach().numpy(), X)
        p = pickle.loads(pickle.dumps(make()))
        assert p.dtype is tt.float32 and p.tolist() == make().tolist()


class TestDevices:
    def test_device_objects(self):
        d = tt.device("cuda:1")
        assert d.type == "cuda" and d.index == 1 and str(d) == "cuda:1"
        assert tt.device("cpu") == "cpu" and tt.device("cpu") == tt.device("cpu")
        assert tt.device("cuda", 0).index == 0
        with pytest.raises(RuntimeError, match="Expected one of cpu, cuda device type"):
            tt.device("tpu")

    def test_cuda_unavailable_is_a_clear_error(self):
        if tt.cuda.is_available():
            pytest.skip("a CUDA device is present")
        assert tt.cuda.is_available() is False and tt.cuda.device_count() == 0
        for call in (lambda: tt.ones(2).cuda(), lambda: tt.ones(2).to("cuda"), lambda: tt.ones(2, device="cuda")):
            with pytest.raises(RuntimeError, match="CUDA"):
                call()


BINARY = [("+", operator.add), ("-", operator.sub), ("*", operator.mul), ("/", operator.truediv),
          ("//", operator.floordiv), ("%", operator.mod), ("**", operator.pow)]


class TestOperators:
    @pytest.mark.parametrize("sym,op", BINARY, ids=[b[0] for b in BINARY])
    def test_arithmetic_tensor_scalar_reflected_inplace(self, sym, op):
        a = np.array([[1.5, 2.0, 3.25], [4.0, 0.5, 6.0]])
        b = np.array([0.5, 2.0, 1.5])
        x, y = tt.tensor(a, dtype=tt.float64), tt.tensor(b, dtype=tt.float64)
        np.testing.assert_allclose(op(x, y).numpy(), op(a, b))
        np.testing.assert_allclose(op(x, 1.5).numpy(), op(a, 1.5))
        np.testing.assert_allclose(op(1.5, x).numpy(), op(1.5, a))
        z = x.clone()
        exec(f"z {sym}= y", {"z": z, "y": y})
        np.testing.assert_allclose(z.numpy(), op(a, b))

    def test_methods_and_their_inplace_versions(self):
        a = np.array([1.5, 2.0, 3.0])
        for name, op in [("add", np.add), ("sub", np.subtract), ("mul", np.multiply), ("div", np.divide),
                         ("pow", np.power)]:
            x = tt.tensor(a, dtype=tt.float64)
            np.testing.assert_allclose(getattr(x, name)(2.0).numpy(), op(a, 2.0))
            assert getattr(x, name + "_")(tt.tensor(2.0, dtype=tt.float64)) is x
            np.testing.assert_allclose(x.numpy(), op(a, 2.0))
        x = tt.tensor(a)
        assert x.add(1, alpha=2).tolist() == [3.5, 4.0, 5.0] and x.sub_(1, alpha=0.5).tolist() == [1.0, 1.5, 2.5]
        m = tt.tensor(np.eye(2) * 2)
        assert m.matmul(tt.tensor([[1.0], [2.0]], dtype=tt.float64)).tolist() == [[2.0], [4.0]]

    def test_fill_zero_copy_clamp_(self):
        x = tt.tensor([1.0, -5.0, 3.0])
        assert x.clamp_(-1, 2) is x and x.tolist() == [1.0, -1.0, 2.0]
        assert x.fill_(7).tolist() == [7.0] * 3 and x.zero_().tolist() == [0.0] * 3
        x.copy_(tt.tensor([1, 2, 3]))
        assert x.dtype is tt.float32 and x.tolist() == [1.0, 2.0, 3.0]
        x.copy_(tt.tensor(9.0))
        assert x.tolist() == [9.0] * 3

    def test_clamp_of_an_int_tensor_with_float_bounds(self):
        """Out of place the result is float; in place PyTorch refuses the lossy cast (it truncated silently)."""
        i = tt.tensor([7, -7, 0])
        r = i.clamp(0.5, 2.5)
        assert r.dtype is tt.float32 and r.tolist() == [2.5, 0.5, 0.5]
        with pytest.raises(RuntimeError, match="result type float32 can't be cast to the desired output type int64"):
            i.clamp_(0.5, 2.5)
        assert i.tolist() == [7, -7, 0]
        assert i.clamp_(-1, 2).tolist() == [2, -1, 0]

    def test_uniform_normal_(self):
        tt.manual_seed(0)
        x = tt.empty(20000).uniform_(-2, 3)
        assert x.min().item() >= -2 and x.max().item() < 3 and abs(x.mean().item() - 0.5) < 0.05
        y = tt.empty(20000, dtype=tt.float64).normal_(5.0, 2.0)
        assert y.dtype is tt.float64
        assert abs(y.mean().item() - 5.0) < 0.06 and abs(y.std().item() - 2.0) < 0.05

    def test_sign_of_bool_is_bool(self):
        """As PyTorch: a bool tensor is its own sign (it raised the primitive's TypeError)."""
        s = tt.tensor([True, False]).sign()
        assert s.dtype is tt.bool and s.tolist() == [True, False]
        assert tt.tensor([-3, 0, 2]).sign().tolist() == [-1, 0, 1]

    def test_unary_comparison_logical(self):
        a = np.array([1.5, -2.0, 3.0])
        x = tt.tensor(a)
        np.testing.assert_array_equal((-x).numpy(), -a.astype(np.float32))
        np.testing.assert_array_equal(abs(x).numpy(), np.abs(a).astype(np.float32))
        assert (+x) is x
        for op in (operator.lt, operator.le, operator.gt, operator.ge, operator.eq, operator.ne):
            np.testing.assert_array_equal(op(x, 1.5).numpy(), op(a, 1.5))
            np.testing.assert_array_equal(op(1.5, x).numpy(), op(1.5, a))
        m, n = x > 0, x < 2
        assert (m & n).tolist() == [True, False, False] and (m | n).tolist() == [True, True, True]
        assert (~m).tolist() == [False, True, False] and (m ^ n).tolist() == [False, True, True]
        i = tt.tensor([6, 3])
        i &= 5
        i |= 8
        assert i.tolist() == [12, 9]

    def test_matmul_operator(self):
        a = np.arange(6.0).reshape(2, 3)
        b = np.arange(12.0).reshape(3, 4)
        np.testing.assert_allclose((tt.tensor(a) @ tt.tensor(b)).numpy(), a @ b)
        np.testing.assert_allclose((tt.tensor(a) @ tt.tensor(b[:, 0])).numpy(), a @ b[:, 0])


class TestRepr:
    def test_values(self):
        assert repr(tt.tensor([1.0, 2.0])) == "tensor([1., 2.])"
        assert repr(tt.tensor([1, 2])) == "tensor([1, 2])"
        assert repr(tt.tensor([1.5, 2.25])) == "tensor([1.5000, 2.2500])"
        assert repr(tt.tensor(3.0)) == "tensor(3.)" and repr(tt.tensor(2.5)) == "tensor(2.5000)"
        assert repr(tt.tensor([[1.0, 2.0], [3.0, 4.0]])) == "tensor([[1., 2.],\n        [3., 4.]])"
        assert repr(tt.tensor([1e-5, 1.0])) == "tensor([1.0000e-05, 1.0000e+00])"
        assert repr(tt.tensor([])) == "tensor([])"
        assert str(tt.tensor([1.0])) == repr(tt.tensor([1.0]))

    def test_extras(self):
        r = repr(tt.tensor([1.0, 2.0], dtype=tt.float64))
        assert r.startswith("tensor([1., 2.], dtype=") and r.endswith("float64)")
        assert "dtype=" in repr(tt.tensor([1, 2], dtype=tt.int32)) and "dtype" not in repr(tt.tensor([1, 2]))
        assert repr(tt.tensor([1.5], requires_grad=True)) == "tensor([1.5000], requires_grad=True)"
        r = repr(tt.tensor([1.5], requires_grad=True) * 2)
        assert r.startswith("tensor([3.], grad_fn=<MulBackward") and r.endswith(">)")
        assert "size=(0, 3)" in repr(tt.zeros(0, 3))


def test_equality_with_a_non_number_is_false_as_in_pytorch():
    """== / != with a string, None, a list or another object: Python's fallback (False / True), not a TypeError;
    ordering comparisons still raise."""
    t = tt.tensor([1, 2])
    for other in ("a", None, object(), [1, 2], (1, 2)):
        assert (t == other) is False and (t != other) is True
    assert t in [t] and (t == np.int64(1)).tolist() == [True, False]
    with pytest.raises(TypeError):
        t < "a"
