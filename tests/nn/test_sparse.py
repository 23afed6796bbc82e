import numpy as np
import pytest

import tracetorch as tt
import tracetorch.nn.functional as F
from tracetorch import nn


def test_embedding_looks_up_rows():
    emb = nn.Embedding(6, 3)
    idx = np.array([[0, 5, 2], [2, 2, 1]])
    out = emb(tt.tensor(idx))
    assert out.shape == (2, 3, 3)
    np.testing.assert_array_equal(out.detach().numpy(), emb.weight.detach().numpy()[idx])
    assert emb(tt.tensor(4)).shape == (3,)
    assert emb(tt.tensor(idx, dtype=tt.int32)).shape == (2, 3, 3)


def test_embedding_gradient_accumulates_repeats():
    emb = nn.Embedding(4, 2, dtype=tt.float64)
    idx = tt.tensor([1, 3, 1, 1])
    g = np.arange(8.0).reshape(4, 2)
    emb(idx).backward(tt.tensor(g))
    want = np.zeros((4, 2))
    np.add.at(want, [1, 3, 1, 1], g)
    np.testing.assert_array_equal(emb.weight.grad.numpy(), want)


def test_padding_idx_row_starts_at_zero_and_gets_no_gradient():
    emb = nn.Embedding(5, 3, padding_idx=-1)
    assert emb.padding_idx == 4
    assert not emb.weight.detach().numpy()[4].any()
    assert emb.weight.detach().numpy()[:4].std() > 0.3
    with tt.no_grad():
        emb.weight[4] = tt.ones(3)          # a user-set padding row is still returned as is
    idx = tt.tensor([[4, 1], [1, 4]])
    out = emb(idx)
    np.testing.assert_array_equal(out.detach().numpy()[0, 0], [1.0, 1.0, 1.0])
    out.sum().backward()
    grad = emb.weight.grad.numpy()
    np.testing.assert_array_equal(grad[4], [0.0, 0.0, 0.0])
    np.testing.assert_array_equal(grad[1], [2.0, 2.0, 2.0])
    assert repr(emb) == "Embedding(5, 3, padding_idx=4)"


def test_from_pretrained_and_errors():
    weights = tt.tensor([[1.0, 2.0], [3.0, 4.0]])
    emb = nn.Embedding.from_pretrained(weights)
    assert not emb.weight.requires_grad
    np.testing.assert_array_equal(emb(tt.tensor([1])).numpy(), [[3.0, 4.0]])
    assert nn.Embedding.from_pretrained(weights, freeze=False).weight.requires_grad
    with pytest.raises(RuntimeError, match="indices"):
        emb(tt.tensor([0.0]))
    with pytest.raises(IndexError):
        emb(tt.tensor([2]))
    with pytest.raises(ValueError, match="Padding_idx"):
        nn.Embedding(3, 2, padding_idx=3)


@pytest.mark.parametrize("bad", [[1, -1], [1, -5], [1, -6], [1, 5]])
def test_negative_and_too_large_indices_raise_eager_and_compiled(bad):
    """As PyTorch: a negative index is out of range, not wrapped; compiled, a training step given one
    raises IndexError with nothing committed (no gradient, no optimizer update)."""
    emb = nn.Embedding(5, 2)
    with pytest.raises(IndexError, match="index out of range in self"):
        emb(tt.tensor(bad))
    with pytest.raises(IndexError, match="index out of range in self"):
        F.embedding(tt.tensor(bad, dtype=tt.int32), emb.weight, max_norm=1.0)
    opt = tt.optim.SGD(emb.parameters(), lr=0.1)

    def step(idx):
        opt.zero_grad()
        emb(idx).sum().backward()
        opt.step()
    f = tt.compile(step, backend="llvm")
    f(tt.tensor([1, 2]))
    f(tt.tensor([0, 3]))                                    # a cache hit
    assert f.stats()["cache_hits"] == 1
    before = emb.weight.detach().numpy().copy()
    with pytest.raises(IndexError):
        f(tt.tensor(bad))
    np.testing.assert_array_equal(emb.weight.detach().numpy(), before)


def test_max_norm_renormalizes_looked_up_rows_in_place():
    weight = tt.tensor([[3.0, 4.0], [0.3, 0.4], [6.0, 8.0]])
    out = F.embedding(tt.tensor([0, 1]), weight, max_norm=1.0)
    np.testing.assert_allclose(out.numpy(), [[0.6, 0.8], [0.3, 0.4]], rtol=1e-5)
    np.testing.assert_allclose(weight.numpy()[2], [6.0, 8.0])        # rows not looked up are untouched


def test_one_hot():
    idx = tt.tensor([[0, 2], [1, 0]])
    out = F.one_hot(idx)
    assert out.dtype is tt.int64 and out.shape == (2, 2, 3)
    np.testing.assert_array_equal(out.numpy(), np.eye(3, dtype=np.int64)[idx.numpy()])
    assert F.one_hot(idx, 5).shape == (2, 2, 5)
    with pytest.raises(IndexError):
        F.one_hot(idx, 2)
    with pytest.raises(RuntimeError, match="LongTensor"):
        F.one_hot(tt.tensor([0.0]))
