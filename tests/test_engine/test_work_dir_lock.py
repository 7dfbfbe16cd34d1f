import os
import socket
import subprocess
import sys

import pytest

from regproxy.engine import WorkDirBusyError, WorkDirLock
from regproxy.engine.work_dir_lock import LOCK_NAME


def test_second_run_stops_with_the_holders_name(tmp_path):
    with WorkDirLock(str(tmp_path)):
        with pytest.raises(WorkDirBusyError) as error:
            WorkDirLock(str(tmp_path)).acquire()
        message = str(error.value)
        assert socket.gethostname() in message
        assert f'process {os.getpid()}' in message
    assert not (tmp_path / LOCK_NAME).exists()  # released


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path):
    dead = subprocess.Popen([sys.executable, '-c', 'pass'])
    dead.wait()
    (tmp_path / LOCK_NAME).write_text(f'{socket.gethostname()} {dead.pid}')
    with WorkDirLock(str(tmp_path)):
        assert (tmp_path / LOCK_NAME).read_text() == (
            f'{socket.gethostname()} {os.getpid()}')


def test_lock_of_another_host_is_refused(tmp_path):
    (tmp_path / LOCK_NAME).write_text('node-7 1234')
    with pytest.raises(WorkDirBusyError, match='host node-7, process 1234'):
        WorkDirLock(str(tmp_path)).acquire()
    assert (tmp_path / LOCK_NAME).read_text() == 'node-7 1234'
