"""neural_arch: neural-network optimizers written once against the Python Array API.

The same Adam, AdamW and SGD train parameters held in NumPy, CuPy, PyTorch,
JAX or array-api-strict arrays; the array namespace always comes from the
parameters themselves.  Around them: a Tensor with reverse-mode autograd,
``Linear`` and friends, losses, schedulers and portable checkpoints.
"""

from . import optim
from .backend import (
    get_default_backend,
    get_default_dtype,
    manual_seed,
    set_default_backend,
    set_default_dtype,
)
from .checkpoint import load, save
from .functional import (
    binary_cross_entropy_with_logits,
    concat,
    cross_entropy_loss,
    exp,
    log,
    log_softmax,
    matmul,
    mse_loss,
    relu,
    sigmoid,
    softmax,
    sqrt,
    stack,
    tanh,
    where,
)
from .nn import Dropout, Linear, Module, ReLU, Sequential, Sigmoid, Softmax, Tanh
from .optim import SGD, Adam, AdamW, Optimizer, clip_grad_norm_, clip_grad_value_
from .tensor import (
    Parameter,
    Tensor,
    enable_grad,
    get_grad_clip,
    is_grad_enabled,
    no_grad,
    set_grad_clip,
)

__version__ = "0.1.0"

__all__ = [
    "SGD",
    "Adam",
    "AdamW",
    "Dropout",
    "Linear",
    "Module",
    "Optimizer",
    "Parameter",
    "ReLU",
    "Sequential",
    "Sigmoid",
    "Softmax",
    "Tanh",
    "Tensor",
    "binary_cross_entropy_with_logits",
    "clip_grad_norm_",
    "clip_grad_value_",
    "concat",
    "cross_entropy_loss",
    "enable_grad",
    "exp",
    "get_default_backend",
    "get_default_dtype",
    "get_grad_clip",
    "is_grad_enabled",
    "load",
    "log",
    "log_softmax",
    "manual_seed",
    "matmul",
    "mse_loss",
    "no_grad",
    "optim",
    "relu",
    "save",
    "set_default_backend",
    "set_default_dtype",
    "set_grad_clip",
    "sigmoid",
    "softmax",
    "sqrt",
    "stack",
    "tanh",
    "where",
]
