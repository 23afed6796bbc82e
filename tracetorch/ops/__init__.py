"""The primitive ops. Importing this package registers all of them."""
from .registry import REGISTRY, Aval, OpDef, get, register  # noqa: F401
from . import elementwise, reduce, movement, indexing, linalg, random, creation  # noqa: F401
from .dispatch import apply  # noqa: F401
