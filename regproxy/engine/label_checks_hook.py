import logging

from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmseg.registry import HOOKS

from .unwrap_model import unwrap_model

__all__ = ['LabelChecksHook']


@HOOKS.register_module()
class LabelChecksHook(Hook):
    """Checks between the model's classes and the data it sees.

    - Before training, validation and testing: the decode head's
      ``num_classes`` must equal the number of the dataset's classes (a
      smaller one fails deep in the loss with a bare index error; metrics
      are computed over the dataset's classes).
    - Each training batch whose labels are all the ignore index is logged:
      it trains nothing (loss 0, accuracy 100).

    Args:
        ignore_index (int): the label of ignored pixels. Default: 255.
    """

    def __init__(self, ignore_index: int = 255):
        self.ignore_index = ignore_index

    def _check_classes(self, runner, loader: str) -> None:
        head = getattr(unwrap_model(runner.model), 'decode_head', None)
        dataset = getattr(getattr(runner, loader), 'dataset', None)
        classes = (getattr(dataset, 'metainfo', None) or {}).get('classes')
        if head is None or classes is None:
            return
        if head.num_classes != len(classes):
            raise ValueError(
                f'decode_head.num_classes={head.num_classes} but the '
                f'{loader} dataset ({type(dataset).__name__}) has '
                f'{len(classes)} classes: set model.decode_head.num_classes='
                f'{len(classes)} or give the dataset the matching classes')

    def before_train(self, runner) -> None:
        self._check_classes(runner, 'train_dataloader')

    def before_val(self, runner) -> None:
        self._check_classes(runner, 'val_dataloader')

    def before_test(self, runner) -> None:
        self._check_classes(runner, 'test_dataloader')

    def before_train_iter(self, runner, batch_idx: int,
                          data_batch=None) -> None:
        samples = (data_batch or {}).get('data_samples') or []
        labels = [s.gt_sem_seg.data for s in samples if 'gt_sem_seg' in s]
        if labels and all(
                bool((label == self.ignore_index).all()) for label in labels):
            files = ', '.join(s.metainfo.get('seg_map_path', '?')
                              for s in samples)
            print_log(
                f'iteration {runner.iter + 1}: every label of the batch is '
                f'the ignore index {self.ignore_index}, so it trains nothing '
                f'(label maps: {files})', 'current', level=logging.WARNING)
