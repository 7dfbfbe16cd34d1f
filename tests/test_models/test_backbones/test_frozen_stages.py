"""``frozen_stages`` of RegionProxyViT and TimmRegionProxyViT.

mmpretrain's meaning: -1 nothing frozen, 0 the embeddings (patch and
position embeddings, prefix tokens), N also the first N layers,
``num_layers`` the whole backbone with its final norm. Frozen parts do not
require grad, stay in eval mode, keep no activations for backward and get
no optimizer state; the weights and checkpoints are those of an unfrozen
model.
"""
import copy

import pytest
import timm
import torch
from mmengine.optim import build_optim_wrapper
from mmengine.structures import PixelData
from mmseg.registry import MODELS
from mmseg.structures import SegDataSample

from regproxy.models.backbones import RegionProxyViT, TimmRegionProxyViT
from tests.tiny_models import tiny_segmentor_cfg

NUM_LAYERS = 3


def vit(frozen_stages=-1, **kwargs):
    args = dict(img_size=64, embed_dims=32, num_layers=NUM_LAYERS,
                num_heads=2, out_indices=(0, NUM_LAYERS - 1), deit=True)
    args.update(kwargs)
    return RegionProxyViT(frozen_stages=frozen_stages, **args)


def timm_vit(frozen_stages=-1, name='vit_small_patch16_dinov3', **kwargs):
    args = dict(img_size=64, out_indices=(0, NUM_LAYERS - 1),
                timm_kwargs=dict(depth=NUM_LAYERS, embed_dim=32, num_heads=2))
    args.update(kwargs)
    return TimmRegionProxyViT(name, frozen_stages=frozen_stages, **args)


BACKBONES = {'RegionProxyViT': vit, 'TimmRegionProxyViT': timm_vit}


def segmentor_cfg(backbone: str, frozen_stages: int) -> dict:
    """The tiny test segmentor on either backbone (64 px, 3 layers)."""
    cfg = tiny_segmentor_cfg(num_layers=NUM_LAYERS)
    cfg.data_preprocessor = dict(type='SegDataPreProcessor', mean=[128.] * 3,
                                 std=[64.] * 3, size=(64, 64))
    cfg.backbone.frozen_stages = frozen_stages
    if backbone == 'TimmRegionProxyViT':
        cfg.backbone = dict(
            type='TimmRegionProxyViT', model_name='vit_small_patch16_dinov3',
            img_size=64, out_indices=(NUM_LAYERS - 2, NUM_LAYERS - 1),
            frozen_stages=frozen_stages,
            timm_kwargs=dict(depth=NUM_LAYERS, embed_dim=32, num_heads=2))
    return cfg


def batch(seed: int, num_classes: int = 5):
    generator = torch.Generator().manual_seed(seed)
    inputs, samples = [], []
    for _ in range(2):
        inputs.append(torch.randint(0, 256, (3, 64, 64),
                                    generator=generator, dtype=torch.uint8))
        label = torch.randint(0, num_classes, (1, 64, 64),
                              generator=generator)
        sample = SegDataSample(gt_sem_seg=PixelData(data=label))
        sample.set_metainfo(dict(img_shape=(64, 64), ori_shape=(64, 64)))
        samples.append(sample)
    return dict(inputs=inputs, data_samples=samples)


def build(backbone: str, frozen_stages: int, paramwise: bool):
    """Segmentor and AdamW OptimWrapper, built as the runner builds them."""
    torch.manual_seed(0)
    model = MODELS.build(segmentor_cfg(backbone, frozen_stages))
    model.init_weights()
    optim_cfg = dict(type='OptimWrapper',
                     optimizer=dict(type='AdamW', lr=1e-2,
                                    weight_decay=0.01))
    if paramwise:  # the configs' constructor path: it skips frozen weights
        optim_cfg['paramwise_cfg'] = dict(norm_decay_mult=0.)
    return model, build_optim_wrapper(model, optim_cfg)


def train_steps(model, optim_wrapper, seeds):
    model.train()
    for seed in seeds:
        torch.manual_seed(seed)  # the same dropout in every run
        model.train_step(batch(seed), optim_wrapper)


@pytest.mark.parametrize('paramwise', [True, False])
@pytest.mark.parametrize('backbone', sorted(BACKBONES))
def test_frozen_backbone_does_not_change_in_two_steps(backbone, paramwise):
    model, optim_wrapper = build(backbone, NUM_LAYERS, paramwise)
    before = copy.deepcopy(model.state_dict())
    train_steps(model, optim_wrapper, seeds=(1, 2))
    after = model.state_dict()
    for key, value in before.items():
        if key.startswith('backbone.'):
            assert torch.equal(after[key], value), key  # bitwise
    changed = [k for k, v in before.items() if k.startswith('decode_head.')
               and not torch.equal(after[k], v)]
    head = [n for n, _ in model.decode_head.named_parameters()]
    assert len(changed) >= len(head)  # every weight (and BN statistics)
    # AdamW holds its two moments for the head's weights only
    state = optim_wrapper.optimizer.state
    assert all(state[p] for p in model.decode_head.parameters())
    assert not any(p in state for p in model.backbone.parameters())
    grouped = {p for g in optim_wrapper.param_groups for p in g['params']}
    backbone_params = set(model.backbone.parameters())
    assert grouped.isdisjoint(backbone_params) == paramwise


@pytest.mark.parametrize('backbone', sorted(BACKBONES))
def test_frozen_resume_continues_bitwise(backbone):
    """Checkpoint keys do not change with frozen_stages, and a run resumed
    from the model's and optimizer's state dicts continues exactly."""
    model, optim_wrapper = build(backbone, NUM_LAYERS, paramwise=True)
    unfrozen, _ = build(backbone, -1, paramwise=True)
    assert model.state_dict().keys() == unfrozen.state_dict().keys()
    train_steps(model, optim_wrapper, seeds=(1, ))
    checkpoint = copy.deepcopy(
        dict(state_dict=model.state_dict(),
             optimizer=optim_wrapper.state_dict()))
    train_steps(model, optim_wrapper, seeds=(2, ))
    resumed, resumed_wrapper = build(backbone, NUM_LAYERS, paramwise=True)
    resumed.load_state_dict(checkpoint['state_dict'], strict=True)
    resumed_wrapper.load_state_dict(checkpoint['optimizer'])
    assert not any(p.requires_grad for p in resumed.backbone.parameters())
    train_steps(resumed, resumed_wrapper, seeds=(2, ))
    for key, value in model.state_dict().items():
        assert torch.equal(resumed.state_dict()[key], value), key


def test_vit_freezes_embeddings_and_first_k_layers():
    embeddings = {'cls_token', 'dist_token', 'pos_embed',
                  'patch_embed.projection.weight'}
    for k in range(-1, NUM_LAYERS + 1):
        model = vit(k)
        frozen = {n for n, p in model.named_parameters()
                  if not p.requires_grad}
        expected = set() if k < 0 else embeddings | {
            n for n, _ in model.named_parameters()
            if n.startswith(tuple(f'layers.{i}.' for i in range(k)))
        }
        if k == NUM_LAYERS:
            expected |= {'ln1.weight', 'ln1.bias'}
        assert frozen == expected, k
    assert len(expected) == len(list(model.parameters()))


@pytest.mark.parametrize('name', [
    'vit_small_patch16_dinov3',  # rotary embedding, registers
    'vit_small_patch14_reg4_dinov2', 'deit_small_distilled_patch16_224',
    'eva02_small_patch14_224'
])
def test_timm_vit_freezes_timms_own_stages(name):
    """Frozen are exactly timm's first k + 1 parameter groups (its
    group_matcher: stem, then one group per block, the final norm with the
    last block)."""
    patch = 14 if 'patch14' in name else 16
    for k in range(-1, NUM_LAYERS + 1):
        model = timm_vit(k, name, img_size=4 * patch)
        frozen = {n for n, p in model.vit.named_parameters()
                  if not p.requires_grad}
        groups = timm.models.group_parameters(
            model.vit, model.vit.group_matcher(), reverse=True)
        assert frozen == {n for n, g in groups.items() if g <= k}, k
    assert frozen == set(groups)


@pytest.mark.parametrize('backbone', sorted(BACKBONES))
def test_frozen_parts_stay_in_eval_mode(backbone):
    """train() leaves the frozen prefix in eval mode: no drop path, no
    dropout there, while the trained layers train."""
    model = BACKBONES[backbone](NUM_LAYERS - 1, drop_path_rate=0.5)
    model.train()
    frozen = {
        id(m): m
        for module in model.frozen_modules() for m in module.modules()
    }
    assert frozen and not any(m.training for m in frozen.values())
    trained = [m for m in model.modules() if id(m) not in frozen]
    layers = model.vit.blocks if backbone == 'TimmRegionProxyViT' else (
        model.layers)
    assert [id(layer) in frozen for layer in layers] == [True, True, False]
    assert trained and all(m.training for m in trained)
    # the whole backbone frozen: train() computes what eval() does
    model = BACKBONES[backbone](NUM_LAYERS, drop_path_rate=0.5).train()
    x = torch.randn(2, 3, 64, 64)
    outs = [model(x) for _ in range(2)] + [model.eval()(x)]
    for out in outs[1:]:
        for a, b in zip(outs[0], out):
            assert torch.equal(a, b)
    unfrozen = BACKBONES[backbone](-1, drop_path_rate=0.5)
    unfrozen.load_state_dict(model.state_dict())
    torch.manual_seed(0)
    assert not torch.equal(unfrozen.train()(x)[-1], outs[0][-1])


@pytest.mark.parametrize('backbone', sorted(BACKBONES))
def test_frozen_stages_keep_no_activations(backbone):
    """Nothing is saved for backward in the frozen prefix: each frozen
    layer saves one layer's tensors less, a frozen backbone none."""
    x = torch.randn(1, 3, 64, 64)
    saved = []
    for k in range(-1, NUM_LAYERS + 1):
        model = BACKBONES[backbone](k).train()
        tensors = []
        with torch.autograd.graph.saved_tensors_hooks(
                lambda t: tensors.append(t) or t, lambda t: t):
            outs = model(x)
        saved.append(len(tensors))
        # the mid map (layer 0) has a graph only while layer 0 trains
        assert [o.requires_grad for o in outs] == [k < 1, k < NUM_LAYERS]
    assert saved[-1] == 0
    per_layer = saved[1] - saved[2]
    assert per_layer > 0 and saved[0] > saved[1]
    assert [saved[k] - saved[k + 1] for k in range(1, NUM_LAYERS)] == [
        per_layer
    ] * (NUM_LAYERS - 1)


@pytest.mark.parametrize('value', [-2, NUM_LAYERS + 1, 1.5, True, '2'])
@pytest.mark.parametrize('backbone', sorted(BACKBONES))
def test_bad_frozen_stages(backbone, value):
    with pytest.raises(ValueError, match=(
            rf'frozen_stages={value!r} is out of range: expected an int from '
            rf'-1 \(nothing frozen\) to {NUM_LAYERS} \(the whole backbone')):
        BACKBONES[backbone](value)


@pytest.mark.parametrize('backbone', sorted(BACKBONES))
def test_frozen_prefix_runs_under_no_grad(backbone):
    """Even for an input that requires grad (a saliency map, say), the
    frozen backbone builds no graph: it runs under torch.no_grad. So do
    RegionProxyViT's frozen first layers."""
    x = torch.randn(1, 3, 64, 64, requires_grad=True)
    model = BACKBONES[backbone](NUM_LAYERS).train()
    tensors = []
    with torch.autograd.graph.saved_tensors_hooks(
            lambda t: tensors.append(t) or t, lambda t: t):
        outs = model(x)
    assert not tensors and not any(o.requires_grad for o in outs)
    if backbone == 'RegionProxyViT':
        model = vit(1).train()
        saved = {}
        for requires_grad in (False, True):
            tensors.clear()
            with torch.autograd.graph.saved_tensors_hooks(
                    lambda t: tensors.append(t) or t, lambda t: t):
                model(x.detach().requires_grad_(requires_grad))
            saved[requires_grad] = len(tensors)
        assert saved[True] == saved[False] > 0


def test_with_cp_recomputes_the_trained_layers():
    """Activation checkpointing still works after frozen layers (whose
    output does not require grad): the trained layers run twice per step,
    the frozen ones once."""
    model = vit(1, with_cp=True).train()
    calls = []
    for i, layer in enumerate(model.layers):
        layer.register_forward_pre_hook(lambda *_, i=i: calls.append(i))
    sum(o.sum() for o in model(torch.randn(1, 3, 64, 64))).backward()
    assert sorted(calls) == [0, 1, 1, 2, 2]
    assert all(p.grad is not None for p in model.layers[1].parameters())
