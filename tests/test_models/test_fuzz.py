"""Property-based tests of the segmentor over input sizes and settings.

Valid settings must build and segment an image of any size; invalid ones
must fail at build time with a ``ValueError`` naming the offending field.
"""
import functools

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from mmengine.config import ConfigDict
from mmseg.registry import MODELS

from tests.tiny_models import tiny_segmentor

NUM_CLASSES = 5


def pair(value):
    return (value, value) if isinstance(value, int) else tuple(value)


def ceil_div(a, b):
    return -(-a // b)


def fuzz(max_examples):
    """Reproducible hypothesis settings: a fixed seed and no deadline."""
    return settings(max_examples=max_examples, deadline=None,
                    derandomize=True)


def build_segmentor(backbone, decode_head, test_cfg):
    model = MODELS.build(
        ConfigDict(
            type='PaddedSlideEncoderDecoder',
            backbone=dict(type='RegionProxyViT', **backbone),
            decode_head=dict(
                type='ProxyHead', norm_cfg=dict(type='BN'), **decode_head),
            test_cfg=test_cfg))
    model.init_weights()
    return model.eval()


@functools.lru_cache(maxsize=None)
def cached_segmentor(mode):
    return tiny_segmentor(num_classes=NUM_CLASSES, mode=mode)


def segment(model, size):
    inputs = torch.randn(1, 3, *size)
    with torch.no_grad():
        return model.inference(
            inputs, [dict(img_shape=size, ori_shape=size, pad_shape=size)])


sides = st.one_of(st.integers(1, 300), st.sampled_from([1, 2, 299, 300]))


@fuzz(50)
@given(height=sides, width=sides)
@example(height=1, width=300)
@example(height=300, width=1)
def test_whole_inference_any_size(height, width):
    """Whole inference returns finite logits of the input's size."""
    logits = segment(cached_segmentor('whole'), (height, width))
    assert logits.shape == (1, NUM_CLASSES, height, width)
    assert torch.isfinite(logits).all()


@st.composite
def windows(draw):
    """(crop_size, stride) of a slide test_cfg: crop from one patch (16) up,
    stride <= crop; stride >= 16 bounds the number of windows."""
    crop = tuple(draw(st.integers(16, 96)) for _ in range(2))
    stride = tuple(draw(st.integers(max(16, ceil_div(c, 2)), c)) for c in crop)
    return crop, stride


@fuzz(30)
@given(height=sides, width=sides, window=windows())
@example(height=1, width=300, window=((64, 64), (48, 48)))
@example(height=300, width=1, window=((64, 64), (48, 48)))
def test_slide_inference_any_size(height, width, window):
    """Slide inference returns finite logits of the input's size for any
    crop and stride <= crop."""
    model = cached_segmentor('slide')
    model.test_cfg.crop_size, model.test_cfg.stride = window
    logits = segment(model, (height, width))
    assert logits.shape == (1, NUM_CLASSES, height, width)
    assert torch.isfinite(logits).all()


FIELDS = ('num_heads', 'out_indices', 'in_index', 'img_size', 'region_res',
          'in_channels', 'channels', 'crop_size', 'stride')


@st.composite
def configs(draw):
    """Backbone, head and test settings, each field valid or not (the set
    ``broken`` only steers the draws), and an input size."""
    broken = draw(st.sets(st.sampled_from(FIELDS), max_size=2))
    embed_dims = draw(st.sampled_from([8, 12, 16, 24, 32]))
    num_layers = draw(st.integers(0, 2))
    patch_size = draw(st.integers(1, 16))

    if 'num_heads' in broken:
        heads = [n for n in range(1, 2 * embed_dims + 1) if embed_dims % n]
    else:
        heads = [n for n in range(1, 9) if embed_dims % n == 0]
    num_heads = draw(st.sampled_from(heads))

    # The head reads outputs (0, 1): one output is too few.
    out_indices = draw(
        st.lists(st.integers(-1, num_layers - 1),
                 min_size=1 if 'in_index' in broken else 2, max_size=3))
    if 'out_indices' in broken:
        bad = draw(st.sampled_from([-3, -2, num_layers, num_layers + 1]))
        out_indices.insert(draw(st.integers(0, len(out_indices))), bad)

    img_size = [patch_size * draw(st.integers(1, 4)) for _ in range(2)]
    if 'img_size' in broken and patch_size > 1:
        img_size[draw(st.integers(0, 1))] += draw(
            st.integers(1, patch_size - 1))
    if img_size[0] == img_size[1] and draw(st.booleans()):
        img_size = img_size[0]

    region_res = [draw(st.integers(1, 4)) for _ in range(2)]
    if 'region_res' in broken:
        region_res[draw(st.integers(0, 1))] = draw(st.integers(-2, 0))
        if draw(st.booleans()):
            region_res = region_res[:1]  # a pair with one entry
    if len(region_res) == 2 and region_res[0] == region_res[1] and draw(
            st.booleans()):
        region_res = region_res[0]

    in_channels = [embed_dims, embed_dims]
    if 'in_channels' in broken:
        in_channels[draw(st.integers(0, 1))] += draw(
            st.sampled_from([-4, 4, 8]))

    mode = draw(st.sampled_from(['whole', 'slide']))
    crop = [draw(st.integers(patch_size, 3 * patch_size)) for _ in range(2)]
    if 'crop_size' in broken and patch_size > 1:
        crop[draw(st.integers(0, 1))] = draw(st.integers(1, patch_size - 1))
    stride = [draw(st.integers(ceil_div(c, 2), c)) for c in crop]
    if 'stride' in broken:  # zero, or windows with gaps between them
        axis = draw(st.integers(0, 1))
        stride[axis] = draw(st.sampled_from([0, crop[axis] + 1,
                                             2 * crop[axis]]))
    # few tokens in whole mode, few windows in slide mode
    max_side = 40 if mode == 'whole' else 2 * max(crop)
    size = tuple(draw(st.integers(1, max_side)) for _ in range(2))

    backbone = dict(
        img_size=img_size, patch_size=patch_size, embed_dims=embed_dims,
        num_layers=num_layers, num_heads=num_heads, mlp_ratio=2,
        out_indices=out_indices, deit=draw(st.booleans()),
        with_cls_token=draw(st.booleans()), final_norm=draw(st.booleans()))
    decode_head = dict(
        in_channels=in_channels,
        channels=draw(st.sampled_from([-1, 0] if 'channels' in broken else
                                      [4, 8])),
        region_res=region_res,
        num_classes=draw(st.integers(1, 4)))
    test_cfg = dict(mode=mode, crop_size=tuple(crop), stride=tuple(stride))
    return backbone, decode_head, test_cfg, size


def offending_fields(backbone, decode_head, test_cfg):
    """The fields that break the rules the model documents."""
    embed_dims, patch = backbone['embed_dims'], backbone['patch_size']
    rules = {
        # only the attention layers split embed_dims into heads
        'num_heads': backbone['num_layers'] == 0
        or embed_dims % backbone['num_heads'] == 0,
        'out_indices': all(-1 <= i < backbone['num_layers']
                           for i in backbone['out_indices']),
        'in_index': len(backbone['out_indices']) >= 2,
        'img_size': all(s % patch == 0 for s in pair(backbone['img_size'])),
        'region_res': len(pair(decode_head['region_res'])) == 2
        and min(pair(decode_head['region_res'])) >= 1,
        'in_channels': all(c == embed_dims
                           for c in decode_head['in_channels']),
        'channels': decode_head['channels'] >= 1,
        'crop_size': test_cfg['mode'] == 'whole'
        or min(test_cfg['crop_size']) >= patch,
        'stride': test_cfg['mode'] == 'whole' or all(
            1 <= s <= c
            for s, c in zip(test_cfg['stride'], test_cfg['crop_size'])),
    }
    return {field for field, valid in rules.items() if not valid}


@fuzz(150)
@given(config=configs())
def test_settings_build_and_run_or_fail_clearly(config):
    """Valid settings build and give maps, head logits and seg logits of the
    right shapes; invalid ones raise a ValueError naming a wrong field."""
    backbone, decode_head, test_cfg, size = config
    offending = offending_fields(backbone, decode_head, test_cfg)
    if offending:
        with pytest.raises(ValueError, match='|'.join(offending)):
            build_segmentor(backbone, decode_head, test_cfg)
        return
    model = build_segmentor(backbone, decode_head, test_cfg)
    patch = backbone['patch_size']
    grid = (ceil_div(size[0], patch), ceil_div(size[1], patch))
    rh, rw = pair(decode_head['region_res'])
    num_classes = decode_head['num_classes']
    with torch.no_grad():
        maps = model.extract_feat(torch.randn(1, 3, *size))
        head_logits = model.decode_head(maps)
    assert [m.shape for m in maps] == [
        (1, backbone['embed_dims'], *grid)] * len(backbone['out_indices'])
    assert head_logits.shape == (1, num_classes, grid[0] * rh, grid[1] * rw)
    logits = segment(model, size)
    assert logits.shape == (1, num_classes, *size)
    assert torch.isfinite(logits).all()
