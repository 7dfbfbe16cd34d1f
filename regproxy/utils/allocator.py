"""Keep freed memory in the process on the CPU.

glibc hands every block above 32 MiB to the kernel on ``free`` and maps a
fresh one on the next ``malloc``; the kernel then zero-fills it page by page
as it is first written. A 150-class 512x512 logits map is 157 MB, and
inference and training allocate several such tensors each step, so on the
CPU a good part of a step went to page faults: bilinear upsampling of such
a map took 133 ms with glibc's defaults and 41 ms with freed memory kept
(2-core AMD EPYC).
"""
import ctypes
import ctypes.util

__all__ = ['keep_freed_memory']

# mallopt() parameters from glibc's <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4


def keep_freed_memory() -> bool:
    """Make glibc serve large allocations from its heap and keep freed
    memory for reuse instead of returning it to the kernel.

    The process's resident memory then stays at its peak, which a training
    or test process reaches anyway. Affects allocations made after the call;
    dataloader workers forked later inherit it.

    Returns:
        bool: True if glibc took the settings, False elsewhere (other C
        libraries, macOS, Windows), where nothing changes.
    """
    name = ctypes.util.find_library('c')
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    # mallopt returns 1 on success
    return (mallopt(_M_MMAP_MAX, 0) == 1
            and mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1)
