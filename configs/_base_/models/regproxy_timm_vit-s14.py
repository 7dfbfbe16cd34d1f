# RegionProxy on a timm ViT (TimmRegionProxyViT): the primitive that the
# configs in configs/regproxy_timm/ specialise (timm model, width, mid layer,
# sizes, classes). Here DINOv2 ViT-S/14 with 4 registers on ADE20K.
#
# Patch 14: the 512 crops are padded (image 0 after normalisation, label 255)
# to 518 = 37 x 14 by the data preprocessor, and inference slides windows of
# 518, so every input is a whole number of patches and the head's logits
# cover exactly the padded image.
#
# region_res 4 at patch 14: output stride 3.5 (148 x 148 logits for 518),
# the closest to the published stride 4 (patch 16, region_res 4), with the
# same affinity branch (9 * 4 * 4 = 144 channels) and 37^2 / 32^2 = 1.34x the
# published head's memory. region_res 7 would give an integer stride 2 but
# 441 affinity channels and 3x the logits (150 x 259 x 259 per image);
# region_res 2 a coarse stride 7.
norm_cfg = dict(type='SyncBN', requires_grad=True)
input_size = (518, 518)
data_preprocessor = dict(
    type='SegDataPreProcessor',
    mean=[123.675, 116.28, 103.53],  # DINOv2 and DeiT-III: ImageNet's
    std=[58.395, 57.12, 57.375],
    bgr_to_rgb=True,
    pad_val=0,
    seg_pad_val=255,
    size=input_size)
model = dict(
    type='PaddedSlideEncoderDecoder',
    data_preprocessor=data_preprocessor,
    pretrained=None,
    backbone=dict(
        type='TimmRegionProxyViT',
        model_name='vit_small_patch14_reg4_dinov2.lvd142m',
        img_size=input_size,
        out_indices=(4, 11),
        # timm's published weights (downloaded); offline, pass a saved timm
        # state_dict: --cfg-options model.backbone.pretrained=PATH
        pretrained='timm',
        drop_path_rate=0.1),
    decode_head=dict(
        type='ProxyHead',
        in_channels=(384, 384),
        in_index=(-2, -1),
        input_transform='multiple_select',
        channels=384,
        region_res=(4, 4),
        dropout_ratio=0.,
        num_classes=150,
        norm_cfg=norm_cfg,
        align_corners=False,
        loss_decode=dict(
            type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0)),
    train_cfg=dict(),
    test_cfg=dict(mode='slide', crop_size=input_size, stride=(512, 512)))
