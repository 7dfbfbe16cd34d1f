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
        embed_dims=192,
        num_heads=3,
        out_indices=(4, 11)),
    decode_head=dict(in_channels=(192, 192), channels=192),
    test_cfg=dict(mode='slide', crop_size=crop_size, stride=(512, 512)))
