# DeiT-III ViT-S/16, ImageNet-22k, fine-tuned on 1k at 384:
# timm deit3_small_patch16_384.fb_in22k_ft_in1k.
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
        model_name='deit3_small_patch16_384.fb_in22k_ft_in1k',
        img_size=input_size,
        out_indices=(4, 11)),
    test_cfg=dict(mode='slide', crop_size=input_size, stride=(512, 512)))
