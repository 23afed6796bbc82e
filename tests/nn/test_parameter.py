import copy
import pickle

import numpy as np

import tracetorch as tt
from tracetorch import nn


def test_parameter_wraps_storage_and_requires_grad():
    data = tt.tensor([1.0, 2.0, 3.0])
    p = nn.Parameter(data)
    assert isinstance(p, tt.Tensor) and isinstance(p, nn.Parameter)
    assert p.requires_grad and p.is_leaf and p.grad_fn is None
    with tt.no_grad():
        data.mul_(2)
    np.testing.assert_array_equal(p.detach().numpy(), [2.0, 4.0, 6.0])
    assert not nn.Parameter(data, requires_grad=False).requires_grad


def test_parameter_repr_and_results_are_plain_tensors():
    p = nn.Parameter(tt.tensor([1.5]))
    assert repr(p).startswith("Parameter containing:\ntensor([1.5000]")
    assert str(p) == repr(p)
    out = p * 2
    assert type(out) is tt.Tensor and out.grad_fn is not None
    assert type(p.detach()) is tt.Tensor


def test_parameter_default_is_empty():
    p = nn.Parameter()
    assert p.shape == (0,) and p.dtype is tt.float32


def test_parameter_gradient_accumulates():
    p = nn.Parameter(tt.tensor([1.0, -2.0]))
    (p * p).sum().backward()
    np.testing.assert_allclose(p.grad.numpy(), [2.0, -4.0])


def test_parameter_pickle_and_deepcopy_keep_the_class():
    p = nn.Parameter(tt.tensor([[1.0, 2.0]], dtype=tt.float64))
    for q in (pickle.loads(pickle.dumps(p)), copy.deepcopy(p)):
        assert type(q) is nn.Parameter and q.requires_grad and q.dtype is tt.float64
        np.testing.assert_array_equal(q.detach().numpy(), [[1.0, 2.0]])
        assert not np.shares_memory(q.detach().numpy(), p.detach().numpy())
