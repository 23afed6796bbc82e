"""LR schedulers: the lr sequences PyTorch 2.x produces (hard-coded from the reference), state dicts,
and the in-place update of the optimizer's 0-d lr tensor."""
import math
import warnings

import pytest

import tracetorch as tt
from tracetorch.optim import SGD
from tracetorch.optim import lr_scheduler as L


def make_opt(groups=1, lr=0.1):
    params = [tt.zeros(1, requires_grad=True) for _ in range(groups)]
    return SGD([{"params": [p], "lr": lr * (i + 1)} for i, p in enumerate(params)], lr=lr)


def lr_sequence(make_scheduler, steps, groups=1):
    opt = make_opt(groups)
    sched = make_scheduler(opt)
    seq = [sched.get_last_lr()]
    for _ in range(steps):
        opt.step()
        sched.step()
        seq.append(sched.get_last_lr())
    return seq if groups > 1 else [s[0] for s in seq]


# Values printed by torch 2.13's schedulers for the same construction.
PYTORCH_SEQUENCES = {
    "step": (lambda o: L.StepLR(o, step_size=3, gamma=0.5), 10,
             [0.1, 0.1, 0.1, 0.05, 0.05, 0.05, 0.025, 0.025, 0.025, 0.0125, 0.0125]),
    "multistep": (lambda o: L.MultiStepLR(o, milestones=[2, 5, 5], gamma=0.1), 7,
                  [0.1, 0.1, 0.010000000000000002, 0.010000000000000002, 0.010000000000000002,
                   0.00010000000000000005, 0.00010000000000000005, 0.00010000000000000005]),
    "exponential": (lambda o: L.ExponentialLR(o, gamma=0.9), 5,
                    [0.1, 0.09000000000000001, 0.08100000000000002, 0.07290000000000002, 0.06561000000000002,
                     0.05904900000000002]),
    "cosine": (lambda o: L.CosineAnnealingLR(o, T_max=5, eta_min=0.01), 12,
               [0.1, 0.09140576474687263, 0.06890576474687263, 0.04109423525312736, 0.018594235253127367, 0.01,
                0.018594235253127367, 0.04109423525312739, 0.06890576474687267, 0.09140576474687269,
                0.10000000000000006, 0.09140576474687272, 0.06890576474687268]),
    "linear_default": (lambda o: L.LinearLR(o), 7,
                       [0.03333333333333333, 0.04666666666666667, 0.060000000000000005, 0.07333333333333335,
                        0.08666666666666668, 0.1, 0.1, 0.1]),
    "linear_down": (lambda o: L.LinearLR(o, start_factor=0.5, end_factor=0.1, total_iters=4), 6,
                    [0.05, 0.04000000000000001, 0.030000000000000006, 0.020000000000000004, 0.01, 0.01, 0.01]),
    "sequential": (lambda o: L.SequentialLR(o, [L.LinearLR(o, start_factor=0.1, total_iters=3),
                                                L.CosineAnnealingLR(o, T_max=5)], milestones=[3]), 10,
                   [0.010000000000000002, 0.04, 0.07, 0.1, 0.09045084971874738, 0.06545084971874737,
                    0.03454915028125263, 0.009549150281252633, 0.0, 0.009549150281252628, 0.03454915028125265]),
}


@pytest.mark.parametrize("name", list(PYTORCH_SEQUENCES))
def test_sequence_matches_pytorch(name):
    make, steps, expected = PYTORCH_SEQUENCES[name]
    assert lr_sequence(make, steps) == pytest.approx(expected, rel=1e-12, abs=1e-15)


def test_lambda_lr_one_lambda_per_group():
    seq = lr_sequence(lambda o: L.LambdaLR(o, [lambda e: 0.95 ** e, lambda e: 1 / (e + 1)]), 5, groups=2)
    expected = [[0.1, 0.2], [0.095, 0.1], [0.09025, 0.06666666666666667], [0.0857375, 0.05],
                [0.081450625, 0.04000000000000001], [0.07737809374999999, 0.03333333333333333]]
    for got, want in zip(seq, expected):
        assert got == pytest.approx(want, rel=1e-12)


def test_cosine_follows_the_closed_form_over_two_periods():
    t_max, eta_min, base = 7, 0.001, 0.1
    seq = lr_sequence(lambda o: L.CosineAnnealingLR(o, T_max=t_max, eta_min=eta_min), 2 * t_max)
    closed = [eta_min + (base - eta_min) * (1 + math.cos(math.pi * e / t_max)) / 2 for e in range(2 * t_max + 1)]
    assert seq == pytest.approx(closed, rel=1e-12, abs=1e-15)


def test_step_with_epoch_uses_closed_form():
    opt = make_opt()
    sched = L.CosineAnnealingLR(opt, T_max=5, eta_min=0.01)
    opt.step()
    with pytest.warns(UserWarning, match="epoch parameter"):
        sched.step(7)
    assert sched.last_epoch == 7
    assert sched.get_last_lr() == pytest.approx([0.041094235253127366], rel=1e-12)


def test_scheduler_writes_the_optimizers_lr_tensor_in_place():
    opt = make_opt()
    lr_tensor = opt.param_groups[0].tensors["lr"]
    sched = L.StepLR(opt, step_size=1, gamma=0.5)
    for k in range(1, 4):
        opt.step()
        sched.step()
        assert opt.param_groups[0].tensors["lr"] is lr_tensor
        assert lr_tensor.item() == 0.1 * 0.5 ** k == opt.param_groups[0]["lr"]
    assert sched.last_epoch == 3 and opt.param_groups[0]["initial_lr"] == 0.1


def test_scheduled_lr_reaches_the_update():
    p = tt.zeros(1, requires_grad=True)
    opt = SGD([p], lr=1.0)
    sched = L.LambdaLR(opt, lambda e: 10.0 ** -e)
    total = 0.0
    for e in range(3):
        p.grad = tt.ones(1)
        opt.step()
        total += 10.0 ** -e
        sched.step()
    assert p.item() == pytest.approx(-total, rel=1e-6)


def test_state_dict_round_trip_continues_identically():
    def make(o):
        return L.CosineAnnealingLR(o, T_max=6, eta_min=0.01)
    opt = make_opt()
    sched = make(opt)
    for _ in range(4):
        opt.step()
        sched.step()
    sd_sched, sd_opt = sched.state_dict(), opt.state_dict()
    assert "optimizer" not in sd_sched and sd_sched["last_epoch"] == 4 and sd_sched["base_lrs"] == [0.1]

    opt2 = make_opt()
    sched2 = make(opt2)
    opt2.load_state_dict(sd_opt)
    sched2.load_state_dict(sd_sched)
    for _ in range(5):
        for o, s in ((opt, sched), (opt2, sched2)):
            o.step()
            s.step()
        assert sched2.get_last_lr() == sched.get_last_lr()
        assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]


def test_multistep_state_survives_a_checkpoint_file():
    import io
    opt = make_opt()
    sched = L.MultiStepLR(opt, milestones=[2, 4, 4], gamma=0.5)
    buf = io.BytesIO()
    tt.save(sched.state_dict(), buf)
    buf.seek(0)
    other_opt = make_opt()
    other = L.MultiStepLR(other_opt, milestones=[1])
    other.load_state_dict(tt.load(buf))
    other_opt.step()
    with pytest.warns(UserWarning, match="epoch parameter"):
        other.step(5)                                    # closed form needs the milestone counts
    assert other.get_last_lr() == pytest.approx([0.1 * 0.5 ** 3], rel=1e-12)


def test_lambda_state_dict_skips_plain_functions_and_keeps_callable_objects():
    class Decay:
        def __init__(self, rate):
            self.rate = rate

        def __call__(self, epoch):
            return self.rate ** epoch

    opt = make_opt(groups=2)
    sched = L.LambdaLR(opt, [lambda e: 1.0, Decay(0.5)])
    sd = sched.state_dict()
    assert sd["lr_lambdas"] == [None, {"rate": 0.5}]
    other = L.LambdaLR(make_opt(groups=2), [lambda e: 1.0, Decay(0.9)])
    other.load_state_dict(sd)
    assert other.lr_lambdas[1].rate == 0.5


def test_resuming_requires_initial_lr():
    with pytest.raises(KeyError, match="initial_lr"):
        L.StepLR(make_opt(), step_size=2, last_epoch=3)


def test_warns_when_stepped_before_the_optimizer():
    opt = make_opt()
    sched = L.StepLR(opt, step_size=2)
    with pytest.warns(UserWarning, match="before `optimizer.step\\(\\)`"):
        sched.step()
    opt2 = make_opt()
    sched2 = L.StepLR(opt2, step_size=2)
    opt2.step()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sched2.step()


def test_argument_checks():
    with pytest.raises(TypeError, match="is not an Optimizer"):
        L.StepLR(object(), step_size=1)
    with pytest.raises(ValueError, match="Expected 1 lr_lambdas"):
        L.LambdaLR(make_opt(), [lambda e: 1.0, lambda e: 1.0])
    with pytest.raises(ValueError, match="Starting multiplicative factor"):
        L.LinearLR(make_opt(), start_factor=0.0)
