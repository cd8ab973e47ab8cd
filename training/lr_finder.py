"""LR range test (Smith 2017, "Cyclical Learning Rates", arXiv:1506.01186, section 3.3).

The LR grows exponentially from ``start_lr`` to ``end_lr`` over ``num_steps``
training batches; the loss is smoothed with a bias-corrected exponential moving
average (as in fastai and davidtvs/pytorch-lr-finder) and the sweep stops once
the smoothed loss exceeds ``diverge_factor`` x its minimum.

Suggestion rule (documented, simple, robust to noise): the LR at the minimum of
the smoothed loss divided by 10, i.e. one decade below where the loss stops
falling. The model and optimizer are restored to their exact state afterwards.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass
class LRFinderResult:
    lrs: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)  # smoothed
    raw_losses: list[float] = field(default_factory=list)
    suggested_lr: float = float("nan")
    diverged: bool = False

    def to_dict(self) -> dict:
        return {
            "suggested_lr": self.suggested_lr,
            "diverged": self.diverged,
            "rule": "lr at min smoothed loss / 10",
            "lrs": self.lrs,
            "losses": self.losses,
        }


def lr_range_test(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Iterator[tuple[torch.Tensor, torch.Tensor]],
    loss_step: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor],
    *,
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    num_steps: int = 200,
    smoothing: float = 0.98,
    diverge_factor: float = 4.0,
    progress: Callable[[Iterator], Iterator] | None = None,
) -> LRFinderResult:
    """Sweep the LR exponentially; return the curve and a suggested max LR.

    ``batches`` yields ready (inputs, targets) on the model's device (it is
    consumed cyclically if shorter than ``num_steps``); ``loss_step`` returns the
    loss of one batch (so the finder uses the same loss as training).
    """
    model_state = copy.deepcopy(model.state_dict())
    optim_state = copy.deepcopy(optimizer.state_dict())
    result = LRFinderResult()
    gamma = (end_lr / start_lr) ** (1.0 / max(num_steps - 1, 1))
    avg, best = 0.0, math.inf
    was_training = model.training
    model.train()
    steps = range(num_steps) if progress is None else progress(range(num_steps))
    try:
        for step in steps:
            lr = start_lr * gamma**step
            for group in optimizer.param_groups:
                group["lr"] = lr
            inputs, targets = next(batches)
            optimizer.zero_grad(set_to_none=True)
            loss = loss_step(model, inputs, targets)
            loss.backward()
            optimizer.step()
            value = loss.item()
            if not math.isfinite(value):
                result.diverged = True
                break
            avg = smoothing * avg + (1 - smoothing) * value
            smoothed = avg / (1 - smoothing ** (step + 1))
            result.lrs.append(lr)
            result.raw_losses.append(value)
            result.losses.append(smoothed)
            best = min(best, smoothed)
            if step > 10 and smoothed > diverge_factor * best:
                result.diverged = True
                break
    finally:
        model.load_state_dict(model_state)
        optimizer.load_state_dict(optim_state)
        model.train(was_training)
    if result.losses:
        i = min(range(len(result.losses)), key=result.losses.__getitem__)
        result.suggested_lr = result.lrs[i] / 10.0
    return result
