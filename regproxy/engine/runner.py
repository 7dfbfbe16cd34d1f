from mmengine.model import BaseTTAModel, is_model_wrapper
from mmengine.runner import Runner
from mmseg.registry import RUNNERS

from .checkpoint_loader import load_segmentor_checkpoint


@RUNNERS.register_module()
class RegProxyRunner(Runner):
    """mmengine's Runner with checked checkpoint loading.

    ``load_from``, ``--resume`` and testing load through
    ``load_segmentor_checkpoint``: unreadable files and checkpoints of
    another model stop with an error that names the file and the mismatched
    keys. Set ``load_strict=False`` in the config to load the matching part
    and log the rest (fine-tuning on another number of classes).
    """

    def load_checkpoint(self, filename: str, map_location='cpu', strict=None,
                        revise_keys=None) -> dict:
        model = self.model
        # DDP and the test-time-augmentation wrapper both hold the segmentor
        # in ``module``.
        while is_model_wrapper(model) or isinstance(model, BaseTTAModel):
            model = model.module
        if strict is None:
            strict = self.cfg.get('load_strict', True)
        checkpoint = load_segmentor_checkpoint(
            model, filename, map_location=map_location, strict=strict,
            logger=self.logger)
        self.call_hook('after_load_checkpoint', checkpoint=checkpoint)
        self.logger.info(f'Load checkpoint from {filename}')
        return checkpoint
