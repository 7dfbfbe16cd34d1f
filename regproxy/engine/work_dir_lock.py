import logging
import os
import os.path as osp
import socket
from typing import Optional, Tuple

from mmengine.logging import print_log

__all__ = ['WorkDirLock', 'WorkDirBusyError']

LOCK_NAME = '.train.lock'


class WorkDirBusyError(RuntimeError):
    """Another live run trains into the work dir."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class WorkDirLock:
    """One run per folder at a time (training: the work dir; testing: the
    ``--out`` folder).

    The lock is a file in the work dir naming the holder's host and process
    id, created atomically (``O_EXCL``). A second run stops with the holder's
    name; a lock left by a dead process of this host is taken over with a
    warning. A lock of another host cannot be checked and is refused (the
    message says how to remove it when that run is gone).

    Args:
        work_dir (str): the folder to lock.
        what (str): what the folder holds, for the message. Default:
            "checkpoints" (a training work dir).
        option (str): the option that chooses another folder. Default:
            "--work-dir".
    """

    def __init__(self, work_dir: str, what: str = 'checkpoints',
                 option: str = '--work-dir'):
        self.path = osp.join(work_dir, LOCK_NAME)
        self.owner = f'{socket.gethostname()} {os.getpid()}'
        self.what = what
        self.option = option

    def _holder(self) -> Optional[Tuple[str, int]]:
        try:
            with open(self.path) as f:
                host, pid = f.read().split()
            return host, int(pid)
        except (FileNotFoundError, ValueError):
            return None

    def acquire(self) -> None:
        """Take the lock, or raise :class:`WorkDirBusyError`."""
        os.makedirs(osp.dirname(self.path), exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                holder = self._holder()
                if holder is None:  # being written, or garbage
                    raise WorkDirBusyError(
                        f'{self.path} exists but names no run; if no '
                        'training uses this work dir, delete the file')
                host, pid = holder
                if host != socket.gethostname() or _alive(pid):
                    raise WorkDirBusyError(
                        f'{osp.dirname(self.path)} is in use by a run on '
                        f'host {host}, process {pid} ({self.path}): two '
                        f"runs would overwrite each other's {self.what}. "
                        f'Use another {self.option}, or, if that run is '
                        f'gone, delete {self.path}')
                print_log(
                    f'{self.path} was left by process {pid}, which has '
                    'ended: taking the work dir over', 'current',
                    level=logging.WARNING)
                os.unlink(self.path)
                continue
            with os.fdopen(fd, 'w') as f:
                f.write(self.owner)
            return
        raise WorkDirBusyError(f'could not take {self.path}')

    def release(self) -> None:
        """Remove the lock if this process still holds it."""
        if self._holder() == (socket.gethostname(), os.getpid()):
            os.unlink(self.path)

    def __enter__(self) -> 'WorkDirLock':
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
