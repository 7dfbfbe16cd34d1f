import contextlib
import copy
import logging
import math
import os
import os.path as osp
import re
from typing import Callable, Dict, Iterator, List, Optional, Union

import torch.nn as nn
from mmengine.device import get_device
from mmengine.dist import is_main_process
from mmengine.logging import print_log
from mmengine.model import revert_sync_batchnorm
from mmengine.registry import MODEL_WRAPPERS
from mmengine.runner import Runner
from mmseg.registry import RUNNERS
from torch.nn.parallel import DistributedDataParallel

from ..models.utils.safe_checkpoint_loader import (CheckpointError,
                                                   load_checkpoint_file,
                                                   non_finite_weights_allowed,
                                                   trusted_checkpoints)
from .checkpoint import load_weights
from .work_dir_lock import WorkDirLock

__all__ = ['RegProxyRunner', 'find_resumable_checkpoints']

_CHECKPOINT_NAME = re.compile(r'^(?:iter|epoch)_(\d+)\.pth$')


def find_resumable_checkpoints(work_dir: str) -> List[str]:
    """``iter_N.pth`` / ``epoch_N.pth`` files in ``work_dir``, newest first.

    The folder itself is scanned: the ``last_checkpoint`` file holds an
    absolute path, which is stale in a work dir that was copied or whose
    ``last_checkpoint`` was lost.
    """
    names = os.listdir(work_dir) if osp.isdir(work_dir) else []
    found = [(int(match.group(1)), osp.join(work_dir, name))
             for name in names if (match := _CHECKPOINT_NAME.match(name))]
    return [path for _, path in sorted(found, reverse=True)]


@contextlib.contextmanager
def _checkpoint_policy(cfg) -> Iterator[None]:
    """Inside, checkpoint files are read in full and may hold NaN or inf
    weights as the config's ``trust_checkpoint`` and
    ``allow_non_finite_weights`` say (both default False)."""
    with trusted_checkpoints(bool(cfg.get('trust_checkpoint', False))), \
            non_finite_weights_allowed(
                bool(cfg.get('allow_non_finite_weights', False))):
        yield


def _initial_lrs(optim_wrapper) -> List[float]:
    """The learning rate each parameter group's schedule starts from (none
    without an optimizer, or for an ``OptimWrapperDict``: a dict of them)."""
    groups = getattr(optim_wrapper, 'param_groups', [])
    return [] if isinstance(groups, dict) else [
        g.get('initial_lr', g['lr']) for g in groups]


@RUNNERS.register_module()
class RegProxyRunner(Runner):
    """mmengine's Runner with safe, checked checkpoint loading: the config
    keys ``trust_checkpoint``, ``allow_non_finite_weights`` and
    ``load_strict`` (docs/checkpoints.md), and resuming from the newest
    readable checkpoint of the work dir (:meth:`from_cfg`)."""

    resuming = False  # inside resume()

    def load_checkpoint(self,
                        filename: str,
                        map_location: Union[str, Callable] = 'cpu',
                        strict: Optional[bool] = None,
                        revise_keys: list = [(r'^module\.', '')]) -> dict:
        """Read ``filename`` safely, let the ``after_load_checkpoint`` hooks
        edit it (mmengine's order), then load it (:func:`load_weights`).

        Args:
            filename (str): the checkpoint file or URL.
            map_location: as for ``torch.load``.
            strict (bool, optional): refuse mismatched keys; None takes the
                config's ``load_strict`` (default True).
            revise_keys (list): ``(pattern, replacement)`` rewrites of the
                state-dict keys.

        Returns:
            dict: the checkpoint.
        """
        with _checkpoint_policy(self.cfg):
            checkpoint = load_checkpoint_file(filename, map_location)
        if self.resuming and 'message_hub' not in checkpoint:
            raise CheckpointError(
                f'cannot resume from {filename}: it holds weights but no '
                'training state (an mmseg 0.x or converted checkpoint); use '
                '--load-from to start training from its weights')
        meta = checkpoint.get('meta')
        if isinstance(meta, dict) and not self.cfg.get('trust_checkpoint'):
            # mmengine's resume would run this 0.x config text as Python
            meta.pop('config', None)
        self.call_hook('after_load_checkpoint', checkpoint=checkpoint)
        if strict is None:
            strict = bool(self.cfg.get('load_strict', True))
        load_weights(self.model, checkpoint, filename, strict=strict,
                     revise_keys=revise_keys, logger=self.logger)
        # As mmengine 0.10.7's load_checkpoint does (no public setter):
        # train() then keeps these weights instead of loading load_from.
        self._has_loaded = True
        self.logger.info(f'Load checkpoint from {filename}')
        return checkpoint

    @classmethod
    def from_cfg(cls, cfg) -> 'RegProxyRunner':
        """mmengine's, but ``resume = True`` without ``load_from`` takes the
        newest readable ``iter_N.pth`` of the work dir (skipping unreadable
        ones with a warning), and an unseeded run takes its checkpoint's
        seed here: the samplers are seeded before mmengine's resume.

        Raises:
            CheckpointError: none of the work dir's checkpoints can be read.
        """
        if not cfg.get('resume'):
            return super().from_cfg(cfg)
        cfg = copy.deepcopy(cfg)
        given = cfg.get('load_from')
        candidates = [given] if given else find_resumable_checkpoints(
            cfg.work_dir)
        for path in candidates:
            try:
                with _checkpoint_policy(cfg):
                    meta = load_checkpoint_file(path).get('meta', {})
            except CheckpointError as error:
                if not given and 'cannot read' in str(error):
                    print_log(f'Skipped for resuming: {error}', 'current',
                              logging.WARNING)
                    continue
                meta = {}  # resuming it reports the error
            cfg.load_from = path
            randomness = dict(cfg.get('randomness') or {})
            if randomness.get('seed') is None:
                cfg.randomness = dict(randomness, seed=meta.get('seed'))
            break
        else:
            if candidates:
                raise CheckpointError(
                    f'--resume: none of the checkpoints in {cfg.work_dir} '
                    f'can be read ({", ".join(map(osp.basename, candidates))}'
                    '). Training from iteration 0 would overwrite them: move '
                    'them away to start afresh, or resume from another file '
                    'with --resume-from')
            print_log(f'No checkpoint in {cfg.work_dir} to resume from: '
                      'training starts at iteration 0', 'current')
        return super().from_cfg(cfg)

    def wrap_model(self, model_wrapper_cfg: Optional[Dict],
                   model: nn.Module) -> nn.Module:
        """mmengine's wrapping; in CPU process groups (gloo) SyncBN layers,
        which torch runs on GPUs only, become BN first (mmengine 0.10.7
        reverts them only without a process group), and a DDP wrapper gets
        no ``device_ids`` (mmengine would give it the GPU ``LOCAL_RANK``)."""
        if self.distributed and get_device() == 'cpu':
            model = revert_sync_batchnorm(model)
            model_wrapper_cfg = dict(model_wrapper_cfg or dict(
                broadcast_buffers=False,
                find_unused_parameters=self.cfg.get('find_unused_parameters',
                                                    False)))
            model_wrapper_cfg.setdefault('type', 'MMDistributedDataParallel')
            if issubclass(MODEL_WRAPPERS.get(model_wrapper_cfg['type']),
                          DistributedDataParallel):
                model_wrapper_cfg['device_ids'] = None
        return super().wrap_model(model_wrapper_cfg, model)

    def resume(self, filename: str, resume_optimizer: bool = True,
               resume_param_scheduler: bool = True,
               map_location='default') -> None:
        """mmengine's resume, but the config's learning rate wins: where it
        differs from the checkpoint's, the resumed schedule is scaled to it
        and the log says so (``--resume --cfg-options
        optim_wrapper.optimizer.lr=X`` lowers it)."""
        configured = _initial_lrs(self.optim_wrapper)
        self.resuming = True  # load_checkpoint refuses weights-only files
        try:
            super().resume(filename, resume_optimizer, resume_param_scheduler,
                           map_location)
        finally:
            self.resuming = False
        resumed = _initial_lrs(self.optim_wrapper)
        if all(math.isclose(c, r, rel_tol=1e-9)
               for c, r in zip(configured, resumed)):
            return
        ratios = [c / r if r else 1. for c, r in zip(configured, resumed)]
        for group, ratio in zip(self.optim_wrapper.param_groups, ratios):
            for key in ('lr', 'initial_lr'):
                if key in group:
                    group[key] *= ratio
        # a list: a dict of schedulers has an OptimWrapperDict (no ratios)
        for scheduler in self.param_schedulers or []:
            if scheduler.param_name == 'lr':
                scheduler.base_values = [
                    v * r for v, r in zip(scheduler.base_values, ratios)]
        self.logger.warning(
            f'resuming {filename}: lr {max(resumed):g} in the checkpoint, '
            f"{max(configured):g} in the config: the config's wins (the "
            'resumed schedule is scaled to it)')

    def train(self):
        """mmengine's training, the main process holding the work dir
        (:class:`WorkDirLock`); checkpoint files (the backbone's
        ``pretrained`` too) are read as the config says."""
        lock = (WorkDirLock(self.work_dir)
                if is_main_process() else contextlib.nullcontext())
        with lock, _checkpoint_policy(self.cfg):
            return super().train()

    def val(self):
        with _checkpoint_policy(self.cfg):
            return super().val()

    def test(self):
        with _checkpoint_policy(self.cfg):
            return super().test()
