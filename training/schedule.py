"""The One-Cycle learning-rate and momentum policy, stepped per batch.

Smith & Topin 2017, "Super-Convergence" (arXiv:1708.07120), with the knobs of
``torch.optim.lr_scheduler.OneCycleLR`` and of the course: the peak is placed at
an epoch (the seeds peaked at epoch 5 of 24), ``div_factor`` sets the start LR
(max_lr / div_factor), ``final_div_factor`` the end LR (start / final_div_factor),
annealing is cosine or linear, optionally three-phase (up, symmetric down, then
the final decay), and momentum (SGD momentum or Adam's beta1) cycles inversely.

The schedule is a pure function of the step, so resuming at step ``s`` gives
exactly the LR an uninterrupted run had. The phase fraction is clamped to
[0, 1] and the result to >= 0: one seed's log ended at LR -5.27e-07 because a
linear anneal was extrapolated past its last step; here a step past the end
stays at the final LR (tested).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class OneCycle:
    max_lr: float
    total_steps: int
    pct_start: float = 0.3  # fraction of steps spent warming up to max_lr
    div_factor: float = 25.0  # initial_lr = max_lr / div_factor
    final_div_factor: float = 1e4  # min_lr = initial_lr / final_div_factor
    anneal: str = "cos"  # "cos" or "linear"
    three_phase: bool = False
    cycle_momentum: bool = True
    base_momentum: float = 0.85
    max_momentum: float = 0.95

    def __post_init__(self):
        if self.max_lr <= 0 or self.total_steps < 1:
            raise ValueError("max_lr must be > 0 and total_steps >= 1")
        if not 0.0 < self.pct_start < 1.0:
            raise ValueError(f"pct_start must be in (0, 1), got {self.pct_start}")
        if self.anneal not in ("cos", "linear"):
            raise ValueError(f"anneal must be 'cos' or 'linear', got {self.anneal!r}")

    @classmethod
    def peak_at_epoch(cls, max_lr: float, epochs: int, steps_per_epoch: int, peak_epoch: float, **kw) -> OneCycle:
        """The schedule whose LR peaks at the end of ``peak_epoch`` (course style: 5 of 24)."""
        if not 0 < peak_epoch < epochs:
            raise ValueError(f"peak epoch must be within (0, {epochs}), got {peak_epoch}")
        return cls(max_lr=max_lr, total_steps=epochs * steps_per_epoch, pct_start=peak_epoch / epochs, **kw)

    @property
    def initial_lr(self) -> float:
        return self.max_lr / self.div_factor

    @property
    def min_lr(self) -> float:
        return self.initial_lr / self.final_div_factor

    def _phases(self) -> list[tuple[float, float, float, float, float]]:
        """(end step, lr start, lr end, momentum start, momentum end) per phase."""
        last = self.total_steps - 1
        up = self.pct_start * last
        if self.three_phase:
            return [
                (up, self.initial_lr, self.max_lr, self.max_momentum, self.base_momentum),
                (2 * up, self.max_lr, self.initial_lr, self.base_momentum, self.max_momentum),
                (last, self.initial_lr, self.min_lr, self.max_momentum, self.max_momentum),
            ]
        return [
            (up, self.initial_lr, self.max_lr, self.max_momentum, self.base_momentum),
            (last, self.max_lr, self.min_lr, self.base_momentum, self.max_momentum),
        ]

    def _interpolate(self, start: float, end: float, pct: float) -> float:
        pct = min(max(pct, 0.0), 1.0)
        if self.anneal == "cos":
            return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)
        return start + (end - start) * pct

    def _at(self, step: int, index: int) -> float:
        begin = 0.0
        for end, lr0, lr1, m0, m1 in self._phases():
            if step <= end or end >= self.total_steps - 1:
                span = max(end - begin, 1e-12)
                pair = (lr0, lr1) if index == 0 else (m0, m1)
                return self._interpolate(*pair, (step - begin) / span)
            begin = end
        raise AssertionError("unreachable")

    def lr_at(self, step: int) -> float:
        return max(self._at(step, 0), 0.0)

    def momentum_at(self, step: int) -> float:
        return self._at(step, 1)

    def apply(self, optimizer: torch.optim.Optimizer, step: int) -> float:
        """Set the LR (and momentum / beta1) of every param group for ``step``; returns the LR."""
        lr = self.lr_at(step)
        for group in optimizer.param_groups:
            group["lr"] = lr
            if self.cycle_momentum:
                if "betas" in group:
                    group["betas"] = (self.momentum_at(step), group["betas"][1])
                elif group.get("momentum", 0) > 0:
                    group["momentum"] = self.momentum_at(step)
        return lr
