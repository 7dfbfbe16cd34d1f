import io
from pathlib import Path
from typing import Any, Union

import torch
from mmengine.runner import CheckpointLoader

from .atomic_local_backend import AtomicLocalBackend
from .checkpoint_loader import read_checkpoint


def atomic_save(obj: Any, path: Union[str, Path]) -> None:
    """``torch.save`` that never leaves a partial file under ``path``."""
    with io.BytesIO() as buffer:
        torch.save(obj, buffer)
        AtomicLocalBackend().put(buffer.getvalue(), path)


@CheckpointLoader.register_scheme(prefixes='', force=True)
def load_local_checkpoint(filename: str, map_location=None) -> dict:
    """mmengine's loader for local files (``init_model``, ``pretrained``).

    torch >= 2.6 loads ``weights_only`` by default, which refuses the
    message-hub and random states of training checkpoints; checkpoints are
    the user's own files, so they load in full, with errors that name the
    file (``read_checkpoint``).
    """
    return read_checkpoint(filename, map_location)
