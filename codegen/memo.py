"""Memo of rendered expressions, one scope per emitted block: both renderers share it.

Expressions are DAGs, so a node is rendered once per block and reused inside
it and its nested blocks. After a write to memory or to an accumulator, the
renderings that read state are stale and are forgotten.
"""
from __future__ import annotations

from typing import Callable


class ScopedMemo:
    def __init__(self):
        self.scopes: list[dict] = [{}]      # key -> (rendered value, reads_state)

    def push(self) -> None:
        self.scopes.append({})

    def pop(self) -> None:
        self.scopes.pop()

    def get(self, key, render: Callable[[], tuple]) -> tuple:
        """The memoized (value, reads_state) for `key`, rendering it into the innermost scope if new."""
        for scope in reversed(self.scopes):
            hit = scope.get(key)
            if hit is not None:
                return hit
        hit = render()
        self.scopes[-1][key] = hit
        return hit

    def forget_state(self) -> None:
        for scope in self.scopes:
            for key in [k for k, (_, stateful) in scope.items() if stateful]:
                del scope[key]
