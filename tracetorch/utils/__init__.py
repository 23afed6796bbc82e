"""Utilities that mirror `torch.utils`: `tt.utils.data`."""
from . import data  # noqa: F401
