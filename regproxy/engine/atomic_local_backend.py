import os
import tempfile
from pathlib import Path
from typing import Union

from mmengine.fileio import LocalBackend, register_backend


class AtomicLocalBackend(LocalBackend):
    """mmengine's local file backend with atomic writes.

    Checkpoints (and every other file mmengine writes through its file
    backend) go to a temporary file in the target folder and are renamed into
    place once complete, so a run killed mid-write keeps the previous good
    checkpoint instead of leaving a truncated one under the final name.
    """

    def put(self, obj: bytes, filepath: Union[str, Path]) -> None:
        filepath = Path(filepath)
        filepath.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(
            dir=filepath.parent, prefix=f'.{filepath.name}.', suffix='.tmp')
        try:
            with os.fdopen(fd, 'wb') as f:
                f.write(obj)
                f.flush()
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


# Local paths have no URI prefix; replace mmengine's backend for them.
register_backend('local', AtomicLocalBackend, force=True, prefixes='')
