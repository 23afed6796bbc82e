"""Ctrl-C during a compiled call that has begun storing into its inputs.

Such a call cannot be abandoned half-applied, so the engine finishes it and
raises `FinishedInterrupt` with its outputs; the program commits them and the
interrupt goes on up (a plain KeyboardInterrupt to the user).
"""
from __future__ import annotations


class FinishedInterrupt(KeyboardInterrupt):
    """Ctrl-C arrived after the program began storing into its inputs (donated write-backs): the
    run was finished rather than abandoned half-applied. `outputs` (and, set by the caller,
    `results`) ride along so the caller can commit them before it stops."""

    def __init__(self, outputs):
        super().__init__()
        self.outputs = outputs
        self.results = None
