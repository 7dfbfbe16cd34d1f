# EVA-02 ViT-S/14 (MIM on ImageNet-22k):
# timm eva02_small_patch14_224.mim_in22k.
# 512 crops padded to 518 = 37 x 14 (see the base model file).
_base_ = [
    '../_base_/models/regproxy_timm_vit-s14.py',
    '../_base_/datasets/ade20k.py',
    '../_base_/default_runtime.py',
    '../_base_/schedules/adamw_poly_160k.py',
]
input_size = (518, 518)
model = dict(
    data_preprocessor=dict(
        size=input_size,
        # EVA-02's (OpenAI CLIP's) normalisation
        mean=[122.771, 116.746, 104.094],
        std=[68.501, 66.632, 70.323]),
    backbone=dict(
        model_name='eva02_small_patch14_224.mim_in22k',
        img_size=input_size,
        out_indices=(4, 11)),
    test_cfg=dict(mode='slide', crop_size=input_size, stride=(512, 512)))
