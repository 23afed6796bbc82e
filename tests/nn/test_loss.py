import warnings

import numpy as np
import pytest

import tracetorch as tt
import tracetorch.nn.functional as F
from tracetorch import nn

from gradcheck import gradcheck


def np_log_softmax(x, axis):
    m = x.max(axis, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis, keepdims=True))


def np_cross_entropy(logits, target, weight=None, ignore_index=-100, reduction="mean", smoothing=0.0):
    """PyTorch's definition, written out for (N, C) logits and class-index targets."""
    n, c = logits.shape
    logp = np_log_softmax(logits, 1)
    w = np.ones(c) if weight is None else weight
    valid = target != ignore_index
    safe = np.where(valid, target, 0)
    sample_w = np.where(valid, w[safe], 0.0)
    nll = -logp[np.arange(n), safe] * sample_w
    smooth = np.where(valid, -(logp * w).sum(1), 0.0)
    if reduction == "mean":
        nll, smooth = nll.sum() / sample_w.sum(), smooth.sum() / sample_w.sum()
    elif reduction == "sum":
        nll, smooth = nll.sum(), smooth.sum()
    return (1 - smoothing) * nll + smoothing / c * smooth


LOGITS = np.random.default_rng(0).standard_normal((6, 5)) * 2
TARGET = np.array([0, 4, 2, -100, 1, 4])
WEIGHT = np.array([0.5, 1.0, 2.0, 1.5, 0.8])


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("smoothing", [0.0, 0.25])
@pytest.mark.parametrize("weighted", [False, True])
def test_cross_entropy_class_targets(reduction, smoothing, weighted):
    weight = WEIGHT if weighted else None
    got = F.cross_entropy(tt.tensor(LOGITS), tt.tensor(TARGET), None if weight is None else tt.tensor(weight),
                          reduction=reduction, label_smoothing=smoothing)
    want = np_cross_entropy(LOGITS, TARGET, weight, -100, reduction, smoothing)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-12, atol=1e-15)


def test_cross_entropy_ignore_index_inside_the_class_range():
    target = np.array([0, 1, 0, 2, 3, 0])
    got = nn.CrossEntropyLoss(ignore_index=0, label_smoothing=0.1)(tt.tensor(LOGITS), tt.tensor(target))
    np.testing.assert_allclose(got.numpy(), np_cross_entropy(LOGITS, target, None, 0, "mean", 0.1), rtol=1e-12)


def test_cross_entropy_probability_targets():
    rng = np.random.default_rng(1)
    probs = rng.random((6, 5))
    probs /= probs.sum(1, keepdims=True)
    logp = np_log_softmax(LOGITS, 1)
    smoothed = probs * 0.8 + 0.2 / 5
    per_sample = -(logp * smoothed * WEIGHT).sum(1)
    for reduction, want in [("mean", per_sample.sum() / 6), ("sum", per_sample.sum()), ("none", per_sample)]:
        got = F.cross_entropy(tt.tensor(LOGITS), tt.tensor(probs), tt.tensor(WEIGHT), reduction=reduction,
                              label_smoothing=0.2)
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-12)
    # PyTorch rejects a class to ignore with probability targets (a negative one matches none: allowed)
    with pytest.raises(RuntimeError, match="ignore_index is not supported for floating point target"):
        F.cross_entropy(tt.tensor(LOGITS), tt.tensor(probs), ignore_index=0)
    np.testing.assert_allclose(F.cross_entropy(tt.tensor(LOGITS), tt.tensor(probs), ignore_index=-5).numpy(),
                               -(logp * probs).sum(1).mean(), rtol=1e-12)


def test_cross_entropy_spatial_and_unbatched():
    rng = np.random.default_rng(2)
    logits = rng.standard_normal((2, 4, 3, 3))
    target = rng.integers(0, 4, (2, 3, 3))
    flat_logits = logits.transpose(0, 2, 3, 1).reshape(-1, 4)
    got = F.cross_entropy(tt.tensor(logits), tt.tensor(target), tt.tensor(WEIGHT[:4]), reduction="none")
    want = np_cross_entropy(flat_logits, target.reshape(-1), WEIGHT[:4], reduction="none").reshape(2, 3, 3)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-12)
    got = F.cross_entropy(tt.tensor(LOGITS[0]), tt.tensor(3))
    np.testing.assert_allclose(got.numpy(), -np_log_softmax(LOGITS[0], 0)[3], rtol=1e-12)


def test_cross_entropy_gradients():
    gradcheck(lambda x: F.cross_entropy(x, tt.tensor(TARGET), tt.tensor(WEIGHT), label_smoothing=0.3),
              [LOGITS])
    probs = np.full((6, 5), 0.2)
    gradcheck(lambda x: F.cross_entropy(x, tt.tensor(probs)), [LOGITS])


def test_nll_loss_matches_picking_log_probs():
    logp = np_log_softmax(LOGITS, 1)
    for reduction in ("mean", "sum", "none"):
        got = nn.NLLLoss(tt.tensor(WEIGHT), reduction=reduction)(tt.tensor(logp), tt.tensor(TARGET))
        want = np_cross_entropy(LOGITS, TARGET, WEIGHT, reduction=reduction)
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-12)
    out = F.nll_loss(tt.tensor(logp), tt.tensor(np.full(6, -100)))
    assert np.isnan(out.item())                                   # nothing left to average: 0/0, like PyTorch


def test_class_target_errors():
    with pytest.raises(IndexError, match="out of bounds"):
        F.cross_entropy(tt.tensor(LOGITS), tt.tensor([0, 1, 2, 3, 4, 5]))
    with pytest.raises(ValueError, match="batch_size"):
        F.cross_entropy(tt.tensor(LOGITS), tt.tensor([0, 1]))
    with pytest.raises(ValueError, match="not a valid value for reduction"):
        F.cross_entropy(tt.tensor(LOGITS), tt.tensor(TARGET), reduction="avg")
    with pytest.raises(RuntimeError, match="weight tensor should be defined"):
        F.nll_loss(tt.tensor(LOGITS), tt.tensor(TARGET), tt.ones(3))
    with pytest.raises(RuntimeError, match="label_smoothing"):
        F.cross_entropy(tt.tensor(LOGITS), tt.tensor(TARGET), label_smoothing=1.5)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_mse_and_l1(reduction):
    rng = np.random.default_rng(3)
    a, b = rng.standard_normal((3, 4)), rng.standard_normal((3, 4))
    reduce = {"mean": np.mean, "sum": np.sum, "none": lambda v: v}[reduction]
    np.testing.assert_allclose(nn.MSELoss(reduction=reduction)(tt.tensor(a), tt.tensor(b)).numpy(),
                               reduce((a - b) ** 2), rtol=1e-12)
    np.testing.assert_allclose(nn.L1Loss(reduction=reduction)(tt.tensor(a), tt.tensor(b)).numpy(),
                               reduce(np.abs(a - b)), rtol=1e-12)
    gradcheck(lambda x, y: F.mse_loss(x, y, reduction=reduction), [a, b])


def test_mse_warns_on_broadcasting_and_legacy_flags():
    with pytest.warns(UserWarning, match="different to the input size"):
        F.mse_loss(tt.zeros(3, 1), tt.ones(3))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        F.mse_loss(tt.zeros(3), tt.ones(3))
    assert nn.MSELoss(size_average=False).reduction == "sum"
    assert nn.MSELoss(reduce=False).reduction == "none"
    np.testing.assert_allclose(F.l1_loss(tt.zeros(4), tt.ones(4), size_average=False).numpy(), 4.0)


def np_bce_logits(x, t, weight=1.0, pos_weight=1.0):
    log_sig = -np.logaddexp(0, -x)
    log_one_minus = -np.logaddexp(0, x)
    return -weight * (pos_weight * t * log_sig + (1 - t) * log_one_minus)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_bce_with_logits(reduction):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((4, 3)) * 3
    x[0] = [0.0, 200.0, -200.0]                                   # exact zero and saturated logits
    t, w, pw = rng.random((4, 3)), rng.random(3) + 0.5, np.array([1.0, 2.5, 0.3])
    reduce = {"mean": np.mean, "sum": np.sum, "none": lambda v: v}[reduction]
    loss = nn.BCEWithLogitsLoss(weight=tt.tensor(w), pos_weight=tt.tensor(pw), reduction=reduction)
    np.testing.assert_allclose(loss(tt.tensor(x), tt.tensor(t)).numpy(), reduce(np_bce_logits(x, t, w, pw)),
                               rtol=1e-12)
    np.testing.assert_allclose(F.binary_cross_entropy_with_logits(tt.tensor(x), tt.tensor(t),
                                                                   reduction=reduction).numpy(),
                               reduce(np_bce_logits(x, t)), rtol=1e-12)


def test_bce_with_logits_gradient_is_sigmoid_minus_target():
    x = np.array([0.0, 3.0, -40.0, 40.0])
    t = np.array([0.25, 1.0, 0.0, 0.5])
    xt = tt.tensor(x, requires_grad=True)
    F.binary_cross_entropy_with_logits(xt, tt.tensor(t), reduction="sum").backward()
    np.testing.assert_allclose(xt.grad.numpy(), 1 / (1 + np.exp(-x)) - t, rtol=1e-12, atol=1e-16)
    gradcheck(lambda a: F.binary_cross_entropy_with_logits(a, tt.tensor(t[:2]), pos_weight=tt.tensor(2.0)),
              [x[:2]])
    with pytest.raises(ValueError, match="must be the same as input size"):
        F.binary_cross_entropy_with_logits(tt.zeros(3), tt.zeros(2))


def test_bce_on_probabilities_clamps_logs():
    p = np.array([0.2, 0.9, 0.0, 1.0, 0.5])
    t = np.array([0.0, 1.0, 1.0, 0.0, 0.3])
    with np.errstate(divide="ignore"):
        want = -(t * np.maximum(np.log(p), -100) + (1 - t) * np.maximum(np.log1p(-p), -100))
    got = nn.BCELoss(reduction="none")(tt.tensor(p), tt.tensor(t))
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-12)
    assert got.numpy()[2] == 100.0 and got.numpy()[3] == 100.0
    pt = tt.tensor(p, requires_grad=True)
    F.binary_cross_entropy(pt, tt.tensor(t), weight=tt.tensor(2.0)).backward()
    assert np.isfinite(pt.grad.numpy()).all()
    gradcheck(lambda a: F.binary_cross_entropy(a, tt.tensor(t[:2])), [p[:2]])
    with pytest.raises(RuntimeError, match="between 0 and 1"):
        F.binary_cross_entropy(tt.tensor([1.5]), tt.tensor([1.0]))


def test_bce_gradient_is_pytorchs_at_the_edges_eager_and_compiled():
    """PyTorch's backward: (x - t) / max(x (1 - x), eps) for the input (0 for a perfect x == t in {0, 1},
    bounded near 0 and 1, where the clamped logs' derivative gave +-1 and 0), -logit(x) for the target."""
    x = np.array([0.0, 1.0, 1e-50, 1.0, 1e-13, 0.3, 0.999])
    t = np.array([0.0, 1.0, 1.0, 0.0, 0.3, 0.6, 0.2])
    w = np.arange(1.0, 8.0)
    eps = float(np.float32(1e-12))
    with np.errstate(divide="ignore"):
        want_x = (x - t) / np.maximum(x * (1 - x), eps) * w / 7
        want_t = (np.log1p(-x) - np.log(x)) * w / 7
    np.testing.assert_allclose(want_x[:4], [0.0, 0.0, -428571430283.9155, 571428573711.8873], rtol=1e-12)  # torch's

    def grads(x_, t_):
        F.binary_cross_entropy(x_, t_, weight=tt.tensor(w)).backward()
        return x_.grad, t_.grad
    for fn in (grads, tt.compile(grads, backend="llvm")):
        for _ in range(2):                                  # compiled: traced, then a cache hit
            xt = tt.tensor(x, requires_grad=True)
            tt_ = tt.tensor(t, requires_grad=True)
            gx, gt = fn(xt, tt_)
            np.testing.assert_allclose(gx.numpy(), want_x, rtol=1e-12)
            np.testing.assert_allclose(gt.numpy(), want_t, rtol=1e-12)


@pytest.mark.parametrize("bad", [[1.5, 0.2], [-0.5, 0.2], [float("nan"), 0.2]])
def test_bce_range_check_holds_compiled(bad):
    """The [0, 1] check is written with tensor ops, so a compiled BCELoss (cache hits included) raises
    on an input out of range, as eagerly and in PyTorch, instead of returning a loss."""
    loss = tt.compile(lambda p, t: nn.BCELoss()(p, t), backend="llvm")
    t = tt.tensor([1.0, 0.0])
    for p in ([0.3, 0.2], [0.6, 0.1]):
        loss(tt.tensor(p), t)
    with pytest.raises(RuntimeError, match="between 0 and 1"):
        loss(tt.tensor(bad), t)
    np.testing.assert_allclose(loss(tt.tensor([0.5, 0.5]), t).item(), np.log(2), rtol=1e-6)


def test_loss_weights_are_buffers():
    loss = nn.CrossEntropyLoss(weight=tt.ones(3))
    assert list(loss.state_dict()) == ["weight"]
    assert list(nn.MSELoss().state_dict()) == []
    assert repr(nn.CrossEntropyLoss(label_smoothing=0.1)) == "CrossEntropyLoss()"
    loss.double()
    assert loss.weight.dtype is tt.float64
