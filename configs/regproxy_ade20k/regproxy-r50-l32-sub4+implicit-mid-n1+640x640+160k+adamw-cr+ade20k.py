_base_ = [
    '../_base_/models/regproxy_vit-b16.py',
    '../_base_/datasets/ade20k_640x640.py',
    '../_base_/default_runtime.py',
    '../_base_/schedules/adamw_cr_160k.py',
]
crop_size = (640, 640)
model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(
        img_size=crop_size,
        embed_type='vit_large_r50_s32_384',
        patch_size=32,
        embed_dims=1024,
        num_heads=16,
        num_layers=24,
        out_indices=(-1, 23)),
    decode_head=dict(in_channels=(1024, 1024), channels=1024),
    test_cfg=dict(mode='slide', crop_size=crop_size, stride=(640, 640)))
