"""Optimizers written once against the Array API: torch.optim's family, Lion, and schedulers.

Each optimizer's arithmetic is a rule written once (``neural_arch.optim.rule``
is its vocabulary), run by the generic Array API engine and by kernels
generated from it; the classes keep parameter groups and state around it, as
``torch.optim`` does, and ``neural_arch.optim.functional`` applies the same
rules to raw arrays.
"""

from . import functional, lr_scheduler, rule, schedules, swa_utils
from .adadelta import Adadelta
from .adafactor import Adafactor
from .adagrad import Adagrad
from .adam import Adam, AdamW
from .adamax import Adamax
from .asgd import ASGD
from .clip import clip_grad_norm_, clip_grad_value_
from .ema import EMA
from .lbfgs import LBFGS
from .lion import Lion
from .nadam import NAdam
from .optimizer import Optimizer
from .radam import RAdam
from .rmsprop import RMSprop
from .rprop import Rprop
from .schedulefree import AdamWScheduleFree, SGDScheduleFree
from .sgd import SGD
from .wrappers import Lookahead, MultiOptimizer, MultiSteps

__all__ = [
    "ASGD",
    "EMA",
    "LBFGS",
    "SGD",
    "Adadelta",
    "Adafactor",
    "Adagrad",
    "Adam",
    "AdamW",
    "AdamWScheduleFree",
    "Adamax",
    "Lion",
    "Lookahead",
    "MultiOptimizer",
    "MultiSteps",
    "NAdam",
    "Optimizer",
    "RAdam",
    "RMSprop",
    "Rprop",
    "SGDScheduleFree",
    "clip_grad_norm_",
    "clip_grad_value_",
    "functional",
    "lr_scheduler",
    "rule",
    "schedules",
    "swa_utils",
]
