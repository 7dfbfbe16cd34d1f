"""Timing and peak-memory measurement for the benchmark tools.

Two implementations are timed side by side: after warm-up their steps
alternate call by call, so load from other processes hits both alike, and a
speed-up is the median of ratios of calls made back to back. Peak memory is
measured for each case in a fresh subprocess (see :func:`peak_memory`), so one
path's freed or cached memory never hides the other's.
"""
import os
import statistics
import subprocess
import sys
import time
from typing import Callable, Dict, List, Sequence

import torch

__all__ = [
    'MiB', 'autocast', 'synchronize', 'time_steps', 'peak_memory',
    'cpu_has_bf16', 'print_peak', 'peak_in_subprocess', 'print_comparison'
]

MiB = 2**20
PEAK_PREFIX = 'PEAK_BYTES '
Step = Callable[[], None]


def autocast(device: torch.device, dtype: torch.dtype):
    """Autocast to ``dtype``; a no-op for float32."""
    return torch.autocast(
        device.type, dtype=dtype, enabled=dtype != torch.float32)


def synchronize(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def time_steps(steps: Dict[str, Step], iters: int, warmup: int,
               device: torch.device) -> Dict[str, List[float]]:
    """Seconds of each of ``iters`` calls of every step. The steps alternate
    call by call (in turn reversed order), so call i of every step ran at
    nearly the same time and under the same load from other processes."""
    for step in steps.values():
        for _ in range(warmup):
            step()
    times = {name: [] for name in steps}
    names = list(steps)
    for i in range(iters):
        for name in names if i % 2 == 0 else reversed(names):
            synchronize(device)
            start = time.perf_counter()
            steps[name]()
            synchronize(device)
            times[name].append(time.perf_counter() - start)
    return times


def _status_bytes(field: str) -> int:
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(field + ':'):
                return int(line.split()[1]) * 1024  # the kernel reports kB
    raise RuntimeError(f'{field} missing from /proc/self/status')


def peak_memory(step: Step, steps: int, device: torch.device) -> int:
    """Peak bytes above the current use during ``steps`` calls of ``step``.

    CUDA: ``max_memory_allocated`` minus ``memory_allocated`` before (tensor
    bytes; the caching allocator's reserve is left out). CPU: the kernel's
    peak resident set size (``VmHWM``), reset to the current size through
    ``/proc/self/clear_refs`` right before the steps, minus ``VmRSS`` before;
    run it under :func:`peak_in_subprocess`, whose fixed mmap threshold makes
    RSS follow the live tensor bytes.
    """
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        for _ in range(steps):
            step()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    base = _status_bytes('VmRSS')
    with open('/proc/self/clear_refs', 'w') as f:
        f.write('5')  # resets VmHWM to the current RSS
    for _ in range(steps):
        step()
    return _status_bytes('VmHWM') - base


def print_peak(peak: int) -> None:
    """Report a worker's peak to :func:`peak_in_subprocess`."""
    print(PEAK_PREFIX + str(peak), flush=True)


def peak_in_subprocess(script_args: Sequence[str]) -> int:
    """Run ``python *script_args`` (a worker that ends with
    :func:`print_peak`) and return the peak it reports.

    glibc's malloc keeps freed blocks below its adaptive mmap threshold (up
    to 32 MiB) in its heap, which makes RSS depend on allocation history; the
    threshold is fixed at 128 KiB, so every tensor above it is mapped on
    allocation and unmapped when freed.
    """
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_=str(128 * 1024))
    result = subprocess.run([sys.executable, *script_args], env=env,
                            capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f'memory worker {script_args} failed:\n'
                           f'{result.stderr}')
    lines = [line for line in result.stdout.splitlines()
             if line.startswith(PEAK_PREFIX)]
    return int(lines[-1][len(PEAK_PREFIX):])


def cpu_has_bf16() -> bool:
    """Whether the CPU has bfloat16 instructions (AVX512-BF16 or AMX);
    without them bfloat16 kernels convert to float32 and back in software."""
    with open('/proc/cpuinfo') as f:
        flags = set(f.read().split())
    return bool(flags & {'avx512_bf16', 'amx_bf16'})


def print_comparison(rows: List[dict], case_label: str) -> None:
    """Print latency (median and fastest call), FPS and peak memory of every
    row (``case``, ``mode``, ``dtype``, ``path``, ``times``, ``batch``,
    ``peak``; rows in pairs: ours, then the reference); then per pair the
    speed-up, the median over calls i of reference_i / ours_i, and the
    memory ratio."""
    print(f'\n{case_label:<12} {"mode":<6} {"dtype":<9} {"path":<16} '
          f'{"latency (ms)":>12} {"min (ms)":>9} {"FPS":>8} '
          f'{"peak (MiB)":>11}')
    for row in rows:
        latency = statistics.median(row['times'])
        print(f'{row["case"]:<12} {row["mode"]:<6} {row["dtype"]:<9} '
              f'{row["path"]:<16} {latency * 1e3:>12.1f} '
              f'{min(row["times"]) * 1e3:>9.1f} '
              f'{row["batch"] / latency:>8.2f} {row["peak"] / MiB:>11.1f}')
    print('\nreference / ours (speed-up; peak-memory ratio):')
    for ours, ref in zip(rows[::2], rows[1::2]):
        speedup = statistics.median(
            r / o for r, o in zip(ref['times'], ours['times']))
        print(f'{ours["case"]:<12} {ours["mode"]:<6} {ours["dtype"]:<9} '
              f'speed x{speedup:.2f}  '
              f'memory x{ref["peak"] / max(ours["peak"], 1):.2f}')
