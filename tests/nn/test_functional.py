"""scaled_dot_product_attention (the other functional ops are tested with their layers)."""
import numpy as np
import pytest

import tracetorch as tt
import tracetorch.nn.functional as F

from gradcheck import gradcheck


def np_attention(q, k, v, mask=None, scale=None):
    scale = 1 / np.sqrt(q.shape[-1]) if scale is None else scale
    scores = q @ np.swapaxes(k, -1, -2) * scale
    if mask is not None:
        scores = np.where(mask, scores, -np.inf) if mask.dtype == bool else scores + mask
    e = np.exp(scores - scores.max(-1, keepdims=True))
    return (e / e.sum(-1, keepdims=True)) @ v


@pytest.fixture
def qkv():
    rng = np.random.default_rng(0)
    return rng.standard_normal((2, 3, 5, 4)), rng.standard_normal((2, 3, 6, 4)), rng.standard_normal((2, 3, 6, 4))


def test_attention_without_mask(qkv):
    q, k, v = qkv
    got = F.scaled_dot_product_attention(*map(tt.tensor, qkv))
    np.testing.assert_allclose(got.numpy(), np_attention(q, k, v), rtol=1e-12)
    got = F.scaled_dot_product_attention(*map(tt.tensor, qkv), scale=0.7)
    np.testing.assert_allclose(got.numpy(), np_attention(q, k, v, scale=0.7), rtol=1e-12)


def test_attention_causal(qkv):
    q, k, v = qkv
    causal = np.tril(np.ones((5, 6), dtype=bool))
    got = F.scaled_dot_product_attention(*map(tt.tensor, qkv), is_causal=True)
    np.testing.assert_allclose(got.numpy(), np_attention(q, k, v, causal), rtol=1e-12)
    np.testing.assert_allclose(got.numpy()[:, :, 0], v[:, :, 0], rtol=1e-12)    # the first query sees key 0 only


def test_attention_masks(qkv):
    q, k, v = qkv
    rng = np.random.default_rng(1)
    mask = rng.random((5, 6)) > 0.4
    mask[:, 0] = True
    got = F.scaled_dot_product_attention(*map(tt.tensor, qkv), attn_mask=tt.tensor(mask))
    np.testing.assert_allclose(got.numpy(), np_attention(q, k, v, mask), rtol=1e-12)
    bias = rng.standard_normal((1, 3, 5, 6))
    got = F.scaled_dot_product_attention(*map(tt.tensor, qkv), attn_mask=tt.tensor(bias))
    np.testing.assert_allclose(got.numpy(), np_attention(q, k, v, bias), rtol=1e-12)
    with pytest.raises(RuntimeError, match="Explicit attn_mask should not be set when is_causal=True"):
        F.scaled_dot_product_attention(*map(tt.tensor, qkv), attn_mask=tt.tensor(mask), is_causal=True)


@pytest.mark.parametrize("float_mask", [False, True])
def test_attention_a_query_with_every_key_masked_gives_zeros(qkv, float_mask):
    """PyTorch's safe softmax: a fully masked row's output and gradients are 0 (not NaN), eagerly and
    compiled; the other rows are plain attention."""
    q, k, v = qkv
    mask = np.ones((5, 6), bool)
    mask[1] = False
    mask[3, 2:] = False
    attn_mask = tt.tensor(np.where(mask, 0.0, -np.inf) if float_mask else mask)

    def attend(q, k, v):
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        (out * out).sum().backward()
        return out

    with np.errstate(invalid="ignore"):         # the reference's masked row is NaN
        expected = np_attention(q, k, v, mask)
    expected[:, :, 1] = 0.0
    for fn in (attend, tt.compile(attend, backend="llvm"), tt.compile(attend, backend="interp")):
        for _ in range(3):
            ts = [tt.tensor(a, requires_grad=True) for a in qkv]
            out = fn(*ts)
            np.testing.assert_allclose(out.detach().numpy(), expected, rtol=1e-10, atol=1e-12)
            assert all(np.isfinite(t.grad.numpy()).all() for t in ts)
            np.testing.assert_array_equal(ts[0].grad.numpy()[:, :, 1], 0.0)


def test_attention_float32_and_gradients():
    rng = np.random.default_rng(2)
    q, k, v = (rng.standard_normal((1, 2, 3, 4)) for _ in range(3))
    out = F.scaled_dot_product_attention(*(tt.tensor(a, dtype=tt.float32) for a in (q, k, v)), is_causal=True)
    assert out.dtype is tt.float32
    np.testing.assert_allclose(out.numpy(), np_attention(q, k, v, np.tril(np.ones((3, 3), bool))), rtol=1e-5,
                               atol=1e-6)
    gradcheck(lambda a, b, c: F.scaled_dot_product_attention(a, b, c, is_causal=True), [q, k, v])


def test_attention_dropout_uses_the_generator(qkv):
    tensors = [tt.tensor(a) for a in qkv]
    tt.manual_seed(7)
    a = F.scaled_dot_product_attention(*tensors, dropout_p=0.5)
    tt.manual_seed(7)
    b = F.scaled_dot_product_attention(*tensors, dropout_p=0.5)
    np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert not np.allclose(a.numpy(), np_attention(*qkv))


def test_softmax_of_an_empty_tensor_is_empty_eager_and_compiled():
    """PyTorch: softmax / log_softmax over an empty dim give an empty result (amax has nothing to reduce),
    and attention with no keys is zeros."""
    x = tt.zeros(2, 0, requires_grad=True)
    for fn in (F.softmax, F.log_softmax):
        out = fn(x, -1)
        assert out.shape == (2, 0)
        out.sum().backward()
        assert x.grad.shape == (2, 0)
    att = F.scaled_dot_product_attention(tt.randn(1, 2, 4), tt.zeros(1, 0, 4), tt.zeros(1, 0, 4))
    np.testing.assert_array_equal(att.numpy(), np.zeros((1, 2, 4), np.float32))
    f = tt.compile(lambda x: F.log_softmax(x, -1) * 2, backend="llvm")
    for _ in range(2):
        assert f(tt.zeros(3, 0)).shape == (3, 0)
