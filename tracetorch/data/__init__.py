"""Real datasets and augmentation transforms (`tt.data.datasets`, `tt.data.transforms`)."""
from . import datasets  # noqa: F401
from . import transforms  # noqa: F401
