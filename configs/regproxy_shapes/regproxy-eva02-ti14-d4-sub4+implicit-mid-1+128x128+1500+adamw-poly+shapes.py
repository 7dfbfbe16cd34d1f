# RegionProxy on a timm ViT (TimmRegionProxyViT), trained from scratch on the
# synthetic shapes dataset: EVA-02 Ti/14 (timm eva02_tiny_patch14_224: rotary
# position embedding, SwiGLU MLP) cut to 4 layers, the CPU-sized check of the
# timm backbone and of the head at patch 14. The 128 crops are padded to
# 140 = 10 x 14; region_res 4 gives stride 3.5 (see
# configs/_base_/models/regproxy_timm_vit-s14.py). Time and val mIoU on two
# CPU cores: README.md, "Try it on a laptop".
_base_ = [
    '../_base_/models/regproxy_timm_vit-s14.py',
    '../_base_/datasets/shapes.py',
    '../_base_/default_runtime.py',
    '../_base_/schedules/adamw.py',
]
input_size = (140, 140)
norm_cfg = dict(type='BN', requires_grad=True)  # one process: plain BN
model = dict(
    data_preprocessor=dict(size=input_size),
    backbone=dict(
        model_name='eva02_tiny_patch14_224',
        img_size=input_size,
        out_indices=(1, 3),
        pretrained=None,  # from scratch
        drop_path_rate=0.,  # a short run from scratch needs no regulariser
        timm_kwargs=dict(depth=4)),
    decode_head=dict(
        in_channels=(192, 192),
        channels=192,
        num_classes=8,
        norm_cfg=norm_cfg),
    test_cfg=dict(mode='slide', crop_size=input_size, stride=(96, 96)))
max_iters = 1500
warmup_iters = 50
# From scratch: far above the fine-tuning recipe's 6e-5, and the same as the
# RegionProxyViT shapes model's (2e-3 was too high there).
optim_wrapper = dict(optimizer=dict(lr=5e-4))
param_scheduler = [
    dict(
        type='LinearLR',
        start_factor=1e-6,
        by_epoch=False,
        begin=0,
        end=warmup_iters),
    dict(
        type='PolyLR',
        power=1.0,
        eta_min=0.,
        by_epoch=False,
        begin=warmup_iters,
        end=max_iters)
]
train_cfg = dict(max_iters=max_iters, val_interval=max_iters)
default_hooks = dict(
    logger=dict(interval=50), checkpoint=dict(interval=max_iters))
