import numpy as np
import pytest

import tracetorch as tt
import tracetorch.nn.functional as F
from tracetorch import nn

from gradcheck import gradcheck


def np_conv2d(x, w, b=None, stride=(1, 1), pads=(0, 0, 0, 0), dilation=(1, 1), groups=1):
    """Direct loop; pads = (top, bottom, left, right)."""
    n, c, h, wd = x.shape
    out_c, c_per_group, kh, kw = w.shape
    (sh, sw), (dh, dw) = stride, dilation
    xp = np.pad(x, ((0, 0), (0, 0), pads[:2], pads[2:]))
    oh = (xp.shape[2] - dh * (kh - 1) - 1) // sh + 1
    ow = (xp.shape[3] - dw * (kw - 1) - 1) // sw + 1
    out = np.zeros((n, out_c, oh, ow))
    per_group = out_c // groups
    for o in range(out_c):
        g = o // per_group
        for i in range(oh):
            for j in range(ow):
                patch = xp[:, g * c_per_group:(g + 1) * c_per_group,
                           i * sh:i * sh + dh * (kh - 1) + 1:dh, j * sw:j * sw + dw * (kw - 1) + 1:dw]
                out[:, o, i, j] = (patch * w[o]).sum((1, 2, 3))
    return out + (b.reshape(1, -1, 1, 1) if b is not None else 0)


CASES = [
    dict(),
    dict(stride=2),
    dict(padding=1),
    dict(padding=(2, 1), dilation=2, stride=(2, 1)),
    dict(padding=(0, 1), stride=(1, 3), dilation=(1, 2)),
]


@pytest.mark.parametrize("kw", CASES)
def test_conv2d_matches_direct_loop(kw):
    rng = np.random.default_rng(0)
    x, w, b = rng.standard_normal((2, 3, 7, 8)), rng.standard_normal((4, 3, 3, 2)), rng.standard_normal(4)
    p = kw.get("padding", 0)
    ph, pw = (p, p) if isinstance(p, int) else p
    s = kw.get("stride", 1)
    d = kw.get("dilation", 1)
    want = np_conv2d(x, w, b, (s, s) if isinstance(s, int) else s, (ph, ph, pw, pw),
                     (d, d) if isinstance(d, int) else d)
    got = F.conv2d(tt.tensor(x), tt.tensor(w), tt.tensor(b), **kw).numpy()
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


def test_conv2d_groups_same_and_unbatched():
    rng = np.random.default_rng(1)
    x, w = rng.standard_normal((2, 6, 5, 6)), rng.standard_normal((9, 2, 3, 3))
    np.testing.assert_allclose(F.conv2d(tt.tensor(x), tt.tensor(w), groups=3, padding=1).numpy(),
                               np_conv2d(x, w, pads=(1, 1, 1, 1), groups=3), rtol=1e-10, atol=1e-12)
    w2 = rng.standard_normal((2, 6, 4, 3))        # even kernel: 'same' pads one more at the bottom
    np.testing.assert_allclose(F.conv2d(tt.tensor(x), tt.tensor(w2), padding="same").numpy(),
                               np_conv2d(x, w2, pads=(1, 2, 1, 1)), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(F.conv2d(tt.tensor(x[0]), tt.tensor(w2), padding="valid").numpy(),
                               np_conv2d(x[:1], w2)[0], rtol=1e-10, atol=1e-12)


def test_conv2d_float32_output_is_contiguous():
    out = F.conv2d(tt.randn(2, 3, 5, 5), tt.randn(4, 3, 3, 3), tt.randn(4))
    assert out.dtype is tt.float32 and out.is_contiguous()
    assert out.view(2, -1).shape == (2, 36)


def test_conv2d_gradients():
    rng = np.random.default_rng(2)
    gradcheck(lambda x, w, b: F.conv2d(x, w, b, stride=(2, 1), padding=1, dilation=(1, 2)),
              [rng.standard_normal((2, 2, 5, 5)), rng.standard_normal((3, 2, 2, 3)), rng.standard_normal(3)])
    gradcheck(lambda x, w: F.conv2d(x, w, groups=2), [rng.standard_normal((1, 4, 4, 4)),
                                                      rng.standard_normal((2, 2, 2, 2))])


def test_conv2d_errors():
    with pytest.raises(RuntimeError, match="expected input.*to have 4 channels"):
        F.conv2d(tt.zeros(1, 3, 5, 5), tt.zeros(2, 4, 3, 3))
    with pytest.raises(RuntimeError, match="Kernel size can't be greater"):
        F.conv2d(tt.zeros(1, 1, 2, 2), tt.zeros(1, 1, 3, 3))
    with pytest.raises(RuntimeError, match="strided"):        # functional: RuntimeError; the module: ValueError
        F.conv2d(tt.zeros(1, 1, 5, 5), tt.zeros(1, 1, 3, 3), stride=2, padding="same")
    with pytest.raises(ValueError, match="strided"):
        nn.Conv2d(1, 1, 3, stride=2, padding="same")
    with pytest.raises(RuntimeError, match="4D"):
        F.conv2d(tt.zeros(5, 5), tt.zeros(1, 1, 3, 3))
    with pytest.raises(ValueError, match="divisible by groups"):
        nn.Conv2d(3, 4, 3, groups=2)


@pytest.mark.parametrize("kwargs,match", [(dict(stride=0), "non-positive stride"),
                                          (dict(padding=-1), "negative padding"),
                                          (dict(padding=(1, -1)), "negative padding"),
                                          (dict(dilation=0), "dilation should be greater than zero"),
                                          (dict(groups=0), "non-positive groups"),
                                          (dict(stride=(1, 2, 3)), "pair of ints"),
                                          (dict(padding="full"), "Invalid padding string")])
def test_conv2d_rejects_bad_arguments(kwargs, match):
    """PyTorch raises RuntimeError for these; negative padding and zero dilation used to compute a
    silently wrong convolution, stride 0 a ZeroDivisionError."""
    with pytest.raises(RuntimeError, match=match):
        F.conv2d(tt.zeros(1, 1, 5, 5), tt.zeros(1, 1, 3, 3), **kwargs)


def test_conv2d_checks_weight_and_bias():
    x, w = tt.zeros(1, 2, 5, 5), tt.zeros(3, 2, 3, 3)
    with pytest.raises(RuntimeError, match="4-dimensional weight"):
        F.conv2d(x, tt.zeros(3, 2, 3))
    with pytest.raises(RuntimeError, match="expected bias to be 1-dimensional with 3 elements"):
        F.conv2d(x, w, tt.zeros(1, 3))
    with pytest.raises(RuntimeError, match="expected bias to be 1-dimensional with 3 elements"):
        F.conv2d(x, w, tt.zeros(2))
    with pytest.raises(RuntimeError, match="bias type"):       # no silent promotion to float64
        F.conv2d(x, w, tt.zeros(3, dtype=tt.float64))


def test_conv2d_module_forward_and_repr():
    conv = nn.Conv2d(2, 3, 3, stride=2, padding=1, bias=False, dtype=tt.float64)
    assert conv.weight.shape == (3, 2, 3, 3) and conv.bias is None
    x = np.random.default_rng(3).standard_normal((1, 2, 6, 6))
    np.testing.assert_allclose(conv(tt.tensor(x)).detach().numpy(),
                               np_conv2d(x, conv.weight.detach().numpy(), stride=(2, 2), pads=(1, 1, 1, 1)),
                               rtol=1e-10, atol=1e-12)
    assert repr(conv) == "Conv2d(2, 3, kernel_size=(3, 3), stride=(2, 2), padding=(1, 1), bias=False)"
    assert repr(nn.Conv2d(1, 2, (1, 3))) == "Conv2d(1, 2, kernel_size=(1, 3), stride=(1, 1))"
    assert repr(nn.Conv2d(1, 2, 3, padding="same", padding_mode="reflect")) == (
        "Conv2d(1, 2, kernel_size=(3, 3), stride=(1, 1), padding=same, padding_mode=reflect)")


@pytest.mark.parametrize("mode,np_mode", [("reflect", "reflect"), ("replicate", "edge"), ("circular", "wrap")])
def test_conv2d_padding_modes(mode, np_mode):
    conv = nn.Conv2d(1, 2, 3, padding=(1, 2), padding_mode=mode, dtype=tt.float64)
    x = np.random.default_rng(4).standard_normal((2, 1, 5, 6))
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (2, 2)), mode=np_mode)
    want = np_conv2d(xp, conv.weight.detach().numpy(), conv.bias.detach().numpy())
    np.testing.assert_allclose(conv(tt.tensor(x)).detach().numpy(), want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("mode,np_mode", [("constant", "constant"), ("reflect", "reflect"), ("replicate", "edge"),
                                          ("circular", "wrap")])
def test_pad_matches_numpy(mode, np_mode):
    x = np.random.default_rng(5).standard_normal((2, 3, 4, 5))
    got = F.pad(tt.tensor(x), (1, 3, 2, 0), mode=mode).numpy()
    np.testing.assert_array_equal(got, np.pad(x, ((0, 0), (0, 0), (2, 0), (1, 3)), mode=np_mode))
    gradcheck(lambda t: F.pad(t, (2, 1), mode=mode), [x[0, 0]])


def test_pad_constant_value_and_negative_crop():
    x = np.arange(12.0).reshape(3, 4)
    got = F.pad(tt.tensor(x), (-1, 2, 1, -2), value=7.0).numpy()
    want = np.pad(x[:1, 1:], ((1, 0), (0, 2)), constant_values=7.0)
    np.testing.assert_array_equal(got, want)
    assert F.pad(tt.tensor(x, dtype=tt.int64), (1, 1)).dtype is tt.int64
    with pytest.raises(RuntimeError, match="divisible by 2"):
        F.pad(tt.tensor(x), (1,))
    with pytest.raises(RuntimeError, match="Padding size should be less"):
        F.pad(tt.tensor(x), (4, 0), mode="reflect")
    with pytest.raises(RuntimeError, match="negative size"):
        F.pad(tt.tensor(x), (-3, -2))


@pytest.mark.parametrize("mode,amounts,want", [
    ("reflect", (-1, 3), [1, 2, 3, 2, 1, 0]), ("reflect", (3, -1), [3, 2, 1, 0, 1, 2]),
    ("replicate", (-1, 2), [1, 2, 3, 3, 3]), ("replicate", (2, -3), [0, 0, 0]),
    ("circular", (-1, 1), [1, 2, 3, 1]), ("circular", (2, -1), [1, 2, 0, 1, 2]),   # wraps the cropped input
    ("circular", (-2, 3), [2, 3, 2, 3, 2]), ("circular", (-2, -2), [])])
def test_pad_negative_amounts_crop_in_every_mode(mode, amounts, want):
    """PyTorch crops with negative amounts in the reflect/replicate/circular modes too (values from PyTorch)."""
    x = np.arange(8.0).reshape(2, 4)
    got = F.pad(tt.tensor(x), amounts, mode=mode).numpy()
    np.testing.assert_array_equal(got, np.array([want, np.array(want) + 4]).reshape(2, -1))
    if want:
        gradcheck(lambda t: F.pad(t, amounts, mode=mode), [x + 0.5])


@pytest.mark.parametrize("mode", ["constant", "reflect", "replicate", "circular"])
@pytest.mark.parametrize("amounts", [(0, 0, 0, 0), (-1, -1), (0, -1, -1, 0)])
def test_pad_by_zero_or_a_crop_returns_a_new_tensor(mode, amounts):
    """Like PyTorch, never the input itself nor a view of it: writing the result in place must leave
    the input alone."""
    x = tt.ones(2, 3)
    y = F.pad(x, amounts, mode=mode)
    y.add_(1.0)
    np.testing.assert_array_equal(x.numpy(), np.ones((2, 3)))


@pytest.mark.parametrize("mode,amounts", [("reflect", (-2, -2)), ("replicate", (-3, -3)), ("circular", (-3, -2)),
                                          ("circular", (-4, 2))])
def test_pad_rejects_amounts_that_leave_nothing(mode, amounts):
    with pytest.raises(RuntimeError):
        F.pad(tt.zeros(2, 4), amounts, mode=mode)
    with pytest.raises(RuntimeError, match="value argument"):
        F.pad(tt.zeros(2, 4), (1, 1), mode=mode, value=1.0)
    with pytest.raises(RuntimeError, match="non-empty"):          # replicate used to index -1: an IndexError
        F.pad(tt.zeros(2, 0), (1, 1), mode=mode)
