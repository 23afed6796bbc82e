"""Memory planning (DESIGN.md pass 5): place every intermediate buffer of a program in one arena.

Input: the kernel schedule as `StepUse`s (which buffers each step reads and
writes, and which (input, output) pairs of that step may share memory) and
each buffer's size. Output: an `ArenaPlan` of 64-byte aligned offsets.

1. In place: an output may take the very memory of an input of the same
   step when that input is not used by any later step (the caller offers
   only pairs that are safe for the kernel, see below). The two buffers then
   become one *slot*.
2. Lifetimes: a slot lives from the first step that touches it to the last.
3. Offsets: slots are placed largest first, each at the lowest offset where
   it overlaps no already placed slot whose lifetime intersects its own
   (first fit). Slots that are never alive at the same time share memory.

Lifetimes are inclusive, so the buffers one step uses always get disjoint
memory, except an in-place pair, which is one slot: that is the aliasing
contract of `codegen.kernel.Program` (a kernel's buffers are disjoint, and
an in-place update reads and writes the same Buffer). Lowering offers an
in-place pair only for an elementwise kernel that reads the input at
exactly the element it writes (identical index maps), and the planner takes
at most one pair per step, whose store lowering puts last in the loop body:
every other output of the kernel has read the element before it is
overwritten.

`ArenaPlan.size` is the planned peak; `total_bytes` what the intermediates
would take with a buffer each.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

ALIGN = 64


def align_up(n: int, align: int = ALIGN) -> int:
    return (max(n, 1) + align - 1) // align * align


@dataclass(frozen=True)
class StepUse:
    reads: tuple = ()
    writes: tuple = ()
    inplace: tuple = ()          # (read key, written key) pairs that may share memory in this step


@dataclass(frozen=True)
class ArenaPlan:
    slot_of: dict                # buffer key -> slot number (an in-place pair shares a slot)
    offsets: dict                # slot -> byte offset in the arena
    sizes: dict                  # slot -> bytes reserved (aligned)
    lifetimes: dict              # slot -> (first step, last step), inclusive
    size: int                    # arena bytes: the planned peak
    total_bytes: int             # sum of every buffer's aligned size (what no reuse would take)
    inplace: tuple = field(default=())   # (read key, written key) pairs that share memory

    def span(self, key) -> tuple[int, int]:
        slot = self.slot_of[key]
        return self.offsets[slot], self.offsets[slot] + self.sizes[slot]


def plan_memory(steps: Sequence[StepUse], nbytes: dict) -> ArenaPlan:
    """Offsets for every buffer key in `nbytes` (keys not touched by any step get a slot of their own)."""
    last_use: dict = {}
    for k, step in enumerate(steps):
        for key in tuple(step.reads) + tuple(step.writes):
            last_use[key] = k
    slot_of: dict = {}
    lifetimes: dict = {}
    sizes: dict = {}
    merged = []

    def touch(key, k):
        slot = slot_of.get(key)
        if slot is None:
            slot = slot_of[key] = len(sizes)
            sizes[slot] = align_up(nbytes[key])
            lifetimes[slot] = (k, k)
        first, last = lifetimes[slot]
        lifetimes[slot] = (min(first, k), max(last, k))

    for k, step in enumerate(steps):
        for r, w in step.inplace:
            if (w in slot_of or r not in slot_of or last_use.get(r) != k
                    or align_up(nbytes[r]) != align_up(nbytes[w]) or r == w):
                continue
            slot_of[w] = slot_of[r]
            merged.append((r, w))
            break                                   # one pair per step (see the module docstring)
        for key in tuple(step.reads) + tuple(step.writes):
            touch(key, k)
    for key in nbytes:
        if key not in slot_of:
            touch(key, len(steps))
    offsets = _place(sizes, lifetimes)
    size = max((offsets[s] + sizes[s] for s in sizes), default=0)
    total = sum(align_up(n) for n in nbytes.values())
    return ArenaPlan(slot_of, offsets, sizes, lifetimes, size, total, tuple(merged))


def _place(sizes: dict, lifetimes: dict) -> dict:
    offsets: dict = {}
    placed: list = []
    for slot in sorted(sizes, key=lambda s: (-sizes[s], lifetimes[s][0], s)):
        first, last = lifetimes[slot]
        busy = sorted((offsets[o], offsets[o] + sizes[o]) for o in placed
                      if lifetimes[o][0] <= last and first <= lifetimes[o][1])
        offset = 0
        for lo, hi in busy:
            if offset + sizes[slot] <= lo:
                break
            offset = max(offset, hi)
        offsets[slot] = offset
        placed.append(slot)
    return offsets


def live_overlaps(plan: ArenaPlan) -> list:
    """Pairs of distinct slots alive at the same time whose memory overlaps (empty for a valid plan)."""
    bad = []
    slots = sorted(plan.sizes)
    for i, a in enumerate(slots):
        for b in slots[i + 1:]:
            (fa, la), (fb, lb) = plan.lifetimes[a], plan.lifetimes[b]
            if fa <= lb and fb <= la:
                oa, ob = plan.offsets[a], plan.offsets[b]
                if oa < ob + plan.sizes[b] and ob < oa + plan.sizes[a]:
                    bad.append((a, b))
    return bad


__all__ = ["StepUse", "ArenaPlan", "plan_memory", "live_overlaps", "align_up", "ALIGN"]
