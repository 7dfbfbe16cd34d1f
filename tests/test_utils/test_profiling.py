import torch

from regproxy.utils.profiling import peak_in_subprocess, time_steps

WORKER = """
import torch
from regproxy.utils.profiling import peak_memory, print_peak

def step():
    torch.ones({numel}, dtype=torch.float32)  # touched, then freed

print_peak(peak_memory(step, 2, torch.device('cpu')))
"""


def test_peak_memory_sees_a_known_allocation():
    size = 64 * 2**20
    peak = peak_in_subprocess(['-c', WORKER.format(numel=size // 4)])
    assert 0.9 * size < peak < 1.3 * size


def test_steps_alternate_and_are_all_timed():
    calls = []
    steps = {name: (lambda n=name: calls.append(n)) for name in 'ab'}
    times = time_steps(steps, iters=3, warmup=1, device=torch.device('cpu'))
    assert {k: len(v) for k, v in times.items()} == {'a': 3, 'b': 3}
    assert calls == ['a', 'b', 'a', 'b', 'b', 'a', 'a', 'b']
