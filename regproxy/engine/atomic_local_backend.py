import os
import re
import secrets
import stat
from pathlib import Path
from typing import Union

from mmengine.fileio import LocalBackend, register_backend

__all__ = ['AtomicLocalBackend']

# ``.NAME.PID.XXXXXXXX.tmp``: the temporary file of a writer process.
_TEMP_NAME = re.compile(r'^\..+\.(\d+)\.[0-9a-f]{8}\.tmp$')


def _is_running(pid: int) -> bool:
    """Whether process ``pid`` of this host still runs."""
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _remove_stale_temp_files(folder: Path) -> None:
    """Remove the temporary files that killed writers left in ``folder``;
    a file whose writer still runs is left to it."""
    for path in folder.iterdir():
        match = _TEMP_NAME.match(path.name)
        if match and not _is_running(int(match.group(1))):
            path.unlink(missing_ok=True)


class AtomicLocalBackend(LocalBackend):
    """mmengine's local file backend with atomic writes, registered as
    ``atomic_local`` (mmengine's ``local`` is left as it is).

    Each file goes to a temporary file beside the target, renamed into place
    once complete: a run killed mid-write keeps the previous checkpoint, and
    its temporary file (``.NAME.PID.XXXXXXXX.tmp``) goes at the next write
    to the folder. As a plain write, it follows a symbolic link and keeps an
    existing file's permissions (a new file gets the umask's).
    """

    def put(self, obj: bytes, filepath: Union[str, Path]) -> None:
        filepath = Path(os.path.realpath(filepath))
        filepath.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_temp_files(filepath.parent)
        tmp = filepath.with_name(
            f'.{filepath.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp')
        # created as open(path, 'w') would create it: 0666 & ~umask
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            with os.fdopen(fd, 'wb') as f:
                f.write(obj)
                f.flush()
                if filepath.exists():
                    os.fchmod(f.fileno(),
                              stat.S_IMODE(filepath.stat().st_mode))
                os.fsync(f.fileno())
            os.replace(tmp, filepath)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def put_text(self,
                 obj: str,
                 filepath: Union[str, Path],
                 encoding: str = 'utf-8') -> None:
        self.put(obj.encode(encoding), filepath)


register_backend('atomic_local', AtomicLocalBackend, force=True)
