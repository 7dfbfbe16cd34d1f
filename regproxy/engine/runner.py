import copy
import math
import os
import os.path as osp
import re
from typing import Callable, Dict, List, Optional, Union

import torch.nn as nn
from mmengine.device import get_device
from mmengine.dist import is_main_process
from mmengine.model import revert_sync_batchnorm
from mmengine.runner import Runner
from mmseg.registry import RUNNERS

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
    if not osp.isdir(work_dir):
        return []
    found = []
    for name in os.listdir(work_dir):
        match = _CHECKPOINT_NAME.match(name)
        if match:
            found.append((int(match.group(1)), osp.join(work_dir, name)))
    return [path for _, path in sorted(found, reverse=True)]


def _initial_lrs(optim_wrapper) -> List[float]:
    """The learning rate each parameter group's schedule starts from."""
    optimizer = getattr(optim_wrapper, 'optimizer', None)
    if optimizer is None:
        return []
    return [g.get('initial_lr', g['lr']) for g in optimizer.param_groups]


def _checkpoint_seed(cfg) -> Optional[int]:
    """The seed recorded in the checkpoint a resume would start from."""
    load_from = cfg.get('load_from')
    candidates = [load_from] if load_from else find_resumable_checkpoints(
        cfg.get('work_dir', ''))
    for path in candidates:
        try:
            meta = load_checkpoint_file(
                path, trust=cfg.get('trust_checkpoint', False),
                allow_non_finite=cfg.get('allow_non_finite_weights',
                                         False)).get('meta', {})
        except CheckpointError:
            continue  # resuming reports it
        return meta.get('seed')
    return None


@RUNNERS.register_module()
class RegProxyRunner(Runner):
    """mmengine's Runner with safe, checked checkpoint loading.

    - Files (local paths, ``http(s)://`` URLs, mmengine's other schemes)
      are read with ``weights_only=True`` and an allow-list
      (:func:`load_checkpoint_file`); ``trust_checkpoint = True`` in the
      config reads them in full, for files from a trusted source.
    - Weights holding NaN or inf are refused, naming the tensors;
      ``allow_non_finite_weights = True`` in the config loads them (to
      inspect such a file).
    - Checkpoints of another model stop with an error that lists the
      mismatched keys and shapes; ``load_strict = False`` loads the
      matching part and logs the rest (fine-tuning to other classes).
    - ``resume = True`` without ``load_from`` resumes from the newest
      readable ``iter_N.pth`` in the work dir (unreadable ones are skipped
      with a warning), and refuses to start afresh over checkpoints that
      cannot be read.

    The order of :meth:`load_checkpoint` is mmengine's: the
    ``after_load_checkpoint`` hooks see (and may edit) the checkpoint before
    its weights go into the model.
    """

    resuming = False  # inside resume()

    @property
    def trust_checkpoint(self) -> bool:
        """Read checkpoint files in full (config key, default False)."""
        return bool(self.cfg.get('trust_checkpoint', False))

    @property
    def allow_non_finite_weights(self) -> bool:
        """Load weights holding NaN or inf (config key, default False)."""
        return bool(self.cfg.get('allow_non_finite_weights', False))

    @property
    def load_strict(self) -> bool:
        """Refuse checkpoints that do not fit (config key, default True)."""
        return bool(self.cfg.get('load_strict', True))

    def load_checkpoint(self,
                        filename: str,
                        map_location: Union[str, Callable] = 'cpu',
                        strict: Optional[bool] = None,
                        revise_keys: list = [(r'^module\.', '')]) -> dict:
        """Read ``filename`` safely, let the hooks see it, check that it
        fits the model and load its weights (:func:`load_weights`).

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
        checkpoint = load_checkpoint_file(
            filename, map_location, trust=self.trust_checkpoint,
            allow_non_finite=self.allow_non_finite_weights)
        if self.resuming and 'message_hub' not in checkpoint:
            raise CheckpointError(
                f'cannot resume from {filename}: it holds weights but no '
                'training state (an mmseg 0.x or converted checkpoint); use '
                '--load-from to start training from its weights')
        meta = checkpoint.get('meta')
        if isinstance(meta, dict) and not self.trust_checkpoint:
            # mmengine's resume would run this 0.x config text as Python
            meta.pop('config', None)
        self.call_hook('after_load_checkpoint', checkpoint=checkpoint)
        load_weights(
            self.model,
            checkpoint,
            filename,
            strict=self.load_strict if strict is None else strict,
            revise_keys=revise_keys,
            logger=self.logger)
        # As mmengine 0.10.7's load_checkpoint does (no public setter):
        # train() then keeps these weights instead of loading load_from.
        self._has_loaded = True
        self.logger.info(f'Load checkpoint from {filename}')
        return checkpoint

    @classmethod
    def from_cfg(cls, cfg) -> 'RegProxyRunner':
        """mmengine's, but an unseeded run that resumes takes the seed of
        its checkpoint before anything random is drawn: the samplers and
        dataloader workers are seeded when the runner builds them, before
        mmengine's resume would restore the seed."""
        randomness = dict(cfg.get('randomness') or {})
        if cfg.get('resume') and randomness.get('seed') is None:
            seed = _checkpoint_seed(cfg)
            if seed is not None:
                cfg = copy.deepcopy(cfg)
                cfg.randomness = dict(randomness, seed=seed)
        return super().from_cfg(cfg)

    def _train_batch(self) -> dict:
        return dict(batch_size=getattr(self.train_dataloader, 'batch_size',
                                       None), world_size=self.world_size)

    def wrap_model(self, model_wrapper_cfg: Optional[Dict],
                   model: nn.Module) -> nn.Module:
        """mmengine's wrapping; in CPU process groups (gloo), where torch's
        SyncBatchNorm cannot run, SyncBN layers become BN first (mmengine
        0.10.7 reverts them only without a process group)."""
        if self.distributed and get_device() == 'cpu':
            model = revert_sync_batchnorm(model)
        return super().wrap_model(model_wrapper_cfg, model)

    def save_checkpoint(self, *args, **kwargs) -> None:
        """mmengine's, recording the training batch in the message hub
        (which checkpoints hold) so that a resumed run can say whether it
        differs."""
        self.message_hub.update_info('train_batch', self._train_batch())
        super().save_checkpoint(*args, **kwargs)

    def resume(self, filename: str, resume_optimizer: bool = True,
               resume_param_scheduler: bool = True,
               map_location='default') -> None:
        """mmengine's resume; where the config's learning rate, batch or
        ``max_iters`` differ from the checkpoint's, the log says so and
        which wins. The config's learning rate wins: the resumed schedule
        is scaled to it (``--resume --cfg-options
        optim_wrapper.optimizer.lr=X`` lowers it)."""
        configured = _initial_lrs(self.optim_wrapper)
        self.resuming = True  # load_checkpoint refuses weights-only files
        try:
            super().resume(filename, resume_optimizer, resume_param_scheduler,
                           map_location)
        finally:
            self.resuming = False
        for note in self._settings_that_differ(configured):
            self.logger.warning(f'resuming {filename}: {note}')

    def _settings_that_differ(self, configured: List[float]) -> List[str]:
        notes = []
        resumed = _initial_lrs(self.optim_wrapper)
        if configured and resumed and not all(
                math.isclose(c, r, rel_tol=1e-9)
                for c, r in zip(configured, resumed)):
            self._scale_lrs([c / r if r else 1.
                             for c, r in zip(configured, resumed)])
            notes.append(
                f'lr {max(resumed):g} in the checkpoint, {max(configured):g} '
                "in the config: the config's wins (the resumed schedule is "
                'scaled to it)')
        # the message hub holds the checkpoint's values until training starts
        batch = self.message_hub.get_info('train_batch')
        now = self._train_batch()
        if batch and batch != now:
            notes.append(
                f'batch {batch["world_size"]} x {batch["batch_size"]} in '
                f'the checkpoint, {now["world_size"]} x '
                f'{now["batch_size"]} now: the config\'s wins')
        max_iters = self.message_hub.get_info('max_iters')
        if max_iters is not None and max_iters != self.max_iters:
            notes.append(
                f'max_iters {max_iters} in the checkpoint, {self.max_iters} '
                "in the config: the config's wins for the loop; the "
                'parameter schedulers keep their resumed begin/end')
        return notes

    def _scale_lrs(self, ratios: List[float]) -> None:
        """Scale the optimizer's learning rates and the schedulers' base
        values group by group."""
        groups = self.optim_wrapper.optimizer.param_groups
        for group, ratio in zip(groups, ratios):
            for key in ('lr', 'initial_lr'):
                if key in group:
                    group[key] *= ratio
        schedulers = self.param_schedulers or []
        if isinstance(schedulers, dict):
            schedulers = [s for group in schedulers.values() for s in group]
        for scheduler in schedulers:
            if getattr(scheduler, 'param_name', None) != 'lr':
                continue
            scheduler.base_values = [
                v * r for v, r in zip(scheduler.base_values, ratios)]

    def load_or_resume(self) -> None:
        """mmengine's, except for resuming without ``load_from``: the newest
        readable checkpoint of the work dir (see the class docs)."""
        # mmengine 0.10.7's Runner keeps these settings private.
        if self._has_loaded or not (self._resume and self._load_from is None):
            return super().load_or_resume()
        candidates = find_resumable_checkpoints(self.work_dir)
        if not candidates:
            self.logger.info(f'No checkpoint in {self.work_dir} to resume '
                             'from: training starts at iteration 0')
            return None
        for path in candidates:
            try:
                self.resume(path)
            except CheckpointError as error:
                if 'cannot read' not in str(error):
                    raise
                self.logger.warning(f'Skipped for resuming: {error}')
                continue
            self.logger.info(f'Resumed from the newest readable checkpoint '
                             f'{path}')
            return None
        raise CheckpointError(
            f'--resume: none of the checkpoints in {self.work_dir} can be '
            f'read ({", ".join(osp.basename(p) for p in candidates)}). '
            'Training from iteration 0 would overwrite them: move them away '
            'to start afresh, or resume from another file with --resume-from')

    def _with_trust(self, method: Callable, *args, **kwargs):
        with trusted_checkpoints(self.trust_checkpoint), \
                non_finite_weights_allowed(self.allow_non_finite_weights):
            return method(*args, **kwargs)

    def train(self):
        """mmengine's training, holding the work dir (:class:`WorkDirLock`,
        on the main process) and trusting checkpoint files as configured:
        the backbone's ``pretrained`` file is read inside the set-up."""
        if not is_main_process():
            return self._with_trust(super().train)
        with WorkDirLock(self.work_dir):
            return self._with_trust(super().train)

    def val(self):
        return self._with_trust(super().val)

    def test(self):
        return self._with_trust(super().test)
