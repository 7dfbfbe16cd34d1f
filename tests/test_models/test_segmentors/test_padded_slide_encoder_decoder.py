import json

import numpy as np
import pytest
import torch
from mmengine.config import ConfigDict
from mmseg.apis import inference_model, init_model
from mmseg.registry import MODELS
from mmseg.structures import SegDataSample

import regproxy.models.segmentors.padded_slide_encoder_decoder as \
    segmentor_module
from regproxy.models.segmentors.padded_slide_encoder_decoder import \
    argmax_by_chunks

from tests.conformance import CONFIG_DIR, conformance_path
from tests.tiny_models import tiny_segmentor, tiny_segmentor_cfg

T16_ADE = ('regproxy-t16-sub4+implicit-mid-4+512x512+160k+adamw-poly+'
           'ade20k')


@pytest.mark.parametrize('mode', ['whole', 'slide'])
@pytest.mark.parametrize('size', [(1, 1), (17, 999), (40, 30), (64, 64),
                                  (100, 65)])
def test_any_size_returns_input_size(mode, size):
    model = tiny_segmentor(mode=mode)
    inputs = torch.randn(1, 3, *size)
    with torch.no_grad():
        logits = model.inference(
            inputs, [dict(img_shape=size, ori_shape=size, pad_shape=size)])
    assert logits.shape == (1, 5, *size)
    assert torch.isfinite(logits).all()


def test_small_window_is_padded_not_stretched():
    """An image smaller than the crop gives the logits of the crop-sized
    zero-padded image, cropped back."""
    model = tiny_segmentor()
    image = torch.randn(1, 3, 40, 56)
    padded = torch.nn.functional.pad(image, (0, 8, 0, 24))
    with torch.no_grad():
        slide = model.slide_inference(image, [dict(img_shape=(40, 56))])
        whole = model.encode_decode(padded, [dict(img_shape=(64, 64))])
    torch.testing.assert_close(slide, whole[:, :, :40, :56])


def test_released_layout_checkpoint_segments_an_image(tmp_path):
    """init_model + inference_model with a checkpoint in the released
    mmseg 0.x layout (state_dict + meta), loaded strictly."""
    layout = json.loads(conformance_path('layouts.json').read_text())[T16_ADE]
    generator = torch.Generator().manual_seed(0)
    state_dict = {}
    for key, shape in layout['keys'].items():
        if key.endswith('num_batches_tracked'):
            state_dict[key] = torch.tensor(100)
        elif key.endswith('running_var'):
            state_dict[key] = torch.rand(shape, generator=generator) + 0.5
        else:
            state_dict[key] = 0.02 * torch.randn(shape, generator=generator)
    path = tmp_path / 'regproxy_t16_ade20k.pth'
    torch.save(
        dict(state_dict=state_dict,
             meta=dict(iter=160000, mmseg_version='0.17.0')), path)
    config = CONFIG_DIR / 'regproxy_ade20k' / f'{T16_ADE}.py'
    cfg = ConfigDict(model=dict(decode_head=dict(norm_cfg=dict(type='BN'))))
    model = init_model(str(config), str(path), device='cpu',
                       cfg_options=cfg.to_dict())
    torch.testing.assert_close(model.backbone.pos_embed,
                               state_dict['backbone.pos_embed'])
    image = np.random.default_rng(0).integers(0, 255, (300, 450, 3),
                                              dtype=np.uint8)
    result = inference_model(model, image)
    assert result.pred_sem_seg.data.shape == (1, 300, 450)
    assert result.seg_logits.data.shape == (150, 300, 450)
    model.test_cfg.return_logits = False
    labels_only = inference_model(model, image)
    assert 'seg_logits' not in labels_only
    assert torch.equal(labels_only.pred_sem_seg.data,
                       result.pred_sem_seg.data)


@pytest.mark.parametrize('change, message', [
    (dict(decode_head=dict(in_channels=(48, 48))), 'in_channels'),
    (dict(test_cfg=dict(mode='slide', crop_size=(8, 8), stride=(8, 8))),
     'crop_size'),
    (dict(test_cfg=dict(mode='slide', crop_size=(64, 64), stride=(80, 48))),
     r'stride=\(80, 48\) must be between 1 and'),
    (dict(test_cfg=dict(mode='slide', crop_size=(64, 64), stride=(0, 48))),
     'stride'),
    (dict(backbone=dict(out_indices=(1, ))), r'in_index=\(0, 1\) selects'),
])
def test_inconsistent_model_config_fails_at_build(change, message):
    cfg = tiny_segmentor_cfg()
    for key, value in change.items():
        cfg[key] = {**cfg[key], **value}
    with pytest.raises(ValueError, match=message):
        MODELS.build(cfg)


def image_samples():
    """Samples of 70x90 inputs: scaled from 50x61 and padded (one flipped),
    or at their original size."""
    scaled = [
        SegDataSample(metainfo=dict(
            img_shape=(66, 85), pad_shape=(70, 90), ori_shape=(50, 61),
            padding_size=[0, 5, 0, 4], flip=flip is not None,
            flip_direction=flip)) for flip in (None, 'vertical')
    ]
    original = SegDataSample(metainfo=dict(
        img_shape=(70, 90), pad_shape=(70, 90), ori_shape=(70, 90)))
    return scaled + [original]


@pytest.mark.parametrize('mode', ['whole', 'slide'])
def test_class_map_only_predicts_mmseg_labels_without_logits(
        mode, monkeypatch):
    model = tiny_segmentor(mode=mode, num_classes=7)
    inputs = torch.randn(3, 3, 70, 90)
    with torch.no_grad():
        expected = model.predict(inputs, image_samples())
        expected += model.predict(inputs)
        model.test_cfg.return_logits = False
        # 3 classes per chunk: chunks of 3, 3 and 1.
        monkeypatch.setattr(segmentor_module, 'CPU_CHUNK_ELEMENTS',
                            3 * 3 * 70 * 90)
        samples = model.predict(inputs, image_samples())
        samples += model.predict(inputs)
    for ours, reference in zip(samples, expected):
        assert 'seg_logits' not in ours and 'seg_logits' in reference
        assert torch.equal(ours.pred_sem_seg.data,
                           reference.pred_sem_seg.data)
    assert samples[0].pred_sem_seg.shape == (50, 61)
    assert samples[2].pred_sem_seg.shape == samples[3].pred_sem_seg.shape
    assert samples[3].pred_sem_seg.shape == (70, 90)


def test_argmax_by_chunks_keeps_the_first_largest_and_nan():
    scores = torch.tensor([[1., 3., 3., 0., 3.], [2., float('nan'), 5., 5.,
                                                   float('nan')],
                           [0., 0., 0., 0., 0.]]).T[:, :, None]
    expected = scores.argmax(0)
    for chunk in (1, 2, 3, 5):
        index, = argmax_by_chunks(5, chunk, lambda k0, k1: [scores[k0:k1]])
        assert torch.equal(index, expected), chunk
    assert expected.flatten().tolist() == [1, 1, 0]


def test_test_cfg_takes_return_logits_true_or_false():
    cfg = tiny_segmentor_cfg(mode='slide')
    cfg.test_cfg.return_logits = False
    model = MODELS.build(cfg)
    assert model.test_cfg.return_logits is False
    with pytest.raises(ValueError, match='return_logits must be True or'):
        MODELS.build({**cfg, 'test_cfg': {**cfg.test_cfg,
                                          'return_logits': 'no'}})
    with pytest.raises(ValueError, match='one logit per class'):
        MODELS.build({**cfg, 'decode_head': {**cfg.decode_head,
                                             'out_channels': 1,
                                             'num_classes': 2}})


@pytest.mark.parametrize('num_classes', [3, 300])
def test_argmax_by_chunks_equals_argmax_with_ties(num_classes):
    # Rounded scores tie often; 300 classes outgrow uint8 indices.
    scores = torch.randn(num_classes, 5, 7,
                         generator=torch.Generator().manual_seed(0)).round()
    scores[1, 0, :3] = float('nan')
    for chunk in (1, 2, num_classes):
        index, = argmax_by_chunks(num_classes, chunk,
                                  lambda k0, k1: [scores[k0:k1]])
        assert index.dtype == torch.int64
        assert torch.equal(index, scores.argmax(0)), chunk
