import errno
import fcntl
import os
import signal
import socket
import subprocess
import sys

import pytest

from regproxy.engine import WorkDirBusyError, WorkDirLock, work_dir_lock
from regproxy.engine.work_dir_lock import LOCK_NAME

# A process that holds the lock of the folder argv[1] until it is killed.
HOLDER = ('import sys, time\n'
          'from regproxy.engine import WorkDirLock\n'
          'lock = WorkDirLock(sys.argv[1])\n'
          'lock.acquire()\n'
          'print("locked", flush=True)\n'
          'time.sleep(120)\n')


def hold_lock(folder) -> subprocess.Popen:
    """A child process holding ``folder``'s lock (once it printed)."""
    child = subprocess.Popen([sys.executable, '-c', HOLDER, str(folder)],
                             stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline() == 'locked\n'
    return child


def test_second_run_stops_with_the_holders_name(tmp_path):
    with WorkDirLock(str(tmp_path)):
        with pytest.raises(WorkDirBusyError) as error:
            WorkDirLock(str(tmp_path)).acquire()
        message = str(error.value)
        assert f'host {socket.gethostname()}, process {os.getpid()}' in message
        assert str(tmp_path / LOCK_NAME) in message
    with WorkDirLock(str(tmp_path)):  # released
        pass


def test_lock_of_another_live_process_is_refused(tmp_path):
    child = hold_lock(tmp_path)
    try:
        with pytest.raises(WorkDirBusyError, match=f'process {child.pid}'):
            WorkDirLock(str(tmp_path)).acquire()
    finally:
        child.kill()
        child.wait()


def test_killed_holder_leaves_no_lock(tmp_path):
    child = hold_lock(tmp_path)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    with WorkDirLock(str(tmp_path)):
        assert (tmp_path / LOCK_NAME).read_text() == (
            f'host {socket.gethostname()}, process {os.getpid()}')


def test_leftover_lock_file_without_a_holder_is_taken(tmp_path):
    (tmp_path / LOCK_NAME).write_text('host node-7, process 1234')
    with WorkDirLock(str(tmp_path)):
        assert 'node-7' not in (tmp_path / LOCK_NAME).read_text()


def test_forked_child_of_a_killed_holder_keeps_no_lock(tmp_path):
    """A dataloader worker forked by the holder outlives a SIGKILL for a
    moment: the lock is its parent's alone."""
    code = HOLDER.replace(
        'print("locked", flush=True)\n',
        'import os\n'
        'child = os.fork()\n'
        'if child == 0:\n'
        '    time.sleep(120)\n'
        'print("locked", child, flush=True)\n')
    holder = subprocess.Popen([sys.executable, '-c', code, str(tmp_path)],
                              stdout=subprocess.PIPE, text=True)
    word, child = holder.stdout.readline().split()
    assert word == 'locked'
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    try:
        os.kill(int(child), 0)  # still alive
        with WorkDirLock(str(tmp_path)):
            pass
    finally:
        os.kill(int(child), signal.SIGKILL)


def test_filesystem_without_locks_warns_and_goes_on(tmp_path, monkeypatch):
    def no_locks(*args):
        raise OSError(errno.ENOLCK, 'No locks available')

    warnings = []
    monkeypatch.setattr(fcntl, 'lockf', no_locks)
    monkeypatch.setattr(work_dir_lock, 'print_log',
                        lambda message, *args, **kwargs: warnings.append(
                            message))
    with WorkDirLock(str(tmp_path)):
        assert (tmp_path / LOCK_NAME).read_text().startswith('host ')
    assert warnings == [
        f'cannot lock {tmp_path / LOCK_NAME} ([Errno {errno.ENOLCK}] No '
        'locks available): nothing stops a second run into this work dir']
