_base_ = [
    '../_base_/models/regproxy_vit-b16.py',
    '../_base_/datasets/cityscapes_768x768.py',
    '../_base_/default_runtime.py',
    '../_base_/schedules/adamw_cr_80k.py',
]
crop_size = (768, 768)
model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(
        img_size=crop_size,
        embed_dims=1024,
        num_heads=16,
        num_layers=24,
        out_indices=(5, 23)),
    decode_head=dict(in_channels=(1024, 1024), channels=1024, num_classes=19),
    test_cfg=dict(mode='slide', crop_size=crop_size, stride=(512, 512)))
