from types import SimpleNamespace

import pytest
import torch
from mmengine.logging import MMLogger
from mmengine.structures import PixelData
from mmseg.structures import SegDataSample

from regproxy.engine import LabelChecksHook
from tests.tiny_models import tiny_segmentor


def runner_with(num_classes=5, classes=5):
    dataset = SimpleNamespace(metainfo=dict(
        classes=tuple(f'c{i}' for i in range(classes))))
    loader = SimpleNamespace(dataset=dataset)
    return SimpleNamespace(
        model=tiny_segmentor(num_classes=num_classes), iter=6,
        train_dataloader=loader, val_dataloader=loader,
        test_dataloader=loader)


def test_num_classes_must_match_the_dataset():
    hook = LabelChecksHook()
    hook.before_train(runner_with())
    with pytest.raises(ValueError, match=r'num_classes=5 but the '
                       r'train_dataloader dataset .* has 8 classes'):
        hook.before_train(runner_with(classes=8))
    with pytest.raises(ValueError, match='test_dataloader'):
        hook.before_test(runner_with(classes=4))


def _batch(*labels):
    samples = []
    for i, value in enumerate(labels):
        sample = SegDataSample(metainfo=dict(seg_map_path=f'l{i}.png'))
        sample.gt_sem_seg = PixelData(data=torch.full((1, 4, 4), value))
        samples.append(sample)
    return dict(data_samples=samples)


def test_a_batch_of_ignored_labels_is_logged():
    records = []
    logger = MMLogger.get_current_instance()
    logger.addFilter(lambda record: records.append(record.getMessage()))
    try:
        hook = LabelChecksHook()
        hook.before_train_iter(runner_with(), 0, _batch(255, 3))
        assert not any('ignore index' in r for r in records)
        hook.before_train_iter(runner_with(), 0, _batch(255, 255))
    finally:
        logger.filters.clear()
    assert any('iteration 7: every label of the batch is the ignore index '
               '255' in r and 'l0.png, l1.png' in r for r in records)
