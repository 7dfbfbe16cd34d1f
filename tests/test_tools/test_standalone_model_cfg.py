import torch
from mmengine.config import Config
from mmseg.registry import MODELS

from tests.scripts import load_script

standalone_model_cfg = load_script(
    'tools/analysis/benchmark.py').standalone_model_cfg


def test_standalone_model_cfg_copies_without_weights_files():
    cfg = dict(
        type='PaddedSlideEncoderDecoder', pretrained='seg.pth',
        backbone=dict(type='RegionProxyViT', pretrained='vit.pth'),
        decode_head=dict(norm_cfg=dict(type='SyncBN')))
    standalone = standalone_model_cfg(cfg)
    assert standalone['pretrained'] is None
    assert standalone['backbone']['pretrained'] is None
    assert standalone['backbone']['init_cfg'] is None
    # SyncBN is kept: torch falls back to batch norm without a group
    assert standalone['decode_head']['norm_cfg']['type'] == 'SyncBN'
    # the original is untouched
    assert cfg['backbone']['pretrained'] == 'vit.pth'


def test_syncbn_model_runs_in_one_process():
    """What standalone_model_cfg relies on: a SyncBN model trains and
    infers on the CPU without a process group."""
    cfg = Config.fromfile(
        'configs/regproxy_ade20k/'
        'regproxy-t16-sub4+implicit-mid-4+512x512+160k+adamw-poly+ade20k.py')
    model = MODELS.build(standalone_model_cfg(cfg.model))
    norm = next(m for m in model.modules()
                if isinstance(m, torch.nn.SyncBatchNorm))
    norm.train()
    out = norm(torch.randn(2, norm.num_features, 3, 3))
    assert out.shape == (2, norm.num_features, 3, 3)
