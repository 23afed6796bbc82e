"""Optimizers and learning-rate schedulers (`tt.optim`, `tt.optim.lr_scheduler`)."""
from . import lr_scheduler  # noqa: F401
from .adam import Adam, AdamW  # noqa: F401
from .optimizer import Optimizer, ParamGroup  # noqa: F401
from .sgd import SGD  # noqa: F401

__all__ = ["Optimizer", "ParamGroup", "SGD", "Adam", "AdamW", "lr_scheduler"]
