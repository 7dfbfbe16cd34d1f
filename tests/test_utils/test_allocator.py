"""keep_freed_memory: freed large tensors stay in the process (glibc)."""
import os
import subprocess
import sys

import pytest

MODULE = os.path.join(
    os.path.dirname(__file__), '..', '..', 'regproxy', 'utils', 'allocator.py')

# The module is loaded by path: importing the package would pull in mmseg.
SCRIPT = """
import importlib.util, os, sys
import torch
spec = importlib.util.spec_from_file_location('allocator', sys.argv[2])
allocator = importlib.util.module_from_spec(spec)
spec.loader.exec_module(allocator)

def resident_bytes():
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE')

if sys.argv[1] == 'keep':
    assert allocator.keep_freed_memory()
before = resident_bytes()
tensor = torch.ones(50_000_000)  # 200 MB, written
del tensor
print((resident_bytes() - before) / 2**20)
"""


def _retained_mib(mode: str) -> float:
    output = subprocess.run(
        [sys.executable, '-c', SCRIPT, mode, MODULE],
        capture_output=True, text=True, check=True).stdout
    return float(output.splitlines()[-1])


@pytest.mark.skipif(not os.path.exists('/proc/self/statm'),
                    reason='needs Linux /proc')
def test_freed_tensor_memory_is_kept_for_reuse():
    assert _retained_mib('default') < 50  # glibc unmapped it on free
    assert _retained_mib('keep') > 150
