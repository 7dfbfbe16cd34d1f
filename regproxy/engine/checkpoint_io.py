import io
from pathlib import Path
from typing import Any, Union

import torch

from .atomic_local_backend import AtomicLocalBackend


def atomic_save(obj: Any, path: Union[str, Path]) -> None:
    """``torch.save`` that never leaves a partial file under ``path``."""
    with io.BytesIO() as buffer:
        torch.save(obj, buffer)
        AtomicLocalBackend().put(buffer.getvalue(), path)
