"""TimmRegionProxyViT against timm's own features, per ViT family.

The reference is timm itself: a model built by ``timm.create_model`` that
loads the same weights file through timm's own pretrained loader, read with
``forward_intermediates`` (mid layer) and ``forward_features`` (last layer,
final norm included). All weights are random (no network here) and drawn
far from timm's initialisation, so that every layer changes the tokens (the
layer scale of DINOv2/DeiT-III starts at 1e-5 and would hide a wrong
layer).
"""
import os

import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import resample_abs_pos_embed

from regproxy.engine import CheckpointError
from regproxy.models.backbones import TimmRegionProxyViT

# family -> a timm ViT-S of it, at full depth (12 layers)
FAMILIES = {
    'augreg': 'vit_small_patch16_384',  # class token, learned pos embed
    'deit-distilled': 'deit_small_distilled_patch16_224',  # + dist token
    'deit3': 'deit3_small_patch16_384',  # pos embed without class, scale
    'dinov2': 'vit_small_patch14_dinov2',
    'dinov2-reg4': 'vit_small_patch14_reg4_dinov2',  # + 4 registers
    'eva02': 'eva02_small_patch14_224',  # rotary embedding, fc_norm
    'dinov3': 'vit_small_patch16_dinov3',  # DINOv3's rotary embedding, reg4
}
OUT_INDICES = (4, 11)
ODD_SIZE = (59, 87)  # padded by timm to 70 x 98 (p 14) or 64 x 96 (p 16)
ATOL = RTOL = 1e-5


def train_size(model_name: str) -> tuple:
    patch = 14 if 'patch14' in model_name else 16
    return (5 * patch, 5 * patch)


def randomise(model: nn.Module, seed: int = 0) -> nn.Module:
    """Norm weights and layer scales around 1, everything else N(0, .05)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            scale = name.endswith('gamma') or ('norm' in name
                                               and name.endswith('weight'))
            param.copy_(1 + 0.2 * noise if scale else 0.05 * noise)
    return model


@pytest.fixture(scope='module', params=sorted(FAMILIES))
def family(request, tmp_path_factory):
    """A randomised ``timm.create_model(name)`` (its own default size and
    head) saved as a state_dict file, and our backbone loaded from it."""
    name = FAMILIES[request.param]
    source = randomise(timm.create_model(name).eval())
    path = tmp_path_factory.mktemp(request.param) / f'{name}.pth'
    torch.save(source.state_dict(), path)
    ours = TimmRegionProxyViT(
        name,
        img_size=train_size(name),
        out_indices=OUT_INDICES,
        pretrained=str(path))
    ours.init_weights()
    return dict(name=name, source=source, path=path, ours=ours.eval())


def timm_reference(name: str, path) -> nn.Module:
    """timm's model at our training size, loading the file its own way."""
    return timm.create_model(
        name,
        pretrained=True,
        pretrained_cfg_overlay=dict(file=str(path)),
        num_classes=0,
        img_size=train_size(name),
        dynamic_img_size=True).eval()


def to_map(tokens: torch.Tensor, model: nn.Module, h: int, w: int):
    """timm (B, prefix + h*w, C) tokens -> (B, C, h, w) patch map."""
    patches = tokens[:, model.num_prefix_tokens:]
    return patches.transpose(1, 2).reshape(tokens.shape[0], -1, h, w)


@pytest.mark.parametrize('size', ['train', 'odd'])
def test_maps_equal_timm_features(family, size):
    name, ours = family['name'], family['ours']
    reference = timm_reference(name, family['path'])
    patch = ours.patch_size
    H, W = train_size(name) if size == 'train' else ODD_SIZE
    h, w = -(-H // patch), -(-W // patch)
    torch.manual_seed(0)
    x = torch.randn(2, 3, H, W)
    # timm's reference gets the zero-padded image; ours pads it itself
    padded = F.pad(x, (0, w * patch - W, 0, h * patch - H))
    with torch.no_grad():
        mid, last = ours(x)
        timm_mid, timm_next = reference.forward_intermediates(
            padded,
            indices=[OUT_INDICES[0], OUT_INDICES[0] + 1],
            intermediates_only=True)
        features = reference.forward_features(padded)
        if isinstance(reference.norm, nn.Identity):
            # EVA-02 normalises after pooling: its final LayerNorm is fc_norm
            features = reference.fc_norm(features)
    timm_last = to_map(features, reference, h, w)
    assert mid.shape == last.shape == (2, ours.embed_dims, h, w)
    torch.testing.assert_close(mid, timm_mid, atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(last, timm_last, atol=ATOL, rtol=RTOL)
    # the test can fail: the next layer's tokens are far from the mid map
    assert (mid - timm_next).abs().max() > 0.1


def test_state_dict_loads_strictly(family):
    """Every tensor of timm's state_dict lands in the backbone unchanged,
    but for the position embedding (timm's resampler) and the classifier
    (dropped); EVA-02's fc_norm becomes the final norm."""
    source = family['source'].state_dict()
    loaded = family['ours'].vit.state_dict()
    if 'fc_norm.weight' in source:
        source = {k.replace('fc_norm.', 'norm.'): v for k, v in source.items()}
    expected_keys = {k for k in source if not k.startswith('head')}
    assert set(loaded) == expected_keys
    vit = family['ours'].vit
    prefix = 0 if vit.no_embed_class else vit.num_prefix_tokens
    for key, value in loaded.items():
        expected = source[key]
        if key == 'pos_embed':
            assert expected.shape != value.shape  # other size: resampled
            expected = resample_abs_pos_embed(
                expected, vit.patch_embed.grid_size, num_prefix_tokens=prefix)
        torch.testing.assert_close(value, expected, atol=1e-6, rtol=0)


def test_mismatched_state_dict_is_refused(family):
    ours = family['ours']
    state_dict = family['source'].state_dict()
    extra = dict(state_dict, **{'blocks.0.attn.extra': torch.zeros(1)})
    with pytest.raises(CheckpointError,
                       match=r'blocks.0.attn.extra \(1,\) not in the model'):
        ours.load_timm_state_dict(extra, 'extra key')
    missing = dict(state_dict)
    del missing['blocks.3.mlp.fc2.bias']
    with pytest.raises(CheckpointError, match=(
            r'blocks.3.mlp.fc2.bias \(384,\) missing in the checkpoint')):
        ours.load_timm_state_dict(missing, 'missing key')


def test_state_dict_of_another_model_is_refused(tmp_path):
    path = tmp_path / 'tiny.pth'
    torch.save(timm.create_model('vit_tiny_patch16_224').state_dict(), path)
    ours = TimmRegionProxyViT('vit_small_patch16_224', img_size=64,
                              pretrained=str(path))
    with pytest.raises(CheckpointError, match=(
            r'tiny.pth does not fit the model: cls_token \(1, 1, 192\) in the '
            r'checkpoint, \(1, 1, 384\) in the model.*Expected timm weights')):
        ours.init_weights()


def tiny(name='vit_small_patch14_reg4_dinov2', **kwargs):
    args = dict(img_size=56, out_indices=(0, 1), timm_kwargs=dict(depth=2))
    args.update(kwargs)
    return TimmRegionProxyViT(name, **args)


def test_pretrained_segmentor_checkpoint_loads_its_backbone(tmp_path):
    """pretrained= a segmentor checkpoint with this backbone (as training
    writes it: its backbone part is taken) or the backbone's own
    state_dict: every tensor arrives unchanged."""
    source = randomise(tiny())
    expected = source.state_dict()
    segmentor = {f'backbone.{k}': v for k, v in expected.items()}
    segmentor['decode_head.conv_seg.weight'] = torch.zeros(1)
    path = tmp_path / 'weights.pth'
    for content in (dict(meta={}, state_dict=segmentor), expected):
        torch.save(content, path)
        ours = tiny(pretrained=str(path))
        ours.init_weights()
        loaded = ours.state_dict()
        assert set(loaded) == set(expected)
        for key, value in expected.items():
            torch.testing.assert_close(loaded[key], value, atol=0, rtol=0)


@pytest.mark.parametrize('size', [(56, 56), (1, 1), (17, 33), (234, 345)])
def test_any_input_size(size):
    model = tiny().eval()
    with torch.no_grad():
        outs = model(torch.randn(1, 3, *size))
    grid = (-(-size[0] // 14), -(-size[1] // 14))
    assert [o.shape for o in outs] == [(1, 384, *grid)] * 2


def test_out_indices_order_and_final_norm():
    """Maps come in out_indices order; only the last layer is normalised."""
    model = tiny(out_indices=(1, 0, 1)).eval()
    x = torch.randn(2, 3, 56, 84)
    with torch.no_grad():
        last, first, last_again = model(x)
        raw = model.vit.forward_intermediates(x, indices=[0, 1],
                                              intermediates_only=True)
    torch.testing.assert_close(first, raw[0])
    torch.testing.assert_close(last, last_again)
    normed = model.vit.norm(raw[1].permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    torch.testing.assert_close(last, normed)
    assert (last - raw[1]).abs().max() > 0.1


@pytest.mark.parametrize('name', [
    'vit_small_patch14_reg4_dinov2', 'eva02_tiny_patch14_224',
    'deit_tiny_distilled_patch16_224'
])
def test_gradients_reach_every_parameter(name):
    """No unused pooling/classifier weights (which DDP would reject)."""
    model = tiny(name, img_size=64 if 'patch16' in name else 56,
                 drop_path_rate=0.1).train()
    outs = model(torch.randn(2, 3, 56, 70))
    sum(o.sum() for o in outs).backward()
    without = [n for n, p in model.named_parameters() if p.grad is None]
    assert not without


@pytest.mark.parametrize('name', [
    'swin_tiny_patch4_window7_224',  # hierarchical
    'convnext_tiny',  # convolutional
    'resnet18',  # no patch tokens
    'vit_small_r26_s32_224',  # hybrid: ResNet stem
    'no_such_model',
])
def test_unsupported_models_are_refused_by_name(name):
    with pytest.raises(ValueError, match=f"model_name='{name}'"):
        TimmRegionProxyViT(name)


@pytest.mark.parametrize('kwargs, match', [
    (dict(out_indices=(0, 2)), r'out_indices=\(0, 2\)'),
    (dict(out_indices=(-1, 1)), r'out_indices=\(-1, 1\)'),
    (dict(img_size=60), r'img_size=\(60, 60\)'),
    (dict(img_size=(56, )), r'img_size=\(56,\)'),
    (dict(img_size=(56, 56, 56)), r'img_size=\(56, 56, 56\)'),
    (dict(drop_path_rate=1.5), 'drop_path_rate=1.5'),
    (dict(pretrained=3), 'pretrained=3'),
    (dict(timm_kwargs=dict(depth=2, num_classes=10)), 'num_classes'),
    (dict(init_cfg=dict(type='Pretrained', checkpoint='x')), 'init_cfg='),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        tiny(**kwargs)


def test_input_that_is_not_an_image_batch_is_named():
    with pytest.raises(ValueError, match='expected a batch of images'):
        tiny()(torch.randn(3, 56, 56))


def test_missing_weights_file_names_it(tmp_path):
    model = tiny(pretrained=str(tmp_path / 'absent.pth'))
    with pytest.raises(CheckpointError, match='absent.pth'):
        model.init_weights()


@pytest.mark.skipif(
    not os.environ.get('REGPROXY_TEST_DOWNLOADS'),
    reason='downloads timm weights; set REGPROXY_TEST_DOWNLOADS=1 online')
def test_pretrained_timm_downloads_published_weights():
    name = 'vit_small_patch14_reg4_dinov2.lvd142m'
    ours = TimmRegionProxyViT(name, img_size=518, pretrained='timm')
    ours.init_weights()
    reference = timm.create_model(name, pretrained=True).eval()
    x = torch.randn(1, 3, 518, 518)
    with torch.no_grad():
        last = ours.eval()(x)[1]
        expected = to_map(reference.forward_features(x), reference, 37, 37)
    torch.testing.assert_close(last, expected, atol=ATOL, rtol=RTOL)
