"""Logging and dumps, switched on by environment variables.

    TRACETORCH_LOGS=guards,recompiles,ir   comma-separated channels ("all" for every one):
        guards      every guard failure (which guard, expected vs. found)
        recompiles  every new trace, and why the cached ones did not fit
        ir          the IR of every compiled program
    TRACETORCH_DUMP=DIR   write each program's traced and optimized IR (and DOT) into DIR,
                          plus whatever the backend's executable dumps (`dump(dir, stem)`)

Messages go to the `tracetorch.jit` logger (a stderr handler is attached when
a channel is on). `configure()` re-reads the environment.
"""
from __future__ import annotations

import itertools
import logging
import os

logger = logging.getLogger("tracetorch.jit")
CHANNELS = ("guards", "recompiles", "ir")
_enabled: set = set()
_dump_dir: list = [None]
_counter = itertools.count()


def configure(logs: str | None = None, dump: str | None = None) -> None:
    spec = os.environ.get("TRACETORCH_LOGS", "") if logs is None else logs
    names = {s.strip() for s in spec.split(",") if s.strip()}
    if "all" in names:
        names = set(CHANNELS)
    _enabled.clear()
    _enabled.update(names & set(CHANNELS))
    _dump_dir[0] = os.environ.get("TRACETORCH_DUMP") or None if dump is None else dump or None
    if _enabled and not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("[tracetorch.jit] %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


def enabled(channel: str) -> bool:
    return channel in _enabled


def log(channel: str, message: str) -> None:
    if channel in _enabled:
        logger.info("%s: %s", channel, message)


def program_compiled(program) -> None:
    if "ir" in _enabled:
        logger.info("ir: %s\n%s", program.name, program.graph.text())
    directory = _dump_dir[0]
    if directory:
        os.makedirs(directory, exist_ok=True)
        stem = os.path.join(directory, f"{program.name}_{next(_counter)}")
        with open(stem + ".traced.txt", "w") as f:
            f.write(program.raw.text() + "\n")
        with open(stem + ".ir.txt", "w") as f:
            f.write(program.graph.text() + "\n")
        with open(stem + ".dot", "w") as f:
            f.write(program.graph.to_dot() + "\n")
        if program.backward is not None:
            with open(stem + ".backward.ir.txt", "w") as f:
                f.write(program.backward.graph.text() + "\n")
        dump = getattr(program.executable, "dump", None)
        if dump is not None:
            dump(directory, os.path.basename(stem))


configure()
