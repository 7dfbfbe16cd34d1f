"""timm/DeiT ImageNet weights convert to our names for all six published
initialisations: nothing missing but the head, nothing unexpected."""
import json
import logging
import re
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from mmengine.logging import MMLogger

from regproxy.engine import CheckpointError, load_checkpoint_file
from regproxy.models.backbones import RegionProxyViT, TimmRegionProxyViT
from regproxy.models.utils import checkpoint_filter_fn
from tests.conformance import (REPO_ROOT, conformance_path, published_config)

INITIALISATIONS = {
    'vit_tiny_patch16_384':
    'regproxy-t16-sub4+implicit-mid-4+512x512+160k+adamw-poly+ade20k',
    'vit_small_patch16_384':
    'regproxy-s16-sub4+implicit-mid-4+512x512+160k+adamw-poly+ade20k',
    'vit_large_patch16_384':
    'regproxy-l16-sub4+implicit-mid-9+640x640+160k+adamw-cr+ade20k',
    'vit_small_r26_s32_384':
    'regproxy-r26-s32-sub4+implicit-mid-n1+512x512+160k+adamw-poly+ade20k',
    'vit_large_r50_s32_384':
    'regproxy-r50-l32-sub4+implicit-mid-n1+640x640+160k+adamw-cr+ade20k',
    'deit_base_distilled_patch16_384':
    'regproxy-b16-sub4+implicit-mid-4+512x512+160k+adamw-cr+ade20k',
}


@pytest.mark.parametrize('timm_name', list(INITIALISATIONS))
def test_timm_checkpoint_converts_to_release_layout(timm_name):
    name = INITIALISATIONS[timm_name]
    with torch.device('meta'):
        source = timm.create_model(timm_name, pretrained=False)
        cfg = published_config(name)
        backbone = RegionProxyViT(**{
            k: v
            for k, v in cfg.model.backbone.items()
            if k != 'type'
        })
    checkpoint = source.state_dict()
    if timm_name.startswith('deit'):
        checkpoint = {'model': checkpoint}  # DeiT's released file format
    converted = checkpoint_filter_fn(checkpoint, backbone)
    layout = json.loads(conformance_path('layouts.json').read_text())[name]
    expected = {
        k[len('backbone.'):]: s
        for k, s in layout['keys'].items() if k.startswith('backbone.')
    }
    assert sorted(converted) == sorted(expected)
    for key, shape in expected.items():
        assert list(converted[key].shape) == shape, key
    head_keys = [k for k in layout['keys'] if not k.startswith('backbone.')]
    assert head_keys and all(k.startswith('decode_head.') for k in head_keys)


def test_pretrained_file_loads_with_values(tmp_path):
    """A real timm file on disk: renamed values arrive, pos_embed resized."""
    torch.manual_seed(0)
    source = timm.create_model('vit_tiny_patch16_384', pretrained=False)
    path = tmp_path / 'vit_tiny.pth'
    torch.save(source.state_dict(), path)
    backbone = RegionProxyViT(
        img_size=64, embed_dims=192, num_heads=3, num_layers=12,
        out_indices=(4, 11), pretrained=str(path))
    backbone.init_weights()
    sd = source.state_dict()
    torch.testing.assert_close(backbone.layers[3].attn.attn.in_proj_weight,
                               sd['blocks.3.attn.qkv.weight'])
    torch.testing.assert_close(backbone.layers[11].ffn.layers[1].weight,
                               sd['blocks.11.mlp.fc2.weight'])
    torch.testing.assert_close(backbone.ln1.weight, sd['norm.weight'])
    torch.testing.assert_close(backbone.patch_embed.projection.weight,
                               sd['patch_embed.proj.weight'])
    assert backbone.pos_embed.shape == (1, 4 * 4 + 1, 192)
    torch.testing.assert_close(backbone.pos_embed[:, 0], sd['pos_embed'][:, 0])


B16_ADE = (REPO_ROOT / 'configs' / 'regproxy_ade20k' /
           'regproxy-b16-sub4+implicit-mid-4+512x512+160k+adamw-cr+ade20k.py')


def _convert(src, dst, config) -> subprocess.CompletedProcess:
    return subprocess.run([
        sys.executable, 'tools/model_converters/vit2regproxy.py',
        str(src), str(dst), '--config', str(config)
    ], cwd=REPO_ROOT, capture_output=True, text=True)


@pytest.fixture(scope='module')
def deit_tiny(tmp_path_factory) -> tuple:
    """DeiT-Ti distilled in DeiT's file format, and the published B16
    config at DeiT-Ti width (12 layers, a distillation token)."""
    root = tmp_path_factory.mktemp('deit')
    source = timm.create_model(
        'deit_tiny_distilled_patch16_224', pretrained=False)
    torch.save({'model': source.state_dict()}, root / 'deit.pth')
    (root / 'deit_ti.py').write_text(
        f"_base_ = ['{B16_ADE}']\n"
        'model = dict(backbone=dict(embed_dims=192, num_heads=3))\n')
    return root / 'deit.pth', root / 'deit_ti.py'


@pytest.mark.parametrize('suffix', ['.pth', '.safetensors'])
def test_converter_command_line(deit_tiny, tmp_path, suffix):
    src, config = deit_tiny
    dst = tmp_path / f'converted{suffix}'
    proc = _convert(src, dst, config)
    assert proc.returncode == 0, proc.stderr
    state_dict = load_checkpoint_file(dst)
    state_dict = state_dict.get('state_dict', state_dict)
    assert state_dict['pos_embed'].shape == (1, 32 * 32 + 2, 192)
    assert 'dist_token' in state_dict and 'layers.0.ln1.weight' in state_dict
    assert not any(k.startswith(('head', 'blocks')) for k in state_dict)


def test_converter_refuses_weights_that_do_not_fit(deit_tiny, tmp_path):
    """DeiT-Ti weights for the B16 config (width 768), and a timm-backbone
    config, whose backbone reads timm files itself."""
    src, _ = deit_tiny
    proc = _convert(src, tmp_path / 'c.pth', B16_ADE)
    assert proc.returncode == 1
    assert proc.stderr.startswith(
        f'error: checkpoint {src} does not fit the model: cls_token '
        '(1, 1, 192) in the checkpoint, (1, 1, 768) in the model')
    assert 'Expected ImageNet weights of the timm model of' in proc.stderr
    timm_config = (REPO_ROOT / 'configs' / 'regproxy_shapes' /
                   'regproxy-eva02-ti14-d4-sub4+implicit-mid-1+128x128+1500+'
                   'adamw-poly+shapes.py')
    proc = _convert(src, tmp_path / 'c.pth', timm_config)
    assert proc.returncode == 1
    assert ('the backbone is TimmRegionProxyViT; this converts ImageNet '
            'weights for RegionProxyViT') in proc.stderr
    assert f'model.backbone.pretrained={src}' in proc.stderr
    assert not (tmp_path / 'c.pth').exists()


def test_mmseg_vit2mmseg_file_keeps_the_patch_bias(tmp_path):
    """A ViT converted by mmseg's own vit2mmseg.py (mmseg names, patch
    projection with a bias) gives the same tokens as the timm file."""
    import mmseg
    tool = (Path(mmseg.__file__).parent / '.mim' / 'tools' /
            'model_converters' / 'vit2mmseg.py')
    torch.manual_seed(0)
    source = timm.create_model('vit_tiny_patch16_224', pretrained=False)
    torch.nn.init.normal_(source.patch_embed.proj.bias, std=1.)
    timm_file, mmseg_file = tmp_path / 'timm.pth', tmp_path / 'mmseg.pth'
    torch.save(source.state_dict(), timm_file)
    subprocess.run([sys.executable, str(tool), str(timm_file),
                    str(mmseg_file)], check=True, capture_output=True)
    outputs = []
    for path in (timm_file, mmseg_file):
        backbone = RegionProxyViT(
            img_size=224, embed_dims=192, num_heads=3, num_layers=12,
            out_indices=(4, 11), pretrained=str(path))
        backbone.init_weights()
        with torch.no_grad():
            outputs.append(backbone.eval()(torch.randn(
                1, 3, 224, 224, generator=torch.Generator().manual_seed(1))))
    for ours, theirs in zip(*outputs):
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


def test_partly_fitting_pretrained_file_warns_with_counts(tmp_path):
    """A 12-layer file into a 4-layer backbone: a warning with the numbers
    of unexpected keys and the first of them; the pos_embed resize logged."""
    source = timm.create_model('vit_tiny_patch16_224', pretrained=False)
    path = tmp_path / 'vit12.pth'
    torch.save(source.state_dict(), path)
    backbone = RegionProxyViT(img_size=64, embed_dims=192, num_heads=3,
                              num_layers=4, out_indices=(1, 3),
                              pretrained=str(path))
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = MMLogger.get_current_instance()
    logger.addHandler(handler)
    try:
        backbone.init_weights()
    finally:
        logger.removeHandler(handler)
    warnings = [r.getMessage() for r in records if r.levelname == 'WARNING']
    assert any(re.search(r'vit12.pth only partly fits RegionProxyViT: '
                         r'53 of 53 tensors loaded; 0 missing keys \(-\), '
                         r'96 unexpected keys \(layers\.4\.', w)
               for w in warnings), warnings
    assert any('pos_embed resampled from a 14x14 to a 4x4 grid'
               in r.getMessage() for r in records)


def test_pretrained_file_of_another_width_is_refused(tmp_path):
    source = timm.create_model('vit_small_patch16_224', pretrained=False)
    path = tmp_path / 'vit_s.pth'
    torch.save(source.state_dict(), path)
    backbone = RegionProxyViT(img_size=64, embed_dims=192, num_heads=3,
                              num_layers=12, out_indices=(4, 11),
                              pretrained=str(path))
    with pytest.raises(CheckpointError, match=(
            r'vit_s.pth does not fit the model: cls_token \(1, 1, 384\) in '
            r'the checkpoint, \(1, 1, 192\) in the model')):
        backbone.init_weights()


def test_pretrained_file_of_which_no_key_fits_is_refused(tmp_path):
    path = tmp_path / 'resnet.pth'
    torch.save(timm.create_model('resnet18').state_dict(), path)
    backbone = RegionProxyViT(img_size=64, embed_dims=32, num_heads=2,
                              num_layers=2, out_indices=(0, 1),
                              pretrained=str(path))
    before = backbone.cls_token.clone()
    with pytest.raises(CheckpointError) as error:
        backbone.init_weights()
    assert str(error.value) == (
        f'none of the 122 keys of {path} fits RegionProxyViT (29 keys): the '
        'file has conv1.weight, bn1.weight, bn1.bias ..., the backbone '
        'cls_token, pos_embed, patch_embed.projection.weight ...; expected '
        'the ImageNet weights of a ViT (timm, DeiT or mmseg names)')
    assert torch.equal(backbone.cls_token, before)


def test_timm_vit_s_weights_into_a_timm_vit_ti_are_refused(tmp_path):
    path = tmp_path / 'vit_s.pth'
    torch.save(timm.create_model('vit_small_patch16_224').state_dict(), path)
    backbone = TimmRegionProxyViT('vit_tiny_patch16_224', img_size=64,
                                  out_indices=(4, 11), pretrained=str(path))
    with pytest.raises(CheckpointError, match=(
            r'vit_s.pth does not fit the model: cls_token \(1, 1, 384\) in '
            r'the checkpoint, \(1, 1, 192\) in the model')):
        backbone.init_weights()
