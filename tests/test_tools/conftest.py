"""A tiny randomly initialised RegionProxy model for the tools' tests."""
import pytest
import torch
from mmengine.config import Config

NUM_CLASSES = 4
PALETTE = [[200, 30, 30], [30, 200, 30], [30, 30, 200], [220, 220, 40]]

TINY_CONFIG = """
default_scope = 'mmseg'
custom_imports = dict(imports=['regproxy'], allow_failed_imports=False)
crop_size = (64, 64)
model = dict(
    type='PaddedSlideEncoderDecoder',
    data_preprocessor=dict(
        type='SegDataPreProcessor', mean=[123.675, 116.28, 103.53],
        std=[58.395, 57.12, 57.375], bgr_to_rgb=True, pad_val=0,
        seg_pad_val=255),
    backbone=dict(
        type='RegionProxyViT', img_size=crop_size, patch_size=16,
        embed_dims=32, num_layers=2, num_heads=2, out_indices=(0, 1)),
    decode_head=dict(
        type='ProxyHead', in_channels=(32, 32), in_index=(0, 1), channels=16,
        num_classes=4, norm_cfg=dict(type='SyncBN', requires_grad=True),
        loss_decode=dict(type='CrossEntropyLoss'), init_cfg=None),
    test_cfg=dict(mode='slide', crop_size=crop_size, stride=(48, 48)))
test_pipeline = [
    dict(type='CheckedLoadImageFromFile'),
    dict(type='Resize', scale=(128, 96), keep_ratio=True),
    dict(type='PackSegInputs')
]
"""


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    """(config path, checkpoint path) of a tiny randomly initialised model
    whose checkpoint carries a palette, as a trained one would."""
    from mmseg.registry import MODELS
    root = tmp_path_factory.mktemp('tiny')
    config = root / 'tiny_regproxy.py'
    config.write_text(TINY_CONFIG)
    torch.manual_seed(0)
    model = MODELS.build(Config.fromfile(config).model)
    model.init_weights()
    # Spread the head's affinities so the region map is not a plain grid.
    torch.nn.init.normal_(model.decode_head.affinity_head[1].conv.weight,
                          std=0.5)
    checkpoint = root / 'tiny.pth'
    meta = dict(
        dataset_meta=dict(
            classes=tuple(f'c{i}' for i in range(NUM_CLASSES)),
            palette=PALETTE))
    torch.save(dict(state_dict=model.state_dict(), meta=meta), checkpoint)
    return str(config), str(checkpoint)
