import os
import stat
import tempfile
from pathlib import Path
from typing import Union

from mmengine.fileio import LocalBackend, register_backend

__all__ = ['AtomicLocalBackend']


def _new_file_mode() -> int:
    """Mode that ``open(path, 'w')`` would give a new file (0666 & ~umask)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


class AtomicLocalBackend(LocalBackend):
    """mmengine's local file backend with atomic writes.

    Each file goes to a temporary file beside the target and is renamed into
    place once complete, so a run killed mid-write keeps the previous good
    checkpoint instead of leaving a truncated one under the final name. As a
    plain write would, it writes through a symbolic link to its target, keeps
    an existing file's permissions and gives a new file the umask's.

    Registered under its own name: configs select it for checkpoints with
    ``default_hooks.checkpoint.backend_args = dict(backend='atomic_local')``;
    mmengine's ``local`` backend is left as it is.
    """

    def put(self, obj: bytes, filepath: Union[str, Path]) -> None:
        filepath = Path(os.path.realpath(filepath))
        filepath.parent.mkdir(parents=True, exist_ok=True)
        try:
            mode = stat.S_IMODE(filepath.stat().st_mode)
        except FileNotFoundError:
            mode = _new_file_mode()
        fd, tmp = tempfile.mkstemp(
            dir=filepath.parent, prefix=f'.{filepath.name}.', suffix='.tmp')
        try:
            with os.fdopen(fd, 'wb') as f:
                f.write(obj)
                f.flush()
                os.fchmod(f.fileno(), mode)
                os.fsync(f.fileno())
            os.replace(tmp, filepath)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def put_text(self,
                 obj: str,
                 filepath: Union[str, Path],
                 encoding: str = 'utf-8') -> None:
        self.put(obj.encode(encoding), filepath)


register_backend('atomic_local', AtomicLocalBackend, force=True)
