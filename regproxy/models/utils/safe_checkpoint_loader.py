"""Reading checkpoint files without running code from them.

Every checkpoint or weights file that regproxy reads goes through
:func:`load_checkpoint_file`, a :class:`SafeCheckpointLoader`: mmengine's
``CheckpointLoader`` whose local and ``http(s)://`` readers unpickle with
``weights_only=True`` and an allow-list (:data:`SAFE_GLOBALS`). A URL is
downloaded once into torch hub's cache, then read like a local file. A file
that needs anything else is refused unless the user trusts it:
``trust_checkpoint = True`` in the config, ``--trust-checkpoint`` on the
scripts, or the :func:`trusted_checkpoints` context in Python.

It lives beside the backbones, which read their ``pretrained`` files with
it; ``regproxy.engine`` re-exports it.
"""
import contextlib
import contextvars
import functools
import os
import os.path as osp
import glob
import pickle
import re
import struct
from collections import OrderedDict
from typing import Any, Callable, Iterator, List, Mapping, Optional
from urllib.parse import urlparse

import numpy as np
import torch
import torch.nn as nn
from mmengine.dist import get_dist_info
from mmengine.runner.checkpoint import CheckpointLoader
from safetensors.torch import load_file as load_safetensors

__all__ = [
    'SAFE_GLOBALS', 'TRUST_HINT', 'CheckpointError', 'SafeCheckpointLoader',
    'trusted_checkpoints', 'non_finite_weights_allowed', 'NON_FINITE_HINT',
    'load_checkpoint_file', 'DDP_PREFIX',
    'revise_state_dict', 'state_dict_mismatches', 'check_state_dict_fits'
]

# The NumPy values of mmseg 0.x checkpoints: a dataset without a palette
# stored the one it generated as an array in ``meta``. (mmengine's message
# hub buffers need ``getattr``, which no allow-list can make safe: the
# WeightsOnlyCheckpointHook writes them as tensors instead.)
SAFE_GLOBALS = [
    np.core.multiarray._reconstruct,
    np.core.multiarray.scalar,
    np.ndarray,
    np.dtype,
    *(type(np.dtype(t)) for t in (np.float64, np.float32, np.int64,
                                  np.uint32)),
]

TRUST_HINT = ('Load it only if you trust where it comes from: '
              '--trust-checkpoint on train.py, test.py and the tools, or '
              'trust_checkpoint = True in the config')

NON_FINITE_HINT = ('To load it anyway (to inspect it), set '
                   'allow_non_finite_weights = True in the config '
                   '(--cfg-options allow_non_finite_weights=True), or pass '
                   'allow_non_finite=True to load_checkpoint_file')

# mmengine's default ``revise_keys``: DDP's ``module.`` prefix removed.
DDP_PREFIX = ((r'^module\.', ''), )

_trusted = contextvars.ContextVar('regproxy_trusted_checkpoints',
                                  default=False)
_non_finite_allowed = contextvars.ContextVar(
    'regproxy_non_finite_weights_allowed', default=False)


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


@contextlib.contextmanager
def non_finite_weights_allowed(enabled: bool = True) -> Iterator[None]:
    """Within this context weights holding NaN or inf are loaded.

    Args:
        enabled (bool): whether such weights are loaded inside the context.
    """
    token = _non_finite_allowed.set(enabled)
    try:
        yield
    finally:
        _non_finite_allowed.reset(token)


class SafeCheckpointLoader(CheckpointLoader):
    """mmengine's ``CheckpointLoader`` with weights-only readers.

    Its scheme table starts as a copy of mmengine's (the class attribute
    ``_schemes``, which mmengine 0.10.7 keeps private), so the schemes
    registered here leave mmengine's own loader, which mmseg's tools and
    ``init_cfg=dict(type='Pretrained')`` use, as it is:

    - local paths and ``http(s)://`` URLs: read with ``weights_only=True``
      and :data:`SAFE_GLOBALS`, in full only when trusted; ``.safetensors``
      files (a scheme cannot key on the suffix: the reader looks) with the
      ``safetensors`` package;
    - model-zoo names (``open-mmlab://``, ``torchvision://``, ...):
      mmengine's readers download them through
      ``torch.hub.load_state_dict_from_url``, which unpickles in full, so
      they run only when trusted;
    - ``s3://``, ``petrel://``, ``pavi://``: mmengine's readers, which call
      ``torch.load`` with torch's default, ``weights_only=True``.
    """

    _schemes = dict(CheckpointLoader._schemes)


def _unsafe_globals(path: str) -> List[str]:
    """What a torch zip file asks for beyond weights and
    :data:`SAFE_GLOBALS`, listed by torch without unpickling; empty for
    other files."""
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            return sorted(
                torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception:  # not a torch zip file: torch says what is wrong
        return []


def _is_safetensors(path: str) -> bool:
    """A ``.safetensors`` name, or the format's start: the header length
    (8 bytes, little-endian) and the JSON header's ``{``."""
    if path.endswith('.safetensors'):
        return True
    with open(path, 'rb') as f:
        head = f.read(9)
    return (len(head) == 9 and head[8:] == b'{'
            and struct.unpack('<Q', head[:8])[0] < osp.getsize(path))


def _read(path: str, map_location: Any, source: str,
          again: str = 'download it again') -> Any:
    """``torch.load`` of ``path``, weights-only unless trusted, or the
    tensors of a safetensors file; errors name ``source`` and, for a corrupt
    file, how to get it ``again``."""
    trusted = _trusted.get()
    try:
        if _is_safetensors(path):
            device = (str(map_location) if isinstance(
                map_location, (str, torch.device)) else 'cpu')
            return load_safetensors(path, device=device)
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            return torch.load(path, map_location=map_location,
                              weights_only=not trusted)
    except Exception as error:  # torch raises many kinds on a bad file
        refused = (not trusted and isinstance(error, pickle.UnpicklingError)
                   and _unsafe_globals(path))
        if refused:
            raise CheckpointError(
                f'refusing to load {source}: it asks for '
                f'{", ".join(refused)}, which is not what checkpoints hold; '
                f'unpickling it could run code from the file. {TRUST_HINT}'
            ) from None
        raise CheckpointError(
            f'cannot read checkpoint {source} ({osp.getsize(path)} bytes): '
            f'{type(error).__name__}: {error}. The file is truncated or '
            f'corrupt; use an earlier checkpoint or {again}') from None


@SafeCheckpointLoader.register_scheme(prefixes='', force=True)
def load_from_local(filename: str, map_location: Any = None) -> Any:
    """Read a local checkpoint file (see :class:`SafeCheckpointLoader`)."""
    path = osp.expanduser(filename)
    if osp.isdir(path):
        inside = sorted(glob.glob(osp.join(path, '*.pth')) +
                        glob.glob(osp.join(path, '*.safetensors')))[:3]
        raise CheckpointError(
            f'checkpoint {path} is a directory; give a checkpoint file '
            'inside it' + (f', e.g. {", ".join(inside)}' if inside else
                           ' (it holds no *.pth or *.safetensors file)'))
    if not osp.isfile(path):
        raise CheckpointError(f'checkpoint {path} does not exist')
    return _read(path, map_location, path)


def _download(url: str, path: str) -> None:
    """Download ``url`` to ``path`` unless it is there (torch writes a
    temporary file and renames it, so ``path`` is whole or absent)."""
    if osp.isfile(path):
        return
    os.makedirs(osp.dirname(path), exist_ok=True)
    try:
        torch.hub.download_url_to_file(url, path, progress=os.isatty(0))
    except Exception as error:  # urllib and socket errors of many kinds
        raise CheckpointError(
            f'could not download checkpoint {url} (to {path}): '
            f'{type(error).__name__}: {error}') from None


@SafeCheckpointLoader.register_scheme(prefixes=('http://', 'https://'),
                                      force=True)
def load_from_http(url: str, map_location: Any = None) -> Any:
    """Download ``url`` into torch hub's cache, as
    ``torch.hub.load_state_dict_from_url`` does
    (``$TORCH_HOME/hub/checkpoints/<file name>``; a file already there is
    used), and read it like a local file. In a distributed run rank 0
    downloads first, as in mmengine."""
    path = osp.join(torch.hub.get_dir(), 'checkpoints',
                    osp.basename(urlparse(url).path))
    rank, world_size = get_dist_info()
    if rank == 0:
        _download(url, path)
    if world_size > 1:
        torch.distributed.barrier()
        _download(url, path)  # where rank 0's cache is not this one
    return _read(path, map_location, f'{path} (downloaded from {url})',
                 f'delete {path} to download it again')


def _trusted_only(loader: Callable) -> Callable:
    """mmengine's reader of a model-zoo scheme, run only when trusted."""

    @functools.wraps(loader)  # mmengine's log names the reader
    def load(filename: str, map_location: Any = None) -> Any:
        if not _trusted.get():
            raise CheckpointError(
                f'refusing to load {filename}: mmengine reads model-zoo '
                'names by unpickling in full, which could run code from the '
                "file; give the file's http(s) URL or path instead, which "
                f'are read weights-only. {TRUST_HINT}')
        return loader(filename, map_location)

    return load


for _prefix in ('modelzoo://', 'torchvision://', 'open-mmlab://',
                'openmmlab://', 'mmcls://'):
    SafeCheckpointLoader.register_scheme(
        _prefix, _trusted_only(CheckpointLoader._schemes[_prefix]),
        force=True)


def _refuse_non_finite(checkpoint: Any, source: str) -> None:
    """Raise a CheckpointError naming the first 3 floating tensors of the
    weights (``state_dict``, DeiT's ``model`` or the file itself) that hold
    NaN or inf, with counts."""
    if not isinstance(checkpoint, Mapping):
        return
    for key in ('state_dict', 'model'):
        if isinstance(checkpoint.get(key), Mapping):
            checkpoint = checkpoint[key]
            break
    broken = []
    for name, value in checkpoint.items():
        if not (isinstance(value, torch.Tensor)
                and value.is_floating_point()):
            continue
        nan = int(value.isnan().sum())
        inf = int(value.isinf().sum())
        if nan or inf:
            broken.append(f'{name} ({nan} NaN, {inf} inf of '
                          f'{value.numel()} values)')
    if broken:
        more = f' and {len(broken) - 3} more tensors' if len(
            broken) > 3 else ''
        raise CheckpointError(
            f'checkpoint {source} holds non-finite weights: '
            f'{"; ".join(broken[:3])}{more}; a model with them predicts '
            f'nonsense. {NON_FINITE_HINT}')


def load_checkpoint_file(filename: Any,
                         map_location: Any = 'cpu',
                         trust: Optional[bool] = None,
                         allow_non_finite: Optional[bool] = None) -> Any:
    """Read a checkpoint through :class:`SafeCheckpointLoader`.

    Args:
        filename (str | Path): a local path, an ``http(s)://`` URL or
            another scheme of mmengine's ``CheckpointLoader``.
        map_location: as for ``torch.load``. Default: 'cpu'.
        trust (bool, optional): unpickle in full; None follows
            :func:`trusted_checkpoints` (off by default).
        allow_non_finite (bool, optional): load weights holding NaN or
            inf; None follows :func:`non_finite_weights_allowed` (off by
            default).

    Returns:
        The loaded object.

    Raises:
        CheckpointError: the file is missing, cannot be downloaded, is
            truncated or corrupt, asks for more than weights and is not
            trusted, or holds NaN/inf weights that are not allowed.
    """
    name = str(filename)  # a URL as given: Path() would fold its '//'
    with trusted_checkpoints(_trusted.get() if trust is None else trust):
        try:
            checkpoint = SafeCheckpointLoader.load_checkpoint(
                name, map_location)
        except CheckpointError:
            raise
        except Exception as error:  # mmengine's readers of other schemes
            raise CheckpointError(
                f'cannot read checkpoint {name}: {type(error).__name__}: '
                f'{error}') from None
    if not (_non_finite_allowed.get()
            if allow_non_finite is None else allow_non_finite):
        _refuse_non_finite(checkpoint, name)
    return checkpoint


def revise_state_dict(state_dict: Mapping,
                      revise_keys=DDP_PREFIX) -> OrderedDict:
    """``state_dict`` with mmengine's ``revise_keys`` applied (its
    ``(pattern, replacement)`` regular expressions in order), keeping the
    ``_metadata`` that ``load_state_dict`` reads, as mmengine's loaders do.
    """
    revised = OrderedDict(state_dict)
    for pattern, replacement in revise_keys:
        revised = OrderedDict((re.sub(pattern, replacement, k), v)
                              for k, v in revised.items())
    revised._metadata = getattr(state_dict, '_metadata', OrderedDict())
    return revised


def state_dict_mismatches(module: nn.Module,
                          state_dict: Mapping) -> List[str]:
    """Why ``state_dict`` does not load strictly into ``module``: one entry
    per key that is missing, unexpected or of another shape, with the
    shapes; empty when it fits. ``module`` may live on the meta device."""
    own = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    theirs = {k: tuple(getattr(v, 'shape', ())) for k, v in state_dict.items()}
    return ([f'{k} {s} missing in the checkpoint'
             for k, s in own.items() if k not in theirs] +
            [f'{k} {s} not in the model'
             for k, s in theirs.items() if k not in own] +
            [f'{k} {theirs[k]} in the checkpoint, {s} in the model'
             for k, s in own.items() if k in theirs and theirs[k] != s])


def check_state_dict_fits(module: nn.Module, state_dict: Mapping,
                          source: str, remedy: str) -> None:
    """Refuse a ``state_dict`` that does not load strictly into ``module``.

    Args:
        module (nn.Module): the model to load into.
        state_dict (Mapping): the weights.
        source (str): where the weights come from, for the message.
        remedy (str): the last sentence of the message.

    Raises:
        CheckpointError: listing the first 20 mismatched keys with their
            shapes (see :func:`state_dict_mismatches`).
    """
    mismatches = state_dict_mismatches(module, state_dict)
    if mismatches:
        more = (f' ... and {len(mismatches) - 20} more'
                if len(mismatches) > 20 else '')
        raise CheckpointError(
            f'checkpoint {source} does not fit the model: '
            f'{"; ".join(mismatches[:20])}{more}. {remedy}')
