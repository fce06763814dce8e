"""Differentiable operations (stub: replaced by the foundation work)."""


def _stub(*args, **kwargs):
    raise NotImplementedError


binary_cross_entropy_with_logits = concat = cross_entropy_loss = exp = log = _stub
log_softmax = matmul = mse_loss = relu = sigmoid = softmax = sqrt = stack = tanh = where = _stub
