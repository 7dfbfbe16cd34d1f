import logging
import os
import os.path as osp
import socket

from mmengine.logging import print_log

from .atomic_local_backend import is_running

__all__ = ['WorkDirLock', 'WorkDirBusyError']

LOCK_NAME = '.train.lock'


class WorkDirBusyError(RuntimeError):
    """Another live run uses the folder."""


class WorkDirLock:
    """One training run per work dir at a time.

    The lock is a file in the folder naming the holder's host and process
    id, created atomically (``O_EXCL``). A second run stops with the
    holder's name; a lock left by a dead process of this host (a killed
    run) is taken over with a warning. A lock of another host cannot be
    checked and is refused (the message says how to remove it).

    Args:
        work_dir (str): the folder to lock.
    """

    def __init__(self, work_dir: str):
        self.path = osp.join(work_dir, LOCK_NAME)
        self.owner = f'{socket.gethostname()} {os.getpid()}'

    def _holder(self) -> str:
        """The lock file's text, '' without one."""
        try:
            with open(self.path) as f:
                return f.read()
        except FileNotFoundError:
            return ''

    def acquire(self) -> None:
        """Take the lock, or raise :class:`WorkDirBusyError`."""
        os.makedirs(osp.dirname(self.path), exist_ok=True)
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            host, _, pid = self._holder().partition(' ')
            if not pid.isdigit():  # being written, or garbage
                raise WorkDirBusyError(
                    f'{self.path} exists but names no run; if no run uses '
                    'this folder, delete the file')
            if host == socket.gethostname() and not is_running(int(pid)):
                print_log(
                    f'{self.path} was left by process {pid}, which has '
                    'ended: taking the folder over', 'current',
                    level=logging.WARNING)
                os.unlink(self.path)
                return self.acquire()
            raise WorkDirBusyError(
                f'{osp.dirname(self.path)} is in use by a run on host '
                f'{host}, process {pid} ({self.path}): two runs would '
                "overwrite each other's checkpoints. Use another "
                f'--work-dir, or, if that run is gone, delete {self.path}')
        with os.fdopen(fd, 'w') as f:
            f.write(self.owner)

    def release(self) -> None:
        """Remove the lock if this process still holds it."""
        if self._holder() == self.owner:
            os.unlink(self.path)

    def __enter__(self) -> 'WorkDirLock':
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
