"""Safety of compiled LLVM programs: data-dependent indices are bounds-checked in the kernel (IndexError,
nothing committed), and results are fresh arrays a later call never overwrites."""
from __future__ import annotations

import numpy as np
import pytest

import tracetorch as tt
import tracetorch.nn as nn
import tracetorch.nn.functional as F


def _state(model, opt):
    params = {k: v.numpy(force=True).copy() for k, v in model.state_dict().items()}
    buffers = {f"{i}.{k}": v.numpy(force=True).copy() for i, s in enumerate(opt.state.values())
               for k, v in s.items() if isinstance(v, tt.Tensor)}
    return params, buffers


def _assert_same_state(before, after):
    for part_a, part_b in zip(before, after):
        assert part_a.keys() == part_b.keys()
        for k in part_a:
            np.testing.assert_array_equal(part_a[k], part_b[k], err_msg=k)


def _embedding_step():
    tt.manual_seed(0)
    model = nn.Sequential(nn.Embedding(7, 4), nn.Flatten(), nn.Linear(12, 3))
    opt = tt.optim.Adam(model.parameters(), lr=1e-2)

    def step(tokens, labels):
        opt.zero_grad()
        loss = F.cross_entropy(model(tokens), labels)
        loss.backward()
        opt.step()
        return loss
    return model, opt, tt.compile(step, backend="llvm")


def test_embedding_index_out_of_range_raises_and_commits_nothing():
    model, opt, step = _embedding_step()
    tokens, labels = tt.tensor([[1, 2, 3], [4, 5, 6]]), tt.tensor([0, 2])
    for _ in range(3):
        step(tokens, labels)
    assert step.stats()["cache_hits"] == 1
    before = _state(model, opt)
    with pytest.raises(IndexError, match="out of bounds for dimension 0 with size 7"):
        step(tt.tensor([[1, 2, 3], [4, 5, 7]]), labels)
    _assert_same_state(before, _state(model, opt))
    assert step.stats()["cache_hits"] == 1 and step.stats()["traces"] == 2     # the program raised: no retrace
    with pytest.raises(IndexError, match="out of bounds for dimension 0 with size 7"):
        step(tt.tensor([[1, -1, 3], [4, 5, 6]]), labels)                        # negative: out of range (PyTorch)
    _assert_same_state(before, _state(model, opt))
    step(tokens, labels)
    assert step.stats()["cache_hits"] == 2


def test_cross_entropy_label_out_of_range_raises_and_commits_nothing():
    model, opt, step = _embedding_step()
    tokens, labels = tt.tensor([[1, 2, 3], [4, 5, 6]]), tt.tensor([0, 2])
    for _ in range(3):
        step(tokens, labels)
    before = _state(model, opt)
    with pytest.raises(IndexError, match="Target 3 is out of bounds"):
        step(tokens, tt.tensor([0, 3]))
    _assert_same_state(before, _state(model, opt))
    loss = step(tokens, labels)                    # the compiled program still serves good labels
    assert np.isfinite(loss.item())


def test_gather_matches_eager_and_checks_bounds(rng):
    x = tt.tensor(rng.standard_normal((5, 4)))
    f = tt.compile(lambda x, i, j: x[i, j] * 2 + x[i].sum(-1), backend="llvm")
    i, j = tt.tensor([[0, 4], [-1, 2]]), tt.tensor([[3], [-4]])
    f(x, i, j)
    np.testing.assert_allclose(f(x, i, j).numpy(), (x[i, j] * 2 + x[i].sum(-1)).numpy(), rtol=1e-12)
    with pytest.raises(IndexError, match="out of bounds for dimension 1 with size 4"):
        f(x, i, tt.tensor([[3], [4]]))
    with pytest.raises(IndexError, match="out of bounds for dimension 0 with size 5"):
        f(x, tt.tensor([[0, 5], [-1, 2]]), j)


def test_results_are_fresh_and_never_overwritten(rng):
    f = tt.compile(lambda x: (x * 2).exp().sum(1), backend="llvm")
    x = tt.tensor(rng.standard_normal((8, 8)))
    first = f(x)
    second = f(x)
    kept = second.numpy().copy()
    third = f(x * 3)
    np.testing.assert_array_equal(second.numpy(), kept)
    assert not np.shares_memory(second.numpy(), third.numpy())
    np.testing.assert_allclose(third.numpy(), np.exp(x.numpy() * 6).sum(1), rtol=1e-12)
    del first


def _line_of(fn, text: str) -> str:
    """`file.py:N in fn` of the line of `fn` holding `text` (what errors name)."""
    import inspect
    import os
    lines, first = inspect.getsourcelines(fn)
    n = first + next(k for k, line in enumerate(lines) if text in line)
    return f"{os.path.basename(inspect.getsourcefile(fn))}:{n} in {fn.__name__}"


def test_a_failed_check_of_a_compiled_call_names_the_users_line():
    table = nn.Embedding(10, 4)

    def lookup(tokens, scale):
        x = table(tokens) * scale
        return x.sum(-1)

    def divide(a, b):
        c = a * 3 // b
        return c % (b + 1)              # in c's kernel: one check flag, either line may be the one

    ok = (tt.tensor([1, 2]), tt.tensor(2.0))
    for attempt in range(2):           # the second: an identical graph, lowered from the disk cache
        f = tt.compile(lookup, backend="llvm")
        f(*ok)
        f(*ok)                         # a replay of the compiled program
        with pytest.raises(IndexError, match=r"dimension of size 10 .*, from " + _line_of(lookup, "table(tokens)")):
            f(tt.tensor([1, 12]), tt.tensor(2.0))
        g = tt.compile(divide, backend="llvm")
        g(tt.tensor([1, 2]), tt.tensor([1, 3]))
        g(tt.tensor([1, 2]), tt.tensor([1, 3]))
        lines = f"from {_line_of(divide, '3 // b')} or {_line_of(divide, '% (b + 1)')}$"
        for b in ([1, 0], [1, -1]):
            with pytest.raises(ZeroDivisionError, match="division by zero .*, " + lines):
                g(tt.tensor([1, 2]), tt.tensor(b))
