"""Recompile counts, asserted through .stats(): what must not recompile, and what must."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

import tracetorch as tt
import tracetorch.nn as nn
import tracetorch.nn.functional as F


def _model():
    tt.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Dropout(0.25), nn.Linear(8, 3))


def _train_step(model, opt):
    def step(x, y):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss
    return step


def test_scheduler_learning_rate_changes_do_not_recompile():
    model = _model()
    opt = tt.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    sched = tt.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    step = tt.compile(_train_step(model, opt))
    x, y = tt.randn(6, 4), tt.randint(0, 3, (6,))
    for _ in range(6):
        step(x, y)
        sched.step()
    s = step.stats()
    # the first call creates the momentum buffers (state escapes: not cached), the second traces for good
    assert s["traces"] == 2 and s["compiles"] == 1 and s["cache_hits"] == 4, s
    assert opt.param_groups[0]["lr"] == pytest.approx(0.5 * 0.5 ** 6)


def test_train_eval_toggle_traces_once_more_then_hits():
    model = _model()
    f = tt.compile(model)
    x = tt.randn(2, 4)
    f(x)
    f(x)
    model.eval()
    f(x)
    f(x)
    model.train()
    f(x)
    model.eval()
    f(x)
    s = f.stats()
    assert s["traces"] == 2 and s["cache_hits"] == 4, s
    assert set(s["guard_failures"]) == {"self.training"}, s      # the first failing guard is named


def test_data_dependent_branch_alternating_makes_two_traces():
    @tt.compile
    def f(x):
        if x.sum() > 0:
            return x * 2
        return -x

    for k in range(8):
        sign = 1 if k % 2 == 0 else -1
        out = f(tt.ones(3) * sign)
        assert _list(out) == [2.0 * sign if sign > 0 else 1.0] * 3
    s = f.stats()
    assert s["traces"] == 2 and s["compiles"] == 2 and s["cache_hits"] == 6, s


def test_changing_batch_size_traces_per_shape_until_the_limit_then_warns_once():
    @tt.compile(cache_size_limit=3)
    def f(x):
        return (x * x).sum(0)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for n in (1, 2, 3, 1, 2, 3):
            f(tt.ones(n, 2))
        assert f.stats()["traces"] == 3 and not caught
        for n in (4, 5, 6, 1):
            assert _list(f(tt.ones(n, 2))) == [n, n]
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1, messages
    assert "cache_size_limit=3" in messages[0] and "shape/dtype/requires_grad of x" in messages[0]
    assert "test_jit_guards.py" in messages[0]                      # the source line of the function
    s = f.stats()
    assert s["traces"] == 3 and s["fallbacks"] == 4 and s["eager_since_limit"], s
    assert s["calls"] == 10 and s["cache_hits"] == 3, s            # eager calls after the limit count too


def test_item_only_logged_or_returned_does_not_recompile():
    seen = []

    @tt.compile
    def f(x):
        loss = (x * x).mean()
        seen.append(f"{loss.item():.3f}")          # logging: formatted, no guard
        return loss, loss.item()

    for k in range(5):
        loss, value = f(tt.full((4,), float(k)))
        assert value == pytest.approx(k * k) and type(value) is float
    assert f.stats()["traces"] == 1 and len(seen) == 1


def test_module_python_attribute_change_retraces():
    model = nn.Dropout(0.5)
    f = tt.compile(model)
    x = tt.ones(1000)
    f(x)
    model.p = 0.0
    np.testing.assert_array_equal(f(x).numpy(), np.ones(1000))
    assert f.stats()["traces"] == 2 and "self.p" in f.stats()["guard_failures"]


def test_grad_mode_dtype_and_requires_grad_are_guarded():
    @tt.compile
    def f(x):
        return x * 2

    f(tt.ones(2))
    with tt.no_grad():
        f(tt.ones(2))
    f(tt.ones(2, dtype=tt.float64))
    out = f(tt.ones(2, requires_grad=True))
    assert out.requires_grad
    assert f.stats()["traces"] == 4


def test_grad_presence_is_guarded():
    w = tt.ones(2, requires_grad=True)

    @tt.compile
    def read_grad():
        return tt.zeros(2) if w.grad is None else w.grad * 1

    assert _list(read_grad()) == [0, 0]
    w.grad = tt.full((2,), 3.0)
    assert _list(read_grad()) == [3, 3]
    w.grad = tt.full((2,), 4.0)                                 # another grad tensor: read through w
    assert _list(read_grad()) == [4, 4]
    assert read_grad.stats()["traces"] == 2


def _list(t):
    return t.detach().numpy().tolist()


def test_module_structure_changes_retrace():
    model = _model()
    f = tt.compile(model)
    x = tt.randn(2, 4)
    model.eval()
    base = _list(f(x))
    handle = model.register_forward_hook(lambda m, args, out: out * 0)
    assert _list(f(x)) == [[0.0] * 3] * 2                        # a hook added after the trace runs
    handle.remove()
    model[3] = nn.Linear(8, 3)                                  # a layer replaced
    assert _list(f(x)) == _list(model(x)) != base
    assert {"forward hooks of self", "submodules of self"} <= set(f.stats()["guard_failures"])


class _Scale(nn.Module):
    def __init__(self):
        super().__init__()
        self.factor = 2.0

    def forward(self, x):
        return x * self.factor * getattr(self, "extra", 1.0)


def _scaled_model():
    tt.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3), _Scale())
    m[3].extra = 3.0
    return m


def _registry_set(m):
    m._modules["1"] = nn.Tanh()                         # straight into the registry dict


def _registry_pop(m):
    m._modules.pop("1")


def _parameter_dict(m):
    m[0]._parameters["weight"] = nn.Parameter(tt.ones(8, 4))


def _hook(m):
    m[0].register_forward_hook(lambda mod, inputs, out: out * 0.5)


def _hook_removed(m):
    m._handle.remove()


def _attribute(m):
    m[3].factor = 0.5


def _delattr(m):
    del m[3].extra


def _training_flag(m):
    m.eval()


_MUTATIONS = [_registry_set, _registry_pop, _parameter_dict, _hook, _hook_removed, _attribute, _delattr,
              _training_flag]


@pytest.mark.parametrize("mutate", _MUTATIONS, ids=[f.__name__[1:] for f in _MUTATIONS])
def test_every_kind_of_module_change_is_seen_by_the_cached_guards(mutate):
    # the module snapshots are compared only after nn.module.STATE_VERSION moved: every way of changing
    # a module must move it, or a stale program would run
    model = _scaled_model()
    if mutate is _hook_removed:
        model._handle = model[2].register_forward_hook(lambda mod, inputs, out: out + 1.0)
    f = tt.compile(model)
    x = tt.randn(5, 4)
    for _ in range(3):
        f(x)
    model.train()                                       # no change (already training): nothing retraces
    f(x)
    traces = f.stats()["traces"]
    assert f.stats()["cache_hits"] >= 2
    mutate(model)
    got, want = f(x), model(x)
    assert f.stats()["traces"] == traces + 1
    np.testing.assert_allclose(got.detach().numpy(), want.detach().numpy(), rtol=1e-6)


# ---------------------------------------------------------------- Python constants inside plain objects and containers
class _Config:
    pass


_CFG = _Config()
_HP = {"scale": 1.0, "smooth": [0.0]}


def test_constants_in_object_attributes_dict_values_and_list_items_retrace():
    """`cfg.x`, `hp["k"]` and `hp["k"][0]` are read like a global constant: a change is a new trace,
    never a stale replay of the first value."""
    tt.manual_seed(0)
    model = nn.Linear(4, 3)
    x, y = tt.randn(8, 4), tt.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    _CFG.offset, _HP["scale"], _HP["smooth"][0] = 0.0, 1.0, 0.0

    def loss_fn(x, y):
        return F.cross_entropy(model(x) * _HP["scale"] + _CFG.offset, y, label_smoothing=_HP["smooth"][0])

    compiled = tt.compile(loss_fn)
    for offset, scale, smooth in [(0.0, 1.0, 0.0), (0.0, 1.0, 0.0), (0.5, 1.0, 0.0), (0.5, 3.0, 0.0),
                                  (0.5, 3.0, 0.25), (0.5, 3.0, 0.25)]:
        _CFG.offset, _HP["scale"], _HP["smooth"][0] = offset, scale, smooth
        assert compiled(x, y).item() == pytest.approx(loss_fn(x, y).item(), rel=1e-6), (offset, scale, smooth)
    s = compiled.stats()
    assert s["traces"] == 4 and s["cache_hits"] == 2, s
    assert set(s["guard_failures"]) == {"_CFG.offset", "_HP['scale']", "_HP['smooth'][0]"}, s


def test_attributes_of_an_opaque_argument_are_guarded():
    """An object argument is the same object (identity) on a cached call; its attributes are read again."""
    cfg = _Config()
    cfg.scale = 2.0
    f = tt.compile(lambda x, c: x * c.scale)
    x = tt.ones(3)
    assert f(x, cfg).tolist() == [2.0] * 3
    cfg.scale = 5.0
    assert f(x, cfg).tolist() == [5.0] * 3
    assert f.stats()["traces"] == 2


def test_scheduler_stepped_inside_the_compiled_step_matches_eager_and_is_never_replayed():
    """The scheduler's `last_epoch` changes during every call: a replay would not step it, so such a
    trace is not cached; after cache_size_limit traces the step runs eagerly, with a warning naming it."""
    def run(compiled):
        tt.manual_seed(0)
        model = nn.Linear(3, 1)
        opt = tt.optim.SGD(model.parameters(), lr=1.0)
        sched = tt.optim.lr_scheduler.LambdaLR(opt, lambda e: 1.0 / (e + 1))

        def step(x, y):
            opt.zero_grad()
            loss = F.mse_loss(model(x), y)
            loss.backward()
            opt.step()
            sched.step()
            return loss
        if compiled:
            step = tt.compile(step, cache_size_limit=4)
        x, y = tt.ones(4, 3), tt.zeros(4, 1)
        lrs = []
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for _ in range(6):
                step(x, y)
                lrs.append(opt.param_groups[0]["lr"])
        return lrs, sched.last_epoch, model.weight.detach().numpy().copy(), step, caught

    lrs, epoch, w, _, _ = run(False)
    clrs, cepoch, cw, step, caught = run(True)
    assert clrs == pytest.approx(lrs) and cepoch == epoch == 6
    np.testing.assert_allclose(cw, w, rtol=1e-6)
    s = step.stats()
    assert s["compiles"] == 0 and s["uncached_traces"] == 4 and s["eager_since_limit"], s
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1 and "sched.last_epoch changed during the call" in messages[0], messages


def test_a_global_counter_the_call_increments_is_never_replayed():
    global _CALLS
    _CALLS = 0

    def f(x):
        global _CALLS
        _CALLS += 1
        return x * _CALLS

    g = tt.compile(f)
    x = tt.ones(2)
    assert [g(x).tolist()[0] for _ in range(3)] == [1.0, 2.0, 3.0]
    s = g.stats()
    assert s["compiles"] == 0 and s["uncached_traces"] == 3, s


# ---------------------------------------------------------------- arguments that share memory
def _write_then_read(a, b):
    a.add_(1)
    return b * 2


@pytest.mark.parametrize("backend", ["llvm", "interp"])
def test_a_written_argument_aliasing_another_matches_eager_on_every_call(backend):
    """f(x, x[0]) writes through one argument and reads the other: never replayed from separate inputs."""
    f = tt.compile(_write_then_read, backend=backend)
    for _ in range(3):
        x, xe = tt.arange(6., dtype=tt.float64).reshape(2, 3), tt.arange(6., dtype=tt.float64).reshape(2, 3)
        assert f(x, x[0]).tolist() == _write_then_read(xe, xe[0]).tolist() == [2.0, 4.0, 6.0]
        assert x.tolist() == xe.tolist()
    s = f.stats()
    assert s["compiles"] == 0 and s["uncached_traces"] == 3, s


@pytest.mark.parametrize("backend", ["llvm", "interp"])
def test_a_trace_of_separate_arguments_is_not_replayed_for_aliasing_ones(backend):
    def g(a, b):
        a.mul_(2)
        return a + b
    cg = tt.compile(g, backend=backend)
    y, z = tt.arange(3., dtype=tt.float64), tt.arange(3., dtype=tt.float64)
    cg(y, z)
    cg(y, z)
    assert cg.stats()["cache_hits"] == 1
    x, xe = tt.arange(3., dtype=tt.float64), tt.arange(3., dtype=tt.float64)
    assert cg(x, x).tolist() == g(xe, xe).tolist() == [0.0, 4.0, 8.0]            # the same tensor twice
    x, xe = tt.arange(4., dtype=tt.float64), tt.arange(4., dtype=tt.float64)
    assert cg(x[:3], x[1:]).tolist() == g(xe[:3], xe[1:]).tolist()                # overlapping views
    assert x.tolist() == xe.tolist()
    failures = cg.stats()["guard_failures"]
    assert any("shares no memory" in k for k in failures), failures


def test_only_written_arguments_are_checked_for_overlap():
    """A function reading its arguments (a training step's batch) gets no overlap guard: aliasing
    read-only inputs is harmless, and the check would cost every call."""
    f = tt.compile(lambda a, b: a * b)
    x = tt.randn(4)
    assert f(x, x[:4]).tolist() == (x * x).tolist()
    assert f(x, x).tolist() == (x * x).tolist()
    program = f.programs[0]
    assert not any(type(g).__name__ == "DisjointGuard" for g in program.guards)


def test_numpy_scalar_and_nan_constants():
    """A numpy scalar attribute is a constant like a float; a NaN constant holds while it stays NaN."""
    _CFG.gain, _CFG.fill = np.float32(2.0), float("nan")
    f = tt.compile(lambda x: x * float(_CFG.gain) + (_CFG.fill if x.dim() > 5 else 0.0))
    x = tt.ones(2)
    assert f(x).tolist() == [2.0, 2.0] and f(x).tolist() == [2.0, 2.0]
    _CFG.gain = np.float32(3.0)
    assert f(x).tolist() == [3.0, 3.0]
    s = f.stats()
    assert s["traces"] == 2 and s["cache_hits"] == 1 and s["uncached_traces"] == 0, s


def test_the_limit_warning_of_a_compiled_module_points_at_the_callers_line():
    f = tt.compile(nn.Linear(2, 2), cache_size_limit=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        f(tt.ones(1, 2))
        f(tt.ones(3, 2))                                            # over the limit: warns here
    assert len(caught) == 1 and caught[0].filename == __file__, [(w.filename, w.lineno) for w in caught]
