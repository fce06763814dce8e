"""Optimizers written once against the Array API: SGD, Adam, AdamW, and their schedulers.

Each optimizer's arithmetic is a rule written once (``neural_arch.optim.rule``
is its vocabulary), run by the generic Array API engine and by kernels
generated from it; the classes keep parameter groups and state around it, as
``torch.optim`` does, and ``neural_arch.optim.functional`` applies the same
rules to raw arrays.
"""

from . import functional, lr_scheduler, rule
from .adam import Adam, AdamW
from .clip import clip_grad_norm_, clip_grad_value_
from .optimizer import Optimizer
from .sgd import SGD

__all__ = [
    "SGD",
    "Adam",
    "AdamW",
    "Optimizer",
    "clip_grad_norm_",
    "clip_grad_value_",
    "functional",
    "lr_scheduler",
    "rule",
]
