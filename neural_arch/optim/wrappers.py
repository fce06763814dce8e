"""Optimizers around an optimizer: gradient accumulation, Lookahead, one optimizer per part.

- :class:`MultiSteps` (Optax's ``MultiSteps``): accumulate gradients over
  ``every_k`` calls, then step the inner optimizer once on their mean.
- :class:`Lookahead` (Zhang et al. 2019): slow weights pulled towards the
  inner optimizer's every ``k`` steps, and the parameters reset to them.
- :class:`MultiOptimizer` (Optax's ``partition``, Keras's ``MultiOptimizer``):
  several optimizers over disjoint parameters, stepped, zeroed and saved as one.

Each has ``step``, ``zero_grad``, ``param_groups`` (so schedulers attach to
it), ``state_dict`` and ``load_state_dict`` (all or nothing, checked), and
runs on every backend the inner optimizers run on; see
docs/training_utilities.md.
"""

from .lookahead import Lookahead
from .multi_optimizer import MultiOptimizer
from .multisteps import MultiSteps

__all__ = ["Lookahead", "MultiOptimizer", "MultiSteps"]
