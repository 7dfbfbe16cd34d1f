"""The timm-backbone configs (configs/regproxy_timm/ and the timm shapes
config) follow the published recipe, build, run one training iteration, and
are counted by tools/analysis/get_flops.py.

To keep the iteration cheap on a CPU it runs on one image (batch 1) padded to
8 x 8 patches instead of the config's crop: the test shrinks the data
preprocessor's ``size`` and nothing else. Backbone weights are random
(``pretrained=None``): there is no network here. Of the DINOv3 configs only
ViT-S/16 on ADE20K (full and frozen) trains here; the others build (on the
meta device) in the FLOPs test.
"""
from pathlib import Path

import pytest
import timm
import torch
from mmengine.config import Config
from mmengine.optim import build_optim_wrapper
from mmengine.structures import PixelData
from mmseg.registry import MODELS
from mmseg.structures import SegDataSample

from tests.scripts import load_script

standalone_model_cfg = load_script(
    'tools/analysis/benchmark.py').standalone_model_cfg
CONFIG_DIR = Path(__file__).resolve().parents[1] / 'configs'
TIMM_CONFIGS = sorted(
    p.name for p in (CONFIG_DIR / 'regproxy_timm').glob('*.py'))
SHAPES_CONFIG = ('regproxy_shapes/regproxy-eva02-ti14-d4-sub4+implicit-mid-1+'
                 '128x128+1500+adamw-poly+shapes.py')
FAMILIES = {
    'dinov2-s14-reg4': 'vit_small_patch14_reg4_dinov2.lvd142m',
    'dinov2-b14-reg4': 'vit_base_patch14_reg4_dinov2.lvd142m',
    'eva02-s14': 'eva02_small_patch14_224.mim_in22k',
    'eva02-b14': 'eva02_base_patch14_224.mim_in22k',
    'deit3-s16': 'deit3_small_patch16_384.fb_in22k_ft_in1k',
    'deit3-b16': 'deit3_base_patch16_384.fb_in22k_ft_in1k',
    'dinov3-s16': 'vit_small_patch16_dinov3.lvd1689m',
    'dinov3-b16': 'vit_base_patch16_dinov3.lvd1689m',
    'dinov3-l16': 'vit_large_patch16_dinov3.lvd1689m',
}
# the frozen recipes: the whole backbone frozen, the head-only learning rate
FROZEN = {f'{family}-frozen': FAMILIES[family] for family in FAMILIES
          if family.startswith('dinov3')}
TRAINED_CONFIGS = [
    n for n in TIMM_CONFIGS
    if not n.startswith('regproxy-dinov3') or (
        n.startswith('regproxy-dinov3-s16') and n.endswith('ade20k.py'))
]


def load(name: str) -> Config:
    folder = '' if '/' in name else 'regproxy_timm'
    return Config.fromfile(CONFIG_DIR / folder / name)


def family_of(name: str) -> str:
    return name[len('regproxy-'):name.index('-sub4')]


def test_every_family_on_both_datasets():
    found = {(family_of(n), n.split('+')[-1][:-3]) for n in TIMM_CONFIGS}
    assert len(TIMM_CONFIGS) == len(found) == 24
    datasets = ('ade20k', 'cityscapes')
    assert found == {(f, d) for f in {**FAMILIES, **FROZEN} for d in datasets}


@pytest.mark.parametrize('name', TIMM_CONFIGS)
def test_published_recipe(name):
    cfg = load(name)
    backbone = cfg.model.backbone
    family = family_of(name)
    assert backbone.type == 'TimmRegionProxyViT'
    assert backbone.model_name == {**FAMILIES, **FROZEN}[family]
    assert backbone.pretrained == 'timm'
    assert backbone.drop_path_rate == 0.1
    # the dataset's crop, padded to whole patches everywhere the model sees it
    size, crop = tuple(cfg.input_size), tuple(cfg.crop_size)
    patch = 14 if 'patch14' in backbone.model_name else 16
    assert size[0] % patch == 0 and 0 <= size[0] - crop[0] < patch
    assert tuple(backbone.img_size) == size
    assert tuple(cfg.model.data_preprocessor.size) == size
    assert cfg.model.test_cfg.mode == 'slide'
    assert tuple(cfg.model.test_cfg.crop_size) == size
    # the published ViT-L/16 slides 640 windows by 640 on ADE20K
    stride = 640 if size == (640, 640) else 512
    assert tuple(cfg.model.test_cfg.stride) == (stride, stride)
    # the weights' own normalisation
    weights_cfg = timm.models.get_pretrained_cfg(backbone.model_name)
    preprocessor = cfg.model.data_preprocessor
    assert preprocessor.mean == pytest.approx(
        [255 * v for v in weights_cfg.mean], abs=1e-3)
    assert preprocessor.std == pytest.approx(
        [255 * v for v in weights_cfg.std], abs=1e-3)
    cityscapes = 'cityscapes' in name
    large = family.split('-')[1] == 'l16'
    # the published mid layers: 4 / 2 of 12, and ViT-L/16's 9 / 5 of 24 (at
    # 640 on ADE20K)
    mid = {(False, False): 4, (True, False): 2, (False, True): 9,
           (True, True): 5}[cityscapes, large]
    assert tuple(backbone.out_indices) == (mid, 23 if large else 11)
    assert crop == ((768, 768) if cityscapes else
                    (640, 640) if large else (512, 512))
    assert cfg.model.decode_head.num_classes == (19 if cityscapes else 150)
    assert tuple(cfg.model.decode_head.region_res) == (4, 4)
    assert cfg.model.decode_head.norm_cfg.type == 'SyncBN'
    # the published schedules: S poly, B and L cosine with restarts; frozen
    # backbones train the head alone, at its own learning rate
    frozen = family in FROZEN
    assert backbone.get('frozen_stages', -1) == (
        (24 if large else 12) if frozen else -1)
    assert cfg.optim_wrapper.optimizer.lr == (1e-3 if frozen else 6e-5)
    assert cfg.train_dataloader.batch_size == 2
    assert cfg.train_cfg.max_iters == (80000 if cityscapes else 160000)
    assert cfg.train_cfg.val_interval == (2000 if cityscapes else 4000)
    schedulers = [s.type for s in cfg.param_scheduler]
    cosine = family.split('-')[1][0] in 'bl'  # ViT-B, ViT-L
    assert ('-cr+' in name) == cosine
    assert schedulers == [
        'LinearLR', 'CosineRestartLR' if cosine else 'PolyLR'
    ]


def one_batch(size: int, num_classes: int):
    """One image a little smaller than ``size`` (the preprocessor pads it,
    as it pads a crop of 512 to 518) with a random label map."""
    h, w = size - 5, size - 3
    image = torch.randint(0, 256, (3, h, w), dtype=torch.uint8)
    label = torch.randint(0, num_classes, (1, h, w))
    label[:, :4] = 255  # some ignored pixels
    sample = SegDataSample(gt_sem_seg=PixelData(data=label))
    sample.set_metainfo(dict(img_shape=(h, w), ori_shape=(h, w)))
    return dict(inputs=[image], data_samples=[sample])


@pytest.mark.parametrize('name', TRAINED_CONFIGS + [SHAPES_CONFIG])
def test_one_training_iteration(name):
    cfg = load(name)
    torch.manual_seed(0)
    model = MODELS.build(standalone_model_cfg(cfg.model))
    model.init_weights()
    model.train()
    optim_wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    size = 8 * model.backbone.patch_size
    model.data_preprocessor.size = (size, size)  # the one shrink
    data = model.data_preprocessor(
        one_batch(size, cfg.model.decode_head.num_classes), training=True)
    loss, _ = model.parse_losses(model(**data, mode='loss'))
    assert torch.isfinite(loss)
    loss.backward()
    without = {n for n, p in model.named_parameters() if p.grad is None}
    # DDP (find_unused_parameters=False) needs them all, but for the frozen
    # ones (which it leaves out, as they do not require grad)
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert without == frozen
    if family_of(name) in FROZEN:
        assert frozen == {n for n, _ in model.named_parameters()
                          if n.startswith('backbone.')}
    before = model.decode_head.mlp[0][0].weight.detach().clone()
    optim_wrapper.step()
    assert not torch.equal(before, model.decode_head.mlp[0][0].weight)
    # no weight decay on position embedding, prefix tokens and norms; the
    # optimizer does not hold frozen weights at all
    decay = {
        id(p): group['weight_decay']
        for group in optim_wrapper.optimizer.param_groups
        for p in group['params']
    }
    vit = model.backbone.vit
    assert not any(id(p) in decay for p in vit.parameters()
                   if not p.requires_grad)
    if frozen:
        return
    no_decay = [vit.pos_embed, vit.cls_token, vit.norm.weight,
                getattr(vit, 'reg_token', None)]
    no_decay = [p for p in no_decay if p is not None]  # DINOv3: no pos_embed
    assert [decay[id(p)] for p in no_decay] == [0.] * len(no_decay)
    assert decay[id(vit.blocks[0].mlp.fc2.weight)] > 0


def test_shapes_timm_config_predicts_any_size():
    """Padded slide inference with the patch-14 model on an odd image."""
    cfg = load(SHAPES_CONFIG)
    assert cfg.model.backbone.type == 'TimmRegionProxyViT'
    assert cfg.model.backbone.pretrained is None  # from scratch, offline
    model = MODELS.build(standalone_model_cfg(cfg.model))
    model.init_weights()
    model.eval()
    image = torch.randint(0, 256, (3, 131, 203), dtype=torch.uint8)
    sample = SegDataSample()
    sample.set_metainfo(dict(img_shape=(131, 203), ori_shape=(131, 203)))
    with torch.no_grad():
        result = model.test_step(dict(inputs=[image], data_samples=[sample]))
    assert result[0].seg_logits.data.shape == (8, 131, 203)
    assert result[0].pred_sem_seg.data.shape == (1, 131, 203)


@pytest.mark.parametrize('name', TIMM_CONFIGS)
def test_get_flops_counts_each_config(name):
    """tools/analysis/get_flops.py handles the timm backbone (on the meta
    device) and counts every parameter."""
    get_flops = load_script('tools/analysis/get_flops.py')
    path = CONFIG_DIR / 'regproxy_timm' / name
    result = get_flops.analyse(str(path))
    with torch.device('meta'):
        model = MODELS.build(standalone_model_cfg(load(name).model))
    assert result['params'] == sum(p.numel() for p in model.parameters())
    assert result['full'] > result['paper'] > 0
    # Attention: qkv and output projections, QK^T and AV, per layer; for
    # EVA-02 too, whose qkv runs through F.linear on the Linear's weight.
    timm_model = model.backbone.vit
    grid = [-(-s // timm_model.patch_embed.patch_size[0])
            for s in result['shape']]
    tokens = grid[0] * grid[1] + timm_model.num_prefix_tokens
    width = timm_model.embed_dim
    attention = len(timm_model.blocks) * (
        4 * tokens * width**2 + 2 * tokens**2 * width)
    assert result['full'] - result['paper'] == attention
