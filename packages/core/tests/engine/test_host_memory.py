"""`keep_freed_memory`: on glibc, a freed block is reused without the kernel faulting it in again."""

from __future__ import annotations

import subprocess
import sys

import pytest

PROBE = """
import resource, sys, torch
from arctic_core.engine.host_memory import keep_freed_memory

def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt

def steps():
    for _ in range(6):  # a step's pattern: allocate, touch, free
        x = torch.ones(8 << 20)  # 32 MiB, above glibc's largest dynamic mmap threshold
        y = torch.ones(1 << 20)  # 4 MiB
        del x, y
    before = faults()
    for _ in range(6):
        x = torch.ones(8 << 20)
        y = torch.ones(1 << 20)
        del x, y
    return faults() - before

plain = steps()
if sys.argv[1] == "keep":
    assert keep_freed_memory() is None
print(plain, steps())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_blocks_stay_in_the_process():
    plain, kept = map(int, subprocess.check_output([sys.executable, "-c", PROBE, "keep"], text=True).split())
    control = subprocess.check_output([sys.executable, "-c", PROBE, "plain"], text=True).split()
    # 6 x 36 MiB of fresh pages without (about 55,000 faults); none once the blocks stay
    assert plain > 6 * (36 << 20) // 4096 // 2, plain
    assert int(control[1]) > 6 * (36 << 20) // 4096 // 2, control
    assert kept < 500, kept
