# DINOv3 ViT-S/16 (LVD-1689M): timm vit_small_patch16_dinov3.lvd1689m.
# Rotary position embedding, 4 registers; patch 16, so the crops need no
# padding and the grid is the published one. On the published ViT-S/16 recipe.
_base_ = [
    '../_base_/models/regproxy_timm_vit-s14.py',
    '../_base_/datasets/ade20k.py',
    '../_base_/default_runtime.py',
    '../_base_/schedules/adamw_poly_160k.py',
]
input_size = (512, 512)
model = dict(
    data_preprocessor=dict(size=input_size),
    backbone=dict(
        model_name='vit_small_patch16_dinov3.lvd1689m',
        img_size=input_size,
        out_indices=(4, 11)),
    test_cfg=dict(mode='slide', crop_size=input_size, stride=(512, 512)))
# no weight decay on the register tokens either, as on the class token
optim_wrapper = dict(
    paramwise_cfg=dict(custom_keys={'reg_token': dict(decay_mult=0.)}))
