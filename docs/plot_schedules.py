"""Plot every schedule over 100 steps, from lr 0.1, into docs/_static/schedules.png.

Run from the repository root: ``python docs/plot_schedules.py`` (needs matplotlib,
from the ``examples`` extra). A schedule that is a function of the step alone is
plotted from ``neural_arch.optim.schedules`` (the same values as its scheduler's
closed form); one that depends on more (a lambda, a metric, restarts, cycles,
chaining) is plotted from what ``scheduler.get_last_lr()[0]`` reports after each
``optimizer.step(); scheduler.step()``.
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
from neural_arch.optim import schedules as S

STEPS = 100
OUT = Path(__file__).resolve().parent / "_static" / "schedules.png"

# name -> a schedule: a function of the step (lr 0.1 at its start or peak), or
# ("scheduler", make) with make(optimizer) the scheduler to step
SCHEDULES = {
    "LambdaLR(lambda t: 1 / (1 + t / 10))": (
        "scheduler",
        lambda o: lrs.LambdaLR(o, lambda t: 1 / (1 + t / 10)),
    ),
    "MultiplicativeLR(lambda t: 0.97)": (
        "scheduler",
        lambda o: lrs.MultiplicativeLR(o, lambda t: 0.97),
    ),
    "step_decay(0.1, step_size=30, gamma=0.1)": S.step_decay(0.1, 30, 0.1),
    "multistep(0.1, [25, 60, 80], gamma=0.3)": S.multistep(0.1, [25, 60, 80], 0.3),
    "join([constant(0.025), constant(0.1)], [20])": S.join(
        [S.constant(0.025), S.constant(0.1)], [20]
    ),
    "linear(0.01, 0.1, 30)": S.linear(0.01, 0.1, 30),
    "exponential(0.1, gamma=0.96)": S.exponential(0.1, 0.96),
    "polynomial(0.1, 0, power=2, total_steps=80)": S.polynomial(0.1, 0.0, 2.0, 80),
    "cosine_annealing(0.1, eta_min=0.01, T_max=40)": S.cosine_annealing(0.1, 0.01, 40),
    "cosine_decay(0.1, 100, alpha=0.1)": S.cosine_decay(0.1, STEPS, alpha=0.1),
    "CosineAnnealingWarmRestarts(T_0=10, T_mult=2)": (
        "scheduler",
        lambda o: lrs.CosineAnnealingWarmRestarts(o, T_0=10, T_mult=2),
    ),
    "one_cycle(max_lr=0.1, total_steps=100)": S.one_cycle(0.1, STEPS),
    "CyclicLR(0.01, 0.1, step_size_up=10, 'triangular2')": (
        "scheduler",
        lambda o: lrs.CyclicLR(o, 0.01, 0.1, step_size_up=10, mode="triangular2"),
    ),
    "join([linear warmup, cosine_annealing], [10])": S.join(
        [S.linear(0.001, 0.1, 10), S.cosine_annealing(0.1, 0.0, 90)], [10]
    ),
    "ChainedScheduler(ConstantLR, ExponentialLR)": (
        "scheduler",
        lambda o: lrs.ChainedScheduler(
            [lrs.ConstantLR(o, 0.5, total_iters=20), lrs.ExponentialLR(o, gamma=0.98)]
        ),
    ),
    "ReduceLROnPlateau(patience=5, factor=0.5)": (
        "scheduler",
        lambda o: lrs.ReduceLROnPlateau(o, patience=5, factor=0.5),
    ),
    "warmup_then_decay(0.1, 10, 90, decay='linear')": S.warmup_then_decay(
        0.1, 10, 90, decay="linear"
    ),
    "warmup_then_decay(0.1, 10, 90)  (cosine)": S.warmup_then_decay(0.1, 10, 90),
    "warmup_stable_decay(0.1, 10, 60, 30)": S.warmup_stable_decay(0.1, 10, 60, 30),
}


def plateau_loss(t: int) -> float:
    """A loss that improves, then stalls: what ReduceLROnPlateau watches."""
    return max(math.exp(-t / 10), 0.2)


def lr_curve(schedule) -> list[float]:
    if callable(schedule):
        return [schedule(t) for t in range(STEPS)]
    _, make = schedule
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
    for ax, (name, schedule) in zip(axes.flat, SCHEDULES.items(), strict=False):
        ax.plot(range(STEPS), lr_curve(schedule), lw=1.5)
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
