"""regproxy.utils.distributed.end_process_group: gloo's threads are joined
before the interpreter exits, even while a reference cycle (as a runner and
its wrapped model form) still holds the process group."""
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# One gloo process holding its group in a DDP model inside a reference cycle;
# prints the process's thread count before the group, with it, and after.
SCRIPT = """
import os, socket, sys
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from regproxy.utils import end_process_group

def threads():
    return len(os.listdir('/proc/self/task'))

before = threads()
with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
dist.init_process_group(
    'gloo', init_method=f'tcp://127.0.0.1:{port}', rank=0, world_size=1)
holder = {'model': DistributedDataParallel(torch.nn.Linear(2, 2))}
holder['self'] = holder
del holder
dist.broadcast_object_list([1], src=0)
during = threads()
if sys.argv[1] == 'end_process_group':
    end_process_group()
else:
    dist.destroy_process_group()
print(before, during, threads(), dist.is_initialized())
"""


def _thread_counts(how: str) -> list:
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, '-c', SCRIPT, how],
                         env=env,
                         capture_output=True,
                         text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.split()[-4:]


def test_gloo_threads_are_joined_when_a_cycle_holds_the_group():
    before, during, after, initialized = _thread_counts('end_process_group')
    assert int(during) > int(before)  # gloo's worker threads
    assert after == before
    assert initialized == 'False'
    # torch's destroy_process_group alone leaves them running until exit.
    before, during, after, _ = _thread_counts('destroy_process_group')
    assert after == during != before


def test_no_process_group_is_a_no_op():
    from regproxy.utils import end_process_group
    end_process_group()  # torch would raise: no default process group
