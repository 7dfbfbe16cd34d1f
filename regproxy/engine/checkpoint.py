"""Reading, checking and writing checkpoint files.

Every checkpoint or weights file that regproxy reads goes through
:func:`load_checkpoint_file`, which unpickles with ``weights_only=True`` and
an allow-list (:data:`SAFE_GLOBALS`) of the few non-tensor types that
mmengine's training checkpoints hold, so no code runs from a downloaded file.
A file that needs anything else is refused unless the user trusts it:
``trust_checkpoint = True`` in the config, ``--trust-checkpoint`` on the
scripts, or the :func:`trusted_checkpoints` context in Python.
"""
import contextlib
import contextvars
import io
import logging
import pickle
import re
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn as nn
from mmengine.logging import HistoryBuffer, print_log

from .atomic_local_backend import AtomicLocalBackend

__all__ = [
    'SAFE_GLOBALS', 'TRUST_HINT', 'CheckpointError', 'trusted_checkpoints',
    'load_checkpoint_file', 'save_checkpoint_file', 'check_state_dict_fits',
    'revised_state_dict', 'load_weights', 'load_segmentor_checkpoint'
]

CONVERTER = 'tools/model_converters/vit2regproxy.py'


def _history_buffer_method(owner: type, name: str):
    """Stands in for ``getattr`` while unpickling: a pickled HistoryBuffer
    names its statistics methods as ``getattr(HistoryBuffer, 'mean')``.
    Anything else is refused, so no other attribute can be reached."""
    method = getattr(HistoryBuffer, name, None)
    if owner is not HistoryBuffer or name.startswith('_') or not callable(
            method):
        raise pickle.UnpicklingError(
            f'Unsupported global: GLOBAL builtins.getattr on {owner!r}, '
            f'{name!r} (only HistoryBuffer statistics methods)')
    return method


# What mmengine's own training checkpoints hold besides tensors and Python
# containers: the message hub's HistoryBuffers (numpy arrays and statistics
# methods inside), numpy scalars in its runtime info, numpy random states.
SAFE_GLOBALS = [
    HistoryBuffer,
    (_history_buffer_method, 'builtins.getattr'),
    np.core.multiarray._reconstruct,
    np.core.multiarray.scalar,
    np.ndarray,
    np.dtype,
    type(np.dtype(np.float64)),
    type(np.dtype(np.float32)),
    type(np.dtype(np.int64)),
    type(np.dtype(np.uint32)),
]

TRUST_HINT = ('Load it only if you trust where it comes from: '
              '--trust-checkpoint on train.py, test.py and the tools, or '
              'trust_checkpoint = True in the config')

_trusted = contextvars.ContextVar('regproxy_trusted_checkpoints',
                                  default=False)


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be read or does not fit the model."""


@contextlib.contextmanager
def trusted_checkpoints(enabled: bool = True) -> Iterator[None]:
    """Within this context regproxy unpickles checkpoint files in full.

    Only for files from a trusted source: unpickling may run code.

    Args:
        enabled (bool): whether files are trusted inside the context.
    """
    token = _trusted.set(enabled)
    try:
        yield
    finally:
        _trusted.reset(token)


def load_checkpoint_file(filename: Union[str, Path],
                         map_location: Any = 'cpu',
                         trust: Optional[bool] = None,
                         mmap: bool = False) -> Any:
    """``torch.load`` restricted to weights, with errors naming the file.

    Args:
        filename (str | Path): the file.
        map_location: as for ``torch.load``. Default: 'cpu'.
        trust (bool, optional): unpickle in full; None follows
            :func:`trusted_checkpoints` (off by default).
        mmap (bool): map the tensors' storage instead of reading it (cheap
            for looking at the metadata only).

    Returns:
        The loaded object.

    Raises:
        CheckpointError: the file is missing, truncated or corrupt, or asks
            for a type outside :data:`SAFE_GLOBALS` and is not trusted.
    """
    path = Path(filename).expanduser()
    if not path.is_file():
        raise CheckpointError(f'checkpoint {path} does not exist')
    if trust is None:
        trust = _trusted.get()
    try:
        if trust:
            return torch.load(path, map_location=map_location,
                              weights_only=False, mmap=mmap)
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            return torch.load(path, map_location=map_location,
                              weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as error:
        asks = _refused_request(str(error))
        if asks is None:
            raise _unreadable(path, error) from None
        raise CheckpointError(
            f'refusing to load {path}: it asks for {asks}, which is not what '
            'checkpoints hold (regproxy.engine.SAFE_GLOBALS); unpickling it '
            f'could run code from the file. {TRUST_HINT}') from None
    except Exception as error:  # torch raises many kinds on a bad file
        raise _unreadable(path, error) from None


# What torch's weights-only unpickler says when a file asks for more than
# weights (as opposed to a file that is cut or corrupt).
_REFUSALS = [
    re.compile(r'GLOBAL ([\w.]+)'),  # a global outside the allow-list
    re.compile(r'call reduce for unrecognized function (.+)'),
    re.compile(r'Can only (?:build|create new object) .* but got (.+)'),
]


def _refused_request(message: str) -> Optional[str]:
    """What a file asked for that the weights-only unpickler refused."""
    for pattern in _REFUSALS:
        match = pattern.search(message)
        if match:
            return match.group(1).strip()
    return None


def _unreadable(path: Path, error: BaseException) -> CheckpointError:
    return CheckpointError(
        f'cannot read checkpoint {path} ({path.stat().st_size} bytes): '
        f'{type(error).__name__}: {error}. The file is truncated or corrupt; '
        'use an earlier checkpoint or download it again')


def save_checkpoint_file(obj: Any, filename: Union[str, Path]) -> None:
    """``torch.save`` that never leaves a partial file under ``filename``."""
    with io.BytesIO() as buffer:
        torch.save(obj, buffer)
        AtomicLocalBackend().put(buffer.getvalue(), filename)


def revised_state_dict(
        checkpoint: dict,
        revise_keys: Sequence[Tuple[str, str]] = ((r'^module\.', ''), )
) -> Dict[str, torch.Tensor]:
    """The checkpoint's weights with mmengine's ``revise_keys`` applied
    (``(pattern, replacement)`` regular expressions, in order)."""
    weights = checkpoint.get('state_dict', checkpoint)
    for pattern, replacement in revise_keys:
        weights = {re.sub(pattern, replacement, k): v
                   for k, v in weights.items()}
    return weights


def _describe(keys: List[str], shapes: Dict[str, torch.Size],
              limit: int = 20) -> str:
    listed = [f'{k} {tuple(shapes[k])}' for k in keys[:limit]]
    more = f' ... and {len(keys) - limit} more' if len(keys) > limit else ''
    return ', '.join(listed) + more


STRICT_REMEDY = ('To load the matching part only, set load_strict=False '
                 '(--cfg-options load_strict=False)')


def check_state_dict_fits(model: nn.Module,
                          weights: Dict[str, torch.Tensor],
                          source: str,
                          strict: bool = True,
                          logger: Optional[str] = 'current',
                          remedy: str = STRICT_REMEDY) -> List[str]:
    """Compare a state dict with the model's before anything is loaded.

    Args:
        model (nn.Module): the model to load into.
        weights (dict): the state dict.
        source (str): where the weights come from, for the messages.
        strict (bool): raise on any mismatch; else log it as a warning.
        logger: where the warning goes.
        remedy (str): the last sentence of the error.

    Returns:
        list[str]: keys whose shapes differ (to be left out of the load).

    Raises:
        CheckpointError: when ``strict``, for keys that are missing,
            unexpected or of another shape, listed with their shapes.
    """
    own = model.state_dict()
    missing = sorted(set(own) - set(weights))
    unexpected = sorted(set(weights) - set(own))
    wrong_shape = sorted(k for k in set(own) & set(weights)
                         if own[k].shape != weights[k].shape)
    problems = []
    if missing:
        problems.append('missing in the checkpoint: ' + _describe(
            missing, {k: v.shape for k, v in own.items()}))
    if unexpected:
        problems.append('not in the model: ' + _describe(
            unexpected, {k: v.shape for k, v in weights.items()}))
    if wrong_shape:
        problems.append('shape differs (checkpoint vs model): ' + ', '.join(
            f'{k} {tuple(weights[k].shape)} vs {tuple(own[k].shape)}'
            for k in wrong_shape[:20]))
    if problems:
        message = (f'checkpoint {source} does not fit the model; ' +
                   '; '.join(problems))
        if strict:
            raise CheckpointError(f'{message}. {remedy}')
        print_log(message, logger=logger, level=logging.WARNING)
    return wrong_shape


def load_weights(model: nn.Module,
                 checkpoint: dict,
                 source: str,
                 strict: bool = True,
                 revise_keys: Sequence[Tuple[str, str]] = ((r'^module\.',
                                                            ''), ),
                 logger: Optional[str] = 'current',
                 remedy: str = STRICT_REMEDY) -> None:
    """Check a loaded checkpoint against ``model``, then load its weights.

    Args:
        model (nn.Module): the (unwrapped) model.
        checkpoint (dict): as read by :func:`load_checkpoint_file`.
        source (str): the file, for the messages.
        strict (bool): refuse any mismatch (see
            :func:`check_state_dict_fits`); ImageNet ViT weights are always
            refused, pointing to the converter.
        revise_keys: mmengine's key rewrites, applied first.
        logger: where warnings go.
        remedy (str): the last sentence of a strict mismatch error.
    """
    if not isinstance(checkpoint, dict):
        raise CheckpointError(
            f'checkpoint {source} holds a {type(checkpoint).__name__}, '
            'expected a dict with a state_dict')
    from ..models.utils.checkpoint_filter import (is_timm_vit,
                                                  unwrap_state_dict)
    weights = revised_state_dict(checkpoint, revise_keys)
    if is_timm_vit(unwrap_state_dict(checkpoint)) and not any(
            k.startswith('decode_head.') for k in weights):
        raise CheckpointError(
            f'{source} holds ImageNet ViT weights (timm/DeiT names), not a '
            f'segmentor checkpoint: set it as model.backbone.pretrained, or '
            f'convert it with python {CONVERTER} {source} OUT --config CONFIG')
    for key in check_state_dict_fits(model, weights, source, strict, logger,
                                     remedy):
        weights.pop(key)
    model.load_state_dict(weights, strict=False)


def load_segmentor_checkpoint(model: nn.Module,
                              filename: Union[str, Path],
                              map_location: Any = 'cpu',
                              strict: bool = True,
                              logger: Optional[str] = 'current') -> dict:
    """Read a segmentor checkpoint (ours or a released mmseg 0.x one) safely
    and load it into ``model`` (see :func:`load_weights`).

    Returns:
        dict: the whole checkpoint (``meta``, ...).
    """
    checkpoint = load_checkpoint_file(filename, map_location)
    load_weights(model, checkpoint, str(filename), strict, logger=logger)
    return checkpoint
