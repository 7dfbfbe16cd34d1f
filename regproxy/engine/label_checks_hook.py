from mmengine.hooks import Hook
from mmseg.registry import HOOKS

from ..datasets import DataError
from .unwrap_model import unwrap_model

__all__ = ['LabelChecksHook']


@HOOKS.register_module()
class LabelChecksHook(Hook):
    """Before training, validation and testing: the decode head's
    ``num_classes`` must equal the number of the dataset's classes (a
    smaller one fails deep in the loss with a bare index error, a device
    assert on a GPU; metrics are computed over the dataset's classes)."""

    def _check_classes(self, runner, loader: str) -> None:
        head = getattr(unwrap_model(runner.model), 'decode_head', None)
        dataset = getattr(getattr(runner, loader), 'dataset', None)
        classes = (getattr(dataset, 'metainfo', None) or {}).get('classes')
        if head is None or classes is None:
            return
        if head.num_classes != len(classes):
            raise DataError(
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
