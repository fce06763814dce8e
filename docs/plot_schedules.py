"""Plot the learning rate of every scheduler over 100 steps into docs/_static/schedules.png.

Run from the repository root: ``python docs/plot_schedules.py`` (needs matplotlib,
from the ``examples`` extra). Each curve is what ``scheduler.get_last_lr()[0]``
reports after each ``optimizer.step(); scheduler.step()``, starting from lr 0.1.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

import neural_arch as na
from neural_arch.optim import lr_scheduler as lrs

STEPS = 100
OUT = Path(__file__).resolve().parent / "_static" / "schedules.png"

# name -> function of an SGD optimizer (lr 0.1) returning the scheduler to plot
SCHEDULES = {
    "LambdaLR(lambda t: 1 / (1 + t / 10))": lambda o: lrs.LambdaLR(o, lambda t: 1 / (1 + t / 10)),
    "MultiplicativeLR(lambda t: 0.97)": lambda o: lrs.MultiplicativeLR(o, lambda t: 0.97),
    "StepLR(step_size=30, gamma=0.1)": lambda o: lrs.StepLR(o, step_size=30, gamma=0.1),
    "MultiStepLR([25, 60, 80], gamma=0.3)": lambda o: lrs.MultiStepLR(o, [25, 60, 80], 0.3),
    "ConstantLR(factor=0.25, total_iters=20)": lambda o: lrs.ConstantLR(o, 0.25, 20),
    "LinearLR(0.1, 1.0, total_iters=30)": lambda o: lrs.LinearLR(o, 0.1, 1.0, 30),
    "ExponentialLR(gamma=0.96)": lambda o: lrs.ExponentialLR(o, gamma=0.96),
    "PolynomialLR(total_iters=80, power=2)": lambda o: lrs.PolynomialLR(o, 80, power=2.0),
    "CosineAnnealingLR(T_max=40, eta_min=0.01)": lambda o: lrs.CosineAnnealingLR(o, 40, 0.01),
    "CosineAnnealingWarmRestarts(T_0=10, T_mult=2)": lambda o: lrs.CosineAnnealingWarmRestarts(
        o, T_0=10, T_mult=2
    ),
    "OneCycleLR(max_lr=0.1, total_steps=100)": lambda o: lrs.OneCycleLR(
        o, max_lr=0.1, total_steps=STEPS
    ),
    "CyclicLR(0.01, 0.1, step_size_up=10, 'triangular2')": lambda o: lrs.CyclicLR(
        o, 0.01, 0.1, step_size_up=10, mode="triangular2"
    ),
    "SequentialLR(LinearLR warmup, CosineAnnealingLR)": lambda o: lrs.SequentialLR(
        o,
        [lrs.LinearLR(o, 0.01, 1.0, total_iters=10), lrs.CosineAnnealingLR(o, T_max=90)],
        milestones=[10],
    ),
    "ChainedScheduler(ConstantLR, ExponentialLR)": lambda o: lrs.ChainedScheduler(
        [lrs.ConstantLR(o, 0.5, total_iters=20), lrs.ExponentialLR(o, gamma=0.98)]
    ),
    "ReduceLROnPlateau(patience=5, factor=0.5)": lambda o: lrs.ReduceLROnPlateau(
        o, patience=5, factor=0.5
    ),
    "get_linear_schedule_with_warmup(10, 100)": lambda o: lrs.get_linear_schedule_with_warmup(
        o, 10, STEPS
    ),
    "get_cosine_schedule_with_warmup(10, 100)": lambda o: lrs.get_cosine_schedule_with_warmup(
        o, 10, STEPS
    ),
}


def plateau_loss(t: int) -> float:
    """A loss that improves, then stalls: what ReduceLROnPlateau watches."""
    return max(math.exp(-t / 10), 0.2)


def lr_curve(make) -> list[float]:
    opt = na.SGD([na.Parameter(np.zeros(1))], lr=0.1, momentum=0.9)
    sched = make(opt)
    curve = [opt.param_groups[0]["lr"]]
    for t in range(STEPS):
        opt.step()
        if isinstance(sched, lrs.ReduceLROnPlateau):
            sched.step(plateau_loss(t))
        else:
            sched.step()
        curve.append(sched.get_last_lr()[0])
    return curve[:STEPS]


def main() -> None:
    cols = 3
    rows = math.ceil(len(SCHEDULES) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(12, 2.2 * rows), sharex=True)
    for ax, (name, make) in zip(axes.flat, SCHEDULES.items(), strict=False):
        ax.plot(range(STEPS), lr_curve(make), lw=1.5)
        ax.set_title(name, fontsize=8)
        ax.set_ylim(bottom=0)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(SCHEDULES) :]:
        ax.axis("off")
    for ax in axes[-1]:
        ax.set_xlabel("step", fontsize=8)
    fig.tight_layout()
    OUT.parent.mkdir(exist_ok=True)
    fig.savefig(OUT, dpi=72)
    print(f"wrote {OUT} ({OUT.stat().st_size // 1024} KiB)")


if __name__ == "__main__":
    main()
