_base_ = [
    '../_base_/models/regproxy_vit-b16.py',
    '../_base_/datasets/ade20k.py',
    '../_base_/default_runtime.py',
    '../_base_/schedules/adamw_poly_160k.py',
]
crop_size = (512, 512)
model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(
        img_size=crop_size,
        embed_type='vit_small_r26_s32_384',
        patch_size=32,
        embed_dims=384,
        num_heads=6,
        out_indices=(-1, 11)),
    decode_head=dict(in_channels=(384, 384), channels=384),
    test_cfg=dict(mode='slide', crop_size=crop_size, stride=(512, 512)))
