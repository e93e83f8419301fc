"""tmkd_hf._allocator: glibc's mmap threshold held fixed (`tmkd_hf.use_fixed_mmap_threshold`), seen from a new process.

That the labelling pass trims the heap after every batch is tested with the pass (tests/test_labelling.py).
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys

import pytest

from tmkd_hf import use_fixed_mmap_threshold

_ALLOCATOR_PROBE = r"""
import ctypes, json, sys

from tmkd_hf import use_fixed_mmap_threshold


class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
applied = use_fixed_mmap_threshold() if sys.argv[1] == "fixed" else None


def mmapped_while_held(size):
    before = libc.mallinfo2().hblks
    block = libc.malloc(size)
    held = libc.mallinfo2().hblks - before
    libc.free(block)
    return held


print(json.dumps({"applied": applied, "first": mmapped_while_held(4 << 20), "second": mmapped_while_held(4 << 20)}))
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt / mallinfo2 only")
def test_use_fixed_mmap_threshold_keeps_large_blocks_out_of_the_heap(tmp_path):
    """glibc's dynamic threshold puts a 4 MiB block on the heap once one was freed; the fixed one keeps mmapping it."""
    def probe(mode):
        done = subprocess.run([sys.executable, "-c", _ALLOCATOR_PROBE, mode], capture_output=True, text=True,
                              timeout=300, check=True)
        return json.loads(done.stdout.strip().splitlines()[-1])

    dynamic, fixed = probe("dynamic"), probe("fixed")
    assert dynamic["second"] == 0  # the threshold rose to the freed block's size: the next one came from the heap
    assert fixed == {"applied": True, "first": 1, "second": 1}
    with pytest.raises(ValueError, match="positive"):
        use_fixed_mmap_threshold(0)
