import pytest
import torch
import torch.nn.functional as F

from regproxy.models.backbones import RegionProxyViT, vit
from regproxy.models.backbones.vit import (explicit_attention,
                                           prefers_explicit_attention)


def tiny_vit(**kwargs):
    args = dict(
        img_size=64,
        patch_size=16,
        embed_dims=32,
        num_layers=3,
        num_heads=2,
        out_indices=(0, 2))
    args.update(kwargs)
    model = RegionProxyViT(**args)
    model.init_weights()
    return model


def test_fused_attention_matches_explicit():
    torch.manual_seed(0)
    model = tiny_vit(deit=True).eval()
    x = torch.randn(2, 3, 48, 80)
    with torch.no_grad():
        fused = model(x)
        model.fused_attn = False
        explicit = model(x)
    for a, b in zip(fused, explicit):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


# B=2, 3 heads, 10 keys in float32: 240 bytes of scores per query row.
@pytest.mark.parametrize('max_scores_bytes', [None, 1, 720, 2400])
def test_explicit_attention_in_chunks_of_rows_matches_the_fused_kernel(
        max_scores_bytes):
    """One row at a time, 3 rows (the last chunk shorter), all at once."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 10, 8) for _ in range(3))
    torch.testing.assert_close(
        explicit_attention(q, k, v, max_scores_bytes=max_scores_bytes),
        F.scaled_dot_product_attention(q, k, v), atol=1e-6, rtol=1e-5)


@pytest.fixture
def explicit_is_faster(monkeypatch):
    """Set what the timing of explicit against fused attention found."""
    def set_answer(answer):
        monkeypatch.setattr(vit, 'explicit_bfloat16_attention_is_faster',
                            lambda: answer)
    return set_answer


def test_explicit_attention_is_preferred_where_it_is_faster(
        explicit_is_faster):
    q = torch.zeros(1, 2, 4, 8, dtype=torch.bfloat16)
    explicit_is_faster(True)
    with torch.no_grad():
        assert prefers_explicit_attention(q, 0.)
        assert not prefers_explicit_attention(q, 0.1)  # dropout: fused
        assert not prefers_explicit_attention(q.float(), 0.)
        explicit_is_faster(False)
        assert not prefers_explicit_attention(q, 0.)
    explicit_is_faster(True)
    assert not prefers_explicit_attention(q, 0.)  # autograd: fused


@pytest.mark.parametrize('slower', ['fused', 'explicit'])
def test_the_faster_attention_is_found_by_timing_it_once(slower,
                                                         monkeypatch):
    """On a clock that each call of a form advances by its cost (3 s for
    the slower form, 1 s for the other: no real CPU decides), the slower
    form loses; the answer is kept for the process."""
    clock = [0.]
    calls = []

    def costing(name, attention):
        def timed_call(*args, **kwargs):
            calls.append(name)
            clock[0] += 3. if name == slower else 1.
            return attention(*args, **kwargs)
        return timed_call

    monkeypatch.setattr(F, 'scaled_dot_product_attention',
                        costing('fused', F.scaled_dot_product_attention))
    monkeypatch.setattr(vit, 'explicit_attention',
                        costing('explicit', vit.explicit_attention))
    monkeypatch.setattr(vit.time, 'perf_counter', lambda: clock[0])
    timed = vit.explicit_bfloat16_attention_is_faster
    timed.cache_clear()
    try:
        assert timed() == (slower == 'fused')
        # one call each to set up, three timed
        assert sorted(calls) == ['explicit'] * 4 + ['fused'] * 4
        timed()
        assert len(calls) == 8
    finally:
        timed.cache_clear()  # the real timing for the other tests


def test_bfloat16_inference_runs_explicit_attention(monkeypatch,
                                                    explicit_is_faster):
    """Under bfloat16 autocast without grad the layers skip the fused
    kernel where explicit attention is faster and stay as close to float32
    as the fused kernel in bfloat16; with grad they call it."""
    torch.manual_seed(0)
    model = tiny_vit().eval()
    x = torch.randn(1, 3, 64, 64)
    calls = []
    sdpa = F.scaled_dot_product_attention
    monkeypatch.setattr(F, 'scaled_dot_product_attention',
                        lambda *a, **kw: calls.append(1) or sdpa(*a, **kw))
    with torch.no_grad():
        expected = model(x)
        with torch.autocast('cpu', dtype=torch.bfloat16):
            explicit_is_faster(False)
            fused = model(x)
            assert len(calls) == 2 * len(model.layers)
            explicit_is_faster(True)
            explicit = model(x)
    assert len(calls) == 2 * len(model.layers)
    for ours, fused_out, ref in zip(explicit, fused, expected):
        error = (ours.float() - ref).abs().max()
        assert 0 < error <= 2 * (fused_out.float() - ref).abs().max()
    with torch.autocast('cpu', dtype=torch.bfloat16):
        model(x)
    assert len(calls) == 3 * len(model.layers)


def test_fused_attention_matches_nn_multihead_attention():
    """The stored nn.MultiheadAttention computes the same as our SDPA path,
    so released weights mean what they meant."""
    torch.manual_seed(0)
    attn = tiny_vit().layers[0].attn.eval()
    x = torch.randn(2, 10, 32)
    with torch.no_grad():
        expected, _ = attn.attn(x, x, x, need_weights=False)
        torch.testing.assert_close(attn(x), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize('size', [(64, 64), (17, 33), (234, 345), (1, 1)])
def test_any_input_size(size):
    model = tiny_vit().eval()
    with torch.no_grad():
        outs = model(torch.randn(1, 3, *size))
    grid = (-(-size[0] // 16), -(-size[1] // 16))
    assert [o.shape for o in outs] == [(1, 32, *grid)] * 2


def test_out_indices_order_and_before_first_layer():
    model = tiny_vit(out_indices=(2, -1, 0)).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        outs = model(x)
        for index, out in zip((2, -1, 0), outs):
            model.out_indices = (index, )
            torch.testing.assert_close(model(x)[0], out)
        # -1: patch embedding plus position embedding, before any layer
        tokens = model.patch_embed(x).flatten(2).transpose(1, 2)
        expected = tokens + model.pos_embed[:, 1:]
    torch.testing.assert_close(outs[1].flatten(2).transpose(1, 2), expected)


def test_deit_and_hybrid_token_counts():
    assert tiny_vit(deit=True).pos_embed.shape == (1, 4 * 4 + 2, 32)
    hybrid = tiny_vit(embed_type='vit_small_r26_s32_384', img_size=128)
    assert hybrid.pos_embed.shape == (1, 4 * 4 + 1, 32)
    with torch.no_grad():
        outs = hybrid.eval()(torch.randn(1, 3, 96, 160))
    assert outs[0].shape == (1, 32, 3, 5)


def test_gradients_reach_every_parameter():
    model = tiny_vit(deit=True, drop_path_rate=0.1).train()
    outs = model(torch.randn(2, 3, 64, 64))
    sum(o.sum() for o in outs).backward()
    for name, param in model.named_parameters():
        if name == 'dist_token':
            continue  # only reaches the patch tokens through attention
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    assert model.dist_token.grad is not None


@pytest.mark.parametrize('kwargs, message', [
    (dict(out_indices=(0, 3)), 'out_indices'),
    (dict(out_indices=(-2, 1)), 'out_indices'),
    (dict(img_size=60), 'divisible'),
    (dict(num_heads=5), 'num_heads'),
    (dict(embed_type='resnet50'), 'embed_type'),
    (dict(img_size=0), r'img_size=0: expected a positive int'),
    (dict(patch_size=0), 'patch_size must be positive'),
    (dict(num_heads=0), 'num_heads must be positive'),
    (dict(num_layers=-1), 'num_layers must be >= 0'),
])
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        tiny_vit(**kwargs)


def _outputs_and_grads(model, x, seed):
    """Outputs and parameter gradients of one training forward/backward."""
    model.zero_grad()
    torch.manual_seed(seed)  # the same drop-path masks in both runs
    outs = model(x)
    sum((o * o).sum() for o in outs).backward()
    return ([o.detach() for o in outs],
            {n: p.grad.clone() for n, p in model.named_parameters()
             if p.grad is not None})


@pytest.mark.parametrize('kwargs, shape', [
    (dict(drop_path_rate=0.3, drop_rate=0.1), (2, 3, 64, 64)),
    (dict(embed_type='vit_small_r26_s32_384', img_size=64, num_layers=2,
          out_indices=(0, 1)), (1, 3, 64, 32)),
])
def test_with_cp_same_outputs_and_gradients(kwargs, shape):
    """Activation checkpointing recomputes each layer (and hybrid-stem
    stage) in backward: outputs and gradients are those without it, drop
    path and dropout included."""
    torch.manual_seed(0)
    model = tiny_vit(**kwargs).train()
    x = torch.randn(*shape)
    expected_outs, expected_grads = _outputs_and_grads(model, x, seed=1)
    model.with_cp = True
    if kwargs.get('embed_type'):
        model.patch_embed.backbone.set_grad_checkpointing(True)
    outs, grads = _outputs_and_grads(model, x, seed=1)
    for out, expected in zip(outs, expected_outs):
        torch.testing.assert_close(out, expected, atol=1e-6, rtol=1e-5)
    assert grads.keys() == expected_grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(grad, expected_grads[name], atol=1e-6,
                                   rtol=1e-5, msg=name)


def test_with_cp_recomputes_in_backward(monkeypatch):
    """with_cp really checkpoints: each layer runs twice per training step
    (forward, recomputation), once in inference; the hybrid stem's stages
    are checkpointed by timm."""
    model = tiny_vit(with_cp=True).train()
    calls = []
    for layer in model.layers:
        # a pre-hook: the recomputation stops once it has what backward
        # needs, before a forward hook would run
        layer.register_forward_pre_hook(lambda *_: calls.append(1))
    sum(o.sum() for o in model(torch.randn(1, 3, 64, 64))).backward()
    assert len(calls) == 2 * len(model.layers)
    calls.clear()
    with torch.no_grad():
        model.eval()(torch.randn(1, 3, 64, 64))
    assert len(calls) == len(model.layers)
    hybrid = tiny_vit(embed_type='vit_small_r26_s32_384', img_size=64,
                      with_cp=True)
    assert all(s.grad_checkpointing
               for s in hybrid.patch_embed.backbone.stages)


@pytest.mark.parametrize('kwargs', [
    dict(img_size=(224, )), dict(img_size=(224, 224, 224)),
    dict(img_size=64.5), dict(pretrained=123)])
def test_bad_arguments_are_named_at_build(kwargs):
    name = next(iter(kwargs))
    with pytest.raises(ValueError, match=name):
        RegionProxyViT(embed_dims=32, num_layers=2, num_heads=2,
                       out_indices=(0, 1), **kwargs)


@pytest.mark.parametrize('shape', [(3, 64, 64), (1, 1, 64, 64)])
def test_input_that_is_not_an_image_batch_is_named(shape):
    model = RegionProxyViT(img_size=64, embed_dims=32, num_layers=2,
                           num_heads=2, out_indices=(0, 1))
    with pytest.raises(ValueError, match=r'expected a batch of images'):
        model(torch.randn(*shape))
