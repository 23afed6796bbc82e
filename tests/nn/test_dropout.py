import numpy as np
import pytest

import tracetorch as tt
import tracetorch.nn.functional as F
from tracetorch import nn


def test_dropout_is_identity_in_eval_mode_and_for_p_zero():
    x = tt.randn(4, 5)
    drop = nn.Dropout(0.5).eval()
    assert drop(x) is x
    assert F.dropout(x, 0.0) is x
    assert F.dropout(x, 0.7, training=False) is x


def test_dropout_mask_comes_from_the_default_generator():
    x = tt.randn(50, 40)
    tt.manual_seed(123)
    out = F.dropout(x, 0.3)
    tt.manual_seed(123)
    keep = tt.rand(50, 40) >= 0.3
    np.testing.assert_allclose(out.numpy(), np.where(keep.numpy(), x.numpy() / 0.7, 0.0), rtol=1e-6)
    tt.manual_seed(123)
    np.testing.assert_array_equal(nn.Dropout(0.3)(x).numpy(), out.numpy())
    assert not np.array_equal(F.dropout(x, 0.3).numpy(), out.numpy())   # the generator moved on


def test_dropout_statistics_and_gradient():
    tt.manual_seed(0)
    x = tt.ones(200, 200, requires_grad=True)
    out = F.dropout(x, 0.25)
    kept = out.detach().numpy() != 0
    assert abs(kept.mean() - 0.75) < 0.01
    np.testing.assert_allclose(out.detach().numpy()[kept], 1 / 0.75, rtol=1e-6)
    out.sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), np.where(kept, 1 / 0.75, 0.0), rtol=1e-6)


def test_dropout_edge_cases():
    x = tt.randn(3, 3)
    assert not F.dropout(x, 1.0).numpy().any()
    y = x.clone()
    assert F.dropout(y, 0.5, inplace=True) is y
    with pytest.raises(ValueError, match="between 0 and 1"):
        nn.Dropout(1.5)
    with pytest.raises(ValueError, match="between 0 and 1"):
        F.dropout(x, -0.1)
    assert repr(nn.Dropout(0.2)) == "Dropout(p=0.2, inplace=False)"
