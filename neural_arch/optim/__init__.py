"""Optimizers (stub: replaced by the optimizer work)."""


class Optimizer:
    pass


class SGD(Optimizer):
    pass


class Adam(Optimizer):
    pass


class AdamW(Adam):
    pass


def clip_grad_norm_(params, max_norm, norm_type=2.0):
    raise NotImplementedError


def clip_grad_value_(params, clip_value):
    raise NotImplementedError
