from types import SimpleNamespace

import pytest

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
