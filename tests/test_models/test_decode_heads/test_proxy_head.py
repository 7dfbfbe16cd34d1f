import pytest
import torch

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
