"""One-Cycle schedule and LR range test."""
from __future__ import annotations

import itertools
import math

import pytest
import torch

from training.lr_finder import lr_range_test
from training.schedule import OneCycle


@pytest.mark.parametrize("anneal, three_phase", list(itertools.product(["linear", "cos"], [False, True])))
def test_lr_never_negative_and_hits_its_landmarks(anneal, three_phase):
    steps_per_epoch, epochs = 98, 24
    sched = OneCycle.peak_at_epoch(0.01, epochs, steps_per_epoch, 5, div_factor=100, final_div_factor=100,
                                   anneal=anneal, three_phase=three_phase)
    total = epochs * steps_per_epoch
    lrs = [sched.lr_at(s) for s in range(total + 50)]  # 50 steps past the end: the seed's -5.27e-07 bug
    assert min(lrs) >= 0.0
    assert lrs[0] == pytest.approx(1e-4)
    assert max(lrs) == pytest.approx(0.01, rel=1e-3)
    peak = max(range(total), key=lrs.__getitem__)
    assert abs(peak - 5 * steps_per_epoch) <= 1  # peak at the end of epoch 5
    assert lrs[total - 1] == pytest.approx(1e-6, rel=1e-6)
    assert all(lr == pytest.approx(1e-6) for lr in lrs[total:])


def test_linear_schedule_with_extreme_final_div_stays_positive():
    sched = OneCycle(max_lr=1e-3, total_steps=10, pct_start=0.5, final_div_factor=1e12, anneal="linear")
    assert all(sched.lr_at(s) >= 0 for s in range(-2, 40))


def test_momentum_cycles_inversely_and_is_applied_to_adam_beta1():
    sched = OneCycle(max_lr=0.1, total_steps=100, pct_start=0.25)
    assert sched.momentum_at(0) == pytest.approx(0.95)
    assert sched.momentum_at(int(0.25 * 99)) == pytest.approx(0.85, abs=1e-3)
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))])
    lr = sched.apply(opt, 30)
    assert opt.param_groups[0]["lr"] == lr and opt.param_groups[0]["betas"][0] == pytest.approx(sched.momentum_at(30))


def test_invalid_schedules_are_refused():
    with pytest.raises(ValueError):
        OneCycle.peak_at_epoch(0.1, 24, 10, 30)
    with pytest.raises(ValueError):
        OneCycle(max_lr=-1, total_steps=10)


def make_problem(seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    x = torch.randn(512, 8)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()

    def batches():
        for i in itertools.cycle(range(0, 512, 64)):
            yield x[i : i + 64], y[i : i + 64]

    return model, batches()


def loss_step(model, x, y):
    return torch.nn.functional.cross_entropy(model(x), y)


def test_lr_range_test_restores_state_suggests_and_stops_on_divergence():
    model, batches = make_problem()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = lr_range_test(model, opt, batches, loss_step, start_lr=1e-5, end_lr=100.0, num_steps=150)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    assert opt.state_dict()["state"] == {} and opt.param_groups[0]["lr"] == 0.1
    assert result.diverged and len(result.lrs) < 150  # LR 100 with SGD blows up before the end
    assert 1e-5 < result.suggested_lr < 10 and math.isfinite(result.suggested_lr)
    i_min = min(range(len(result.losses)), key=result.losses.__getitem__)
    assert result.suggested_lr == pytest.approx(result.lrs[i_min] / 10)
    assert all(b == pytest.approx(a * result.lrs[1] / result.lrs[0]) for a, b in zip(result.lrs, result.lrs[1:]))
