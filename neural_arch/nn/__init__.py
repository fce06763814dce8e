"""Modules: ``Module``, ``Linear``, ``Sequential``, activations and ``Dropout``."""

from .layers import Dropout, Linear, ReLU, Sequential, Sigmoid, Softmax, Tanh
from .module import IncompatibleKeys, Module, StateDictKeyError

__all__ = [
    "Dropout",
    "IncompatibleKeys",
    "Linear",
    "Module",
    "ReLU",
    "Sequential",
    "Sigmoid",
    "Softmax",
    "StateDictKeyError",
    "Tanh",
]
