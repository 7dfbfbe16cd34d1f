import fcntl
import logging
import os
import os.path as osp
import socket

from mmengine.logging import print_log

__all__ = ['WorkDirLock', 'WorkDirBusyError']

LOCK_NAME = '.train.lock'


class WorkDirBusyError(RuntimeError):
    """Another live run uses the folder."""


class WorkDirLock:
    """One training run per work dir at a time.

    The holder keeps an exclusive POSIX lock (``lockf``) on a file in the
    folder that names its host and process id. The kernel drops it when the
    process ends, killed or not, so no stale lock is ever left (the file
    stays); unlike ``flock``, forked dataloader workers do not inherit it.
    A filesystem without locks gets a warning and no lock.

    Args:
        work_dir (str): the folder to lock.
    """

    held = set()  # paths locked by this process: POSIX locks are per process

    def __init__(self, work_dir: str):
        self.path = osp.realpath(osp.join(work_dir, LOCK_NAME))
        self.file = None

    def _busy(self, holder: str) -> WorkDirBusyError:
        return WorkDirBusyError(
            f'{osp.dirname(self.path)} is in use by {holder} ({self.path}): '
            "two runs would overwrite each other's checkpoints. Use another "
            '--work-dir')

    def acquire(self) -> None:
        """Take the lock, or raise :class:`WorkDirBusyError`."""
        os.makedirs(osp.dirname(self.path), exist_ok=True)
        holder = f'host {socket.gethostname()}, process {os.getpid()}'
        if self.path in self.held:  # opening it again would risk the lock:
            raise self._busy(holder)  # any close of the file drops it
        file = open(self.path, 'a+')
        try:
            fcntl.lockf(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except (BlockingIOError, PermissionError):  # EAGAIN or EACCES
            file.seek(0)
            holder = file.read().strip() or 'another process'
            file.close()
            raise self._busy(holder) from None
        except OSError as error:  # e.g. a filesystem without locks
            print_log(f'cannot lock {self.path} ({error}): nothing stops a '
                      'second run into this work dir', 'current',
                      logging.WARNING)
        file.truncate(0)
        file.write(holder)
        file.flush()
        self.file = file
        self.held.add(self.path)

    def release(self) -> None:
        """Drop the lock (closing the file releases it)."""
        if self.file is not None:
            self.held.discard(self.path)
            self.file.close()
            self.file = None

    def __enter__(self) -> 'WorkDirLock':
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
