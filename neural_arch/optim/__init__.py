"""Optimizers written once against the Array API: SGD, Adam, AdamW, and their schedulers.

``neural_arch.optim.functional`` holds the pure update rules; the classes
here keep parameter groups and state around them, as ``torch.optim`` does.
"""

from . import functional, lr_scheduler
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
]
