"""Train with checkpoints: stop at any point (Ctrl-C, a crash) and resume, on any backend.

Fits an MLP to a noisy sine with Adam and a cosine learning-rate schedule,
writing model, optimizer and scheduler state to ``--checkpoint`` every
``--save-every`` steps.  Started again, it resumes from the checkpoint, on
the backend given this time::

    python examples/resume_training.py --steps 600 --stop-after 250   # "crashes" at 250
    python examples/resume_training.py --steps 600                     # resumes from 250
    python examples/resume_training.py --steps 600 --backend torch     # or resume on PyTorch

In float64 the resumed run ends with exactly the parameters of an
uninterrupted one (same backend; ``--fresh`` ignores the checkpoint).
"""

from __future__ import annotations

import argparse
import os

import numpy as np

import neural_arch as na


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--save-every", type=int, default=50)
    parser.add_argument("--stop-after", type=int, default=None, help="simulate a crash")
    parser.add_argument("--checkpoint", default="sine.safetensors")
    parser.add_argument("--backend", default="numpy")
    parser.add_argument("--fresh", action="store_true", help="ignore an existing checkpoint")
    args = parser.parse_args()
    na.set_default_dtype("float64")

    rng = np.random.default_rng(0)
    x = np.linspace(-np.pi, np.pi, 256).reshape(-1, 1)
    y = np.sin(x) + 0.05 * rng.standard_normal(x.shape)
    x = na.Tensor(na.backend.to_backend(x, args.backend))
    y = na.Tensor(na.backend.to_backend(y, args.backend))

    na.manual_seed(0)
    model = na.Sequential(na.Linear(1, 32), na.Tanh(), na.Linear(32, 1)).to(args.backend)
    opt = na.Adam(model.parameters(), lr=0.02)
    sched = na.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=args.steps)
    step = 0
    if os.path.exists(args.checkpoint) and not args.fresh:
        ckpt = na.load(args.checkpoint)  # NumPy arrays; load_state_dict moves them
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        step = ckpt["step"]
        print(f"resumed from {args.checkpoint} at step {step} on {args.backend}")

    while step < args.steps:
        opt.zero_grad()
        loss = na.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        sched.step()
        step += 1
        if step % args.save_every == 0 or step == args.steps:
            state = {"model": model.state_dict(), "optimizer": opt.state_dict()}
            na.save({**state, "scheduler": sched.state_dict(), "step": step}, args.checkpoint)
            print(f"step {step:4d}  loss {float(loss.data):.5f}  saved {args.checkpoint}")
        if step == args.stop_after:
            print(f"stopping at step {step}; run again to resume")
            return
    first = na.backend.to_numpy(model.parameters()[0].data).ravel()[:3]
    print(f"done: final loss {float(loss.data):.6f}, first weights {first}")


if __name__ == "__main__":
    main()
