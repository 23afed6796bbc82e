"""Error types and messages: PyTorch's exception type and wording where users
match on it, and always the op plus the offending shapes/dtypes."""
import contextlib
import re

import pytest

import tracetorch as tt


@contextlib.contextmanager
def raises(kind, *fragments):
    """pytest.raises that also checks that every fragment appears in the message."""
    with pytest.raises(kind) as info:
        yield info
    for f in fragments:
        assert f in str(info.value), f"{f!r} not in {str(info.value)!r}"


class TestBroadcasting:
    @pytest.mark.parametrize("op,name", [(lambda a, b: a + b, "add"), (lambda a, b: a * b, "mul"),
                                         (lambda a, b: a - b, "sub"), (lambda a, b: a / b, "div"),
                                         (lambda a, b: a < b, "lt"), (tt.maximum, "maximum")])
    def test_elementwise_shape_mismatch(self, op, name):
        with raises(RuntimeError, name, "(2, 3)", "(3, 2)",
                    "The size of tensor a (3) must match the size of tensor b (2) at non-singleton dimension 1"):
            op(tt.ones(2, 3), tt.ones(3, 2))

    def test_mismatch_in_leading_dim_and_different_ranks(self):
        with raises(RuntimeError, "add", "(4, 2, 3)", "(5, 1, 3)", "The size of tensor a (4) must match the size of "
                                                                   "tensor b (5) at non-singleton dimension 0"):
            tt.ones(4, 2, 3) + tt.ones(5, 1, 3)
        with raises(RuntimeError, "The size of tensor a (3) must match the size of tensor b (5) at non-singleton "
                                  "dimension 2"):
            tt.ones(2, 3) + tt.ones(4, 1, 5)

    def test_where_and_inplace_mismatch(self):
        with raises(RuntimeError, "where", "The size of tensor"):
            tt.where(tt.ones(2) > 0, tt.ones(3), 0.0)
        with raises(RuntimeError, "output with shape [3] doesn't match the broadcast shape [2, 3]"):
            tt.ones(3).add_(tt.ones(2, 3))

    def test_expand(self):
        with raises(RuntimeError, "expand", "The expanded size of the tensor (3) must match the existing size (2)"):
            tt.ones(2).expand(3, 3)
        with raises(RuntimeError, "the number of sizes provided (1) must be greater or equal"):
            tt.ones(2, 3).expand(2)


class TestShapes:
    def test_matmul(self):
        with raises(RuntimeError, "mat1 and mat2 shapes cannot be multiplied (2x3 and 2x3)"):
            tt.ones(2, 3) @ tt.ones(2, 3)
        with raises(RuntimeError, "cannot be multiplied", "2x3", "4"):
            tt.ones(2, 3) @ tt.ones(4)
        with raises(RuntimeError, "both arguments to matmul need to be at least 1D"):
            tt.ones(2) @ tt.tensor(1.0)
        with raises(RuntimeError, "same dtype", "float32", "float64"):
            tt.ones(2, 2) @ tt.ones(2, 2, dtype=tt.float64)
        with raises(RuntimeError, "The size of tensor a (2) must match the size of tensor b (5) at non-singleton "
                    "dimension 0", "[2]", "[5]"):
            tt.ones(2, 3, 4) @ tt.ones(5, 4, 3)                   # batch dims: PyTorch's RuntimeError

    def test_subtracting_bools_raises_pytorchs_runtime_error(self):
        for f in (lambda: tt.tensor([True]) - tt.tensor([False]), lambda: tt.tensor([True]) - True,
                  lambda: True - tt.tensor([False]), lambda: tt.sub(tt.tensor([True]), tt.tensor([True]))):
            with raises(RuntimeError, "Subtraction, the `-` operator, with two bool tensors is not supported"):
                f()

    def test_subtracting_a_bool_from_a_number_raises_too(self):
        """PyTorch refuses one bool operand as well; promotion made float_t - True and int_t - mask numbers."""
        x, m = tt.tensor([1.5, 2.0]), tt.tensor([True, False])

        def isub():
            y = x.clone()
            y -= m
        for f in (lambda: x - True, lambda: 2.5 - m, lambda: m - 1, lambda: tt.tensor([3, 4]) - m,
                  lambda: tt.sub(x, m), lambda: x.clone().sub_(True), isub):
            with raises(RuntimeError, "Subtraction, the `-` operator, with a bool tensor is not supported"):
                f()
        assert (x - 1).tolist() == [0.5, 1.0] and (x - m.float()).tolist() == [0.5, 2.0]

    def test_cat_and_stack(self):
        with raises(RuntimeError, "cat", "Sizes of tensors must match except in dimension 0", "[2, 3]", "[2, 4]"):
            tt.cat([tt.ones(2, 3), tt.ones(2, 4)])
        with raises(RuntimeError, "stack expects each tensor to be equal size", "[2]", "[3]"):
            tt.stack([tt.ones(2), tt.ones(3)])
        with raises(RuntimeError, "expected a non-empty list of Tensors"):
            tt.cat([])

    def test_reshape_and_view(self):
        with raises(RuntimeError, "shape '[4, 2]' is invalid for input of size 6"):
            tt.ones(6).reshape(4, 2)
        with raises(RuntimeError, "shape '[4, -1]' is invalid for input of size 6"):
            tt.ones(6).view(4, -1)
        with raises(RuntimeError, "only one dimension can be inferred"):
            tt.ones(6).view(-1, -1)
        with raises(RuntimeError, "view size is not compatible with input tensor's size and stride"):
            tt.ones(2, 3).t().view(6)

    def test_split_narrow_select_permute(self):
        with raises(RuntimeError, "split_with_sizes expects split_sizes to sum exactly to 4"):
            tt.ones(4).split([1, 2])
        with raises(RuntimeError, "start (2) + length (2) exceeds dimension size (3)"):
            tt.ones(2, 3).narrow(1, 2, 2)
        with raises(IndexError, "select(): index 3 out of range for tensor of size [2, 3] at dimension 1"):
            tt.ones(2, 3).select(1, 3)
        with raises(RuntimeError, "permute", "duplicate dims"):
            tt.ones(2, 3).permute(0, 0)
        with raises(RuntimeError, "permute", "number of dims don't match"):
            tt.ones(2, 3).permute(0)

    @pytest.mark.parametrize("call,name", [
        (lambda x: x.sum(5), "sum"), (lambda x: x.mean(-3), "mean"), (lambda x: x.amax(2), "amax"),
        (lambda x: x.transpose(0, 2), "transpose"), (lambda x: x.size(2), "size"),
        (lambda x: x.unsqueeze(-4), "unsqueeze"), (lambda x: x.squeeze(2), "squeeze"), (lambda x: x.softmax(2), ""),
        (lambda x: x.argmax(2), "argmax"), (lambda x: x.cumsum(2), "cumsum"), (lambda x: tt.cat([x, x], dim=2), "cat"),
        (lambda x: x.flatten(2), "flatten"),
        (lambda x: x.var(2), "var"), (lambda x: x.max(dim=2), ""), (lambda x: x.select(2, 0), "select"),
    ])
    def test_dimension_out_of_range(self, call, name):
        with raises(IndexError, name, "Dimension out of range (expected to be in range of [-"):
            call(tt.ones(2, 3))

    @pytest.mark.parametrize("call", [lambda x: x.argmax(1), lambda x: x.argmin(-2, keepdim=True),
                                      lambda x: x.max(1), lambda x: x.min(dim=1)])
    def test_arg_reductions_over_an_empty_dim_raise_index_error(self, call):
        """PyTorch's IndexError (numpy's ValueError "attempt to get argmax of an empty sequence" leaked)."""
        with raises(IndexError, "Expected reduction dim 1 to have non-zero size"):
            call(tt.ones(2, 0, 3))
        assert tt.ones(0, 3).argmax(1).shape == (0,)                  # only the reduced dim must be non-empty

    @pytest.mark.parametrize("call,kind,name", [
        (lambda s: s.split(1), RuntimeError, "split"), (lambda s: s.chunk(1), RuntimeError, "chunk"),
        (lambda s: s.unflatten(0, (1,)), RuntimeError, "unflatten"), (lambda s: s.narrow(0, 0, 1), RuntimeError, "narrow"),
        (lambda s: s.select(0, 0), IndexError, "select"), (lambda s: s.unbind(0), IndexError, "unbind"),
    ])
    def test_ops_that_cut_along_a_dim_refuse_a_0d_tensor(self, call, kind, name):
        """PyTorch's error (an IndexError "tuple index out of range" leaked from the empty shape)."""
        with raises(kind, name, "expects at least a 1-dimensional tensor"):
            call(tt.tensor(2.0))

    @pytest.mark.parametrize("call", [lambda x: x.amax(), lambda x: x.amin(), lambda x: x.amax(dim=()),
                                      lambda x: x.max(), lambda x: x.min()])
    def test_max_min_over_all_of_an_empty_tensor_ask_for_a_dim(self, call):
        """PyTorch's RuntimeError for amax/amin as for max/min (amax raised an IndexError)."""
        with raises(RuntimeError, "Expected reduction dim to be specified for input.numel() == 0"):
            call(tt.ones(2, 0))
        with raises(IndexError, "empty dimension 1"):
            tt.ones(2, 0).amax(1)                                       # over a named empty dim: IndexError
        assert tt.ones(2, 0).amax(0).shape == (0,)

    def test_cat_refuses_0d_tensors(self):
        """Even one alone (it was returned as is; two gave "dim 0 out of range"), as PyTorch."""
        for ts, i in (([tt.tensor(2.0)], 0), ([tt.ones(2), tt.tensor(2.0)], 1)):
            with raises(RuntimeError, f"zero-dimensional tensor (at position {i}) cannot be concatenated"):
                tt.cat(ts)

    def test_flatten_checks_the_dims_of_a_0d_tensor(self):
        """A 0-d tensor has dims -1 and 0, as in PyTorch (flatten(1) used to return a 1-d tensor)."""
        assert tt.tensor(3.0).flatten(0, -1).shape == (1,)
        with raises(IndexError, "flatten", "Dimension out of range (expected to be in range of [-1, 0], but got 1)"):
            tt.tensor(3.0).flatten(1)

    def test_creation_shapes(self):
        with raises(RuntimeError, "Trying to create tensor with negative dimension -1"):
            tt.zeros(-1)
        with raises(RuntimeError, "arange", "step"):
            tt.arange(0, 5, -1)
        with pytest.raises(ValueError, match="ragged"):
            tt.tensor([[1, 2], [3]])


class TestDtypes:
    def test_bitwise_on_float(self):
        with raises(TypeError, "bitwise_not", "float32"):
            tt.ones(2).bitwise_not()
        with raises(TypeError, "bitwise_not", "float64"):
            ~tt.ones(2, dtype=tt.float64)
        with raises(TypeError, "bitwise_and", "float32"):
            tt.ones(2) & tt.ones(2)

    def test_requires_grad_on_integer(self):
        with raises(RuntimeError, "only Tensors of floating point dtype can require gradients", "int64"):
            tt.ones(2, dtype=tt.int64).requires_grad_()

    def test_negating_bool(self):
        with raises(RuntimeError, "Negation, the `-` operator, on a bool tensor is not supported"):
            -tt.tensor([True])

    def test_mean_of_integers(self):
        with raises(RuntimeError, "mean(): could not infer output dtype", "int64"):
            tt.tensor([1, 2]).mean()

    def test_integer_division_by_zero(self):
        with raises(RuntimeError, "floor_divide", "division by zero"):
            tt.tensor([1]) // 0

    def test_integer_to_a_negative_scalar_power(self):
        """PyTorch's RuntimeError (numpy's is a ValueError); a float exponent promotes instead."""
        for f in (lambda: tt.tensor([1, 2]) ** -3, lambda: tt.tensor([1, 2], dtype=tt.int32).pow_(-1),
                  lambda: tt.tensor([True]) ** -2):
            with raises(RuntimeError, "Integers to negative integer powers are not allowed."):
                f()
        assert (tt.tensor([2]) ** -1.0).tolist() == [0.5]
        assert (tt.tensor([2, 1, -1]) ** tt.tensor([-1, -2, -3])).tolist() == [0, 1, -1]

    def test_floor_division_remainder_and_power_of_bools(self):
        """Not defined on bools (PyTorch raises); numpy's int8 result leaked out, and compiled they failed to lower."""
        b = tt.tensor([True, False])
        for f in (lambda: b // b, lambda: b % True, lambda: True // b, lambda: b ** b, lambda: tt.remainder(b, b)):
            with raises(TypeError, "expected numeric tensors, got bool"):
                f()
        assert (b // 2).dtype is tt.int64 and (b ** 2).tolist() == [1, 0] and (2 ** b).tolist() == [2, 1]
        assert (b ** True).tolist() == [True, False] and (b ** False).tolist() == [True, True]   # PyTorch's, bool
        assert (b ** True).dtype is tt.bool and b.clone().pow_(False).dtype is tt.bool

    def test_a_scalar_written_into_a_dtype_that_cannot_hold_it(self):
        """where, clamp and masked_fill refuse it as PyTorch does (they wrapped: int32 clamp(max=2**40) was 0);
        binary arithmetic and comparisons wrap, as in PyTorch."""
        i, m = tt.tensor([1, 2], dtype=tt.int32), tt.tensor([True, False])
        for f in (lambda: i.clamp(max=2 ** 40), lambda: tt.where(m, i, 2 ** 40), lambda: i.masked_fill(m, -2 ** 40),
                  lambda: tt.tensor([1.0], dtype=tt.float16).masked_fill(tt.tensor([True]), 1e6)):
            with raises(RuntimeError, "without overflow"):
                f()
        assert i.clamp(max=2 ** 31 - 1).tolist() == [1, 2] and (i < 2 ** 40).tolist() == [False, False]
        h = tt.tensor([1.0, 2.0], dtype=tt.float16)
        assert h.masked_fill(m, float("-inf")).tolist() == [float("-inf"), 2.0] and h.clamp(max=6e4).tolist() == [1, 2]

    def test_random_needs_float_dtype(self):
        with raises(RuntimeError, "rand", "int64"):
            tt.rand(2, dtype=tt.int64)
        with raises(RuntimeError, "randn", "int64"):
            tt.randn_like(tt.tensor([1, 2]))


class TestScalars:
    def test_item_of_many(self):
        with raises(RuntimeError, "a Tensor with 6 elements cannot be converted to Scalar"):
            tt.ones(2, 3).item()
        with raises(RuntimeError, "a Tensor with 2 elements cannot be converted to Scalar"):
            float(tt.ones(2))
        with raises(RuntimeError, "a Tensor with 2 elements cannot be converted to Scalar"):
            int(tt.ones(2))

    def test_bool_of_many(self):
        with raises(RuntimeError, "Boolean value of Tensor with more than one value is ambiguous"):
            bool(tt.ones(2))
        with raises(RuntimeError, "ambiguous"):
            if tt.tensor([1, 2]) > 0:
                pass
        assert bool(tt.tensor([1])) and not bool(tt.tensor(0.0))

    def test_index_of_float(self):
        with pytest.raises(TypeError, match=re.escape("only integer tensors of a single element can be converted "
                                                      "to an index")):
            [1, 2][tt.tensor(1.0)]
        assert [1, 2][tt.tensor(1)] == 2

    def test_len_of_zero_dim(self):
        with raises(TypeError, "len() of a 0-d tensor"):
            len(tt.tensor(1.0))
