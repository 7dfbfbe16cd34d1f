import pytest
import torch
from mmengine.structures import PixelData
from mmseg.structures import SegDataSample

from regproxy.models.decode_heads import ProxyHead
from regproxy.models.decode_heads.proxy_head import (neighbour_mask,
                                                     proxy_logits,
                                                     proxy_logits_unfold)
from tests.conformance import load_conformance, relative_error


def build_head(**kwargs):
    args = dict(
        in_channels=(16, 24),
        channels=8,
        num_classes=7,
        norm_cfg=dict(type='BN', requires_grad=True))
    args.update(kwargs)
    return ProxyHead(**args)


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
@pytest.mark.parametrize('filename', ['head_r4.pt', 'head_r2x3.pt'])
def test_head_matches_reference(filename, dtype):
    reference = load_conformance(filename)
    settings = reference['head']
    head = build_head(
        in_channels=settings['in_channels'],
        channels=settings['channels'],
        num_classes=settings['num_classes'],
        region_res=settings['region_res'])
    state_dict = {
        k[len('decode_head.'):]: v.to(dtype)
        for k, v in reference['state_dict'].items()
    }
    head.load_state_dict(state_dict, strict=True)
    head.to(dtype).eval()
    inputs = [reference['x_mid'].to(dtype), reference['x_last'].to(dtype)]
    tol = 1e-4 if dtype == torch.float32 else 1e-6
    for use_unfold in (False, True):
        head.use_unfold = use_unfold
        with torch.no_grad():
            logits = head(inputs)
        assert logits.shape == reference['seg_logits'].shape
        assert relative_error(logits, reference['seg_logits']) < tol


def test_neighbour_mask_matches_unfold_order():
    h, w = 3, 4
    index = torch.arange(1, h * w + 1, dtype=torch.float64).view(1, 1, h, w)
    unfolded = torch.nn.functional.unfold(index, 3, padding=1).view(9, h, w)
    assert torch.equal(neighbour_mask(h, w), unfolded > 0)


@pytest.mark.parametrize('region_res', [(4, 4), (2, 3), (1, 1)])
def test_accumulated_equals_unfold(region_res):
    torch.manual_seed(0)
    B, K, h, w = 2, 5, 3, 7
    logits = torch.randn(B, K, h, w, dtype=torch.float64)
    affinity = torch.randn(B, 9, *region_res, h, w,
                           dtype=torch.float64).softmax(1)
    expected = proxy_logits_unfold(logits, affinity)
    assert expected.shape == (B, K, h * region_res[0], w * region_res[1])
    torch.testing.assert_close(proxy_logits(logits, affinity), expected)


def test_pixel_logits_are_convex_combinations_of_neighbours():
    """A constant region map gives the same constant for every pixel: the
    affinities sum to one and borders get no weight outside the grid."""
    head = build_head().eval()
    x_mid = torch.randn(1, 16, 5, 6)
    x_last = torch.zeros(1, 24, 5, 6)
    with torch.no_grad():
        logits = head([x_mid, x_last])
        aff = head.affinity(x_mid)
    expected = head.mlp[0][0].bias.view(1, -1, 1, 1).expand_as(logits)
    torch.testing.assert_close(logits, expected)
    torch.testing.assert_close(aff.sum(1), torch.ones_like(aff.sum(1)))
    assert (aff[:, 0, :, :, 0, :] == 0).all()  # no top-left above row 0


def test_gradients_reach_every_parameter():
    head = build_head().train()
    logits = head([torch.randn(2, 16, 4, 5), torch.randn(2, 24, 4, 5)])
    logits.sum().backward()
    for name, param in head.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_odd_sizes_and_state_dict_names():
    head = build_head(region_res=(2, 3))
    out = head([torch.randn(1, 16, 7, 11), torch.randn(1, 24, 7, 11)])
    assert out.shape == (1, 7, 14, 33)
    assert not hasattr(head, 'conv_seg')
    assert 'mlp.0.0.weight' in head.state_dict()
    assert head.state_dict()['affinity_head.1.conv.weight'].shape[0] == 54


def test_dropout_acts_on_the_region_tokens_in_training():
    torch.manual_seed(0)
    head = build_head(dropout_ratio=0.5)
    inputs = [torch.randn(2, 16, 4, 5), torch.randn(2, 24, 4, 5)]
    head.train()
    assert not torch.equal(head(inputs), head(inputs))
    head.eval()
    with torch.no_grad():
        torch.testing.assert_close(head(inputs), head(inputs))
        without = build_head(dropout_ratio=0.)
        without.load_state_dict(head.state_dict())
        torch.testing.assert_close(without.eval()(inputs), head(inputs))


@pytest.mark.parametrize('kwargs, message', [
    (dict(region_res=0), 'region_res'),
    (dict(region_res=(2, -1)), 'region_res'),
    (dict(in_channels=(16, 24, 32), in_index=(0, 1, 2)), 'two inputs'),
    (dict(in_channels=(16, 24, 32)), 'two inputs'),
    (dict(region_res=(2, )), 'region_res'),
    (dict(channels=0), 'channels must be positive'),
    (dict(input_transform='resize_concat'), 'multiple_select'),
])
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_head(**kwargs)


def labelled_samples(shape, num_classes, generator, ignored=0.2):
    samples = []
    for _ in range(2):
        labels = torch.randint(num_classes, (1, *shape), generator=generator)
        labels[torch.rand(labels.shape, generator=generator) < ignored] = 255
        samples.append(SegDataSample(gt_sem_seg=PixelData(data=labels)))
    return samples


def loss_and_gradient(head, logits, samples):
    losses = head.loss_by_feat(logits, samples)
    total = sum(v for k, v in losses.items() if k.startswith('loss'))
    grad, = torch.autograd.grad(total, logits)
    return losses, grad


@pytest.mark.parametrize('kwargs, label_shape, ignored', [
    (dict(), (48, 60), 0.2),
    (dict(align_corners=True), (37, 45), 0.2),
    (dict(loss_decode=dict(type='CrossEntropyLoss', loss_weight=0.4,
                           avg_non_ignore=True)), (48, 60), 0.3),
    (dict(loss_decode=dict(type='CrossEntropyLoss', avg_non_ignore=True,
                           class_weight=[1., 2., .5, 0., 1., 1., 3.])),
     (30, 41), 0.),
    (dict(loss_decode=dict(type='CrossEntropyLoss',
                           class_weight=[1., 2., .5, 0., 1., 1., 3.]),
          ignore_index=3), (30, 41), 0.),
    (dict(loss_decode=dict(type='CrossEntropyLoss', loss_name='loss_x')),
     (7, 9), 0.2),
])
def test_fused_loss_equals_mmseg_loss_by_feat(kwargs, label_shape, ignored):
    """Same loss, accuracy and gradient as mmseg's resize + CrossEntropyLoss
    + top-1 accuracy, to 1e-5, for the settings of loss_decode."""
    generator = torch.Generator().manual_seed(0)
    head = build_head(**kwargs)
    logits = torch.randn(2, 7, 12, 15, generator=generator,
                         requires_grad=True)
    samples = labelled_samples(label_shape, 7, generator, ignored)
    fused, fused_grad = loss_and_gradient(head, logits, samples)
    head.fused_loss = False
    reference, reference_grad = loss_and_gradient(head, logits, samples)
    assert fused.keys() == reference.keys()
    for key in reference:
        torch.testing.assert_close(fused[key], reference[key], rtol=1e-5,
                                   atol=0)
    torch.testing.assert_close(fused_grad, reference_grad, rtol=1e-5,
                               atol=1e-5 * reference_grad.abs().max().item())


@pytest.mark.parametrize('kwargs', [
    dict(loss_decode=[dict(type='CrossEntropyLoss'),
                      dict(type='DiceLoss')]),
    dict(loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=True)),
    dict(loss_decode=dict(type='CrossEntropyLoss', reduction='sum')),
    dict(sampler=dict(type='OHEMPixelSampler', thresh=0.7, min_kept=100)),
])
def test_other_losses_go_through_mmseg(kwargs):
    generator = torch.Generator().manual_seed(0)
    head = build_head(**kwargs)
    logits = torch.randn(2, 7, 6, 5, generator=generator, requires_grad=True)
    samples = labelled_samples((24, 20), 7, generator, ignored=0.)
    ours, _ = loss_and_gradient(head, logits, samples)
    head.fused_loss = False
    reference, _ = loss_and_gradient(head, logits, samples)
    assert ours.keys() == reference.keys()
    for key in reference:
        assert torch.equal(ours[key], reference[key]), key


def test_head_runs_in_float32_under_autocast():
    """Low-precision backbone maps in, float32 logits out, close to the
    float32 head's; a float64 head stays in float64."""
    head = build_head().eval()
    inputs = [torch.randn(1, 16, 6, 7), torch.randn(1, 24, 6, 7)]
    with torch.no_grad():
        expected = head(inputs)
        with torch.autocast('cpu', dtype=torch.bfloat16):
            logits = head([x.bfloat16() for x in inputs])
        assert logits.dtype == torch.float32
        bf16_inputs = [x.bfloat16().float() for x in inputs]
        torch.testing.assert_close(logits, head(bf16_inputs))
        assert relative_error(logits, expected) < 2e-2
        head.double()
        with torch.autocast('cpu', dtype=torch.bfloat16):
            assert head([x.double() for x in inputs]).dtype == torch.float64
