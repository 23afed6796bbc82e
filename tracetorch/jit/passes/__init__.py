"""IR passes: each module one pass, Graph -> Graph (see pipeline.py for the order)."""
from .autodiff import backprop, expand_backward, joint, lower_markers  # noqa: F401
from .cse import cse  # noqa: F401
from .dce import dce  # noqa: F401
from .fold import fold  # noqa: F401
from .functionalize import functionalize  # noqa: F401
from .partition import Split, partition  # noqa: F401
from .pipeline import lower, lower_with_backward, run_passes  # noqa: F401
from .simplify import simplify  # noqa: F401
from .verify import IRError, verify  # noqa: F401
