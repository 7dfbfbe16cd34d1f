import os
import os.path as osp
import re
from typing import Callable, List, Optional, Union

from mmengine.model import BaseTTAModel, is_model_wrapper
from mmengine.runner import Runner
from mmseg.registry import RUNNERS

from .checkpoint import (CheckpointError, load_checkpoint_file, load_weights,
                         trusted_checkpoints)

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


@RUNNERS.register_module()
class RegProxyRunner(Runner):
    """mmengine's Runner with safe, checked checkpoint loading.

    - Files are read with ``weights_only=True`` and an allow-list
      (:func:`load_checkpoint_file`); ``trust_checkpoint = True`` in the
      config reads them in full, for files from a trusted source.
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

    @property
    def trust_checkpoint(self) -> bool:
        """Read checkpoint files in full (config key, default False)."""
        return bool(self.cfg.get('trust_checkpoint', False))

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
        fits the model and load its weights.

        Args:
            filename (str): the checkpoint file.
            map_location: as for ``torch.load``.
            strict (bool, optional): refuse mismatched keys; None takes the
                config's ``load_strict`` (default True).
            revise_keys (list): ``(pattern, replacement)`` rewrites of the
                state-dict keys.

        Returns:
            dict: the checkpoint.
        """
        checkpoint = load_checkpoint_file(
            filename, map_location, trust=self.trust_checkpoint)
        self.call_hook('after_load_checkpoint', checkpoint=checkpoint)
        model = self.model
        # DDP and the test-time-augmentation wrapper hold the segmentor in
        # ``module``.
        while is_model_wrapper(model) or isinstance(model, BaseTTAModel):
            model = model.module
        load_weights(
            model,
            checkpoint,
            filename,
            strict=self.load_strict if strict is None else strict,
            revise_keys=revise_keys,
            logger=self.logger)
        self._has_loaded = True
        self.logger.info(f'Load checkpoint from {filename}')
        return checkpoint

    def load_or_resume(self) -> None:
        """mmengine's, except for resuming without ``load_from``: the newest
        readable checkpoint of the work dir (see the class docs)."""
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
            self._has_loaded = True
            self.logger.info(f'Resumed from the newest readable checkpoint '
                             f'{path}')
            return None
        raise CheckpointError(
            f'--resume: none of the checkpoints in {self.work_dir} can be '
            f'read ({", ".join(osp.basename(p) for p in candidates)}). '
            'Training from iteration 0 would overwrite them: move them away '
            'to start afresh, or resume from another file with --resume-from')

    def _with_trust(self, method: Callable, *args, **kwargs):
        with trusted_checkpoints(self.trust_checkpoint):
            return method(*args, **kwargs)

    def train(self):
        # The backbone's ``pretrained`` file is read inside the loop's set-up.
        return self._with_trust(super().train)

    def val(self):
        return self._with_trust(super().val)

    def test(self):
        return self._with_trust(super().test)
