"""The host fingerprint (program keys without loading LLVM): the CPU's identity, not its clock.
(That a warm start never loads LLVM is tested in test_disk_cache.py, in a fresh process.)"""
from __future__ import annotations

from runtime.host import _first_entry

CPUINFO = """processor\t: {n}
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC
cpu MHz\t\t: {mhz}
apicid\t\t: {n}
flags\t\t: fpu sse2 avx2 {extra}
bogomips\t: 5192.24

processor\t: 1
flags\t\t: something else entirely
"""


def test_clock_and_core_numbers_do_not_matter_but_the_isa_does():
    a = _first_entry(CPUINFO.format(n=0, mhz="2596.122", extra="avx512f").splitlines(True))
    b = _first_entry(CPUINFO.format(n=3, mhz="3700.000", extra="avx512f").splitlines(True))
    c = _first_entry(CPUINFO.format(n=0, mhz="2596.122", extra="").splitlines(True))
    assert a == b and a != c
    assert "AMD EPYC" in a and "something else" not in a         # the first CPU's entry only

