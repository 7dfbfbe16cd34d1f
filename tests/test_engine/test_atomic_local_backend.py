"""The atomic local backend, as mmengine's CheckpointHook uses it."""
import os
import stat
import subprocess
import sys

import pytest
import torch
from mmengine.fileio import LocalBackend, get_file_backend
from mmengine.runner.checkpoint import save_checkpoint

from regproxy.engine import AtomicLocalBackend

ATOMIC = dict(backend='atomic_local')


def test_selected_by_name_and_local_stays_mmengines(tmp_path):
    assert isinstance(get_file_backend(backend_args=ATOMIC),
                      AtomicLocalBackend)
    local = get_file_backend(str(tmp_path / 'x.pth'))
    assert type(local) is LocalBackend


def test_interrupted_write_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / 'iter_4.pth'
    save_checkpoint({'state_dict': {'w': torch.ones(3)}}, str(path),
                    backend_args=ATOMIC)
    good = path.read_bytes()

    def fail(fd):
        raise OSError('disk full')

    monkeypatch.setattr(os, 'fsync', fail)
    with pytest.raises(OSError, match='disk full'):
        save_checkpoint({'state_dict': {'w': torch.zeros(3)}}, str(path),
                        backend_args=ATOMIC)
    assert path.read_bytes() == good
    assert os.listdir(tmp_path) == ['iter_4.pth']  # no temporary left


def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_permissions_as_a_plain_write(tmp_path):
    backend = AtomicLocalBackend()
    new, plain = tmp_path / 'new.txt', tmp_path / 'plain.txt'
    backend.put_text('a', new)
    plain.write_text('a')
    assert _mode(new) == _mode(plain)  # the umask's, not mkstemp's 0600
    os.chmod(new, 0o640)
    backend.put_text('b', new)
    assert _mode(new) == 0o640 and new.read_text() == 'b'


def test_writes_through_a_symlink(tmp_path):
    target = tmp_path / 'store' / 'latest.pth'
    target.parent.mkdir()
    target.write_text('old')
    link = tmp_path / 'latest.pth'
    link.symlink_to(target)
    AtomicLocalBackend().put_text('new', link)
    assert link.is_symlink() and target.read_text() == 'new'


KILLED_MID_WRITE = '''
import os, signal, sys
from regproxy.engine import AtomicLocalBackend
os.fsync = lambda fd: os.kill(os.getpid(), signal.SIGKILL)
AtomicLocalBackend().put(b'partial', sys.argv[1])
'''


def test_temp_file_of_a_killed_writer_goes_at_the_next_write(tmp_path):
    killed = subprocess.run(
        [sys.executable, '-c', KILLED_MID_WRITE, str(tmp_path / 'iter_2.pth')])
    assert killed.returncode == -9
    stale = [p.name for p in tmp_path.iterdir()]
    assert len(stale) == 1 and stale[0].startswith('.iter_2.pth.')
    # a writer that still runs (this process) keeps its temporary file
    live = tmp_path / f'.iter_3.pth.{os.getpid()}.abcd1234.tmp'
    live.write_bytes(b'being written')
    AtomicLocalBackend().put(b'whole', tmp_path / 'iter_4.pth')
    assert sorted(p.name for p in tmp_path.iterdir()) == [live.name,
                                                          'iter_4.pth']
