import numpy as np
import pytest

import tracetorch as tt
import tracetorch.nn.functional as F
from tracetorch import nn

from gradcheck import gradcheck


def _np_layer_norm(x, ndims, w, b, eps):
    axes = tuple(range(x.ndim - ndims, x.ndim))
    mean = x.mean(axes, keepdims=True)
    var = ((x - mean) ** 2).mean(axes, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * w + b


def _np_batch_stats(x):
    axes = (0,) + tuple(range(2, x.ndim))
    return x.mean(axes), x.var(axes), x.var(axes, ddof=1)


def _bcast(v, x):
    return v.reshape((1, -1) + (1,) * (x.ndim - 2))


def test_layer_norm_forward():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 4, 5)) * 3 + 1
    m = nn.LayerNorm((4, 5), eps=1e-3, dtype=tt.float64)
    with tt.no_grad():
        m.weight.copy_(tt.tensor(rng.standard_normal((4, 5))))
        m.bias.copy_(tt.tensor(rng.standard_normal((4, 5))))
    want = _np_layer_norm(x, 2, m.weight.detach().numpy(), m.bias.detach().numpy(), 1e-3)
    np.testing.assert_allclose(m(tt.tensor(x)).detach().numpy(), want, rtol=1e-10, atol=1e-12)
    plain = nn.LayerNorm(5, elementwise_affine=False)
    assert list(plain.parameters()) == []
    np.testing.assert_allclose(plain(tt.tensor(x, dtype=tt.float32)).numpy(), _np_layer_norm(x, 1, 1, 0, 1e-5),
                               rtol=1e-4, atol=1e-5)
    assert repr(m) == "LayerNorm((4, 5), eps=0.001, elementwise_affine=True, bias=True)"
    with pytest.raises(RuntimeError, match="normalized_shape"):
        m(tt.zeros(2, 5, 4))


def test_layer_norm_gradients():
    rng = np.random.default_rng(1)
    gradcheck(lambda x, w, b: F.layer_norm(x, (4,), w, b),
              [rng.standard_normal((3, 4)), rng.standard_normal(4), rng.standard_normal(4)])


@pytest.mark.parametrize("shape", [(6, 3), (4, 3, 5)])
def test_batch_norm_1d_training_uses_batch_statistics(shape):
    rng = np.random.default_rng(2)
    x = rng.standard_normal(shape) * 2 + 0.5
    bn = nn.BatchNorm1d(3, dtype=tt.float64)
    with tt.no_grad():
        bn.weight.copy_(tt.tensor([1.0, 2.0, -1.0]))
        bn.bias.copy_(tt.tensor([0.0, 0.5, 1.0]))
    mean, var, _ = _np_batch_stats(x)
    want = (x - _bcast(mean, x)) / np.sqrt(_bcast(var, x) + 1e-5) * _bcast(np.array([1.0, 2.0, -1.0]), x) \
        + _bcast(np.array([0.0, 0.5, 1.0]), x)
    np.testing.assert_allclose(bn(tt.tensor(x)).detach().numpy(), want, rtol=1e-10, atol=1e-12)


def test_batch_norm_running_stats_over_steps_and_eval():
    rng = np.random.default_rng(3)
    bn = nn.BatchNorm2d(2, momentum=0.3, dtype=tt.float64)
    run_mean, run_var = np.zeros(2), np.ones(2)
    for step in range(3):
        x = rng.standard_normal((4, 2, 3, 3)) * (step + 1) + step
        bn(tt.tensor(x))
        mean, _, unbiased = _np_batch_stats(x)
        run_mean = 0.7 * run_mean + 0.3 * mean
        run_var = 0.7 * run_var + 0.3 * unbiased
        np.testing.assert_allclose(bn.running_mean.numpy(), run_mean, rtol=1e-12)
        np.testing.assert_allclose(bn.running_var.numpy(), run_var, rtol=1e-12)
        assert int(bn.num_batches_tracked) == step + 1
    bn.eval()
    x = rng.standard_normal((2, 2, 3, 3))
    want = (x - _bcast(run_mean, x)) / np.sqrt(_bcast(run_var, x) + 1e-5)
    np.testing.assert_allclose(bn(tt.tensor(x)).detach().numpy(), want, rtol=1e-10)
    bn(tt.tensor(x))
    assert int(bn.num_batches_tracked) == 3                 # eval mode leaves the statistics alone
    np.testing.assert_allclose(bn.running_mean.numpy(), run_mean, rtol=1e-12)


def test_batch_norm_momentum_none_is_a_cumulative_average():
    rng = np.random.default_rng(4)
    bn = nn.BatchNorm1d(3, momentum=None, dtype=tt.float64)
    batches = [rng.standard_normal((5, 3)) + i for i in range(4)]
    for x in batches:
        bn(tt.tensor(x))
    stats = [_np_batch_stats(x) for x in batches]
    # running = (init + sum of batch stats) weighted: factor 1/n at step n gives the plain average
    np.testing.assert_allclose(bn.running_mean.numpy(), np.mean([s[0] for s in stats], 0), rtol=1e-12)
    np.testing.assert_allclose(bn.running_var.numpy(), np.mean([s[2] for s in stats], 0), rtol=1e-12)


def test_batch_norm_momentum_none_compiles_once_and_matches_eager():
    """The cumulative factor 1/n is a tensor: a compiled step does not retrace for each count."""
    rng = np.random.default_rng(4)
    batches = [tt.tensor(rng.standard_normal((5, 3)) + i) for i in range(5)]
    eager, compiled = (nn.BatchNorm1d(3, momentum=None, dtype=tt.float64) for _ in range(2))
    step = tt.compile(lambda x: compiled(x).sum())
    for x in batches:
        np.testing.assert_allclose(step(x).item(), eager(x).sum().item(), rtol=1e-12, atol=1e-12)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        np.testing.assert_allclose(getattr(compiled, name).numpy(), getattr(eager, name).numpy(), rtol=1e-12)
    assert step.stats()["traces"] == 1 and step.stats()["cache_hits"] == 4, step.stats()


def test_batch_norm_without_running_stats():
    bn = nn.BatchNorm1d(2, track_running_stats=False, affine=False)
    assert bn.running_mean is None and list(bn.state_dict()) == []
    x = tt.randn(8, 2)
    bn.eval()                           # no running statistics: batch statistics even in eval mode
    mean, var, _ = _np_batch_stats(x.numpy().astype(np.float64))
    np.testing.assert_allclose(bn(x).numpy(), (x.numpy() - mean) / np.sqrt(var + 1e-5), rtol=1e-4, atol=1e-5)


def test_batch_norm_gradients_in_training_mode():
    rng = np.random.default_rng(5)
    gradcheck(lambda x, w, b: F.batch_norm(x, None, None, w, b, training=True),
              [rng.standard_normal((4, 3, 2)), rng.standard_normal(3), rng.standard_normal(3)])


def test_batch_norm_errors_and_repr():
    with pytest.raises(ValueError, match="expected 4D input"):
        nn.BatchNorm2d(3)(tt.zeros(2, 3))
    with pytest.raises(ValueError, match="expected 2D or 3D input"):
        nn.BatchNorm1d(3)(tt.zeros(2, 3, 1, 1))
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        nn.BatchNorm1d(3)(tt.zeros(1, 3))


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("name", ["weight", "bias", "running_mean", "running_var"])
def test_batch_norm_checks_its_per_channel_tensors(name, training):
    """PyTorch's RuntimeError; a wrong-sized tensor used to fail in a reshape or an add ("shape ... is invalid")."""
    args = dict(running_mean=tt.zeros(3), running_var=tt.ones(3), weight=tt.ones(3), bias=tt.zeros(3))
    args[name] = tt.ones(4)
    with pytest.raises(RuntimeError, match=f"{name} should contain 3 elements not 4"):
        F.batch_norm(tt.ones(2, 3, 2, 2), training=training, **args)


def test_batch_norm_eval_needs_running_stats():
    with pytest.raises(RuntimeError, match="must be defined in evaluation mode"):
        F.batch_norm(tt.ones(2, 3, 2, 2), None, None, training=False)
    assert repr(nn.BatchNorm2d(3)) == ("BatchNorm2d(3, eps=1e-05, momentum=0.1, affine=True, bias=True, "
                                       "track_running_stats=True)")


def test_batch_norm_buffers_do_not_require_grad():
    bn = nn.BatchNorm1d(2)
    out = bn(tt.randn(4, 2, requires_grad=True))
    out.sum().backward()
    assert not bn.running_mean.requires_grad and bn.running_mean.grad_fn is None
    assert bn.weight.grad is not None
