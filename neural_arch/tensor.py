"""Tensor (stub: replaced by the foundation work)."""

_clip = 1e6


class Tensor:
    pass


class Parameter(Tensor):
    pass


def no_grad():
    raise NotImplementedError


def enable_grad():
    raise NotImplementedError


def is_grad_enabled():
    return True


def set_grad_clip(value):
    global _clip
    _clip = value


def get_grad_clip():
    return _clip
